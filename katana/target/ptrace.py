"""A small ctypes binding to ptrace(2) and its companions for x86-64 Linux.

Only what the engine needs, with the kernel's names (PTRACE_GETREGS, NT_X86_XSTATE,
``struct user_regs_struct``). Every call raises ``OSError`` with the errno on failure; turning that
into a ``KatanaError`` is the caller's job, since only the caller knows what the user was doing.

We use ctypes rather than python-ptrace's binding: python-ptrace 0.9.9 has no PTRACE_SEIZE,
PTRACE_INTERRUPT, PTRACE_LISTEN or PTRACE_GETREGSET, which the engine is built on; errno handling
is exact (PTRACE_PEEKDATA returns data, so -1 is only an error when errno says so) and the
register structure is ours.
"""

from __future__ import annotations

import ctypes
import os

PTRACE_PEEKDATA = 2
PTRACE_PEEKUSER = 3
PTRACE_POKEDATA = 5
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128  # status >> 16 of an interrupt stop or (for SEIZE) a group-stop

NT_X86_XSTATE = 0x202

# waitpid(2) option: wait for every kind of child, including threads (clone children), which a
# tracer must do for the non-leader threads it attached. Python's os module does not export it.
WALL = 0x40000000

SIGINFO_SIZE = 128  # sizeof(siginfo_t) on Linux
FPREGS_SIZE = 512  # sizeof(struct user_fpregs_struct): the FXSAVE area
XSTATE_MAX = 64 * 1024  # more than any XSAVE area (AMX tiles included)

_REG_NAMES = (
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
    "fs_base gs_base ds es fs gs"
).split()


class Regs(ctypes.Structure):
    """``struct user_regs_struct`` from <sys/user.h> (x86-64), in the kernel's field order."""

    _fields_ = [(name, ctypes.c_uint64) for name in _REG_NAMES]

    def copy(self) -> Regs:
        """Return an independent copy (ctypes structures are mutable buffers)."""
        return Regs.from_buffer_copy(bytes(self))

    def as_dict(self) -> dict[str, int]:
        """All registers by name, for comparisons and messages."""
        return {name: getattr(self, name) for name in _REG_NAMES}


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long
_libc.syscall.restype = ctypes.c_long

_SYS_TGKILL = 234


def _raise_errno(what: str, tid: int) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}({tid}): {os.strerror(err)}")


def ptrace(request: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    """Call ptrace(2); raise OSError on failure. Returns the raw result."""
    ctypes.set_errno(0)
    result = _libc.ptrace(request, tid, ctypes.c_void_p(addr), data)
    if result == -1 and ctypes.get_errno() != 0:
        _raise_errno(f"ptrace request {request}", tid)
    return result


def peek(tid: int, addr: int) -> int:
    """PTRACE_PEEKDATA: the 8-byte word at ``addr``, unsigned."""
    return ptrace(PTRACE_PEEKDATA, tid, addr) & 0xFFFF_FFFF_FFFF_FFFF


def poke(tid: int, addr: int, word: int) -> None:
    """PTRACE_POKEDATA: store an 8-byte word at ``addr`` (works on read-only text too)."""
    ptrace(PTRACE_POKEDATA, tid, addr, ctypes.c_void_p(word))


def peek_user(tid: int, offset: int) -> int:
    """PTRACE_PEEKUSER: the word at ``offset`` in the thread's ``struct user``, unsigned."""
    return ptrace(PTRACE_PEEKUSER, tid, offset) & 0xFFFF_FFFF_FFFF_FFFF


def poke_user(tid: int, offset: int, value: int) -> None:
    """PTRACE_POKEUSER: store a word in the thread's ``struct user`` (debug registers...)."""
    ptrace(PTRACE_POKEUSER, tid, offset, ctypes.c_void_p(value & 0xFFFF_FFFF_FFFF_FFFF))


def event_msg(tid: int) -> int:
    """PTRACE_GETEVENTMSG: for PTRACE_EVENT_CLONE, the new thread's id."""
    msg = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.c_void_p(ctypes.addressof(msg)))
    return msg.value


def get_regs(tid: int) -> Regs:
    """PTRACE_GETREGS."""
    regs = Regs()
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    """PTRACE_SETREGS."""
    ptrace(PTRACE_SETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))


def get_siginfo(tid: int) -> bytes:
    """PTRACE_GETSIGINFO: the raw siginfo_t of the signal the thread is stopped for."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.c_void_p(ctypes.addressof(buf)))
    return buf.raw


def set_siginfo(tid: int, info: bytes) -> None:
    """PTRACE_SETSIGINFO: replace the siginfo_t of the current signal-delivery-stop."""
    buf = ctypes.create_string_buffer(info, SIGINFO_SIZE)
    ptrace(PTRACE_SETSIGINFO, tid, 0, ctypes.c_void_p(ctypes.addressof(buf)))


def get_fpstate(tid: int) -> tuple[str, bytes]:
    """The thread's whole FPU/SSE/AVX state: ("xstate", XSAVE area) or ("fpregs", FXSAVE area).

    PTRACE_GETREGSET(NT_X86_XSTATE) covers the upper halves of the ymm/zmm registers, which a
    called libc function (vzeroupper) clobbers; PTRACE_GETFPREGS is the fallback where the kernel
    lacks it.
    """
    buf = ctypes.create_string_buffer(XSTATE_MAX)
    iov = _IoVec(ctypes.addressof(buf), XSTATE_MAX)
    try:
        ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, ctypes.c_void_p(ctypes.addressof(iov)))
    except OSError:
        fp = ctypes.create_string_buffer(FPREGS_SIZE)
        ptrace(PTRACE_GETFPREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(fp)))
        return "fpregs", fp.raw
    return "xstate", buf.raw[: iov.iov_len]


def set_fpstate(tid: int, state: tuple[str, bytes]) -> None:
    """Restore what ``get_fpstate`` returned (the kernel wants the XSAVE area's exact size)."""
    kind, data = state
    buf = ctypes.create_string_buffer(data, len(data))
    if kind == "fpregs":
        ptrace(PTRACE_SETFPREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(buf)))
        return
    iov = _IoVec(ctypes.addressof(buf), len(data))
    ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, ctypes.c_void_p(ctypes.addressof(iov)))


def tgkill(tgid: int, tid: int, sig: int) -> None:
    """tgkill(2): send ``sig`` to one thread (glibc < 2.30 has no wrapper, so use syscall(2))."""
    ctypes.set_errno(0)
    if _libc.syscall(_SYS_TGKILL, ctypes.c_int(tgid), ctypes.c_int(tid), ctypes.c_int(sig)) != 0:
        _raise_errno("tgkill", tid)


def siginfo_code(info: bytes) -> int:
    """si_code of a raw siginfo_t (int si_signo, si_errno, si_code)."""
    return int.from_bytes(info[8:12], "little", signed=True)
