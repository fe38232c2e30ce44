"""Live tests of the ptrace engine primitives: real programs built with gcc, real processes.

Every process a test starts is killed by the ``spawn`` fixture, also when the test fails. Tests
wait for what the program prints (with generous timeouts), never for a fixed time.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from katana.elf.symtab import executable_symbols
from katana.errors import ApplyError, BusyError, FormatError, TargetError
from katana.safety import safepoint
from katana.safety.safepoint import Range
from katana.target import alloc, inject, procfs, ptrace
from katana.target.borrow import Borrower
from katana.target.dynsym import library_symbols
from katana.target.memory import Memory
from katana.target.process import Process
from katana.target.symbols import ProcessSymbols, resolve_ifunc_bound, resolve_ifunc_here

pytestmark = pytest.mark.live

C_DIR = Path(__file__).parent / "c"
CFLAGS = ["-O2", "-g", "-Wall", "-pthread", "-ffunction-sections", "-fdata-sections",
          "-Wl,--emit-relocs"]
VARIANTS = {"pie": ["-fPIE", "-pie"], "nopie": ["-fno-pie", "-no-pie"]}
TIMEOUT = 15.0
SYS_getpid = 39
RW = inject.PROT_READ | inject.PROT_WRITE
ANON = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS


def compile_c(sources, out, flags=()):
    subprocess.run(["gcc", *CFLAGS, *flags, *map(str, sources), "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(name, variant) -> path of tests/c/<name>.c compiled as "pie" or "nopie"."""
    root = tmp_path_factory.mktemp("engine")
    built = {}

    def get(name, variant="pie"):
        if (name, variant) not in built:
            out = root / f"{name}-{variant}"
            built[name, variant] = compile_c([C_DIR / f"{name}.c"], out, VARIANTS[variant])
        return built[name, variant]

    return get


class Target:
    """A running program whose output lines are collected by a reader thread."""

    def __init__(self, exe):
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def expect(self, pattern, start=0, timeout=TIMEOUT):
        """The first line from index ``start`` on that matches ``pattern``, waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if m := regex.search(line):
                        return m
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = self.lines[-20:]
                    raise AssertionError(f"no line matching {pattern!r}; output: {tail}")
                self.cond.wait(left)

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def spawn():
    started = []

    def start(exe):
        target = Target(exe)
        started.append(target)
        return target

    try:
        yield start
    finally:
        for target in started:
            target.kill()


def thread_named(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == name:
            return int(tid)
    raise AssertionError(f"no thread {name} in process {pid}")


def wait_until(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def in_syscall(pid, tid, nr):
    return Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0] == str(nr)


def task_states(pid):
    states = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        states[int(tid)] = stat[stat.rindex(")") + 2]
    return states


def tracer_pid(pid):
    return int(procfs.parse_status(pid)["TracerPid"])


def free_pid():
    return int(Path("/proc/sys/kernel/pid_max").read_text())  # pids stay below pid_max


# -- procfs and attaching -----------------------------------------------------------------------


def test_missing_process_is_a_target_error():
    pid = free_pid()
    assert not procfs.pid_exists(pid)
    with pytest.raises(TargetError, match=f"no process {pid}"):
        Process(pid).attach()
    with pytest.raises(TargetError, match=f"no process {pid}"):
        procfs.read_maps(pid)
    with pytest.raises(TargetError, match=f"no process {pid}"):
        ProcessSymbols(pid)


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_attach_all_threads_and_write_a_global(build, spawn, variant):
    exe = build("engine_target", variant)
    target = spawn(exe)
    target.expect(r"^ready 7 100")
    pid = target.pid
    maps = procfs.read_maps(pid)
    exe_maps = procfs.exe_mappings(pid, maps)
    assert {m.path for m in exe_maps} == {str(exe)}
    bias = procfs.load_bias(pid)
    if variant == "pie":
        assert bias == min(m.start for m in exe_maps if m.offset == 0) != 0
    else:
        assert bias == 0
    libc = [lib for lib in procfs.libraries(pid) if "libc.so" in lib.path]
    assert len(libc) == 1 and libc[0].base == min(m.start for m in libc[0].mappings)

    with Process(pid) as proc:
        tids = set(procfs.thread_ids(pid))
        assert len(proc.tids) == 11 and set(proc.tids) == tids
        assert set(task_states(pid).values()) == {"t"}  # every thread in a tracing stop
        address, size = ProcessSymbols(proc).lookup("watched")
        assert size == 4 and (variant == "pie") == (address > 0x8000_0000)
        assert proc.read(address, 4) == (7).to_bytes(4, "little")
        proc.write(address, (1234).to_bytes(4, "little"))
    assert tracer_pid(pid) == 0 and "t" not in task_states(pid).values()
    target.expect(r"^watched 1234$")


def test_second_tracer_is_refused(build, spawn):
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    with Process(target.pid) as proc:
        with pytest.raises(TargetError, match=f"already traced by process {os.getpid()}"):
            Process(target.pid).attach()
        assert proc.attached and tracer_pid(target.pid) == os.getpid()


def test_signal_during_injection_is_redelivered_with_its_siginfo(build, spawn):
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    pid = target.pid
    with Process(pid) as proc:
        ptrace.tgkill(pid, pid, signal.SIGUSR1)  # pending for the stopped main thread
        # The injected step makes the main thread meet SIGUSR1 first: it is held back...
        assert inject.syscall(proc, SYS_getpid, tid=pid) == pid
        assert proc.pending_signals(pid) == [signal.SIGUSR1]
        mark = target.mark()
    # ... and delivered on detach with its own siginfo: si_code SI_TKILL (-6) as tgkill sent
    # it, where a signal injected by PTRACE_DETACH alone would read SI_USER (0).
    target.expect(r"^signal 10 code -6$", start=mark)


def test_detach_leaving_the_process_stopped(build, spawn):
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    proc = Process(target.pid)
    proc.attach()
    proc.detach(leave_stopped=True)
    wait_until(lambda: set(task_states(target.pid).values()) == {"T"}, "a group stop")
    mark = target.mark()
    os.kill(target.pid, signal.SIGCONT)
    target.expect(r"^tick", start=mark)


def test_resumed_process_stays_seized_and_reports_signals(build, spawn):
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    pid = target.pid
    proc = Process(pid)
    try:
        proc.stop()
        assert set(task_states(pid).values()) == {"t"}
        proc.resume()
        assert proc.seized and not proc.attached and tracer_pid(pid) == os.getpid()
        wait_until(lambda: "t" not in task_states(pid).values(), "every thread running")
        # A signal reaches a traced thread as a stop; it stays stopped until resume_thread.
        ptrace.tgkill(pid, pid, signal.SIGUSR1)
        event = proc.wait_event(time.monotonic() + TIMEOUT)
        assert event == (event.__class__(pid, signal.SIGUSR1, -6))  # SI_TKILL
        assert proc.thread_stopped(pid) and task_states(pid)[pid] == "t"
        # Debug registers through PTRACE_PEEKUSER/POKEUSER (u_debugreg[0] at 848).
        proc.poke_user(pid, 848, 0x1000)
        assert proc.peek_user(pid, 848) == 0x1000
        proc.poke_user(pid, 848, 0)
        mark = target.mark()
        proc.resume_thread(pid)
        target.expect(r"^signal 10 code -6$", start=mark)
        assert proc.wait_event(time.monotonic() + 0.05) is None
        proc.stop()
        assert len(proc.tids) == 11
    finally:
        proc.detach()
    assert tracer_pid(pid) == 0 and "t" not in task_states(pid).values()


def test_a_killed_tracer_leaves_the_target_running(build, spawn):
    """PTRACE_SEIZE + PTRACE_INTERRUPT: a tracer that dies holding every thread leaves no
    SIGSTOP behind (PTRACE_ATTACH's would stop the whole process, state T, with no tracer)."""
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    script = ("import sys; from katana.target.process import Process\n"
              f"p = Process({target.pid}); p.stop(); print('held', flush=True)\n"
              "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert set(task_states(target.pid).values()) == {"t"}
        holder.kill()
        holder.wait(timeout=TIMEOUT)
    finally:
        if holder.poll() is None:
            holder.kill()
    wait_until(lambda: tracer_pid(target.pid) == 0, "the tracer gone")
    assert not set(task_states(target.pid).values()) & {"t", "T"}
    mark = target.mark()
    target.expect(r"^tick", start=mark)


# -- memory -------------------------------------------------------------------------------------


def test_pokedata_fallback_writes_exactly(build, spawn, monkeypatch):
    target = spawn(build("engine_target", "nopie"))
    target.expect(r"^ready")

    def no_proc_mem(*args):
        raise AssertionError("/proc/PID/mem must not be written")

    monkeypatch.setattr(Memory, "_pwrite", no_proc_mem)
    with Process(target.pid, use_proc_mem=False, check_writes=True) as proc:
        symbols = ProcessSymbols(proc)
        buffer, _ = symbols.lookup("buffer")
        before = proc.read(buffer, 64)
        proc.write(buffer + 3, b"POKED-BY-KATANA")  # unaligned head and tail
        assert proc.read(buffer, 64) == before[:3] + b"POKED-BY-KATANA" + before[18:]
        spare, _ = symbols.lookup("spare")  # read-only text
        code = proc.read(spare, 9)
        proc.write(spare + 1, b"\xcc\xcc\xcc")
        assert proc.read(spare, 9) == code[:1] + b"\xcc\xcc\xcc" + code[4:]
        proc.write(spare + 1, code[1:4])
        assert proc.read(spare, 9) == code
    target.expect(r"^buffer 012POKED-BY-KATANAijklmnopqrstuvwxyz$")


# -- injection, allocation, redirection -----------------------------------------------------------


def test_alloc_candidates_respect_reach_heap_and_2g():
    def mapping(start, end, path=""):
        return procfs.Mapping(start, end, "r-xp", 0, "00:00", 0, path)

    page, size = 0x1000, 0x3000
    exe, heap = (0x400000, 0x500000), (0x600000, 0x700000)
    maps = [mapping(*exe, "/prog"), mapping(*heap, "[heap]")]
    found = alloc.candidates(maps, exe, size, below_2g=True, heap=heap, min_addr=0x10000)
    # Nearest first: just below the executable and just above it, a guard page apart; then
    # above the heap's reserve; all below 2 GiB.
    assert found == [exe[0] - page - size, exe[1] + page, heap[1] + alloc.HEAP_RESERVE]
    assert alloc.candidates(maps, exe, 0x8000_0000, below_2g=True, heap=heap) == []

    base = 0x5555_0000_0000  # a PIE: only +-2 GiB around it
    exe = (base, base + 0x10000)
    found = alloc.candidates([mapping(*exe, "/prog")], exe, size, below_2g=False)
    assert found == [base - page - size, base + 0x10000 + page]
    big = 2**31 - 0x20000  # just fits on either side
    found = alloc.candidates([mapping(*exe, "/prog")], exe, big, below_2g=False)
    assert len(found) == 2
    assert all(a + big - exe[0] < 2**31 and exe[1] - a < 2**31 for a in found)
    assert alloc.candidates([mapping(*exe, "/prog")], exe, big + 0x10000, below_2g=False) == []


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_mmap_near_the_executable_and_redirect_a_function(build, spawn, variant):
    target = spawn(build("engine_target", variant))
    target.expect(r"^ready 7 100")
    proc = Process(target.pid)
    try:
        proc.attach()
        symbols = ProcessSymbols(proc)
        value, value_size = symbols.lookup("value")
        region = alloc.map_near(proc, 100)
        maps = proc.maps()
        low, high = alloc.exe_extent(maps, procfs.exe_mappings(target.pid, maps))
        assert region + 4096 - low < 2**31 and high - region < 2**31  # rel32 reach, both ways
        if variant == "nopie":
            assert region + 4096 <= 0x8000_0000
        mapping = procfs.mapping_at(maps, region)
        assert (mapping.start, mapping.end, mapping.perms) == (region, region + 4096, "rwxp")
        proc.write(region, bytes.fromhex("b82a000000c3"))  # mov $42, %eax; ret
        proc.detach()

        # 8 threads call value() too: stop where none is inside it, then jump over its entry.
        busy = [Range(value, value + value_size, "value")]
        safepoint.wait_for_safe_point(proc, busy, timeout=TIMEOUT)
        original = proc.read(value, 5)
        jump = region - (value + 5)
        proc.write(value, b"\xe9" + jump.to_bytes(4, "little", signed=True))
        mark = target.mark()
        proc.detach()
        target.expect(r"^value 42$", start=mark)

        safepoint.wait_for_safe_point(proc, busy, timeout=TIMEOUT)
        proc.write(value, original)
        mark = target.mark()
        proc.detach()
        target.expect(r"^value 100$", start=mark)

        proc.attach()
        inject.munmap(proc, region, 4096)
        assert procfs.mapping_at(proc.maps(), region) is None
    finally:
        proc.detach()
    assert target.proc.poll() is None



def test_borrowed_thread_maps_and_protects_in_one_borrowing(build, spawn):
    """Staging's mmap and the mprotect of the code part, chained in one borrowing while the
    process runs; the mprotect only when the mmap succeeded (never on someone else's pages);
    code written into the read-only part; the stubs taken out at the end."""
    target = spawn(build("engine_target"))
    target.expect(r"^ready 7 100")
    page, rw = procfs.PAGE_SIZE, inject.PROT_READ | inject.PROT_WRITE
    rx = inject.PROT_READ | inject.PROT_EXEC
    proc = Process(target.pid)
    try:
        proc.seize()  # the threads keep running throughout
        borrower = Borrower(proc)
        tail = (borrower._start, len(borrower._saved))
        try:
            region = alloc.map_running(proc, borrower, 3 * page, rw, protect=(page, page, rx))
            maps = procfs.read_maps(target.pid)
            assert [(procfs.mapping_at(maps, region + i * page).perms[:3]) for i in range(3)] \
                == ["rw-", "r-x", "rw-"]
            assert procfs.mapping_at(maps, region).start == region
            # A second mmap at the same address fails (EEXIST): the chained mprotect, which
            # would take every right from the first page, must not be made.
            flags = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS | inject.MAP_FIXED_NOREPLACE
            borrower.syscall(inject.SYS_mmap, region, page, rw, flags, -1, 0,
                             then=(inject.SYS_mprotect, region, page, inject.PROT_NONE))
            assert procfs.mapping_at(procfs.read_maps(target.pid), region).perms[:3] == "rw-"
            code = bytes.fromhex("b82a000000c3")
            proc.write(region + page, code)  # read-only to the program, not to its tracer
            assert proc.read(region + page, len(code)) == code
            borrower.syscall(inject.SYS_munmap, region, 3 * page,
                             effect=lambda: procfs.mapping_at(procfs.read_maps(target.pid),
                                                              region) is None)
        finally:
            borrower.close()
        assert proc.read(*tail) == borrower._saved  # the stubs are gone
        assert procfs.mapping_at(procfs.read_maps(target.pid), region) is None
        assert not proc.attached  # never stopped as a whole
    finally:
        proc.detach()
    mark = target.mark()
    target.expect(r"^tick", start=mark)  # the program runs on


def test_blocked_syscalls_restart_after_injection(build, spawn):
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    pid = target.pid
    reader, sleeper = thread_named(pid, "reader"), thread_named(pid, "sleeper")
    # read is system call 0, clock_nanosleep 230 (glibc's nanosleep uses it)
    wait_until(lambda: in_syscall(pid, reader, 0) and in_syscall(pid, sleeper, 230), "syscalls")
    with Process(pid) as proc:
        for tid, nr in ((reader, 0), (sleeper, 230)):
            before = proc.get_regs(tid).as_dict()
            assert before["orig_rax"] == nr  # stopped inside the system call
            assert inject.syscall(proc, SYS_getpid, tid=tid) == pid
            page = inject.mmap(proc, 0, 4096, RW, ANON, tid=tid)
            inject.mprotect(proc, page, 4096, inject.PROT_READ, tid=tid)
            inject.munmap(proc, page, 4096, tid=tid)
            assert proc.get_regs(tid).as_dict() == before
        with pytest.raises(inject.SyscallError, match="EINVAL"):
            inject.munmap(proc, 1, 4096, tid=reader)  # unaligned
        # Without a syscall gadget, two bytes at the thread's RIP are borrowed and given back.
        proc.memo["syscall"] = None
        before = proc.get_regs(reader).as_dict()
        code = proc.read(before["rip"] - 4, 8)
        assert inject.syscall(proc, SYS_getpid, tid=reader) == pid
        assert proc.read(before["rip"] - 4, 8) == code
        assert proc.get_regs(reader).as_dict() == before
        mark = target.mark()
    target.send(b"hello\n")
    target.expect(r"^read hello$", start=mark)
    first = target.expect(r"^tick (\d+)$", start=mark)
    target.expect(rf"^tick {int(first.group(1)) + 1}$", start=mark)
    assert not [line for line in target.lines if "error" in line]


def test_ifunc_resolves_to_the_implementation(build, spawn):
    target = spawn(build("engine_target"))
    target.expect(r"^ready")
    with Process(target.pid) as proc:
        symbols = ProcessSymbols(proc)
        (libc,) = [lib for lib in symbols.libraries() if "libc.so" in lib.path]
        raw = library_symbols(libc.path).find("strlen")
        assert raw.ifunc
        strlen = symbols.lookup_library("strlen")
        assert strlen != raw.value + libc.bias  # not the resolver
        assert any(m.executable and m.contains(strlen) for m in libc.mappings)
        printf = library_symbols(libc.path).find("printf")
        assert symbols.lookup_library("printf") == printf.value + libc.bias
        assert symbols.lookup_library("memcpy@GLIBC_2.2.5") != symbols.lookup_library("memcpy")
        with pytest.raises(ApplyError, match="no_such_function"):
            symbols.lookup_library("no_such_function")

        page = inject.mmap(proc, 0, 4096, RW, ANON)
        proc.write(page, b"hello, katana\0")
        tid = proc.main_tid
        regs, fpstate = proc.get_regs(tid).as_dict(), proc.get_fpstate(tid)
        assert inject.call(proc, strlen, (page,)) == 13
        assert inject.call(proc, strlen, (page + 13,)) == 0
        assert proc.get_regs(tid).as_dict() == regs and proc.get_fpstate(tid) == fpstate
        # Without an int3 in library text, a scratch page holds the trap and is freed after.
        proc.memo["int3"] = None
        maps = proc.maps()
        assert inject.call(proc, strlen, (page + 7,)) == 6
        assert proc.maps() == maps
        inject.munmap(proc, page, 4096)
        mark = target.mark()
    target.expect(r"^tick", start=mark)



IFUNC_USER = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        printf("ready %zu\n", strlen(argv[0]));  /* binds the program's strlen slot */
        usleep(20000);
    }
}
"""


def test_ifunc_resolved_from_a_bound_got_slot_without_running_code(tmp_path, spawn):
    """The implementation an IFUNC resolves to, read from a slot the dynamic linker bound
    (what covers a library katana itself does not map, after a package upgrade): the same
    answer as the resolver run in katana's process, with no code run in the target; a symbol
    no object has bound yet gives None (then the resolver runs in a stopped thread)."""
    (tmp_path / "ifunc.c").write_text(IFUNC_USER)
    target = spawn(compile_c([tmp_path / "ifunc.c"], tmp_path / "ifunc", ["-fPIE", "-pie"]))
    target.expect(r"^ready")
    pid = target.pid
    libs = procfs.libraries(pid)
    (libc,) = [lib for lib in libs if "libc.so" in lib.path]
    strlen = library_symbols(libc.path).find("strlen")
    assert strlen.ifunc
    bound = resolve_ifunc_bound(pid, libc, "strlen", libs)
    assert bound is not None and bound == resolve_ifunc_here(pid, libc, strlen.value)
    assert resolve_ifunc_bound(pid, libc, "strcasestr", libs) is None
    assert procfs.parse_status(pid)["TracerPid"] == "0"
    mark = target.mark()
    target.expect(r"^ready", start=mark)

# -- safe point -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_safe_point_finds_busy_functions(build, spawn, variant):
    target = spawn(build("engine_busy", variant))
    target.expect(r"^ready 4$")
    target.expect(r"^in handler$")
    pid = target.pid
    busy_tid, sig_tid = thread_named(pid, "busy"), thread_named(pid, "sig")
    with Process(pid) as proc:
        symbols = ProcessSymbols(proc)
        ranges = {}
        for name in ("busy_loop", "outer", "interrupted", "unused_fn"):
            start, size = symbols.lookup(name)
            ranges[name] = Range(start, start + size, name)
        found = safepoint.find_busy(proc, [ranges["busy_loop"]])
        assert [(b.tid, b.name, b.where) for b in found] == [(busy_tid, "busy_loop", "rip")]
        found = safepoint.find_busy(proc, [ranges["outer"]])
        assert [(b.tid, b.name, b.where) for b in found] == [(busy_tid, "outer", "stack")]
        found = safepoint.find_busy(proc, [ranges["interrupted"]])
        assert [(b.tid, b.name, b.where) for b in found] == [(sig_tid, "interrupted", "signal")]
        assert safepoint.find_busy(proc, [ranges["unused_fn"]]) == []
        assert symbols.function_at(found[0].address) == (
            "interrupted", ranges["interrupted"].start, ranges["interrupted"].end
            - ranges["interrupted"].start)
        text = [m for m in procfs.exe_mappings(pid) if m.executable][0]
        text_before = proc.read(text.start, text.size)
        iterations, _ = symbols.lookup("iterations")
        count_before = proc.read_u64(iterations)

    started = time.monotonic()
    with pytest.raises(BusyError, match=rf"busy_loop \(thread {busy_tid}, rip\)"):
        safepoint.wait_for_safe_point(proc, [ranges["busy_loop"]], timeout=0.5, interval=0.05)
    assert 0.5 <= time.monotonic() - started < 5
    assert not proc.attached and tracer_pid(pid) == 0
    assert task_states(pid)[busy_tid] == "R"
    with Process(pid) as again:
        assert again.read(text.start, text.size) == text_before
        assert again.read_u64(iterations) > count_before  # it kept running

    started = time.monotonic()
    safepoint.wait_for_safe_point(proc, [ranges["unused_fn"]], timeout=TIMEOUT)
    try:
        assert proc.attached and time.monotonic() - started < 1
    finally:
        proc.detach()


def test_follows_call_decodes_call_forms():
    follows = safepoint.follows_call
    assert follows(b"\x90\x90\x90\xe8\x10\x20\x30\x40")  # call rel32
    assert follows(b"\x90" * 6 + b"\xff\xd0")  # call *%rax
    assert follows(b"\x90" * 5 + b"\x41\xff\xd3")  # call *%r11
    assert follows(b"\x90" * 5 + b"\xff\x50\x08")  # call *0x8(%rax)
    assert follows(b"\x90" * 4 + b"\xff\x54\x24\x08")  # call *0x8(%rsp)
    assert follows(b"\x90\x90\xff\x15\x00\x10\x00\x00")  # call *0x1000(%rip)
    assert follows(b"\x90\xff\x94\xc3\x00\x01\x00\x00")  # call *0x100(%rbx,%rax,8)
    assert follows(b"\x90" * 5 + b"\x3e\xff\xd0")  # notrack call *%rax
    assert not follows(b"\x90" * 8)
    assert not follows(b"\x90" * 6 + b"\xff\xe0")  # jmp *%rax
    assert not follows(b"\x90" * 6 + b"\xff\x50")  # call *disp8(%rax) cut short



@pytest.mark.parametrize("ranges", [
    [(0x5612_3456_7000, 0x5612_3456_7010)],  # one small function
    [(0x5612_3456_70F0, 0x5612_3456_7110)],  # across a 256-byte boundary
    [(0x5612_3456_7000, 0x5612_3456_8000), (0x5612_7456_0000, 0x5612_7456_0400)],  # exe + patch
    [(0x5612_FFFF_F000, 0x5613_0000_1000)],  # across a 4 GiB boundary
])
def test_fast_scan_finds_exactly_the_words_a_word_loop_finds(ranges):
    """The stack scan slices one byte column out of the stack and searches it instead of
    looping over every word: it must keep every word in (low, high] and no other."""
    import random
    from array import array

    index = safepoint._Index([Range(lo, hi, f"f{i}") for i, (lo, hi) in enumerate(ranges)])
    rng = random.Random(9)
    low, high = index.low, index.high
    pool = [low, low + 1, high, high + 1, high - 1, 0, 1, 2**64 - 1, low - 1,
            low ^ (1 << 40), high ^ (1 << 8)]
    for _ in range(200):
        words = []
        for _ in range(rng.randrange(0, 300)):
            kind = rng.random()
            words.append(rng.randrange(low - 64, high + 64) if kind < 0.3 else
                         rng.choice(pool) if kind < 0.5 else rng.getrandbits(64) if kind < 0.7
                         else rng.randrange(0, 1 << 16))
        data = array("Q", words).tobytes()
        expected = [i for i, w in enumerate(words) if low < w <= high]
        assert index.words_in_span(data) == expected


# -- symbols of the executable --------------------------------------------------------------------

SOURCES = {
    "a.c": "static volatile int counter = 11;\n"
           "__attribute__((noipa)) static int helper(void) { return counter++; }\n"
           "int get_a(void) { return helper(); }\n",
    "b.c": "static volatile int counter = 22;\n"
           "int get_b(void) { return counter++; }\n",
    "d1/util.c": "static volatile int dup = 1;\nint use1(void) { return dup++; }\n",
    "d2/util.c": "static volatile int dup = 2;\nint use2(void) { return dup++; }\n",
    "main.c": "int get_a(void); int get_b(void); int use1(void); int use2(void);\n"
              "__attribute__((visibility(\"hidden\"))) int hidden_fn(void) { return 5; }\n"
              "int main(void) { return get_a() + get_b() + use1() + use2() + hidden_fn(); }\n",
}


def _initial_int(exe, value):
    with open(exe, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            start = section["sh_addr"]
            if section.name == ".data" and start <= value < start + section["sh_size"]:
                return int.from_bytes(section.data()[value - start : value - start + 4], "little")
    raise AssertionError(f"{value:#x} is not in .data")


def test_executable_symbols_tell_locals_apart(tmp_path):
    for name, text in SOURCES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    exe = compile_c([tmp_path / name for name in SOURCES], tmp_path / "prog")
    symbols = executable_symbols(str(exe))
    assert executable_symbols(str(exe)) is symbols  # cached

    with pytest.raises(FormatError, match="2 local symbols 'counter'"):
        symbols.find("counter")
    a, b = symbols.find("counter", "a.c"), symbols.find("counter", "b.c")
    assert (a.file, b.file, a.size) == ("a.c", "b.c", 4)
    assert (_initial_int(exe, a.value), _initial_int(exe, b.value)) == (11, 22)
    # two objects of one source basename: the second STT_FILE group is "util.c#2"
    first, second = symbols.find("dup", "util.c"), symbols.find("dup", "util.c#2")
    assert (_initial_int(exe, first.value), _initial_int(exe, second.value)) == (1, 2)
    assert [key for key, _ in symbols.file_groups("util.c")] == ["util.c", "util.c#2"]
    assert symbols.find("counter", "main.c") is None and symbols.find("nothing") is None

    get_a, helper = symbols.find("get_a"), symbols.find("helper")
    assert not get_a.local and helper.local and helper.file == "a.c"
    assert symbols.find("hidden_fn").size > 0
    assert symbols.function_at(get_a.value).name == "get_a"
    assert symbols.function_at(helper.value + helper.size - 1).name == "helper"
    assert symbols.function_at(0) is None
