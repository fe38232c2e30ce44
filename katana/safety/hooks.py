"""Return hooks: wait for a busy frame to return, without a breakpoint.

When the safe point finds a function on a stack and the unwind shows exactly where that frame's
return address is stored, we redirect the return address of the *outermost* busy frame to a
small trampoline in a page of our own. When the frame returns, the trampoline

1. saves the registers it touches (rax/rdx hold the return value; the rest are caller-saved,
   but a caller might still rely on them if it was built with IPA register allocation),
2. raises its flag, which katana polls through /proc/PID/mem while the process runs,
3. waits on a futex (``gate``) for at most ``HOLD`` so that katana can stop the process while
   this thread is out of the function, then
4. restores the registers and jumps to the original return address.

Why not ``int3`` or a debug register on the return address (the original Katana, libcare): a
breakpoint outlives its tracer. If katana is killed while one is planted, the next thread to
reach it dies of SIGTRAP (measured here: debug registers set with PTRACE_POKEUSER stay armed
after the tracer exits, and after PTRACE_DETACH too). A trampoline needs no tracer: if katana
dies, a returning thread waits at most ``HOLD`` once and goes on where it was. The text of the
program is never written, and the target never sees a signal of ours.

Left out, and why: a process with a CET shadow stack (``x86_Thread_features: shstk``) would fault
on a changed return address, so hooks are not used there; a frame abandoned by ``longjmp`` never
fires its hook (we fall back to polling). The unwinder (``unwind.py``) follows a hooked return
address to the original one through ``original``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from katana.errors import ApplyError, KatanaError, TargetError
from katana.target import alloc, inject, procfs
from katana.target.borrow import Borrower
from katana.target.process import Process

SLOTS = 24
CODE_SIZE = 160  # bytes of code per slot (142 used)
HOLD = 0.5  # seconds a returned thread waits for katana at most
_SAVED = ("rax", "rdx", "rdi", "rsi", "r10", "rcx", "r11")
# REX prefix and ModRM reg field of each register, for ``mov [rip+d], reg`` / ``mov reg, [rip+d]``
_ENC = {"rax": (0x48, 0), "rdx": (0x48, 2), "rdi": (0x48, 7), "rsi": (0x48, 6),
        "r10": (0x4C, 2), "rcx": (0x48, 1), "r11": (0x4C, 3)}
SYS_futex = 202
FUTEX_WAIT_PRIVATE = 128
# Data page: gate (u32) at 0, the timeout (struct timespec) at 8, one flag byte per slot at 32,
# then per slot the seven saved registers and the original return address.
_GATE, _TIMEOUT, _FLAGS, _SLOT_DATA = 0, 8, 32, 64
# Offset in a trampoline of its first instruction that changes a register (mov eax, SYS_futex):
# before it, the thread's registers are still its own; from it on, the saved copies are.
_CLOBBERS_FROM = 7 * 7 + 7


@dataclass
class Hook:
    index: int
    slot: int  # where the return address is stored (on the busy stack)
    original: int  # the return address it held
    trampoline: int
    fired: bool = False


def shadow_stack(pid: int) -> bool:
    """Whether the process runs with a CET shadow stack (a changed return address faults)."""
    try:
        status = procfs.parse_status(pid)
    except TargetError:
        return False
    return "shstk" in status.get("x86_Thread_features", "")


class _Asm:
    """Just enough of an assembler for the trampoline: rip-relative moves to the data page."""

    def __init__(self, at: int) -> None:
        self.at, self.code = at, bytearray()

    def rip_rel(self, prefix: bytes, target: int, tail: bytes = b"") -> None:
        end = self.at + len(self.code) + len(prefix) + 4 + len(tail)
        self.code += prefix + struct.pack("<i", target - end) + tail

    def raw(self, data: bytes) -> None:
        self.code += data


def trampoline(at: int, data: int, index: int) -> bytes:
    """The code of slot ``index`` at ``at``, with the data page at ``data``."""
    asm = _Asm(at)
    saved = data + _SLOT_DATA + 64 * index
    for i, reg in enumerate(_SAVED):
        rex, r = _ENC[reg]
        asm.rip_rel(bytes([rex, 0x89, 0x05 | r << 3]), saved + 8 * i)
    asm.rip_rel(b"\xc6\x05", data + _FLAGS + index, b"\x01")
    asm.raw(struct.pack("<BI", 0xB8, SYS_futex))  # mov eax, SYS_futex
    asm.rip_rel(b"\x48\x8d\x3d", data + _GATE)  # lea rdi, gate
    asm.raw(struct.pack("<BI", 0xBE, FUTEX_WAIT_PRIVATE))  # mov esi, op
    asm.raw(struct.pack("<BI", 0xBA, 1))  # mov edx, 1: wait while the gate is 1
    asm.rip_rel(b"\x4c\x8d\x15", data + _TIMEOUT)  # lea r10, timeout
    asm.raw(b"\x0f\x05")  # syscall
    for i, reg in enumerate(_SAVED):
        rex, r = _ENC[reg]
        asm.rip_rel(bytes([rex, 0x8B, 0x05 | r << 3]), saved + 8 * i)
    asm.rip_rel(b"\xff\x25", saved + 8 * len(_SAVED))  # jmp [original]
    assert len(asm.code) <= CODE_SIZE
    return bytes(asm.code)


class ReturnHooks:
    """The hooks of one apply: a code page and a data page mapped in the target on first use."""

    def __init__(self, pid: int, read) -> None:
        self.pid = pid
        self.base = 0
        self.hooks: list[Hook] = []
        self.enabled = not shadow_stack(pid)
        self.read = read  # the target's memory without a stop (flags are polled while it runs)

    @property
    def code(self) -> int:
        return self.base

    @property
    def data(self) -> int:
        return self.base + procfs.PAGE_SIZE

    def original(self, pc: int) -> int | None:
        """For the unwinder: where a thread inside (or a return into) a trampoline goes on."""
        if not self.base or not self.code <= pc < self.code + SLOTS * CODE_SIZE:
            return None
        index = (pc - self.code) // CODE_SIZE
        return next((h.original for h in self.hooks if h.index == index), None)

    def pending(self) -> list[Hook]:
        return [h for h in self.hooks if not h.fired]

    def arm(self, process: Process, slots: list[tuple[int, int]]) -> int:
        """Hook each (slot, return address) not hooked yet; at a stop. Returns how many."""
        if not self.enabled:
            return 0
        armed = 0
        known = {h.slot for h in self.pending()}
        for slot, ret in slots:
            if slot in known or len(self.hooks) >= SLOTS or self.original(ret) is not None:
                continue
            if process.read_u64(slot) != ret:
                continue  # not what the unwind said: never write on a guess
            if not self.base:
                return armed  # mapped while the process runs (map_running), then armed
            hook = Hook(len(self.hooks), slot, ret, self.code + len(self.hooks) * CODE_SIZE)
            process.write(self.data + _SLOT_DATA + 64 * hook.index + 8 * len(_SAVED),
                          struct.pack("<Q", ret))
            process.write(hook.trampoline, trampoline(hook.trampoline, self.data, hook.index))
            process.write(slot, struct.pack("<Q", hook.trampoline))
            self.hooks.append(hook)
            known.add(slot)
            armed += 1
        return armed

    def map_running(self, process: Process) -> None:
        """Map the pages while the process runs (seized): through a borrowed thread that
        completes the system calls by itself (borrow.py), so that a katana killed meanwhile
        leaves at most two unused pages behind."""
        if self.base or not self.enabled:
            return
        size = 2 * procfs.PAGE_SIZE
        borrower = Borrower(process)
        try:
            rx = inject.PROT_READ | inject.PROT_EXEC
            # the code page made read-execute by the same borrowing (trampolines are written
            # into it later through /proc/PID/mem, as a tracer may)
            base = alloc.map_running(process, borrower, size,
                                     inject.PROT_READ | inject.PROT_WRITE,
                                     protect=(0, procfs.PAGE_SIZE, rx))
            seconds, fraction = divmod(HOLD, 1)
            process.write(base + procfs.PAGE_SIZE, struct.pack("<I", 1) + b"\0" * 4 +
                          struct.pack("<qq", int(seconds), int(fraction * 1e9)))
            if not alloc.protected(procfs.maps_text(process.pid), base, procfs.PAGE_SIZE, rx):
                raise ApplyError(f"mprotect of katana's return hooks in process "
                                 f"{process.pid} failed")
            self.base = base
        except KatanaError:
            self.enabled = False  # wait by checking again instead; nothing was armed
        finally:
            borrower.close()

    def unmap_running(self, process: Process) -> None:
        """Once disarmed and the process runs again: unmap the pages (no thread is inside,
        ``disarm`` moved them out, and no return address points there any more)."""
        if not self.base:
            return
        try:
            alloc.unmap_running(process, [(self.base, 2 * procfs.PAGE_SIZE)])
            self.base = 0
        except KatanaError:
            pass  # two unused pages stay mapped; nothing can reach them

    def poll(self) -> bool:
        """While the process runs: whether a hook fired since the last poll."""
        if not self.base:
            return False
        try:
            flags = self.read(self.data + _FLAGS, SLOTS)
        except TargetError:
            return True  # the process is gone: let the caller's next stop say so
        fired = False
        for hook in self.pending():
            if flags[hook.index]:
                hook.fired = fired = True
        return fired

    def disarm(self, process: Process, say=None) -> None:
        """At a stop: put back every return address not yet used, open the gate, and move any
        thread inside a trampoline to its return address (``unmap_running`` then frees the
        pages once the process runs)."""
        if not self.base:
            return
        self.poll()
        for hook in self.pending():
            try:
                if process.read_u64(hook.slot) == hook.trampoline:
                    process.write(hook.slot, struct.pack("<Q", hook.original))
            except KatanaError:
                pass  # that stack is gone (an exited thread, a freed coroutine)
            hook.fired = True
        process.write(self.data + _GATE, struct.pack("<I", 0))
        for tid in process.tids:
            self._move_out(process, tid)

    def _move_out(self, process: Process, tid: int) -> None:
        """A thread inside a trampoline finishes it now: its registers as the trampoline would
        leave them, at the original return address, so that the pages can go."""
        regs = process.get_regs(tid)
        offset = regs.rip - self.code
        if not 0 <= offset < SLOTS * CODE_SIZE:
            return
        index, offset = divmod(offset, CODE_SIZE)
        hook = next(h for h in self.hooks if h.index == index)
        if offset >= _CLOBBERS_FROM:
            saved = struct.unpack("<7Q", process.read(self.data + _SLOT_DATA + 64 * index, 56))
            for name, value in zip(_SAVED, saved, strict=True):
                setattr(regs, name, value)
            # Stopped inside the futex wait: do not let the kernel restart it (the same
            # orig_rax rule syscall injection relies on).
            regs.orig_rax = 0xFFFF_FFFF_FFFF_FFFF
        regs.rip = hook.original
        process.set_regs(tid, regs)

