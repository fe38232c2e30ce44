"""Shared helpers for tests that build C programs and patch them live.

Builds use the same flags the katana SCons tool guarantees, straight through gcc, so that a
scenario test needs nothing but its sources. Processes are waited on by what they print, never by
fixed sleeps, and always killed.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SCENARIOS = HERE / "scenarios"
CFLAGS = ["-g", "-O2", "-ffunction-sections", "-fdata-sections", "-flive-patching=inline-clone",
          "-fpatchable-function-entry=5,5",
          "-fno-inline-functions-called-once", "-fno-inline-small-functions", "-pthread"]
LDFLAGS = ["-Wl,--emit-relocs", "-Wl,--build-id=sha1", "-pthread"]


def build_version(src: Path, out: Path, program: str = "prog", pie: bool = True,
                  cflags: tuple[str, ...] = ()) -> Path:
    """Compile every .c of ``src`` into objects under ``out`` and link ``out/program``.

    Sources are copied first so that objects of every version are built from the same path
    (as the SCons tool arranges with -ffile-prefix-map). ``cflags`` are added to every compile
    (a -D, or an -O3 flag a scenario needs). A ``link-libs`` file in ``src`` holds libraries
    the link needs (``-lm``)."""
    out.mkdir(parents=True, exist_ok=True)
    libs = (src / "link-libs").read_text().split() if (src / "link-libs").is_file() else []
    pic = ["-fPIE"] if pie else ["-fno-pie"]
    objects = []
    for c in sorted(src.glob("*.c")):
        shutil.copy(c, out / c.name)
    for h in sorted(src.glob("*.h")):
        shutil.copy(h, out / h.name)
    for c in sorted(out.glob("*.c")):
        obj = c.with_suffix(".o")
        subprocess.run(["gcc", *CFLAGS, *cflags, *pic, f"-ffile-prefix-map={out}=.", "-c", c.name,
                        "-o", obj.name], cwd=out, check=True)
        objects.append(obj.name)
    subprocess.run(["gcc", *LDFLAGS, "-pie" if pie else "-no-pie", *objects, *libs, "-o", program],
                   cwd=out, check=True)
    return out / program


def build_scenario(name: str, tmp: Path, pie: bool = True, versions=("v0", "v1"),
                   cflags: tuple[str, ...] = ()) -> dict:
    """Build each version of ``tests/scenarios/<name>`` into ``tmp/<version>``: version -> exe."""
    return {v: build_version(SCENARIOS / name / v, tmp / v, pie=pie, cflags=cflags)
            for v in versions}


def katana(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the katana command line as a user would."""
    result = subprocess.run([sys.executable, "-m", "katana", *args], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"katana {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


class Live:
    """A running program whose stdout is read line by line."""

    def __init__(self, argv: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._buf = b""

    def _read_some(self, deadline: float) -> bool:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._buf += chunk
        *complete, self._buf = self._buf.split(b"\n")
        self.lines.extend(x.decode(errors="replace") for x in complete)
        return True

    def wait_for(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match:
        """The first line (from index ``after``) matching ``pattern``; fails after ``timeout``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for i in range(seen, len(self.lines)):
                m = rx.search(self.lines[i])
                if m:
                    self.last_index = i
                    return m
            seen = max(seen, len(self.lines))
            if time.monotonic() >= deadline:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; "
                                     f"last lines: {self.lines[-8:]}")
            if not self._read_some(deadline) and self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before "
                                     f"{pattern!r}; last lines: {self.lines[-8:]}")

    def mark(self) -> int:
        """Index of the next line: wait_for(after=mark) sees only lines printed from now on."""
        while self._read_some(time.monotonic() + 0.01):
            pass
        return len(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


# -- the target's code, as the CPU sees it ------------------------------------------------------

def _exe_mappings(pid: int) -> list[tuple[int, int, str, int]]:
    """(start, end, permissions, file offset) of each mapping of the process's executable."""
    exe = os.readlink(f"/proc/{pid}/exe")
    found = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == exe:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                found.append((lo, hi, fields[1], int(fields[2], 16)))
    return found


def code_snapshot(pid: int) -> tuple[int, bytes]:
    """(address, bytes) of the executable's code mapping (r-xp), read through /proc/PID/mem: what
    the process runs, including any jump a patch wrote over it."""
    for lo, hi, perms, _ in _exe_mappings(pid):
        if perms.startswith("r-x"):
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(lo)
                return lo, mem.read(hi - lo)
    raise AssertionError(f"process {pid} has no executable code mapping of its program")


def load_bias(pid: int, exe: Path) -> int:
    """What to add to a link-time address of ``exe`` to get the address in process ``pid``."""
    from elftools.elf.elffile import ELFFile

    with open(exe, "rb") as f:
        first = min(s["p_vaddr"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD")
    start = min(lo for lo, _, _, offset in _exe_mappings(pid) if offset == 0)
    return start - (first & ~0xFFF)


def function_addresses(exe: Path) -> dict[str, int]:
    """Link-time address of every function symbol of ``exe`` (the first one of each name)."""
    from elftools.elf.elffile import ELFFile

    with open(exe, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        found: dict[str, int] = {}
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                found.setdefault(sym.name, sym["st_value"])
    return found


def changed_runs(before: tuple[int, bytes], after: tuple[int, bytes]) -> list[tuple[int, int]]:
    """(address, length) of each run of bytes that differs between two code snapshots."""
    (start, old), (start2, new) = before, after
    assert start == start2 and len(old) == len(new), "the code mapping moved or changed size"
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(old):
        if old[i] != new[i]:
            j = i
            while j < len(old) and old[j] != new[j]:
                j += 1
            runs.append((start + i, j - i))
            i = j
        else:
            i += 1
    return runs


def build_library_version(src: Path, out: Path, pie: bool = True,
                          cflags: tuple[str, ...] = ()) -> dict[str, Path]:
    """Build a library scenario's version: ``lib<name>.c`` into ``lib<name>.so`` (-fPIC, its
    soname), and every other .c into a program of its name, linked against the libraries and
    finding them in its own directory (rpath $ORIGIN), as a project ships them. Name -> file."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.[ch]")):
        shutil.copy(f, out / f.name)
    built: dict[str, Path] = {}

    def cc(c: Path, pic: list[str]) -> str:
        obj = c.with_suffix(".o").name
        subprocess.run(["gcc", *CFLAGS, *cflags, *pic, f"-ffile-prefix-map={out}=.", "-c",
                        c.name, "-o", obj], cwd=out, check=True)
        return obj

    libs = sorted(out.glob("lib*.c"))
    for c in libs:
        name = c.with_suffix(".so").name
        subprocess.run(["gcc", *LDFLAGS, "-shared", f"-Wl,-soname,{name}", cc(c, ["-fPIC"]),
                        "-o", name], cwd=out, check=True)
        built[name] = out / name
    for c in sorted(set(out.glob("*.c")) - set(libs)):
        obj = cc(c, ["-fPIE"] if pie else ["-fno-pie"])
        subprocess.run(["gcc", *LDFLAGS, "-pie" if pie else "-no-pie", obj, "-o", c.stem,
                        "-L.", *(f"-l{lib.stem[3:]}" for lib in libs), "-ldl",
                        "-Wl,-rpath,$ORIGIN"], cwd=out, check=True)
        built[c.stem] = out / c.stem
    return built
