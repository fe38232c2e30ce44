"""What /proc says about a running process: mappings, executable, libraries, threads.

Everything here reads files only; nothing needs the process stopped, but what it returns is only
stable while it is (a running process maps, unmaps and spawns threads at will).
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from collections import namedtuple

from katana.errors import TargetError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

_ELF_MAGIC = b"\x7fELF"
ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1


class Mapping(namedtuple("Mapping", "start end perms offset dev inode path")):
    """One line of /proc/PID/maps. Named tuples, not dataclasses, for the small immutable
    records of the apply path: a frozen dataclass costs ~0.3 ms to create at import (six
    generated methods, each compiled), a named tuple a tenth of that, and katana's start-up is
    mostly its imports. collections' named tuple here, not typing's: ``katana status`` imports
    this module and would import typing for it alone."""

    __slots__ = ()
    start: int
    end: int
    perms: str  # "r-xp"
    offset: int
    dev: str  # "fd:01", major:minor in hex
    inode: int
    path: str  # "" for anonymous memory, "[heap]", "[stack]", "[vdso]", or a file path

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


class Library(namedtuple("Library", "path base bias mappings")):
    """A shared object loaded in the process. ``bias`` is added to its symbol values."""

    __slots__ = ()
    path: str
    base: int  # start of its mapping at file offset 0
    bias: int
    mappings: tuple[Mapping, ...]


def _proc(pid: int, name: str) -> str:
    return f"/proc/{pid}/{name}"


def _read_text(pid: int, name: str) -> str:
    try:
        with open(_proc(pid, name)) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise TargetError(f"no process {pid}", hint="check the pid with `ps`") from None
    except PermissionError as e:
        hint = ("even root may not read this process: another PID namespace, a sandbox or a "
                "security module forbids it") if os.geteuid() == 0 else \
            "run as root or as the process's owner"
        raise TargetError(f"cannot read {e.filename}: permission denied", hint=hint) from None


def pid_exists(pid: int) -> bool:
    """Whether a process (or thread) with this id exists."""
    return pid > 0 and os.path.exists(_proc(pid, "stat"))


def check_process(pid: int) -> None:
    """Raise TargetError unless ``pid`` is a live process (not a zombie, not a thread id)."""
    status = parse_status(pid)
    if status.get("State", "").startswith(("Z", "X")):
        raise TargetError(f"process {pid} has exited (it is a zombie)")
    tgid = int(status.get("Tgid", pid))
    if tgid != pid:
        raise TargetError(f"{pid} is a thread of process {tgid}", hint=f"use pid {tgid}")
    if _is_kernel_thread(pid):
        raise TargetError(f"process {pid} ({status.get('Name', '?')}) is a kernel thread: it has "
                          "no program to patch")


PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread


def _is_kernel_thread(pid: int) -> bool:
    # field 9 of /proc/PID/stat is the task's flags; the name (field 2) may hold spaces and
    # parentheses, so split after its closing one
    stat = _read_text(pid, "stat")
    return bool(int(stat.rsplit(")", 1)[1].split()[6]) & PF_KTHREAD)


def parse_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict ("State" -> "S (sleeping)", "TracerPid" -> "0", ...)."""
    fields = {}
    for line in _read_text(pid, "status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def thread_ids(pid: int) -> list[int]:
    """The ids of the process's threads (from /proc/PID/task), the leader first when alive."""
    try:
        tids = sorted(int(name) for name in os.listdir(_proc(pid, "task")))
    except (FileNotFoundError, ProcessLookupError):
        raise TargetError(f"no process {pid}", hint="check the pid with `ps`") from None
    return sorted(tids, key=lambda tid: tid != pid)


def thread_state(pid: int, tid: int) -> str:
    """A thread's state letter (``R``, ``S``, ``T`` for a job-control stop, ``t`` when a tracer
    holds it, ...), from /proc/PID/task/TID/stat; ``?`` once it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return "?"
    return stat[stat.rindex(")") + 2]


def parse_maps_line(line: str) -> Mapping:
    """Parse one /proc/PID/maps line; the path may contain spaces."""
    parts = line.split(maxsplit=5)
    start, end = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5].rstrip("\n") if len(parts) > 5 else ""
    return Mapping(start, end, parts[1], int(parts[2], 16), parts[3], int(parts[4]), path)


def read_maps(pid: int) -> list[Mapping]:
    """All mappings of the process, in address order."""
    return [parse_maps_line(line) for line in _read_text(pid, "maps").splitlines() if line]


def mapping_starting_at(text: str, addr: int) -> Mapping | None:
    """The mapping that starts at ``addr`` in /proc/PID/maps ``text`` (one line parsed)."""
    key = f"{addr:08x}-"  # the kernel prints at least 8 digits (show_vma_header_prefix)
    at = text.find(key)
    while at > 0 and text[at - 1] != "\n":
        at = text.find(key, at + 1)
    if at < 0:
        return None
    return parse_maps_line(text[at:text.find("\n", at)])


def maps_text(pid: int) -> str:
    """/proc/PID/maps as text, for a caller that needs one line of it."""
    return _read_text(pid, "maps")


def exe_path(pid: int) -> str:
    """The path of the process's executable (without the kernel's " (deleted)" suffix)."""
    try:
        path = os.readlink(_proc(pid, "exe"))
    except FileNotFoundError:
        raise TargetError(f"no process {pid}", hint="check the pid with `ps`") from None
    except PermissionError:
        raise TargetError(f"cannot read /proc/{pid}/exe: permission denied") from None
    return path.removesuffix(" (deleted)")


def _is_exe_mapping(m: Mapping, path: str, key: tuple[str, int]) -> bool:
    # The path is the usual key; device and inode also match after the file was renamed.
    return m.path.removesuffix(" (deleted)") == path or (m.dev, m.inode) == key


def exe_mappings(pid: int, maps: list[Mapping] | None = None) -> list[Mapping]:
    """The mappings of the executable file itself (text, rodata, data; not bss or heap)."""
    maps = read_maps(pid) if maps is None else maps
    path = exe_path(pid)
    try:
        st = os.stat(_proc(pid, "exe"))
    except FileNotFoundError:
        raise TargetError(f"no process {pid}", hint="check the pid with `ps`") from None
    key = (f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", st.st_ino)
    return [m for m in maps if m.path and _is_exe_mapping(m, path, key)]


def elf_load_info(path: str) -> tuple[int, int]:
    """(e_type, lowest PT_LOAD p_vaddr rounded down to its page) of an ELF64 file."""
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != _ELF_MAGIC or header[4] != 2:
            raise TargetError(f"{path} is not an ELF64 file")
        e_type = struct.unpack_from("<H", header, 16)[0]
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    vaddrs = []
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", table, i * phentsize)
        if p_type == PT_LOAD:
            vaddrs.append(struct.unpack_from("<Q", table, i * phentsize + 16)[0])
    return e_type, (min(vaddrs) if vaddrs else 0) & ~(PAGE_SIZE - 1)


def _bias(mappings: list[Mapping], path: str) -> tuple[int, int]:
    """(base, bias) of a loaded ELF file: base is its offset-0 mapping, bias = base - min vaddr."""
    base = min((m.start for m in mappings if m.offset == 0), default=mappings[0].start)
    e_type, low = elf_load_info(path)
    return base, (0 if e_type == ET_EXEC else base - low)


def load_bias(pid: int, maps: list[Mapping] | None = None) -> int:
    """What to add to the executable's symbol values: 0 for ET_EXEC, the load address for PIE."""
    mappings = exe_mappings(pid, maps)
    if not mappings:
        raise TargetError(f"the executable of process {pid} is not mapped")
    return _bias(mappings, _proc(pid, "exe"))[1]


def is_pie(pid: int) -> bool:
    """Whether the process's executable is position independent (ET_DYN)."""
    return elf_load_info(_proc(pid, "exe"))[0] == ET_DYN


def _openable(pid: int, path: str) -> str | None:
    # A library seen through another mount namespace (containers) is reachable under /proc/PID/root.
    for candidate in (path, f"/proc/{pid}/root{path}"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _ELF_MAGIC
    except OSError:
        return False


def libraries(pid: int, maps: list[Mapping] | None = None) -> list[Library]:
    """The shared objects mapped in the process (executable excluded), in address order.

    A file counts when one of its mappings is executable and it is an ELF file: that leaves out
    data files the program mmaps (locale archives, databases).
    """
    maps = read_maps(pid) if maps is None else maps
    exe = {id(m) for m in exe_mappings(pid, maps)}
    by_path: dict[str, list[Mapping]] = {}
    for m in maps:
        if m.path.startswith("/") and id(m) not in exe:
            by_path.setdefault(m.path, []).append(m)
    result = []
    for path, group in by_path.items():
        local = _openable(pid, path)
        if local is None or not any(m.executable for m in group) or not _is_elf(local):
            continue
        base, bias = _bias(group, local)
        result.append(Library(local, base, bias, tuple(group)))
    return sorted(result, key=lambda lib: lib.base)


def mapping_at(maps: list[Mapping], addr: int) -> Mapping | None:
    """The mapping of ``maps`` (in address order, as ``read_maps`` returns them) that
    contains ``addr``, if any. A binary search: the stop looks up every thread's stack pointer
    among hundreds of mappings (each thread's stack and guard page)."""
    i = bisect.bisect_right(maps, addr, key=_start) - 1
    if i >= 0 and maps[i].start <= addr < maps[i].end:
        return maps[i]
    return None


def _start(m: Mapping) -> int:
    return m.start


def start_brk(pid: int) -> int:
    """Where the process's brk heap starts (field 47 of /proc/PID/stat), even before it grows."""
    stat = _read_text(pid, "stat")
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[47 - 3])


def started_at() -> float:
    """When this process (katana) started, on the time.monotonic() clock: what a user waits
    for is the whole command, the interpreter's own start-up included. /proc/self/stat's
    starttime (field 22) counts clock ticks since boot, as CLOCK_BOOTTIME does."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)
