"""A traced process: threads seized, stopped on demand, memory and registers at hand.

``Process`` seizes every thread with PTRACE_SEIZE (PTRACE_O_TRACECLONE: threads created later are
traced from their first instruction) and stops them with PTRACE_INTERRUPT. Unlike PTRACE_ATTACH,
neither sends a signal: ATTACH's SIGSTOP outlives a tracer that dies before the stop is consumed
and leaves the whole process stopped (state T, no tracer); with SEIZE the kernel simply detaches
and restarts every tracee when the tracer dies (kernel/ptrace.c exit_ptrace), so a katana killed
at any instant leaves no stopped process behind.

Signals that arrive while we hold a thread stop it in a signal-delivery-stop; they are recorded
and re-delivered (with their original siginfo) when the thread runs again, so none is lost.
Between safe-point attempts ``resume()`` lets every thread run while staying seized; signals that
reach a thread meanwhile stop it until ``idle()`` or ``wait_event()`` passes them on.

ptrace requests are only accepted from the thread that seized (the kernel's tracer is a thread,
not a process), so a ``Process`` must be used from one Python thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from katana.errors import ApplyError, TargetError, Terminated
from katana.target import procfs
from katana.target import ptrace as pt
from katana.target.memory import Memory

T = TypeVar("T")

# Signals that a faulting instruction raises (si_code > 0 means the kernel, not kill(2), sent it).
_FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
# A PTRACE_EVENT_STOP with one of these is a group-stop (the process was stopped by a signal):
# such a thread must be left in it with PTRACE_LISTEN, not restarted (man 2 ptrace, "group-stop").
_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
U_DEBUGREG = 848  # offsetof(struct user, u_debugreg) on x86-64


class Event(NamedTuple):
    """A stop of one thread seen while the process runs: a signal it received (``sig``) and the
    signal's si_code (TRAP_HWBKPT, TRAP_BRKPT... for SIGTRAP). The thread stays stopped until
    ``resume_thread``."""

    tid: int
    sig: int
    siginfo_code: int


@dataclass
class _Thread:
    stopped: bool = False
    kind: str = ""  # the stop it is in: "event" (interrupt, clone), "group", "signal"
    pending: list[tuple[int, bytes | None]] = field(default_factory=list)  # to re-deliver
    interrupted: bool = False  # PTRACE_INTERRUPT sent, its stop not yet seen
    regs: pt.Regs | None = None  # read during this stop (the stack scan and the maps check)


class Process:
    """A process whose threads we stop and inspect. Use as a context manager::

        with Process(pid) as proc:      # seizes and stops every thread
            proc.write(addr, code)
        # detached here, even on error

    ``check_writes`` reads back every write and raises ApplyError on a difference (config
    ``flags.checkPtraceWrites``). ``use_proc_mem=False`` forces PTRACE_POKEDATA for writes (the
    path taken when the kernel forbids writing /proc/PID/mem).
    """

    def __init__(self, pid: int, *, check_writes: bool = False, use_proc_mem: bool = True) -> None:
        self.pid = pid
        self.memory = Memory(pid, check_writes=check_writes, use_proc_mem=use_proc_mem)
        self.seized = False
        self.attached = False  # every thread held stopped by us
        # Cache for engine helpers (syscall gadget, trap address, stub): kept while seized.
        self.memo: dict[str, object] = {}
        self._threads: dict[int, _Thread] = {}
        self._maps: list[procfs.Mapping] | None = None
        self._owner: int | None = None
        # How long the target was held, over every stop: what it experienced, not what we did.
        self.stops = 0
        self.stopped_seconds = 0.0
        self.longest_stop = 0.0
        self._stopped_since: float | None = None
        # Threads held alone (a borrowed thread, between its stop and its resume): their time
        # counts in stopped_seconds too, which is what "target stopped" reports.
        self._alone_since: dict[int, float] = {}

    @property
    def tids(self) -> list[int]:
        """The threads we trace, the leader first when alive."""
        return sorted(self._threads, key=lambda tid: tid != self.pid)

    # -- seize / stop / resume / detach ------------------------------------------------------

    def __enter__(self) -> Process:
        self.stop()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def seize(self) -> None:
        """PTRACE_SEIZE every thread (until no new one appears); they keep running."""
        if self.seized:
            return
        procfs.check_process(self.pid)
        _outrank_threads()
        self._owner = threading.get_ident()
        self._threads = {}
        self.seized = True
        try:
            seen: set[int] = set()
            while new := [t for t in procfs.thread_ids(self.pid) if t not in seen]:
                # A thread created by one we had not seized yet is not auto-traced: the next
                # pass over /proc/PID/task finds it.
                seen.update(new)
                for tid in new:
                    if self._seize_thread(tid):
                        self._threads.setdefault(tid, _Thread())
            if not self._threads:
                raise TargetError(f"no process {self.pid}", hint="it exited while attaching")
            self.memory.open(self._leader_or_first())
        except BaseException:
            self._release()
            raise

    def attach(self) -> None:
        """Seize and stop every thread (the same as ``stop()``)."""
        self.stop()

    def stop(self) -> None:
        """Interrupt every thread and wait until all are stopped (seizing first if needed)."""
        if self.attached:
            return
        self.seize()
        self._check_owner()
        try:
            self._drain()  # stops that came while running: before the clock starts
            started = time.monotonic()
            held_already = any(th.stopped for th in self._threads.values())
            for tid, th in list(self._threads.items()):
                if not th.stopped and not th.interrupted:
                    self._interrupt(tid)
            first = self._await_stops(None)
            # Held from the first stop seen, not from the first PTRACE_INTERRUPT: on a busy
            # machine a sleeping thread may wait milliseconds for a CPU to reach its stop,
            # and the program is no more held during that wait than before it.
            if not held_already and first is not None:
                started = first
            if not self._threads:
                raise TargetError(f"process {self.pid} exited while katana was stopping it")
        except BaseException:
            self._stopped_since = time.monotonic()
            self.attached = True
            self._release()
            raise
        self.attached = True
        self.stops += 1
        self._stopped_since = started
        for since in self._alone_since.values():  # held alone until the whole stop began
            self.stopped_seconds += max(0.0, started - since)
        self._alone_since.clear()

    def resume(self) -> None:
        """Let every thread run again, staying seized (``stop()`` stops them again)."""
        if not self.seized:
            return
        self._check_owner()
        for tid in list(self._threads):
            self._restart(tid)
        self._end_hold()

    def resume_thread(self, tid: int, *, deliver: bool = True) -> None:
        """Let one stopped thread run on, delivering the signal it stopped for (if any);
        ``deliver=False`` keeps it for a later resume (the thread runs code of ours that a
        handler must not interrupt)."""
        self._check_owner()
        if tid in self._threads:
            self._restart(tid, deliver)

    def detach(self, *, leave_stopped: bool = False) -> None:
        """Detach every thread, re-delivering recorded signals. Idempotent.

        ``leave_stopped`` queues a process-wide SIGSTOP first: the first thread to run takes it
        and the whole thread group stops (as if the user had sent it), for `kill -CONT` later.
        """
        if not self.seized:
            return
        self._check_owner()
        if not self.attached:
            # PTRACE_DETACH needs the tracee in a ptrace-stop.
            self.stop()
        if leave_stopped:
            os.kill(self.pid, signal.SIGSTOP)
        self._release()

    def _release(self) -> None:
        """Detach from every thread (stopping running ones first, as PTRACE_DETACH needs)."""
        for tid, th in list(self._threads.items()):
            if not th.stopped and not th.interrupted:
                with contextlib.suppress(OSError):
                    pt.ptrace(pt.PTRACE_INTERRUPT, tid)
                    th.interrupted = True
        errors = []
        self._await_stops(None)
        for tid in list(self._threads):
            th = self._threads.get(tid)
            if th is None:
                continue
            try:
                self._detach_thread(tid, th)
            except OSError as e:
                errors.append(e)
        self._threads = {}
        self._alone_since.clear()  # all of them were in the whole stop, counted from its start
        self._end_hold()
        _let_threads_run()
        self.memory.close()
        self.memo.clear()
        self._maps = None
        self.seized = False
        if errors:
            raise TargetError(f"cannot detach from process {self.pid}: {errors[0].strerror}")

    def _end_hold(self) -> None:
        if self._stopped_since is not None:
            held = time.monotonic() - self._stopped_since
            self.stopped_seconds += held
            self.longest_stop = max(self.longest_stop, held)
            self._stopped_since = None
        self.attached = False

    def _seize_thread(self, tid: int) -> bool:
        """PTRACE_SEIZE one thread; False when it is gone."""
        try:
            pt.ptrace(pt.PTRACE_SEIZE, tid, 0, pt.PTRACE_O_TRACECLONE)
        except OSError as e:
            if e.errno == errno.ESRCH or _is_zombie(self.pid, tid):
                return False
            if e.errno == errno.EPERM:
                raise self._permission_error() from None
            raise TargetError(f"cannot attach to thread {tid}: {e.strerror}") from None
        return True

    def _interrupt(self, tid: int) -> None:
        try:
            pt.ptrace(pt.PTRACE_INTERRUPT, tid)
        except OSError:
            self._threads.pop(tid, None)  # ESRCH: gone
            return
        self._threads[tid].interrupted = True

    def _restart(self, tid: int, deliver: bool = True) -> None:
        th = self._threads[tid]
        if not th.stopped:
            return
        since = self._alone_since.pop(tid, None)
        if since is not None:
            self.stopped_seconds += time.monotonic() - since
        try:
            if th.kind == "group":
                # Stay in the group-stop the user asked for, but report SIGCONT to us.
                pt.ptrace(pt.PTRACE_LISTEN, tid)
            else:
                # Not delivered: the kernel drops it, and it stays in th.pending, queued
                # again (tgkill) when the thread is next let go from another stop.
                signal_ = self._signal_to_deliver(tid, th) if deliver else 0
                pt.ptrace(pt.PTRACE_CONT, tid, 0, signal_)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise TargetError(f"cannot resume thread {tid}: {e.strerror}") from None
            self._threads.pop(tid, None)
            return
        th.stopped, th.kind, th.regs = False, "", None

    def _signal_to_deliver(self, tid: int, th: _Thread) -> int:
        """The signal to pass to PTRACE_CONT/DETACH: the one the thread stopped for, with its
        siginfo. Only a signal-delivery-stop can deliver one (the kernel ignores the argument
        in other stops), so elsewhere, and for any extra, the signal is queued again."""
        pending, th.pending = th.pending, []
        if not pending:
            return 0
        first = 0
        for sig, info in pending:
            if th.kind == "signal" and not first:
                first = sig
                if info is not None:
                    # The kernel keeps a siginfo whose si_signo equals the delivered signal,
                    # so the handler sees the original sender and fault address.
                    _ignore_errors(pt.set_siginfo, tid, info)
            else:
                _ignore_errors(pt.tgkill, self.pid, tid, sig)
        return first

    def _detach_thread(self, tid: int, th: _Thread) -> None:
        try:
            # A thread in group-stop stays stopped after PTRACE_DETACH (__ptrace_unlink
            # re-arms JOBCTL_STOP_PENDING), which is what the user's SIGSTOP wanted.
            pt.ptrace(pt.PTRACE_DETACH, tid, 0, self._signal_to_deliver(tid, th))
        except OSError as e:
            if e.errno != errno.ESRCH:  # ESRCH: the thread exited meanwhile, nothing to undo
                raise

    def _permission_error(self) -> TargetError:
        tracer = procfs.parse_status(self.pid).get("TracerPid", "0")
        if tracer != "0":
            return TargetError(
                f"process {self.pid} is already traced by process {tracer}",
                hint="detach the debugger (gdb, strace) first",
            )
        return TargetError(
            f"not allowed to trace process {self.pid} (EPERM)",
            hint="run as root or with CAP_SYS_PTRACE, or as the process owner with "
            "/proc/sys/kernel/yama/ptrace_scope set to 0",
        )

    # -- waiting and signals -----------------------------------------------------------------

    def _waitpid(self, tid: int, block: bool) -> int | None:
        """One wait for ``tid``: its raw status, 0 when nothing happened (non-blocking), None
        when it is gone."""
        try:
            got, status = os.waitpid(tid, pt.WALL | (0 if block else os.WNOHANG))
        except ChildProcessError:
            return None
        if got == 0:
            return 0
        return status

    def _handle(self, tid: int, status: int | None, *, stopping: bool) -> Event | None:
        """Account for one wait status of ``tid``. Returns an Event for a signal-delivery-stop
        seen while running (the thread stays stopped); threads that exit are dropped, new ones
        added, and stops that mean nothing to the caller are restarted unless ``stopping``."""
        if status == 0:
            return None
        th = self._threads.get(tid)
        if status is None or not os.WIFSTOPPED(status):
            self._threads.pop(tid, None)
            return None
        if th is None:
            th = self._threads[tid] = _Thread()
        sig, event = os.WSTOPSIG(status), status >> 16
        # Any ptrace-stop clears a pending PTRACE_INTERRUPT (ptrace_stop: "any trap clears
        # pending STOP trap"), so whatever stop comes first answers our interrupt.
        th.interrupted = False
        th.stopped, th.regs = True, None
        if event == pt.PTRACE_EVENT_CLONE:
            with contextlib.suppress(OSError):
                child = pt.event_msg(tid)
                # The new thread is seized by the kernel and starts in a PTRACE_EVENT_STOP.
                self._threads.setdefault(child, _Thread())
            th.kind = "event"
        elif event == pt.PTRACE_EVENT_STOP:
            th.kind = "group" if sig in _STOP_SIGNALS else "event"
        elif event:
            th.kind = "event"
        else:
            th.kind = "signal"
            info = _ignore_errors(pt.get_siginfo, tid)
            if sig != signal.SIGTRAP:
                th.pending.append((sig, info))
            if not stopping:
                code = pt.siginfo_code(info) if info is not None else 0
                return Event(tid, sig, code)
        if not stopping:
            self._restart(tid)
        return None

    def _await_stops(self, tids: list[int] | None) -> float | None:
        """Wait until the threads ``tids`` (None: all, new ones included) are stopped or gone;
        when the first stop was seen (time.monotonic()), None if none was.

        Every thread is polled (WNOHANG) rather than waited for one by one: when the process
        is killed, the leader's exit is reported only after every other thread has been reaped
        (kernel/exit.c, delay_group_leader), so a blocking wait on the leader would never end.
        """
        delay, idle_since, first = 0.0, None, None
        while True:
            pending = [t for t in (self._threads if tids is None else tids)
                       if t in self._threads and not self._threads[t].stopped]
            if not pending:
                return first
            progressed = False
            for tid in pending:
                status = self._waitpid(tid, block=False)
                if status != 0:
                    if first is None and status is not None and os.WIFSTOPPED(status):
                        first = time.monotonic()
                    self._handle(tid, status, stopping=True)
                    progressed = True
            if progressed:
                delay, idle_since = 0.0, None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.02 and self._dying():
                return first
            if delay:
                time.sleep(delay)
            else:
                os.sched_yield()  # on a busy machine, let the threads we wait for run
            # Short sleeps: a thread answers PTRACE_INTERRUPT within microseconds once it
            # runs; every sleep past that is time the others are held for nothing.
            delay = min(max(delay * 2, 0.00001), 0.0001)

    def _dying(self) -> bool:
        """Whether the process is exiting: then threads we wait for may never report (a thread
        already gone from /proc/PID/task); they are dropped."""
        try:
            alive = {t for t in procfs.thread_ids(self.pid) if not _is_zombie(self.pid, t)}
        except TargetError:
            alive = set()
        exiting = not alive  # a zombie leader alone is a thread that ended, not the process
        for tid in list(self._threads):
            if tid not in alive or exiting:
                status = self._waitpid(tid, block=False)
                if status == 0 or status is None or not os.WIFSTOPPED(status):
                    self._threads.pop(tid, None)
        return exiting

    def _drain(self) -> None:
        """Take every stop that happened while running, without blocking."""
        for tid, th in list(self._threads.items()):
            if not th.stopped:
                self._handle(tid, self._waitpid(tid, block=False), stopping=True)

    def wait_event(self, deadline: float) -> Event | None:
        """While resumed: the next signal-delivery-stop of any thread (the thread left stopped;
        a signal other than SIGTRAP is re-delivered by ``resume_thread``), or None at the
        ``deadline`` (time.monotonic()). Threads created or exited meanwhile are handled."""
        self._check_owner()
        delay = 0.00005
        while True:
            for tid, th in list(self._threads.items()):
                if th.stopped:
                    continue
                got = self._handle(tid, self._waitpid(tid, block=False), stopping=False)
                if got is not None:
                    return got
            if not self._threads:
                raise TargetError(f"process {self.pid} exited")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.002)

    def idle(self, seconds: float) -> None:
        """Let the process run for ``seconds`` while seized, passing every signal on at once."""
        deadline = time.monotonic() + seconds
        while (event := self.wait_event(deadline)) is not None:
            self.resume_thread(event.tid)
        check_interrupts()

    def pending_signals(self, tid: int) -> list[int]:
        """Signals held back for ``tid``, to be delivered when it runs again."""
        th = self._threads.get(tid)
        return [sig for sig, _ in th.pending] if th else []

    def stop_thread(self, tid: int) -> None:
        """Interrupt one running thread and wait for its stop (other threads run on)."""
        self._check_owner()
        th = self._threads.get(tid)
        if th is None:
            raise TargetError(f"thread {tid} of process {self.pid} has exited")
        if th.stopped:
            return
        if not th.interrupted:
            self._interrupt(tid)
        seen = self._await_stops([tid])
        if not self.attached and tid in self._threads:
            self._alone_since[tid] = seen or time.monotonic()
        if tid not in self._threads:
            raise TargetError(f"thread {tid} of process {self.pid} exited")

    def thread_stopped(self, tid: int) -> bool:
        """Whether ``tid`` is in a ptrace-stop we hold (group-stop included)."""
        th = self._threads.get(tid)
        return th is not None and th.stopped

    def in_group_stop(self, tid: int) -> bool:
        """Whether ``tid`` is stopped by a stop signal (SIGSTOP...) the process received."""
        th = self._threads.get(tid)
        return th is not None and th.stopped and th.kind == "group"

    def _resume_until_trap(self, tid: int, request: int, deadline: float | None) -> bool:
        """Resume ``tid`` with ``request`` until it stops with SIGTRAP; False at the deadline.

        Other signals that arrive are recorded for later and the thread resumed.
        """
        self._call(pt.ptrace, request, tid, 0, 0)
        th = self._threads[tid]
        th.stopped, th.regs = False, None
        delay = 0.00001
        while True:
            status = self._waitpid(tid, block=False)  # never block: see _await_stops
            if status == 0:
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop_thread(tid)
                    return False
                if not procfs.pid_exists(tid):
                    self._threads.pop(tid, None)
                    raise TargetError(f"thread {tid} of process {self.pid} exited while stopped")
                time.sleep(delay)
                delay = min(delay * 2, 0.0005)
                continue
            if status is None or not os.WIFSTOPPED(status):
                self._threads.pop(tid, None)
                raise TargetError(f"thread {tid} of process {self.pid} exited while stopped")
            sig, event = os.WSTOPSIG(status), status >> 16
            th.stopped, th.interrupted = True, False
            th.kind = "signal" if not event else "event"
            if event == pt.PTRACE_EVENT_CLONE:
                with contextlib.suppress(OSError):
                    self._threads.setdefault(pt.event_msg(tid), _Thread())
            elif not event and sig == signal.SIGTRAP:
                return True
            elif not event:
                info = _ignore_errors(pt.get_siginfo, tid)
                if sig in _FAULTS and info is not None and pt.siginfo_code(info) > 0:
                    regs = self.get_regs(tid)
                    raise ApplyError(
                        f"injected code faulted in thread {tid}: {signal.Signals(sig).name} "
                        f"at {regs.rip:#x}"
                    )
                th.pending.append((sig, info))
            self._call(pt.ptrace, request, tid, 0, 0)
            th.stopped, th.regs = False, None

    def single_step(self, tid: int) -> None:
        """Execute one instruction in ``tid`` (PTRACE_SINGLESTEP) and wait for its SIGTRAP."""
        self._require_seized()
        self._resume_until_trap(tid, pt.PTRACE_SINGLESTEP, None)

    def run_until_trap(self, tid: int, timeout: float) -> bool:
        """PTRACE_CONT ``tid`` alone until it stops with SIGTRAP (True), or stop it after
        ``timeout`` seconds (False). A fault in the code it runs raises ApplyError."""
        self._require_seized()
        return self._resume_until_trap(tid, pt.PTRACE_CONT, time.monotonic() + timeout)

    def peek_user(self, tid: int, offset: int) -> int:
        """PTRACE_PEEKUSER: a word of the thread's ``struct user`` (u_debugreg at 848)."""
        self._require_seized()
        return self._call(pt.peek_user, tid, offset)

    def poke_user(self, tid: int, offset: int, value: int) -> None:
        """PTRACE_POKEUSER: set a word of the thread's ``struct user`` (debug registers)."""
        self._require_seized()
        self._call(pt.poke_user, tid, offset, value)

    # -- registers ---------------------------------------------------------------------------

    @property
    def main_tid(self) -> int:
        """The thread used for memory access and injection by default: the leader if alive."""
        self._require_seized()
        return self._leader_or_first()

    def _leader_or_first(self) -> int:
        return self.pid if self.pid in self.tids else self.tids[0]

    def get_regs(self, tid: int) -> pt.Regs:
        """PTRACE_GETREGS for a stopped thread (read once per stop)."""
        self._require_seized()
        th = self._threads.get(tid)
        if th is not None and th.stopped and th.regs is not None:
            return th.regs.copy()
        regs = self._call(pt.get_regs, tid)
        if th is not None and th.stopped:
            th.regs = regs.copy()
        return regs

    def set_regs(self, tid: int, regs: pt.Regs) -> None:
        """PTRACE_SETREGS for a stopped thread."""
        self._require_seized()
        th = self._threads.get(tid)
        if th is not None:
            th.regs = None
        self._call(pt.set_regs, tid, regs)  # not kept: the kernel may adjust what it stores

    def get_fpstate(self, tid: int) -> tuple[str, bytes]:
        """The thread's FPU/SSE/AVX state (see ``ptrace.get_fpstate``)."""
        self._require_seized()
        return self._call(pt.get_fpstate, tid)

    def set_fpstate(self, tid: int, state: tuple[str, bytes]) -> None:
        """Restore what ``get_fpstate`` returned."""
        self._require_seized()
        self._call(pt.set_fpstate, tid, state)

    # -- memory ------------------------------------------------------------------------------

    def maps(self) -> list[procfs.Mapping]:
        """The process's mappings. While every thread is held, the copy read last while it ran
        is reused when each thread's stack pointer still lies in one of its mappings (parsing
        /proc/PID/maps takes 0.1-1.5 ms: too long for the stop); otherwise it is read again."""
        if self.attached and self._maps is not None:
            try:
                if all(procfs.mapping_at(self._maps, self.get_regs(t).rsp) is not None
                       for t in self._threads):
                    return self._maps
            except TargetError:
                pass
        maps = procfs.read_maps(self.pid)
        self._maps = maps if self.seized else None
        return maps

    def forget_maps(self) -> None:
        """Drop the kept copy of the maps (after a system call that maps or unmaps)."""
        self._maps = None

    def cached_maps(self) -> list[procfs.Mapping]:
        """The mappings as last read while seized (libraries, stacks: what a search for code
        needs), read now if there is no such copy."""
        return self._maps if self._maps is not None else self.maps()

    def mapping_at(self, addr: int) -> procfs.Mapping | None:
        """The current mapping that starts at ``addr`` (one line of /proc/PID/maps parsed)."""
        return procfs.mapping_starting_at(procfs.maps_text(self.pid), addr)

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes at ``addr`` (see ``Memory.read``); the process may be running."""
        self._require_seized()
        return self.memory.read(addr, size)

    def read_u64(self, addr: int) -> int:
        """The little-endian 8-byte word at ``addr``."""
        return int.from_bytes(self.read(addr, 8), "little")

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr``, even into read-only text (see ``Memory.write``); while
        the process runs, only into memory no thread can reach yet."""
        self._require_seized()
        self.memory.write(addr, data)

    # -- helpers -----------------------------------------------------------------------------

    def _require_attached(self) -> None:
        if not self.attached:
            raise TargetError(f"process {self.pid} is not stopped (attach first)")
        self._check_owner()

    def _require_seized(self) -> None:
        if not self.seized:
            raise TargetError(f"process {self.pid} is not traced (attach first)")
        self._check_owner()

    def _check_owner(self) -> None:
        if self._owner != threading.get_ident():
            # A programming error, not a user's: the kernel would answer ESRCH.
            raise RuntimeError("ptrace calls must come from the thread that attached")

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a ptrace helper, turning OSError into TargetError."""
        try:
            return fn(*args)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise TargetError(f"a thread of process {self.pid} exited while stopped") from None
            raise TargetError(f"ptrace failed on process {self.pid}: {e.strerror}") from None


# The priority katana gave up when it let a process go (the command raises it as root, see
# cli._outrank_target), taken back when it seizes the next one.
_given_up: int | None = None


def _let_threads_run() -> None:
    """Once every thread is detached: back to an ordinary priority, and the CPU to them.

    Run above them (nice -15), katana would keep its CPU through the rest of the command
    (reporting, the audit log, the interpreter's exit: milliseconds) while the threads it
    just released wait to run, which is time they are held as surely as in a ptrace stop."""
    global _given_up
    try:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if nice < 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
            _given_up = nice if _given_up is None else _given_up
            os.sched_yield()
    except OSError:
        pass


def _outrank_threads() -> None:
    """Take back the priority ``_let_threads_run`` gave up (the next process to patch)."""
    global _given_up
    if _given_up is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, _given_up)
        except OSError:
            pass
        _given_up = None


def _ignore_errors(fn: Callable[..., T], *args: object) -> T | None:
    try:
        return fn(*args)
    except OSError:
        return None


def _is_zombie(pid: int, tid: int) -> bool:
    """A zombie thread (an exited leader whose threads live on) cannot be attached; skip it."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


# Signals that ask katana to stop. While it works on a target they are blocked and looked at
# only at checkpoints (``check_interrupts``), so none lands in the middle of a ptrace exchange
# or of a commit: before the commit they abandon the apply (everything undone), after it they
# wait until the patch is complete with its record and the target let go.
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


def take_interrupt() -> int | None:
    """Consume a held signal that is pending; its number, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    pending = signal.sigpending() & _HELD_SIGNALS
    if not pending:
        return None
    got = signal.sigtimedwait(pending, 0)
    return None if got is None else got.si_signo


def raise_interrupt(signum: int | None) -> None:
    """Raise what a signal taken by ``take_interrupt`` means (nothing for None)."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum is not None:
        raise Terminated(signum)


def check_interrupts() -> None:
    """A checkpoint: raise KeyboardInterrupt or Terminated for a pending held signal."""
    raise_interrupt(take_interrupt())


_FAULT_POINT = os.environ.get("KATANA_FAULT_POINT")


def fault_point(name: str) -> None:
    """For the fault-injection tests: with KATANA_FAULT_POINT=name in the environment, katana
    announces the point on stderr and stops itself (SIGSTOP) there, so that a test can send it
    SIGKILL, SIGINT or SIGTERM at exactly that instant (the first time only). Otherwise
    nothing."""
    global _FAULT_POINT
    if _FAULT_POINT == name:
        _FAULT_POINT = None
        os.write(2, f"katana: fault point {name}\n".encode())
        os.kill(os.getpid(), signal.SIGSTOP)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM, SIGHUP and SIGQUIT for katana itself: seen at checkpoints, and
    delivered on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Block SIGINT around a C extension's import: a KeyboardInterrupt raised inside lief's
    (nanobind) module initialisation becomes a C++ exception and std::terminate (SIGABRT).
    A SIGINT that came meanwhile is delivered at the end, in Python code."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
