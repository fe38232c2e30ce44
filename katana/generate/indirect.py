"""Reading a library variable that FROM never used, through a slot the patch owns.

When the TO version reads a library variable (``stderr``) that FROM never used, the linker gave TO
a copy relocation: TO's code reads the executable's own copy with a 32-bit PC-relative field. The
running FROM program has no such copy, and the library's copy is beyond 32-bit reach of the patch
(apply maps it next to the executable). So the new code must go through a 64-bit slot: a GOT
entry the loader fills with the variable's address at apply time (``R_X86_64_GOTPCREL``).

Two instruction forms are rewritten, the ones GCC emits for such reads (x86-64 small code model):

- ``lea var(%rip), %reg`` (the variable's address) becomes ``mov var@GOTPCREL(%rip), %reg``: the
  same length, the reverse of the linker's GOTPCRELX relaxation (psABI B.2).
- ``mov var+k(%rip), %reg`` (its value) needs two loads: it becomes ``jmp thunk`` and NOPs, and the
  thunk does ``mov var@GOTPCREL(%rip), %reg; mov k(%reg), %reg; jmp back``. Only the destination
  register is used, no flag changes, the stack is not touched (a leaf's red zone stays intact).

Anything else (a store, a compare with the variable in memory, a byte load) is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_MOV_LOAD, _LEA = 0x8B, 0x8D
_JMP_REL32 = 0xE9
_NOP = {0: b"", 1: b"\x90", 2: b"\x66\x90"}
_REX_W, _REX_R, _REX_B = 0x08, 0x04, 0x01


@dataclass
class Rewrite:
    start: int  # the instruction rewritten, [start, end) in its section
    end: int
    replacement: bytes  # its new bytes (same length)
    slot_field: int  # in the section (lea) or the thunk (mov): the GOTPCREL field
    thunk: bytes = b""  # empty for lea
    back_field: int = 0  # in the thunk: the rel32 of the jump back to ``end``
    jump_field: int = 0  # in the section: the rel32 of the jump to the thunk


def _instruction(code: bytes, field: int) -> tuple[int, int] | None:
    for start, size, _, _ in _cs.disasm_lite(code, 0):
        if start <= field < start + size:
            return start, start + size
        if start > field:
            break
    return None


def plan_rewrite(code: bytes, field: int, addend: int) -> Rewrite | None:
    """How to read through a slot the RIP-relative reference whose disp32 is at ``field``;
    None when the instruction is not one of the two forms."""
    found = _instruction(code, field)
    if found is None:
        return None
    start, end = found
    insn = code[start:end]
    rex = insn[0] if 0x40 <= insn[0] <= 0x4F else 0
    body = insn[1:] if rex else insn
    # opcode, ModRM with mod 00 and r/m 101 (RIP + disp32), the field last (no immediate)
    if len(body) != 6 or start + (len(insn) - 4) != field or body[1] & 0xC7 != 0x05:
        return None
    reg = (body[1] >> 3) & 7 | (8 if rex & _REX_R else 0)
    if body[0] == _LEA and rex & _REX_W and addend + (end - field) == 0:
        return Rewrite(start, end, bytes([rex, _MOV_LOAD]) + insn[2:], field)
    if body[0] != _MOV_LOAD or reg == 4:  # a load into %rsp is no compiler's
        return None
    return _thunk(start, end, rex, reg, addend + (end - field))


def _thunk(start: int, end: int, rex: int, reg: int, offset: int) -> Rewrite:
    high = 8 if reg >= 8 else 0
    address = bytes([0x48 | (_REX_R if high else 0), _MOV_LOAD, 0x05 | (reg & 7) << 3]) + \
        b"\0\0\0\0"  # mov slot(%rip), %reg (64-bit: the slot holds an address)
    # mov offset(%reg), %reg at the original width (REX.W as the original had it); mod 10 is
    # base + disp32, and a base of 100 (%rsp/%r12) needs a SIB byte
    load_rex = 0x40 | (rex & _REX_W) | (_REX_R | _REX_B if high else 0)
    modrm = 0x80 | (reg & 7) << 3 | (reg & 7)
    sib = b"\x24" if reg & 7 == 4 else b""
    load = bytes([load_rex, _MOV_LOAD, modrm]) + sib + struct.pack("<i", offset)
    back = bytes([_JMP_REL32]) + b"\0\0\0\0"
    thunk = address + load + back
    jump = bytes([_JMP_REL32]) + b"\0\0\0\0" + _NOP[end - start - 5]
    return Rewrite(start, end, jump, 3, thunk, len(address) + len(load) + 1, start + 1)
