"""System calls that a thread of the target runs on its own, while the other threads run on.

The classic injection (set the registers, single-step a ``syscall``, put the registers back) is
not safe against katana's own death: a thread left single-stepping, or with swapped registers,
dies of SIGTRAP or runs on with the wrong ones when its tracer disappears. Here the thread is
given a *stub* instead: a few instructions that load the system call's arguments from a frame on
the thread's stack, run it, restore every register the syscall or the stub touched, and jump back
to where the thread was. Katana only stops the one thread for a moment to write the frame and
point RIP at the stub; from then on, whether katana lives or dies, the thread completes the call
and returns to its own code (a signal that arrives meanwhile runs its handler on the stack below
the frame and returns into the stub, as for any code).

The stub lives in the unused tail of an executable segment's last page (bytes past ``p_memsz``
are mapped executable but are no part of any section, so no code ever jumps there). Writing
there through /proc/PID/mem makes a private copy of that page for this process only. The call's
result is not handed back (the stub restores RAX): the callers check the effect (a mapping that
appeared, a protection that changed) in /proc/PID/maps.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from katana.errors import ApplyError, TargetError
from katana.target import procfs
from katana.target.process import Process, fault_point
from katana.target.ptrace import Regs

# pop rax; pop rdi; pop rsi; pop rdx; pop r10; pop r8; pop r9   (number and arguments)
# syscall
# pop rcx; cmp rax, rcx; jne skip      (a second call only if the first returned this word)
# pop rax; pop rdi; pop rsi; pop rdx; pop r10; pop r8; pop r9; syscall; jmp restore
# skip: add $56, rsp                   (the second call's seven words, unused)
# restore: pop rdi; pop rsi; pop rdx; pop r10; pop r8; pop r9; pop rax; pop rcx; pop r11
# popfq; pop rsp; jmp *0(%rip)   followed by the 8-byte return address
STUB = bytes.fromhex(
    "58 5f 5e 5a 415a 4158 4159 0f05"
    "59 4839c8 750e"
    "58 5f 5e 5a 415a 4158 4159 0f05 eb04"
    "4883c438"
    "5f 5e 5a 415a 4158 4159 58 59 415b"
    "9d 5c ff2500000000"
)
STUB_SIZE = len(STUB) + 8
# The condition word of a single call: no system call returns it (results are user addresses,
# below 2**47, or -errno, at least -4095).
_NEVER = 2**64 - 4096
SLOT = 16  # each stub copy starts 16-byte aligned
COPIES = 8
RED_ZONE = 128  # System V x86-64 ABI 3.2.2: 128 bytes below %rsp belong to the function
_ORIG_RAX_NONE = 2**64 - 1
# include/linux/errno.h: what an interrupted system call returns inside the kernel, and what
# the kernel turns it into when the thread goes back to user mode without a handler: rip -= 2
# (back onto the `syscall` instruction) and rax = orig_rax, or restart_syscall for
# -ERESTART_RESTARTBLOCK (nanosleep, clock_nanosleep, futex timeouts).
_ERESTARTSYS, _ERESTARTNOINTR, _ERESTARTNOHAND, _ERESTART_RESTARTBLOCK = 512, 513, 514, 516
SYS_restart_syscall = 219
PF_X = 1
PT_LOAD = 1


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def user_state(regs: Regs) -> Regs:
    """The registers the thread will have in user mode once the kernel finishes with the system
    call it was stopped in (restart included), i.e. where the stub must send it back to."""
    user = regs.copy()
    if _signed(regs.orig_rax) >= 0:
        err = -_signed(regs.rax)
        if err in (_ERESTARTSYS, _ERESTARTNOINTR, _ERESTARTNOHAND):
            user.rip, user.rax = regs.rip - 2, regs.orig_rax
        elif err == _ERESTART_RESTARTBLOCK:
            user.rip, user.rax = regs.rip - 2, SYS_restart_syscall
    user.orig_rax = _ORIG_RAX_NONE
    return user


def _segment_tails(pid: int, maps: list[procfs.Mapping]) -> list[tuple[int, int]]:
    """[start, end) of the unused bytes after each executable PT_LOAD segment, in its last page."""
    tails = []
    by_path: dict[str, list[procfs.Mapping]] = {}
    for m in maps:
        if m.path.startswith("/"):
            by_path.setdefault(m.path, []).append(m)
    for path, group in by_path.items():
        try:
            segments, e_type = _segments_of(pid, path, group[0])
        except OSError:
            continue
        base = min((m.start for m in group if m.offset == 0), default=None)
        if base is None or not segments:
            continue
        low = min(vaddr for vaddr, _size, _flags in segments) & ~(procfs.PAGE_SIZE - 1)
        bias = 0 if e_type == procfs.ET_EXEC else base - low
        for vaddr, memsz, flags in segments:
            if not flags & PF_X:
                continue
            end = bias + vaddr + memsz
            page_end = (end + procfs.PAGE_SIZE - 1) & ~(procfs.PAGE_SIZE - 1)
            start = (end + SLOT - 1) & ~(SLOT - 1)
            mapped = any(m.executable and m.start <= start and page_end <= m.end for m in group)
            if mapped and page_end - start >= STUB_SIZE:
                tails.append((start, page_end))
    return sorted(tails, key=lambda t: t[0] - t[1])  # the roomiest first


# (device, inode) of a mapped file -> its PT_LOAD segments and e_type: every process that
# maps the same file (libc, the program of ``apply ... all``) is done with one reading.
_SEGMENTS: dict[tuple[str, int], tuple[list[tuple[int, int, int]], int]] = {}


def _segments_of(pid: int, path: str, m: procfs.Mapping) -> tuple[list[tuple[int, int, int]], int]:
    key = (m.dev, m.inode)
    if m.inode and key in _SEGMENTS:
        return _SEGMENTS[key]
    try:
        found = _load_segments(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
    except OSError:
        found = _load_segments(path)
    if m.inode:
        _SEGMENTS[key] = found
    return found


def _load_segments(path: str) -> tuple[list[tuple[int, int, int]], int]:
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return [], 0
        e_type = struct.unpack_from("<H", header, 16)[0]
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    segments = []
    for i in range(phnum):
        p_type, p_flags = struct.unpack_from("<II", table, i * phentsize)
        if p_type == PT_LOAD:
            vaddr, = struct.unpack_from("<Q", table, i * phentsize + 16)
            memsz, = struct.unpack_from("<Q", table, i * phentsize + 40)
            segments.append((vaddr, memsz, p_flags))
    return segments, e_type


class Borrower:
    """Runs system calls in one thread of a seized (running) process, one call at a time."""

    def __init__(self, process: Process, maps: list[procfs.Mapping] | None = None) -> None:
        self.process = process
        self.maps = process.maps() if maps is None else maps
        tails = _segment_tails(process.pid, self.maps)
        if not tails:
            raise ApplyError(f"no unused executable bytes in process {process.pid} for katana's "
                             "system call stub")
        start, end = tails[0]
        self.copies = [start + i * _round(STUB_SIZE) for i in range(COPIES)
                       if start + (i + 1) * _round(STUB_SIZE) <= end]
        self._saved = process.read(start, self.copies[-1] + _round(STUB_SIZE) - start)
        self._start = start
        self._next = 0
        self._written = False
        # (thread, stub, its registers before) not yet seen leaving the stub
        self._pending: list[tuple[int, int, Regs]] = []
        self._stranded = False  # a thread may still be inside a stub: its bytes must stay

    def syscall(self, nr: int, *args: int, timeout: float = 2.0,
                effect: Callable[[], bool] | None = None, then: tuple[int, ...] = ()) -> None:
        """Have a thread run system call ``nr``; returns once the thread is back in its code,
        or, given ``effect`` (a check of /proc that the call took effect), as soon as that
        holds: then the thread is not stopped again to see it leave the stub (``close`` does,
        once for all calls). ``then``: a second system call (number and arguments) made in
        the same borrowing only if the first returned its first argument (an mmap at a fixed
        address that succeeded: the mprotect of part of it)."""
        proc = self.process
        tid = self._pick_thread()
        stub = self.copies[self._next % len(self.copies)]
        self._next += 1
        if not self._written:
            proc.write(self._start, b"".join(STUB + bytes(_round(STUB_SIZE) - len(STUB))
                                             for _ in self.copies))
            self._written = True
        proc.stop_thread(tid)
        if proc.pending_signals(tid):
            # A signal is on its way to this thread: let it take it as if we had not been
            # there (a handler may expect EINTR from the call it interrupts), then borrow it.
            proc.resume_thread(tid)
            proc.stop_thread(tid)
        regs = proc.get_regs(tid)
        user = user_state(regs)
        second = (then[0], *then[1:], *[0] * (7 - len(then))) if then else (0,) * 7
        frame = struct.pack("<26Q", nr, *(_u64(a) for a in args), *[0] * (6 - len(args)),
                            _u64(args[0]) if then else _NEVER, *(_u64(a) for a in second),
                            user.rdi, user.rsi, user.rdx, user.r10, user.r8, user.r9,
                            user.rax, user.rcx, user.r11, user.eflags, user.rsp)
        sp = (regs.rsp - RED_ZONE - len(frame) - 64) & ~0xF
        proc.write(sp, frame)
        proc.write(stub + len(STUB), struct.pack("<Q", user.rip))
        borrowed = regs.copy()
        borrowed.rip, borrowed.rsp, borrowed.orig_rax = stub, sp, _ORIG_RAX_NONE
        # From this SETREGS on the thread completes the call by itself, with or without us.
        proc.set_regs(tid, borrowed)
        proc.forget_maps()
        fault_point("borrowed")
        proc.resume_thread(tid)
        fault_point("borrow-running")
        deadline = time.monotonic() + timeout
        if effect is not None and self._await_effect(effect, time.monotonic() + 0.002):
            self._pending.append((tid, stub, regs))
            return
        self._wait_out(tid, stub, deadline, regs)

    def _await_effect(self, effect: Callable[[], bool], deadline: float) -> bool:
        delay = 0.00002
        while not effect():
            if time.monotonic() > deadline:
                return False  # failed (EEXIST...) or slow: watch the thread instead
            time.sleep(delay)
            delay = min(delay * 2, 0.0005)
        return True

    def _wait_out(self, tid: int, stub: int, deadline: float, before: Regs) -> None:
        """Wait until the thread has left the stub: seen from /proc without stopping it when
        it is blocked in a system call (an idle thread, back in its own code), else checked in
        a short single-thread stop. A signal that stopped it meanwhile is held until it is
        out: delivered now, its handler would run on top of the stub, and a thread seen in the
        handler would pass for one that had left."""
        proc, delay = self.process, 0.00002
        while True:
            time.sleep(delay)
            pc = _blocked_at(proc.pid, tid)
            if pc is not None and not stub <= pc < stub + STUB_SIZE:
                return
            try:
                proc.stop_thread(tid)
            except TargetError:
                return  # exited: the process is going away, the caller finds out
            rip = proc.get_regs(tid).rip
            if stub <= rip < stub + STUB_SIZE and time.monotonic() > deadline:
                self._give_back(tid, stub, rip, before)
            proc.resume_thread(tid, deliver=False)
            if not stub <= rip < stub + STUB_SIZE:
                return
            delay = min(delay * 2, 0.002)

    def _give_back(self, tid: int, stub: int, rip: int, before: Regs) -> None:
        """A thread that did not run its stub in time (stopped by SIGSTOP or a debugger since
        it was picked): one that has not begun gets its own registers back, as if never
        borrowed; one inside keeps the stub's bytes, which it still needs. Then refuse."""
        proc = self.process
        if rip == stub:
            proc.set_regs(tid, before)
        else:
            self._stranded = True
        proc.resume_thread(tid, deliver=False)
        raise ApplyError(f"thread {tid} of process {proc.pid} did not run katana's system call "
                         "in time (stopped meanwhile?)",
                         hint=f"if it is stopped, continue it (kill -CONT {proc.pid}) and try "
                              "again")

    def _pick_thread(self) -> int:
        """A thread running user code if there is one (it is in no system call, so nothing has
        to be restarted), else the first thread not in a group-stop."""
        proc = self.process
        # a thread stopped by SIGSTOP before katana came (state T) would not run the stub
        usable = [tid for tid in proc.tids
                  if not proc.in_group_stop(tid) and procfs.thread_state(proc.pid, tid) != "T"]
        for tid in usable:
            if procfs.thread_state(proc.pid, tid) == "R":
                return tid
        if usable:
            return usable[0]
        raise TargetError(f"process {proc.pid} is stopped (SIGSTOP)",
                          hint=f"continue it first: kill -CONT {proc.pid}")

    def close(self) -> None:
        """Put back the bytes the stubs replaced (once no thread can be inside one)."""
        pending, self._pending = self._pending, []
        try:
            for tid, stub, before in pending:
                self._wait_out(tid, stub, time.monotonic() + 2.0, before)
        except BaseException:
            self._stranded = True  # the threads not waited for may still be inside a stub
            raise
        finally:
            self._put_back()

    def _put_back(self) -> None:
        if self._written and not self._stranded:
            self.process.write(self._start, self._saved)
            self._written = False


def _blocked_at(pid: int, tid: int) -> int | None:
    """Where a thread that is not running is (the user-mode address it entered the kernel
    from, /proc/PID/task/TID/syscall's last field); None when it is running or unreadable."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            text = f.read()
    except OSError:
        return None
    fields = text.split()
    if len(fields) < 3 or fields[0] == "running":
        return None
    try:
        return int(fields[-1], 16)
    except ValueError:
        return None


def _round(size: int) -> int:
    return (size + SLOT - 1) & ~(SLOT - 1)


def _u64(value: int) -> int:
    return value & 0xFFFF_FFFF_FFFF_FFFF
