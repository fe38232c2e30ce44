"""Fault injection: katana killed, interrupted or terminated at any instant of an apply or a
revert, and the target dying under katana. After each fault the target must be alive, answering,
not stopped, not traced, and wholly v0 or wholly v1: compute()'s entry holds either the bytes of
the executable file (and the process has no patch record) or a jump to the PO's code (and the
record of that patch).

Random instants are spread over a whole command; aimed ones use katana's KATANA_FAULT_POINT hook,
which stops katana itself (SIGSTOP) at a named point: while a borrowed thread has its registers
swapped, while it runs the stub, with every thread held at the safe point, between the jumps and
the record, ... The signal is sent to the stopped katana (and SIGCONT after it, for the signals
that it must handle).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import Live, build_scenario, build_version, katana

from katana.elf.symtab import executable_symbols
from katana.live.commit import HEAP_SLACK
from katana.live.record import read_records
from katana.po import load_po
from katana.target import procfs

pytestmark = pytest.mark.live

SOURCE = Path(__file__).parent / "c" / "fault_target.c"
TIMEOUT = 20.0
# At least 20 of each kind in CI; bench/faults.py runs more.
RANDOM_TRIES = int(os.environ.get("KATANA_FAULT_TRIES", "20"))
APPLY_POINTS = ["seized", "borrowed", "borrow-running", "stopped", "recorded", "committed"]
REVERT_POINTS = ["revert-stopped", "reverted", "borrowed", "borrow-running"]
EXPECTED = {signal.SIGKILL: {-signal.SIGKILL, 0}, signal.SIGINT: {130, 0},
            signal.SIGTERM: {143, 0}}


@dataclass
class Setup:
    exe: Path
    po: Path
    entry: int  # compute()'s offset from the load bias
    original: bytes  # its first bytes in the file
    new_code: bytes  # the PO's compute(), relocated fields zeroed
    holes: list[tuple[int, int]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("faults"))


def make_setup(root: Path) -> Setup:
    """Build v0 and v1 of the target under ``root`` and their PO (bench/faults.py too)."""
    text = SOURCE.read_text()
    for version, body in (("v0", "2 * x"), ("v1", "3 * x")):
        src = root / "src" / version
        src.mkdir(parents=True)
        (src / "prog.c").write_text(text.replace("COMPUTE_BODY", body))
        build_version(src, root / version)
    po = root / "v0-v1.po"
    katana("generate", "-o", str(po), str(root / "v0"), str(root / "v1"), "prog", check=True)
    exe = root / "v0" / "prog"
    sym = executable_symbols(str(exe)).find("compute")
    with open(exe, "rb") as f:
        from elftools.elf.elffile import ELFFile

        elf = ELFFile(f)
        text_sec = elf.get_section_by_name(".text")
        offset = sym.value - text_sec["sh_addr"] + text_sec["sh_offset"]
        f.seek(offset)
        original = f.read(5)
    model = load_po(po)
    (fn,) = [f for f in model.meta.functions if f.name == "compute"]
    psym = model.symbols[fn.symbol]
    sec = model.sections[psym.section]
    code = sec.data[psym.value:psym.value + fn.new_size]
    # relocated fields (the reference to `sink`) are linked at apply time: not compared
    holes = [(r.offset - psym.value, 4) for r in sec.relocs]
    return Setup(exe, po, sym.value, original, _masked(code, holes), holes)


def _masked(code: bytes, holes: list[tuple[int, int]]) -> bytes:
    out = bytearray(code)
    for at, size in holes:
        out[at:at + size] = bytes(size)
    return bytes(out)


class Target:
    """The running program; its output lines collected by a reader thread."""

    def __init__(self, exe: Path, *args: str) -> None:
        self.proc = subprocess.Popen([str(exe), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect(r"^ready$")

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def expect(self, pattern: str, start: int = 0) -> re.Match:
        regex, deadline = re.compile(pattern), time.monotonic() + TIMEOUT
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if m := regex.search(line):
                        return m
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {pattern!r} (exit {self.proc.poll()}); "
                                         f"last lines {self.lines[-5:]}")
                self.cond.wait(left)

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def ping(self) -> None:
        mark = self.mark()
        self.proc.stdin.write(b"ping\n")
        self.proc.stdin.flush()
        self.expect(r"^pong$", mark)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def targets():
    started: list[Target] = []
    yield started
    for t in started:
        t.kill()


def _tasks(pid: int) -> dict[int, str]:
    states = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        states[int(tid)] = stat[stat.rindex(")") + 2]
    return states


def assert_whole(target: Target, setup: Setup) -> int:
    """The target runs on, untraced and unstopped, wholly v0 or v1: which one (0 or 1)."""
    pid = target.pid
    deadline = time.monotonic() + TIMEOUT
    while procfs.parse_status(pid)["TracerPid"] != "0":
        assert time.monotonic() < deadline, "the target stays traced"
        time.sleep(0.001)
    assert target.proc.poll() is None, "the target died"
    assert not set(_tasks(pid).values()) & {"t", "T", "Z"}, _tasks(pid)
    entry = procfs.load_bias(pid) + setup.entry
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(entry)
        live = mem.read(5)
        records = read_records(pid)
        if live == setup.original:
            version = 0
            assert records == [], "a record without its jumps"
        else:
            assert live[0] == 0xE9, live.hex()
            dest = entry + 5 + int.from_bytes(live[1:], "little", signed=True)
            assert [r.functions["::compute"][0] for r in records] == [dest], "jumps, no record"
            mem.seek(dest)
            assert _masked(mem.read(len(setup.new_code)), setup.holes) == setup.new_code
            version = 1
    target.ping()
    m = target.expect(r"^tick (\d+) result (\d+)$", target.mark())
    assert int(m.group(2)) == (3 if version else 2) * int(m.group(1)), m.group(0)
    return version


def _run(args: list[str], point: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("KATANA_FAULT_POINT", None)
    if point:
        env["KATANA_FAULT_POINT"] = point
    return subprocess.Popen([sys.executable, "-m", "katana", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(k: subprocess.Popen, sig: int) -> tuple[int, str]:
    _out, err = k.communicate(timeout=TIMEOUT)
    if ("Traceback" in err and "/katana/" not in err) or (k.returncode == -sig and not err):
        # The signal came while the interpreter itself was starting (site imports), before
        # any katana code ran: Python's own doing, and the target was never touched.
        return k.returncode, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert k.returncode in EXPECTED[sig], (k.returncode, err)
    return k.returncode, err


def _wait_stopped(k: subprocess.Popen) -> bool:
    """Wait until katana stopped itself at its fault point; False if it ended first."""
    deadline = time.monotonic() + TIMEOUT
    while k.poll() is None:
        stat = Path(f"/proc/{k.pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "T":
            return True
        assert time.monotonic() < deadline, "katana never reached its fault point"
        time.sleep(0.0005)
    return False


def _wait_traced(t: Target, k: subprocess.Popen) -> None:
    """Wait until katana has seized the target (or ended)."""
    deadline = time.monotonic() + TIMEOUT
    while k.poll() is None and procfs.parse_status(t.pid)["TracerPid"] == "0":
        assert time.monotonic() < deadline, "katana never attached"
        time.sleep(0.0002)


def _send(k: subprocess.Popen, sig: int) -> None:
    with_cont = sig != signal.SIGKILL
    try:
        os.kill(k.pid, sig)
        if with_cont:
            os.kill(k.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _patched_target(setup: Setup, targets: list[Target]) -> Target:
    t = Target(setup.exe)
    targets.append(t)
    katana("apply", str(setup.po), str(t.pid), check=True)
    return t


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["kill", "int", "term"])
def test_apply_at_random_instants(setup, targets, sig):
    rng = random.Random(sig)
    seen, seen_codes = set(), []
    for _ in range(RANDOM_TRIES):
        t = Target(setup.exe)
        targets.append(t)
        k = _run(["apply", str(setup.po), str(t.pid)])
        if len(seen_codes) % 2:
            # Half the tries land anywhere in the command (the interpreter's start-up takes
            # most of it on a loaded machine), half within 3 ms of katana seizing the target.
            _wait_traced(t, k)
            time.sleep(rng.uniform(0.0, 0.003))
        else:
            time.sleep(rng.uniform(0.0, 0.3))  # the instant itself is what is random
        _send(k, sig)
        seen_codes.append(_finish(k, sig)[0])
        seen.add(assert_whole(t, setup))
        t.kill()
    assert seen <= {0, 1}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["kill", "int", "term"])
@pytest.mark.parametrize("point", APPLY_POINTS)
def test_apply_at_aimed_instants(setup, targets, sig, point):
    t = Target(setup.exe)
    targets.append(t)
    k = _run(["apply", str(setup.po), str(t.pid)], point)
    assert _wait_stopped(k)
    _send(k, sig)
    code, err = _finish(k, sig)
    version = assert_whole(t, setup)
    if sig != signal.SIGKILL:
        # Before the safe point the apply is abandoned; from the stop on, it completes.
        assert version == (0 if point in ("seized", "borrowed", "borrow-running") else 1), err
        assert code == (130 if sig == signal.SIGINT else 143)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["kill", "int", "term"])
def test_revert_at_random_and_aimed_instants(setup, targets, sig):
    rng = random.Random(sig + 100)
    for point in [*REVERT_POINTS, *[None] * 6]:
        t = _patched_target(setup, targets)
        k = _run(["revert", str(t.pid)], point)
        if point:
            assert _wait_stopped(k)
        else:
            _wait_traced(t, k)
            time.sleep(rng.uniform(0.0, 0.003))
        _send(k, sig)
        _finish(k, sig)
        version = assert_whole(t, setup)
        if point == "reverted":
            assert version == 0
        t.kill()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "exits"])
def test_target_dying_during_apply(setup, how):
    rng = random.Random(how)
    for _ in range(8):
        t = Target(setup.exe)
        try:
            k = _run(["apply", str(setup.po), str(t.pid)])
            _wait_traced(t, k)
            time.sleep(rng.uniform(0.0, 0.004))
            t.proc.send_signal(how)
            _out, err = k.communicate(timeout=TIMEOUT)
            assert k.returncode in (0, 8), (k.returncode, err)
            if k.returncode == 8:
                assert re.search(rf"process {t.pid} (exited|has exited)|no process {t.pid}",
                                 err), err
            assert "Traceback" not in err
            t.proc.wait(timeout=TIMEOUT)
        finally:
            t.kill()


def test_max_wait_for_patching_is_respected(setup, targets, tmp_path):
    t = Target(setup.exe, "busy")
    targets.append(t)
    config = tmp_path / "katana.json"
    config.write_text("{maxWaitForPatching: 0.3, safePointRetryInterval: 0.02}")
    started = time.monotonic()
    result = katana("-c", str(config), "apply", str(setup.po), str(t.pid))
    took = time.monotonic() - started
    assert result.returncode == 10 and "compute" in result.stderr, result.stderr
    assert 0.3 <= took < 2.0
    assert assert_whole(t, setup) == 0


def _anonymous(pid: int) -> set[tuple[int, int]]:
    return {(m.start, m.end) for m in procfs.read_maps(pid) if not m.path}


@pytest.mark.parametrize("scenario", ["pointer_to_struct", "struct_grows"])
def test_the_stop_makes_no_system_call_in_the_target(tmp_path, scenario):
    """State transfer's room for moved pointees is mapped while the process runs, not at the
    safe point: there the target's threads run no injected code that a katana killed in the
    middle of it would leave them in. A SIGKILL at the stop, with the pointees counted, leaves
    the target running v0, untraced; an apply that moves none leaves no room behind."""
    exes = build_scenario(scenario, tmp_path)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"), "prog",
           check=True)
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"tick 3 ")
        before = _anonymous(live.pid)
        k = _run(["apply", str(po), str(live.pid)], point="transfer")
        assert _wait_stopped(k), k.communicate()
        staged = _anonymous(live.pid) - before
        # the region (a few KiB, split by its mprotect) and the pointee room (HEAP_SLACK at
        # least), both mapped before the stop
        assert sum(hi - lo for lo, hi in staged) >= HEAP_SLACK, staged
        _send(k, signal.SIGKILL)
        k.communicate(timeout=TIMEOUT)
        status = procfs.parse_status(live.pid)
        assert status["TracerPid"] == "0" and status["State"][0] in "SR", status
        live.wait_for(r" v0$", after=live.mark())
        assert read_records(live.pid) == []
        # the same patch applied for real: the room stays only if pointees moved into it
        before = _anonymous(live.pid)
        katana("apply", str(po), str(live.pid), check=True)
        live.wait_for(r" v1$", after=live.mark())
        (record,) = read_records(live.pid)
        lo, hi = record.region[0], record.region[0] + record.region[1]
        outside = [m for m in _anonymous(live.pid) - before if not lo <= m[0] < hi]
        assert len(outside) == (1 if scenario == "pointer_to_struct" else 0), outside
    finally:
        live.kill()


def test_a_thread_stopped_under_a_borrowing_gets_its_registers_back(tmp_path):
    """SIGSTOP reaching the target while katana borrows a thread (here: before the apply, past
    the command's own refusal of a stopped process, as a SIGSTOP a moment later would be): the
    thread never runs the stub, so it gets its own registers back and the stub's bytes stay
    where it could still need them. Before, it kept the stub's address, the stub was taken
    away, and SIGCONT crashed the target (SIGSEGV)."""
    from katana.config import Config
    from katana.errors import KatanaError
    from katana.live.apply import apply_patch

    exes = build_scenario("body_change", tmp_path)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"), "prog",
           check=True)
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"tick 2 ")
        os.kill(live.pid, signal.SIGSTOP)
        deadline = time.monotonic() + TIMEOUT
        while procfs.parse_status(live.pid)["State"][0] != "T":
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(KatanaError):
            apply_patch(po, live.pid, Config())
        assert procfs.parse_status(live.pid)["TracerPid"] == "0"
        os.kill(live.pid, signal.SIGCONT)
        m = live.wait_for(r"tick (\d+) result (\d+)", after=live.mark())
        assert int(m.group(2)) == 2 * int(m.group(1))  # alive, and v0
        assert read_records(live.pid) == []
    finally:
        live.kill()
