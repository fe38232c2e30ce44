"""Run code inside a stopped thread of the target: system calls and function calls.

Both borrow one thread (the leader by default) and give it back with every register as it was,
so a thread that we stopped inside a blocking system call (poll, nanosleep, read) restarts it as the
kernel intended once we detach. Other threads stay stopped throughout.
"""

from __future__ import annotations

import errno
import os
import struct

from katana.errors import ApplyError
from katana.target import procfs
from katana.target.process import Process
from katana.target.ptrace import Regs

SYS_mmap = 9
SYS_mprotect = 10
SYS_munmap = 11
SYS_getpid = 39

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000  # Linux >= 4.17: EEXIST instead of replacing a mapping

SYSCALL_INSN = b"\x0f\x05"
INT3 = b"\xcc"
RED_ZONE = 128  # System V x86-64 ABI 3.2.2: 128 bytes below %rsp belong to the function
_ORIG_RAX_NONE = 2**64 - 1  # orig_rax = -1: "not in a system call", so no restart is attempted
_ARG_REGS_SYSCALL = ("rdi", "rsi", "rdx", "r10", "r8", "r9")  # kernel ABI: r10, not rcx
_ARG_REGS_CALL = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")  # System V ABI
_EFLAGS_DF = 0x400  # the ABI wants the direction flag clear on function entry


class SyscallError(ApplyError):
    """An injected system call returned an error; ``errno`` holds its number."""

    def __init__(self, name: str, err: int, pid: int) -> None:
        code = errno.errorcode.get(err, str(err))
        super().__init__(f"{name} in process {pid} failed: {code} ({os.strerror(err)})")
        self.errno = err


def _to_signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _u64(value: int) -> int:
    return value & 0xFFFF_FFFF_FFFF_FFFF


def find_code(process: Process, pattern: bytes, library: str | None = None) -> int | None:
    """Address of ``pattern`` in executable memory we never patch: the vdso, then libraries
    (only those whose file name starts with ``library``, when given).

    The executable's own text is left out: the apply side writes jumps over it, and a gadget
    found there could be overwritten under us.
    """
    return search_code(process.read, process.pid, process.cached_maps(), pattern, library)


def search_code(read, pid: int, maps: list[procfs.Mapping], pattern: bytes,
                library: str | None = None) -> int | None:
    """``find_code`` with any reader of the process's memory (one that needs no stop)."""
    exe = set(procfs.exe_mappings(pid, maps))
    candidates = [m for m in maps if m.path == "[vdso]" and library is None]
    candidates += [
        m for m in maps
        if m.path.startswith("/") and m not in exe
        and (library is None or os.path.basename(m.path).startswith(library))
    ]
    for m in candidates:
        if m.executable and m.readable:
            found = _search(read, m, pattern)
            if found is not None:
                return found
    return None


# (pattern, file, inode, file offset, size) -> offset in the mapping, or -1: library text does
# not change, so every process that maps the same file finds the same gadget without a search.
_FOUND: dict[tuple[bytes, str, int, int, int], int] = {}


def _search(read, m: procfs.Mapping, pattern: bytes) -> int | None:
    key = (pattern, m.path, m.inode, m.offset, m.size)
    if m.inode and key in _FOUND:
        return None if _FOUND[key] < 0 else m.start + _FOUND[key]
    found = _search_memory(read, m, pattern)
    if m.inode:
        _FOUND[key] = -1 if found is None else found - m.start
    return found


def _search_memory(read, m: procfs.Mapping, pattern: bytes) -> int | None:
    chunk = 1 << 20
    for start in range(m.start, m.end, chunk):
        # Overlap by len(pattern) - 1 so a match across two chunks is not missed.
        size = min(chunk + len(pattern) - 1, m.end - start)
        index = read(start, size).find(pattern)
        if index >= 0:
            return start + index
    return None


def _memo_code(process: Process, key: str, pattern: bytes) -> int | None:
    if key not in process.memo:
        process.memo[key] = find_code(process, pattern)
    return process.memo[key]  # type: ignore[return-value]


def syscall(process: Process, nr: int, *args: int, tid: int | None = None) -> int:
    """Execute system call ``nr`` with up to six arguments in a stopped thread; return raw rax.

    Runs a ``syscall`` instruction that already exists in the vdso or libc (so no byte of the
    target changes); only where none exists are two bytes at the thread's RIP borrowed. Meant for
    calls that do not block (mmap, munmap, mprotect, ...): we wait for the single step to end.
    """
    if len(args) > 6:
        raise ValueError("a system call takes at most six arguments")
    tid = process.main_tid if tid is None else tid
    saved = process.get_regs(tid)
    gadget = _memo_code(process, "syscall", SYSCALL_INSN)
    process.forget_maps()
    borrowed = None
    if gadget is None:
        gadget = saved.rip
        borrowed = process.read(gadget, 2)
        process.write(gadget, SYSCALL_INSN)
    regs = saved.copy()
    regs.rip = gadget
    regs.rax = nr
    # A thread stopped inside an interrupted system call has orig_rax = its number; left so,
    # the kernel would "restart" it (rip -= 2, rax = orig_rax) instead of running ours.
    regs.orig_rax = _ORIG_RAX_NONE
    for name, value in zip(_ARG_REGS_SYSCALL, args, strict=False):
        setattr(regs, name, _u64(value))
    try:
        process.set_regs(tid, regs)
        process.single_step(tid)
        after = process.get_regs(tid)
    finally:
        # The saved registers carry the interrupted call's orig_rax and -ERESTART* rax, so the
        # kernel restarts it on detach exactly as it would have without us.
        process.set_regs(tid, saved)
        if borrowed is not None:
            process.write(gadget, borrowed)
    if after.rip != gadget + 2:
        raise ApplyError(f"injected system call {nr} stopped at {after.rip:#x}, not after it")
    return _to_signed(after.rax)


def _check(result: int, name: str, pid: int) -> int:
    if -4095 <= result < 0:  # the kernel's error range: -errno
        raise SyscallError(name, -result, pid)
    return result


def mmap(
    process: Process,
    addr: int,
    length: int,
    prot: int,
    flags: int,
    fd: int = -1,
    offset: int = 0,
    *,
    tid: int | None = None,
) -> int:
    """mmap(2) in the target; returns the address or raises SyscallError."""
    result = syscall(process, SYS_mmap, addr, length, prot, flags, fd, offset, tid=tid)
    return _check(result, "mmap", process.pid)


def munmap(process: Process, addr: int, length: int, *, tid: int | None = None) -> None:
    """munmap(2) in the target."""
    _check(syscall(process, SYS_munmap, addr, length, tid=tid), "munmap", process.pid)


def mprotect(
    process: Process, addr: int, length: int, prot: int, *, tid: int | None = None
) -> None:
    """mprotect(2) in the target."""
    _check(syscall(process, SYS_mprotect, addr, length, prot, tid=tid), "mprotect", process.pid)


def call(
    process: Process,
    addr: int,
    args: tuple[int, ...] = (),
    *,
    tid: int | None = None,
    timeout: float = 5.0,
) -> int:
    """Call the function at ``addr`` in a stopped thread (System V ABI); return its rax.

    Only this thread runs, so the function must not wait for another thread (a lock held by a
    stopped thread would hang it until ``timeout``). Integer arguments only, at most six. The
    thread's registers and its FPU/SSE/AVX state are restored afterwards (a libc function is free
    to clobber the vector registers the interrupted code was using).
    """
    if len(args) > 6:
        raise ValueError("at most six integer arguments are passed in registers")
    tid = process.main_tid if tid is None else tid
    trap, scratch = _trap(process)
    saved = process.get_regs(tid)
    fpstate = process.get_fpstate(tid)
    try:
        return _run_call(process, tid, saved, addr, args, trap, timeout)
    finally:
        process.set_regs(tid, saved)
        process.set_fpstate(tid, fpstate)
        if scratch:
            munmap(process, scratch, procfs.PAGE_SIZE, tid=tid)


def _trap(process: Process) -> tuple[int, int]:
    """(address of an int3, scratch page to free or 0): an existing 0xcc byte in library text,
    else one written into a fresh page."""
    trap = _memo_code(process, "int3", INT3)
    if trap is not None:
        return trap, 0
    page = mmap(process, 0, procfs.PAGE_SIZE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS)
    process.write(page, INT3)
    return page, page


def _run_call(
    process: Process, tid: int, saved: Regs, addr: int, args: tuple[int, ...], trap: int,
    timeout: float,
) -> int:
    regs = saved.copy()
    # Below the red zone, then 16-byte aligned at the call: (%rsp + 8) % 16 == 0 on entry.
    sp = ((regs.rsp - RED_ZONE - 64) & ~0xF) - 8
    process.write(sp, struct.pack("<Q", trap))  # the return address: our int3
    regs.rsp = sp
    regs.rip = addr
    regs.rax = 0  # number of vector registers used by a variadic call
    regs.orig_rax = _ORIG_RAX_NONE
    regs.eflags &= ~_EFLAGS_DF
    for name, value in zip(_ARG_REGS_CALL, args, strict=False):
        setattr(regs, name, _u64(value))
    process.set_regs(tid, regs)
    if not process.run_until_trap(tid, timeout):
        raise ApplyError(
            f"call to {addr:#x} in process {process.pid} did not return within {timeout} s",
            hint="the function may wait for a lock held by a stopped thread",
        )
    after = process.get_regs(tid)
    if after.rip != trap + 1:
        raise ApplyError(f"call to {addr:#x} in process {process.pid} trapped at {after.rip:#x}")
    return after.rax
