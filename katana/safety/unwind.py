"""Unwinding a stack with the CFI of every object mapped in the process.

A frame is real when the unwind reaches it: each step applies the CFA rule of the PC's FDE, reads
the return address where the rule says it was saved, and restores the callee-saved registers. The
walk ends cleanly where the ABI says a stack ends (the return address rule is ``undefined``, as
glibc marks ``_start`` and the thread start in ``clone``, or a return address of 0) and stops
without a verdict anywhere else (no CFI for a PC, a rule we cannot evaluate, memory that is not
there): the caller then stays conservative.

Code without CFI of its own that katana itself placed (return hooks, see ``hooks.py``) is
described by ``Unwinder.special``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from katana.errors import TargetError
from katana.safety.cfi import RA, CfiError, ObjectCfi, PatchCfi, expr, read_object, row_at
from katana.target import procfs

# DWARF register numbers (psABI figure 3.36) of struct user_regs_struct's fields.
DWARF_REGS = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
RSP = 7
MAX_FRAMES = 1024

# Shared by every process of this katana: libc and the program's build are read once.
_CACHE: dict[str, ObjectCfi] = {}


class Frame(NamedTuple):
    """One live frame: its PC, its CFA, and where its return address is stored (or None)."""

    pc: int
    cfa: int
    ra_slot: int | None
    exact: bool  # pc is where the frame stands (frame 0, or interrupted by a signal)


@dataclass
class Walk:
    frames: list[Frame]
    complete: bool  # True: reached the end of the stack; False: ``stopped`` says why not
    stopped: str = ""


@dataclass
class _Object:
    start: int
    end: int
    name: str
    cfi: ObjectCfi | PatchCfi | None
    bias: int
    reason: str


def regs_of(user_regs) -> dict[int, int]:
    return {i: getattr(user_regs, name) for i, name in enumerate(DWARF_REGS)}


class ProcessCfi:
    """The CFI of every object mapped in one process, read before the stop."""

    def __init__(self, pid: int, read: Callable[[int, int], bytes],
                 maps: list[procfs.Mapping] | None = None) -> None:
        self.pid = pid
        self.read = read
        self.objects: list[_Object] = []
        self.patches: list[_Object] = []
        self._indexed: list[procfs.Mapping] | None = None
        self.refresh(procfs.read_maps(pid) if maps is None else maps)

    def add_patches(self, regions: list[tuple[int, int]], cfi: PatchCfi) -> None:
        """Code of patches already applied: their regions, unwound with the CFI their records
        keep (searched before the mappings, which know nothing of it)."""
        self.patches = [_Object(lo, hi, "patch code", cfi, 0, "no CFI kept for this code")
                        for lo, hi in regions]

    def refresh(self, maps: list[procfs.Mapping]) -> None:
        """Index the executable mappings of ``maps`` by the object they belong to. The same
        list again (``Process.maps`` returns its kept copy while nothing was mapped) costs
        nothing: the stop calls this once more."""
        if maps is self._indexed:
            return
        self._indexed = maps
        known = {(o.start, o.end) for o in self.objects}
        bases: dict[str, int] = {}
        for m in maps:
            key = m.path or f"anon@{m.start:#x}"
            if m.offset == 0 and key not in bases:
                bases[key] = m.start
            if not m.executable or (m.start, m.end) in known:
                continue
            base = bases.get(key, m.start if m.path == "[vdso]" else None)
            self.objects.append(self._load(m, base))
        self.objects.sort(key=lambda o: o.start)

    def _load(self, m: procfs.Mapping, base: int | None) -> _Object:
        name = m.path or "anonymous code"
        if base is None or m.path in ("", "[vsyscall]"):
            return _Object(m.start, m.end, name, None, 0, "no ELF image (generated code?)")
        try:
            cfi, bias, reason = read_object(self.read, base, _CACHE)
        except (CfiError, TargetError, struct.error, ValueError) as e:
            return _Object(m.start, m.end, name, None, 0, str(e))
        if cfi is not None and cfi.build_id:
            cfi = _CACHE.setdefault(cfi.build_id, cfi)
        return _Object(m.start, m.end, os.path.basename(name), cfi, bias, reason)

    def object_at(self, pc: int) -> _Object | None:
        for o in self.patches:
            if o.start <= pc < o.end:
                return o
        for o in self.objects:
            if o.start <= pc < o.end:
                return o
        return None


class Unwinder:
    """Walks stacks of one stopped process. ``special(pc)`` may describe code with no CFI
    that katana placed: it returns the PC that code goes on to (its caller's), registers
    unchanged, or None."""

    def __init__(self, cfi: ProcessCfi, read: Callable[[int, int], bytes],
                 special: Callable[[int], int | None] = lambda pc: None) -> None:
        self.cfi = cfi
        self.read = read
        self.special = special

    def read_u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def walk(self, regs: dict[int, int], *, exact: bool = True) -> Walk:
        """Unwind from ``regs``; ``exact=False`` when ``regs[16]`` is a return address (a
        saved context) rather than where the code stands."""
        regs = dict(regs)
        frames: list[Frame] = []
        seen: set[tuple[int, int]] = set()
        while len(frames) < MAX_FRAMES:
            pc = regs[RA]
            if pc == 0:
                return Walk(frames, True)
            follow = self.special(pc)
            if follow is not None:
                frames.append(Frame(pc, regs[RSP], None, exact))
                regs[RA], exact = follow, False
                continue
            try:
                frame, regs, exact = self._step(regs, exact)
            except CfiError as e:
                # The frame we could not step out of is still a frame: it is checked too.
                frames.append(Frame(pc, regs[RSP], None, exact))
                return Walk(frames, False, str(e))
            except (TargetError, struct.error) as e:
                frames.append(Frame(pc, regs[RSP], None, exact))
                return Walk(frames, False, f"stack unreadable near {regs[RSP]:#x} ({e})")
            frames.append(frame)
            if regs is None:
                return Walk(frames, True)
            if (regs[RA], frame.cfa) in seen:
                return Walk(frames, False, f"the unwind loops at {regs[RA]:#x}")
            seen.add((regs[RA], frame.cfa))
        return Walk(frames, False, f"more than {MAX_FRAMES} frames")

    def _step(self, regs: dict[int, int], exact: bool):
        pc = regs[RA]
        lookup = pc if exact else pc - 1
        obj = self.cfi.object_at(lookup)
        if obj is None:
            raise CfiError(f"{pc:#x} is in no mapped code")
        if obj.cfi is None:
            raise CfiError(f"no CFI for {pc:#x} in {obj.name}: {obj.reason}")
        fde = obj.cfi.find(self.read, obj.bias, lookup)
        if fde is None:
            raise CfiError(f"no CFI for {pc:#x} in {obj.name} (hand-written code?)")
        row = row_at(fde, lookup)
        if row.cfa[0] == "reg":
            cfa = (regs[row.cfa[1]] + row.cfa[2]) & 0xFFFF_FFFF_FFFF_FFFF
        else:
            cfa = expr(row.cfa[1], regs, self.read_u64)
        rule = row.regs.get(fde.cie.ra_reg, ("undef",))
        if rule[0] == "undef":
            return Frame(pc, cfa, None, exact), None, False
        caller = dict(regs)
        caller[RSP] = cfa
        slot = None
        for reg, rule in row.regs.items():
            value, where = self._apply(rule, reg, regs, cfa)
            caller[reg if reg != fde.cie.ra_reg else RA] = value
            if reg == fde.cie.ra_reg:
                slot = where
        return Frame(pc, cfa, slot, exact), caller, fde.cie.signal_frame

    def _apply(self, rule: tuple, reg: int, regs: dict[int, int], cfa: int):
        kind = rule[0]
        if kind == "off":
            return self.read_u64(cfa + rule[1]), cfa + rule[1]
        if kind == "val_off":
            return cfa + rule[1], None
        if kind == "same":
            return regs.get(reg, 0), None
        if kind == "reg":
            return regs.get(rule[1], 0), None
        if kind == "expr":
            where = expr(rule[1], regs, self.read_u64, push=cfa)
            return self.read_u64(where), where
        if kind == "val_expr":
            return expr(rule[1], regs, self.read_u64, push=cfa), None
        return 0, None  # undefined: the value is lost (a caller-saved register)
