"""Safe points on real programs (issue 7), live, PIE and non-PIE: a stale return address in an
uninitialised buffer does not block a patch, a ucontext coroutine suspended inside a replaced
function does (and one suspended elsewhere does not), a function that sleeps and returns is waited
for, a function that never returns is refused with a message that says so, and SIGINT during the
wait for a return leaves the target running its own code, untraced.

The scenarios are in tests/scenarios (stale_word, coroutine_busy, coroutine_idle, slow_return,
never_returns); the helpers that build, start, patch and check them are test_scenarios.py's.
Every process is killed when its test ends; tests wait for what the programs print.
"""

import os
import re
import signal
import struct
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livekit import Live, code_snapshot, katana, load_bias  # noqa: E402
from test_scenarios import (  # noqa: E402
    TIMEOUT,
    Built,
    assert_refused_untouched,
    ints,
    running,
    wait_lines,
)

pytestmark = pytest.mark.live

PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
STACKS = pytest.mark.parametrize("cflags", [(), ("-DUSE_MMAP",)], ids=["malloc", "mmap"])
# maxWaitForPatching's default, given with -c so that a user's own katana file cannot lengthen it
DEFAULT_WAIT = 5


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """scenario(name, pie, versions=("v0", "v1"), cflags=()) -> Built, built once per module."""
    cache = {}

    def get(name, pie, versions=("v0", "v1"), cflags=()):
        key = (name, pie, tuple(versions), tuple(cflags))
        if key not in cache:
            tag = "-".join(f.lstrip("-D").replace("=", "") for f in cflags)
            root = tmp_path_factory.mktemp(f"{name}-{'pie' if pie else 'nopie'}{tag}")
            cache[key] = Built(name, root, pie, versions, tuple(cflags))
        return cache[key]

    return get


def apply_ok(live, po, *options):
    """``katana [options] apply`` must succeed; the index of the first line surely printed by
    patched code (as test_scenarios.apply_ok: the first line after the patch may have been
    computed before it)."""
    result = katana(*options, "apply", str(po), str(live.pid))
    assert result.returncode == 0, f"apply failed ({result.returncode}):\n{result.stderr}"
    assert "applied" in result.stdout
    after = live.mark()
    live.wait_for(r".", after=after, timeout=TIMEOUT)
    return live.last_index + 1


def config(tmp_path, seconds):
    path = tmp_path / "katana.conf"
    path.write_text(f"{{maxWaitForPatching: {seconds}}}\n")  # relaxed JSON, as users write it
    return path


# -- reading the target without tracing it -------------------------------------------------------

def call_returns(exe, function):
    """[(callee, link-time return address)] of every call instruction in ``function``: the
    words such a call leaves on the stack."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={function}",
                          str(exe)], capture_output=True, text=True, check=True).stdout
    insns = re.findall(r"^\s+([0-9a-f]+):\s+(\S[^\n]*)$", out, re.M)
    found = []
    for (_, text), (after, _) in pairwise(insns):
        if text.startswith("call"):
            callee = re.search(r"<([^>+]+)", text)
            found.append((callee.group(1) if callee else "?", int(after, 16)))
    return found


def blocked_sp(pid, tid):
    """The stack pointer of a thread blocked in a system call (None while it runs), from
    /proc/PID/task/TID/syscall, which the kernel fills without stopping the thread."""
    fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
    if len(fields) < 3 or fields[0] in ("running", "-1"):
        return None
    return int(fields[-2], 16)


def stack_words(pid, sp, span=64 * 1024):
    """{address: word} of the ``span`` bytes from ``sp`` on (less at the end of its mapping)."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= sp < hi:
                break
        else:
            raise AssertionError(f"no mapping holds the stack pointer {sp:#x}")
    start = sp & ~7
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(start)
        data = mem.read(min(hi, start + span) - start)
    return {start + 8 * i: w for i, (w,) in enumerate(struct.iter_unpack("<Q", data))}


def mapping_of(pid, address):
    """(start, end) of the mapping of process ``pid`` that holds ``address``, or None."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return lo, hi
    return None


def assert_text_is_the_files(pid):
    """Every executable mapping of the program holds exactly the file's bytes at its offset: no
    breakpoint, jump or hook of katana's is left in the code."""
    exe = os.readlink(f"/proc/{pid}/exe")
    data = Path(exe).read_bytes()
    checked = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].rstrip("\n") != exe or "x" not in fields[1]:
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            size = min(hi - lo, len(data) - offset)  # the page's tail past the file reads zero
            mem.seek(lo)
            assert mem.read(size) == data[offset:offset + size], \
                f"the code at {lo:#x} differs from {exe} at offset {offset:#x}"
            checked += 1
    assert checked, f"process {pid} has no executable mapping of {exe}"


def assert_running_untraced(pid):
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state not in ("T", "t"), f"process {pid} is left stopped (state {state})"
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(r"^TracerPid:\s+0$", status, re.M), "process is still traced"
    for task in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        assert re.search(r"^TracerPid:\s+0$", status, re.M), f"thread {task} is still traced"


# -- 1. a stale return address in an uninitialised buffer ---------------------------------------

def stale_word(live, exe):
    """(address, word) of the stale return address into work() in the blocked worker's stack,
    checked to lie inside wait_input()'s buffer, below wait_input()'s own (live) return address.
    Retried on each printed line until the worker is seen blocked in read()."""
    bias = load_bias(live.pid, exe)
    into_work = {ret + bias for callee, ret in call_returns(exe, "work") if callee == "mix"}
    into_worker = {ret + bias for callee, ret in call_returns(exe, "worker")
                   if callee == "wait_input"}
    assert len(into_work) == 1 and len(into_worker) == 1, "work() or worker() calls differently"
    (tid,) = (int(t) for t in os.listdir(f"/proc/{live.pid}/task") if int(t) != live.pid)
    for _ in range(50):
        sp = blocked_sp(live.pid, tid)
        if sp is not None:
            words = stack_words(live.pid, sp)
            live_ret = [a for a, w in words.items() if w in into_worker]
            stale = [(a, w) for a, w in words.items() if w in into_work]
            if live_ret and stale:
                frame = min(live_ret)  # wait_input's return slot: its buffer lies just below
                inside = [(a, w) for a, w in stale if frame - 1024 - 16 <= a < frame]
                assert inside, (f"return address into work() at {stale[0][0]:#x}, not in "
                                f"wait_input's buffer below {frame:#x}")
                return inside[0]
        live.wait_for(r".", after=live.mark(), timeout=TIMEOUT)
    raise AssertionError("the blocked worker's stack never held a return address into work(): "
                         "the scenario does not make the stale word it is about")


@PIE
def test_stale_word_is_not_a_frame(scenario, pie):
    built = scenario("stale_word", pie)
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 3 result 1000\d\d calls [1-9]", timeout=TIMEOUT)
        stale_word(live, built.exes["v0"])  # the word katana's fast scan finds, every time
        first = apply_ok(live, built.po())
        for line in wait_lines(live, first, 5):
            assert 200000 <= ints(line, "result")[0] < 200100, line
        assert live.alive()


# -- 2, 3. ucontext coroutines -------------------------------------------------------------------

@PIE
@STACKS
def test_coroutine_busy_is_refused(scenario, tmp_path, pie, cflags):
    built = scenario("coroutine_busy", pie, cflags=cflags)
    with running(built.exes["v0"]) as live:
        stack = int(live.wait_for(r"^coroutine stack at (0x[0-9a-f]+)$",
                                  timeout=TIMEOUT).group(1), 16)
        live.wait_for(r"^tick 3 rounds 1$", timeout=TIMEOUT)
        before = code_snapshot(live.pid)
        result = katana("-c", str(config(tmp_path, 1)), "apply", str(built.po()), str(live.pid))
        assert result.returncode == 10, result.stderr
        assert re.search(r"\bstep\b", result.stderr), result.stderr
        named = re.search(r"coroutine stack at (0x[0-9a-f]+)", result.stderr)
        assert named, result.stderr
        # whatever address katana names (the stack's base, the suspended SP), it is in the
        # mapping that holds the coroutine's stack
        assert mapping_of(live.pid, int(named.group(1), 16)) == mapping_of(live.pid, stack), \
            result.stderr
        assert "within 1 s" in result.stderr, "maxWaitForPatching of the -c file not used"
        assert "Traceback" not in result.stderr
        assert_refused_untouched(live, before, r"^tick \d+ rounds 1$")


@PIE
@STACKS
def test_coroutine_idle_is_patched(scenario, pie, cflags):
    built = scenario("coroutine_idle", pie, cflags=cflags)
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 3 resumes 3 result 100003$", timeout=TIMEOUT)
        first = apply_ok(live, built.po())
        lines = wait_lines(live, first, 5)
        for line in lines:  # the coroutine's next calls run v1, and it goes on being resumed
            resumes, result = ints(line, "resumes", "result")
            assert result == resumes + 200000, line
        assert ints(lines[-1], "resumes")[0] > ints(lines[0], "resumes")[0]
        for line in live.lines[:first]:
            if line.startswith("tick "):
                resumes, result = ints(line, "resumes", "result")
                assert result in (resumes + 100000, resumes + 200000), line
        assert live.alive()


# -- 4. a function that sleeps and returns -------------------------------------------------------

@PIE
def test_slow_return_main_loop(scenario, tmp_path, pie):
    built = scenario("slow_return", pie)
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 2 result 100002$", timeout=TIMEOUT)
        first = apply_ok(live, built.po(), "-c", str(config(tmp_path, DEFAULT_WAIT)))
        for line in wait_lines(live, first, 3):
            tick, result = ints(line, "tick", "result")
            assert result == tick + 200000, line
        assert live.alive()


@PIE
def test_slow_return_two_threads(scenario, tmp_path, pie):
    built = scenario("slow_return", pie, cflags=("-DTHREADS=2",))
    with running(built.exes["v0"]) as live:
        for me in (0, 1):
            live.wait_for(rf"^thread {me} call 2 result 100002$", timeout=TIMEOUT)
        katana_result = katana("-c", str(config(tmp_path, DEFAULT_WAIT)), "apply",
                               str(built.po()), str(live.pid))
        assert katana_result.returncode == 0, katana_result.stderr
        mark = live.mark()  # lines from here on were printed after the patch
        for me in (0, 1):
            live.wait_for(rf"^thread {me} call \d+ result 2\d{{5}}$", after=mark,
                          timeout=TIMEOUT)
        later = live.mark()
        for me in (0, 1):  # one call more each, begun after its v1 one
            live.wait_for(rf"^thread {me} call", after=later, timeout=TIMEOUT)
        for me in (0, 1):
            results = [ints(x, "call", "result") for x in live.lines[mark:]
                       if x.startswith(f"thread {me} ")]
            # at most one v0 line after the patch: a call that returned before the safe
            # point and printed after it; every later call runs v1
            versions = [r // 100000 for _, r in results]
            assert versions == sorted(versions) and versions.count(1) <= 1, results
            assert all(r == n + 100000 * (r // 100000) for n, r in results), results
        assert live.alive()


# -- 5. functions that never return --------------------------------------------------------------

@PIE
def test_main_changed_is_refused_at_generation(scenario, pie):
    built = scenario("never_returns", pie, versions=("v0", "v1", "v2"))
    out = built.root / "main.po"
    result = katana("generate", "-o", str(out), str(built.dir("v0")), str(built.dir("v1")),
                    "prog")
    assert result.returncode == 5, result.stderr
    assert re.search(r"\bmain changed \(its code differs\)", result.stderr), result.stderr
    assert "never returns" in result.stderr
    assert "function main calls" in result.stderr  # the hint: what to do instead
    assert "Traceback" not in result.stderr
    assert not out.exists()


@PIE
def test_endless_thread_routine_is_refused(scenario, tmp_path, pie):
    built = scenario("never_returns", pie, versions=("v0", "v1", "v2"))
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 3 result 6 served [1-9]", timeout=TIMEOUT)
        before = code_snapshot(live.pid)
        result = katana("-c", str(config(tmp_path, 1)), "apply", str(built.po("v0", "v2")),
                        str(live.pid))
        assert result.returncode == 10, result.stderr
        assert re.search(r"\bserve\b", result.stderr), result.stderr
        assert "never returns" in result.stderr, result.stderr
        assert "hint:" in result.stderr, "the refusal does not say what to do"
        assert "Traceback" not in result.stderr
        assert_refused_untouched(live, before, r"^tick \d+ result \d+ served \d+$")


# -- 6. SIGINT while waiting for a return --------------------------------------------------------

@PIE
def test_sigint_while_waiting_for_a_return(scenario, tmp_path, pie):
    # work() sleeps 10 s per call in one thread: apply must wait for it to return, and is
    # interrupted while it does
    built = scenario("slow_return", pie, cflags=("-DTHREADS=1", "-DSLEEP_US=10000000"))
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 2$", timeout=TIMEOUT)
        tool = Live([sys.executable, "-m", "katana", "-v", "-c", str(config(tmp_path, 30)),
                     "apply", str(built.po()), str(live.pid)])
        try:
            tool.wait_for(r"waiting for\b.*\bwork\b", timeout=TIMEOUT)
            os.kill(tool.pid, signal.SIGINT)
            assert tool.proc.wait(timeout=TIMEOUT) == 130, tool.lines[-8:]
        finally:
            tool.kill()
        assert live.alive()
        assert_running_untraced(live.pid)
        assert_text_is_the_files(live.pid)
        # the call that was being waited for returns into its own code (a breakpoint left on
        # its return address would kill the process with SIGTRAP) and gives the v0 result
        live.wait_for(r"^thread 0 call 1 result 100001$", timeout=30)
        mark = live.mark()
        live.wait_for(r"^tick \d+$", after=mark + 2, timeout=TIMEOUT)
        assert live.alive()
        assert_text_is_the_files(live.pid)
