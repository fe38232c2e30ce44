"""A traced process: every thread stopped, memory and registers at hand.

``Process`` attaches to all threads with PTRACE_ATTACH (each thread gets a SIGSTOP that we wait for
and then suppress), so the target sees no signal of ours. Signals that arrive while we hold a thread
are recorded and re-delivered when we let go, with their original siginfo, so none is lost.

Between safe-point attempts the process must run freely, so ``resume()`` detaches every thread and
``stop()`` attaches again. We chose that over PTRACE_CONT-ing the threads while still attached:
a traced thread that gets a signal stops until its tracer answers (and we would be asleep), and
threads created meanwhile would not be traced; a fresh attach sees the new threads and costs a few
syscalls per thread.

ptrace requests are only accepted from the thread that attached (the kernel's tracer is a thread,
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
from typing import TypeVar

from katana.engine import procfs
from katana.engine import ptrace as pt
from katana.engine.memory import Memory
from katana.errors import ApplyError, TargetError

T = TypeVar("T")

# Signals that a faulting instruction raises (si_code > 0 means the kernel, not kill(2), sent it).
_FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)


class Process:
    """A process whose threads we stop and inspect. Use as a context manager::

        with Process(pid) as proc:      # attaches every thread
            proc.write(addr, code)
        # detached here, even on error

    ``check_writes`` reads back every write and raises ApplyError on a difference (config
    ``flags.checkPtraceWrites``). ``use_proc_mem=False`` forces PTRACE_POKEDATA for writes (the
    path taken when the kernel forbids writing /proc/PID/mem).
    """

    def __init__(self, pid: int, *, check_writes: bool = False, use_proc_mem: bool = True) -> None:
        self.pid = pid
        self.memory = Memory(pid, check_writes=check_writes, use_proc_mem=use_proc_mem)
        self.tids: list[int] = []
        self.attached = False
        # Per-attachment cache for engine helpers (syscall gadget, trap address): cleared on
        # detach, since the process may map and unmap while it runs.
        self.memo: dict[str, object] = {}
        self._pending: dict[int, list[tuple[int, bytes | None]]] = {}
        self._requested: list[int] = []
        self._owner: int | None = None
        # How long the target was held, over every stop: what it experienced, not what we did.
        self.stops = 0
        self.stopped_seconds = 0.0
        self.longest_stop = 0.0
        self._stopped_since: float | None = None

    # -- attach / detach ---------------------------------------------------------------------

    def __enter__(self) -> Process:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def attach(self) -> None:
        """Stop every thread: attach each one in /proc/PID/task until no new thread appears."""
        if self.attached:
            return
        procfs.check_process(self.pid)
        started = time.monotonic()
        self._owner = threading.get_ident()
        self._pending = {}
        self.tids = []
        seen: set[int] = set()
        self._requested = []
        try:
            while new := [t for t in procfs.thread_ids(self.pid) if t not in seen]:
                # Ask every thread first, then wait for each stop: waiting thread by thread
                # would hold the first ones stopped for N scheduling delays on a busy machine.
                seen.update(new)
                self._requested = [t for t in new if self._request_attach(t)]
                for tid in self._requested:
                    if self._await_stop(tid):
                        self.tids.append(tid)
                self._requested = []
            if not self.tids:
                raise TargetError(f"no process {self.pid}", hint="it exited while attaching")
            self.memory.open(self._leader_or_first())
        except BaseException:
            self._detach_all()
            raise
        self.attached = True
        self.stops += 1
        self._stopped_since = started

    def stop(self) -> None:
        """Stop the process again after ``resume()`` (the same as ``attach()``)."""
        self.attach()

    def resume(self) -> None:
        """Let the process run freely (detach every thread); ``stop()`` stops it again."""
        self.detach()

    def detach(self, *, leave_stopped: bool = False) -> None:
        """Detach every thread, re-delivering recorded signals. Idempotent.

        ``leave_stopped`` queues a process-wide SIGSTOP first: the first thread to run takes it
        and the whole thread group stops (as if the user had sent it), for `kill -CONT` later.
        """
        if not self.attached:
            return
        self._check_owner()
        if leave_stopped:
            os.kill(self.pid, signal.SIGSTOP)
        self._detach_all()

    def _detach_all(self) -> None:
        for tid in self._requested:  # attach requested, stop not yet seen
            if tid not in self.tids and self._await_stop(tid):
                self.tids.append(tid)
        self._requested = []
        if self._stopped_since is not None:
            held = time.monotonic() - self._stopped_since
            self.stopped_seconds += held
            self.longest_stop = max(self.longest_stop, held)
            self._stopped_since = None
        self.memory.close()
        errors = []
        for tid in self.tids:
            try:
                self._detach_thread(tid)
            except OSError as e:
                errors.append(e)
        self.tids = []
        self.memo.clear()
        self.attached = False
        if errors:
            raise TargetError(f"cannot detach from process {self.pid}: {errors[0].strerror}")

    def _request_attach(self, tid: int) -> bool:
        """PTRACE_ATTACH one thread (its SIGSTOP is on the way); False when the thread is gone."""
        try:
            pt.ptrace(pt.PTRACE_ATTACH, tid)
        except OSError as e:
            if e.errno == errno.ESRCH or _is_zombie(self.pid, tid):
                return False
            if e.errno == errno.EPERM:
                raise self._permission_error() from None
            raise TargetError(f"cannot attach to thread {tid}: {e.strerror}") from None
        return True

    def _await_stop(self, tid: int) -> bool:
        """Wait for an attached thread's SIGSTOP; False when the thread is gone."""
        while True:
            status = self._waitpid(tid)
            if status is None:
                return False
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGSTOP:
                return True
            # Some other signal reached the thread before our SIGSTOP: keep it for detach, and
            # let the thread go on to the SIGSTOP (still pending, so no user code runs).
            self._record(tid, sig)
            try:
                pt.ptrace(pt.PTRACE_CONT, tid, 0, 0)
            except OSError:
                return False  # ESRCH: killed meanwhile

    def _detach_thread(self, tid: int) -> None:
        pending = self._pending.pop(tid, [])
        sig = 0
        try:
            # PTRACE_DETACH delivers one signal; queue the others first (rare: standard signals
            # do not queue anyway).
            for extra, _ in pending[1:]:
                pt.tgkill(self.pid, tid, extra)
            if pending:
                sig, info = pending[0]
                if info is not None:
                    # The kernel keeps a siginfo whose si_signo equals the delivered signal, so
                    # the handler sees the original sender and fault address.
                    _ignore_errors(pt.set_siginfo, tid, info)
            pt.ptrace(pt.PTRACE_DETACH, tid, 0, sig)
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

    def _waitpid(self, tid: int, deadline: float | None = None) -> int | None:
        """Wait until ``tid`` stops; its status, None if it exited, 0 at the deadline."""
        flags = pt.WALL if deadline is None else pt.WALL | os.WNOHANG
        delay = 0.0002
        while True:
            try:
                got, status = os.waitpid(tid, flags)
            except ChildProcessError:
                return None
            if got == 0:
                if time.monotonic() >= deadline:  # type: ignore[operator]
                    return 0
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
                continue
            if os.WIFSTOPPED(status):
                return status
            if tid in self.tids:
                self.tids.remove(tid)
            return None

    def _record(self, tid: int, sig: int) -> None:
        info = _ignore_errors(pt.get_siginfo, tid)
        self._pending.setdefault(tid, []).append((sig, info))

    def pending_signals(self, tid: int) -> list[int]:
        """Signals held back for ``tid``, to be delivered on detach."""
        return [sig for sig, _ in self._pending.get(tid, [])]

    def _resume_until_trap(self, tid: int, request: int, deadline: float | None) -> bool:
        """Resume ``tid`` with ``request`` until it stops with SIGTRAP; False at the deadline.

        Other signals that arrive are recorded for detach and the thread resumed; a SIGSTOP is
        ours (the attach's, or a timeout's) and is dropped.
        """
        self._call(pt.ptrace, request, tid, 0, 0)
        while True:
            status = self._waitpid(tid, deadline)
            if status is None:
                raise TargetError(f"thread {tid} of process {self.pid} exited while stopped")
            if status == 0:
                self._interrupt(tid)
                return False
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGTRAP:
                return True
            if sig in _FAULTS:
                info = _ignore_errors(pt.get_siginfo, tid)
                if info is not None and pt.siginfo_code(info) > 0:
                    regs = self.get_regs(tid)
                    raise ApplyError(
                        f"injected code faulted in thread {tid}: {signal.Signals(sig).name} "
                        f"at {regs.rip:#x}"
                    )
            if sig != signal.SIGSTOP:
                self._record(tid, sig)
            self._call(pt.ptrace, request, tid, 0, 0)

    def _interrupt(self, tid: int) -> None:
        """Stop a running thread with SIGSTOP and consume that SIGSTOP (never leave it pending:
        once detached it would stop the whole process)."""
        self._call(pt.tgkill, self.pid, tid, signal.SIGSTOP)
        while True:
            status = self._waitpid(tid)
            if status is None:
                raise TargetError(f"thread {tid} of process {self.pid} exited while stopped")
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGSTOP:
                return
            if sig != signal.SIGTRAP:
                self._record(tid, sig)
            # Resuming from a signal-delivery-stop goes straight to the next pending signal
            # (our SIGSTOP) inside the kernel's get_signal loop: no user instruction runs.
            self._call(pt.ptrace, pt.PTRACE_CONT, tid, 0, 0)

    def single_step(self, tid: int) -> None:
        """Execute one instruction in ``tid`` (PTRACE_SINGLESTEP) and wait for its SIGTRAP."""
        self._require_attached()
        self._resume_until_trap(tid, pt.PTRACE_SINGLESTEP, None)

    def run_until_trap(self, tid: int, timeout: float) -> bool:
        """PTRACE_CONT ``tid`` alone until it stops with SIGTRAP (True), or stop it after
        ``timeout`` seconds (False). A fault in the code it runs raises ApplyError."""
        self._require_attached()
        return self._resume_until_trap(tid, pt.PTRACE_CONT, time.monotonic() + timeout)

    # -- registers ---------------------------------------------------------------------------

    @property
    def main_tid(self) -> int:
        """The thread used for memory access and injection by default: the leader if alive."""
        self._require_attached()
        return self._leader_or_first()

    def _leader_or_first(self) -> int:
        return self.pid if self.pid in self.tids else self.tids[0]

    def get_regs(self, tid: int) -> pt.Regs:
        """PTRACE_GETREGS for a stopped thread."""
        self._require_attached()
        return self._call(pt.get_regs, tid)

    def set_regs(self, tid: int, regs: pt.Regs) -> None:
        """PTRACE_SETREGS for a stopped thread."""
        self._require_attached()
        self._call(pt.set_regs, tid, regs)

    def get_fpstate(self, tid: int) -> tuple[str, bytes]:
        """The thread's FPU/SSE/AVX state (see ``ptrace.get_fpstate``)."""
        self._require_attached()
        return self._call(pt.get_fpstate, tid)

    def set_fpstate(self, tid: int, state: tuple[str, bytes]) -> None:
        """Restore what ``get_fpstate`` returned."""
        self._require_attached()
        self._call(pt.set_fpstate, tid, state)

    # -- memory ------------------------------------------------------------------------------

    def maps(self) -> list[procfs.Mapping]:
        """The process's current mappings."""
        return procfs.read_maps(self.pid)

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes at ``addr`` (see ``Memory.read``)."""
        self._require_attached()
        return self.memory.read(addr, size)

    def read_u64(self, addr: int) -> int:
        """The little-endian 8-byte word at ``addr``."""
        return int.from_bytes(self.read(addr, 8), "little")

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr``, even into read-only text (see ``Memory.write``)."""
        self._require_attached()
        self.memory.write(addr, data)

    # -- helpers -----------------------------------------------------------------------------

    def _require_attached(self) -> None:
        if not self.attached:
            raise TargetError(f"process {self.pid} is not stopped (attach first)")
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


# Signals that would end katana while it holds the target half-written: a stopped thread left in
# a single-step stop gets SIGTRAP when its tracer dies, and a commit cut short leaves jumps
# without their record. They wait until the target is let go (SIGINT is handled: it undoes).
_HELD_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGHUP and SIGQUIT for katana itself; they are delivered on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
