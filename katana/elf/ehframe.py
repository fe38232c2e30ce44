"""The CFI of one code section of a relocatable object, carried into a Patch Object.

GCC gives each function section its FDE in the object's ``.eh_frame``; the FDE's ``pc_begin``
is a PC-relative relocation against the section (or a symbol in it), which is how an FDE is
matched to its section here. What a PO keeps is a small self-contained blob: the CIE's
alignment factors, its return address register and initial instructions, the FDE's offset and
length in the section, and its instructions. The CFA programs do not depend on where the code is
loaded (GCC advances with ``DW_CFA_advance_loc``; an FDE that uses ``DW_CFA_set_loc`` is left
out), so the engine rebuilds the FDE at the code's runtime address and unwinds through patch
code like through the program's own.
"""

from __future__ import annotations

import struct

from katana.elf.leb128 import read_sleb, read_uleb, sleb, uleb
from katana.elf.objfile import ObjectFile

_PC_RELATIVE = {2, 24}  # R_X86_64_PC32, R_X86_64_PC64: how GCC encodes pc_begin


def _cie(data: bytes, at: int) -> tuple[int, int, int, int, bytes] | None:
    """(code_align, data_align, ra_reg, fde pointer encoding, initial instructions)."""
    length, = struct.unpack_from("<I", data, at)
    end = at + 4 + length
    pos = at + 8
    version = data[pos]
    pos += 1
    aug_end = data.index(b"\0", pos)
    augmentation = data[pos:aug_end]
    pos = aug_end + 1
    if b"eh" in augmentation:
        return None
    code_align, pos = read_uleb(data, pos)
    data_align, pos = read_sleb(data, pos)
    if version == 1:
        ra, pos = data[pos], pos + 1
    else:
        ra, pos = read_uleb(data, pos)
    encoding = 0
    if augmentation.startswith(b"z"):
        size, pos = read_uleb(data, pos)
        aug_data = data[pos:pos + size]
        pos += size
        i = 0
        for ch in augmentation[1:]:
            if ch == ord("R"):
                encoding = aug_data[i]
                i += 1
            elif ch in (ord("P"), ord("L")):
                return None  # personality / LSDA: C++ code, not what a PO carries yet
            elif ch == ord("S"):
                return None
    return code_align, data_align, ra, encoding, data[pos:end]


def section_cfi(obj: ObjectFile, shndx: int) -> str:
    """The hex blob of the CFI for code section ``shndx`` of ``obj``, or "" when it has none
    we can carry (no FDE, several, or a form the engine does not rebuild)."""
    eh = next((s for s in obj.sections if s.name == ".eh_frame"), None)
    if eh is None:
        return ""
    data = eh.data
    found = []
    for r in eh.relocs:
        sym = obj.symbols[r.sym]
        if sym.shndx == shndx and r.type in _PC_RELATIVE:
            found.append((r.offset, sym.value + r.addend))
    if len(found) != 1:
        return ""
    field, pc_offset = found[0]
    fde = field - 8  # length, CIE pointer, then pc_begin
    try:
        length, cie_pointer = struct.unpack_from("<II", data, fde)
        cie = _cie(data, fde + 4 - cie_pointer)
        if cie is None:
            return ""
        code_align, data_align, ra, encoding, cie_code = cie
        size_fmt = {0x03: "<I", 0x0B: "<i", 0x04: "<Q", 0x0C: "<q", 0x00: "<Q"}.get(encoding & 0x0F)
        if size_fmt is None:
            return ""
        pos = field + struct.calcsize(size_fmt)
        pc_range, = struct.unpack_from(size_fmt, data, pos)
        pos += struct.calcsize(size_fmt)
        aug, pos = read_uleb(data, pos)
        pos += aug
        fde_code = data[pos:fde + 4 + length]
    except (struct.error, IndexError, ValueError):
        return ""
    if b"\x01" in _opcodes(fde_code):
        return ""
    blob = (uleb(code_align) + sleb(data_align) + uleb(ra) + uleb(pc_offset) + uleb(pc_range)
            + uleb(len(cie_code)) + cie_code + fde_code)
    return blob.hex()


def _opcodes(code: bytes) -> bytes:
    """The primary opcodes of a CFA program with only advance_loc/offset/restore/nop and the
    extended forms GCC emits; anything unknown shows as DW_CFA_set_loc (refused)."""
    out = bytearray()
    pos = 0
    try:
        while pos < len(code):
            op = code[pos]
            pos += 1
            if op & 0xC0 in (0x40, 0xC0):
                continue
            if op & 0xC0 == 0x80:
                _, pos = read_uleb(code, pos)
                continue
            out.append(op)
            if op in (0x00, 0x0A, 0x0B):
                continue
            if op in (0x02, 0x03, 0x04):
                pos += {0x02: 1, 0x03: 2, 0x04: 4}[op]
            elif op in (0x05, 0x09, 0x0C, 0x2F, 0x14):
                _, pos = read_uleb(code, pos)
                _, pos = read_uleb(code, pos)
            elif op in (0x11, 0x12, 0x15):
                _, pos = read_uleb(code, pos)
                _, pos = read_sleb(code, pos)
            elif op in (0x06, 0x07, 0x08, 0x0D, 0x0E, 0x2E):
                _, pos = read_uleb(code, pos)
            elif op == 0x13:
                _, pos = read_sleb(code, pos)
            elif op in (0x0F,):
                n, pos = read_uleb(code, pos)
                pos += n
            elif op in (0x10, 0x16):
                _, pos = read_uleb(code, pos)
                n, pos = read_uleb(code, pos)
                pos += n
            else:
                return b"\x01"
    except IndexError:
        return b"\x01"
    return bytes(out)
