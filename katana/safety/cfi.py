"""Call frame information: the ``.eh_frame`` rules that say where a frame's caller is.

Read from the process's own memory, not from files: a loaded object's ``PT_GNU_EH_FRAME``
segment (``.eh_frame_hdr``, a table sorted by PC that the linker adds to executables and
libraries) and the ``.eh_frame`` it indexes are in its first, read-only ``PT_LOAD``, so what we
read is what runs even if the file on disk was replaced. The index is read once per object
before the stop and kept per build-id (every process of a build, and every process's libc,
shares it); an FDE is parsed only when a PC inside it must be unwound.

The CFA program is interpreted as DWARF 5 section 6.4.2 describes it, with the GNU additions GCC
and glibc emit (``DW_CFA_GNU_args_size``, the ``S`` augmentation of signal frames); the few
DWARF expressions CFI uses (PLT entries, glibc's ``__restore_rt``) are evaluated by ``expr``.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from katana.elf.leb128 import read_sleb, read_uleb
from katana.errors import FormatError

Read = Callable[[int, int], bytes]

PT_LOAD = 1
PT_NOTE = 4
PT_GNU_EH_FRAME = 0x6474E550
NT_GNU_BUILD_ID = 3

# DW_EH_PE_* pointer encodings (LSB "Linux Standard Base Core", section 10.5)
DW_EH_PE_omit = 0xFF
DW_EH_PE_pcrel = 0x10
DW_EH_PE_datarel = 0x30
DW_EH_PE_indirect = 0x80
_DATAREL_SDATA4 = 0x3B

RA = 16  # x86-64 DWARF register 16 is the return address (psABI figure 3.36)


class CfiError(FormatError):
    """CFI we cannot follow. Never reaches a user: the unwind stops there and the verdict
    stays conservative (a FormatError, so that it shares that exit code's line in --help)."""


class Cie(NamedTuple):
    code_align: int
    data_align: int
    ra_reg: int
    fde_encoding: int
    has_augmentation_data: bool
    signal_frame: bool
    instructions: bytes


class Fde(NamedTuple):
    start: int  # runtime addresses
    end: int
    cie: Cie
    instructions: bytes


# A register rule: ("undef",), ("same",), ("off", n) saved at CFA+n, ("val_off", n) = CFA+n,
# ("reg", r) in register r, ("expr", bytes) saved at the address it computes, ("val_expr", b).
Rule = tuple


@dataclass
class Row:
    """The unwind rules in force at one PC."""

    cfa: tuple = ("reg", 7, 8)  # ("reg", register, offset) or ("expr", bytes)
    regs: dict[int, Rule] = field(default_factory=dict)

    def copy(self) -> Row:
        return Row(self.cfa, dict(self.regs))


class _Cursor:
    def __init__(self, data: bytes, address: int) -> None:
        self.data, self.base, self.pos = data, address, 0

    @property
    def address(self) -> int:
        return self.base + self.pos

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def block(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CfiError("CFI runs past its entry")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uleb(self) -> int:
        value, self.pos = read_uleb(self.data, self.pos)
        return value

    def sleb(self) -> int:
        value, self.pos = read_sleb(self.data, self.pos)
        return value

    def cstring(self) -> bytes:
        end = self.data.index(b"\0", self.pos)
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out

    def encoded(self, encoding: int, datarel_base: int = 0) -> int:
        if encoding == DW_EH_PE_omit:
            return 0
        if encoding & DW_EH_PE_indirect:
            raise CfiError("indirect pointer encoding in CFI")
        here = self.address
        fmt = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q",
               0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}.get(encoding & 0x0F)
        if encoding & 0x0F == 0x01:
            value = self.uleb()
        elif encoding & 0x0F == 0x09:
            value = self.sleb()
        elif fmt is None:
            raise CfiError(f"pointer encoding {encoding:#x} in CFI")
        else:
            value = self.take(fmt)
        application = encoding & 0x70
        if application == DW_EH_PE_pcrel:
            value += here
        elif application == DW_EH_PE_datarel:
            value += datarel_base
        elif application:
            raise CfiError(f"pointer application {application:#x} in CFI")
        return value & 0xFFFF_FFFF_FFFF_FFFF


def _entry(read: Read, address: int) -> tuple[_Cursor, int]:
    """The cursor just past the length field of the entry at ``address``, and its end."""
    (length,) = struct.unpack("<I", read(address, 4))
    start = address + 4
    if length == 0xFFFF_FFFF:
        (length,) = struct.unpack("<Q", read(start, 8))
        start += 8
    if length == 0 or length > 1 << 20:
        raise CfiError(f"no CFI entry at {address:#x}")
    return _Cursor(read(start, length), start), start + length


def parse_cie(read: Read, address: int) -> Cie:
    cur, _ = _entry(read, address)
    if cur.take("<I") != 0:
        raise CfiError(f"{address:#x} is not a CIE")
    version = cur.take("B")
    augmentation = cur.cstring()
    if b"eh" in augmentation:
        cur.take("<Q")
    code_align, data_align = cur.uleb(), cur.sleb()
    ra_reg = cur.take("B") if version == 1 else cur.uleb()
    fde_encoding = 0
    if augmentation.startswith(b"z"):
        size = cur.uleb()
        end = cur.pos + size
        for ch in augmentation[1:]:
            if ch == ord("R"):
                fde_encoding = cur.take("B")
            elif ch == ord("P"):
                cur.encoded(cur.take("B") & ~DW_EH_PE_indirect)
            elif ch == ord("L"):
                cur.take("B")
        cur.pos = end
    return Cie(code_align, data_align, ra_reg, fde_encoding, augmentation.startswith(b"z"),
               b"S" in augmentation, cur.data[cur.pos:])


def parse_fde(read: Read, address: int, cies: dict[int, Cie]) -> Fde:
    cur, _ = _entry(read, address)
    pointer_at = cur.address
    cie_pointer = cur.take("<I")
    if cie_pointer == 0:
        raise CfiError(f"{address:#x} is a CIE, not an FDE")
    cie_address = pointer_at - cie_pointer
    cie = cies.get(cie_address)
    if cie is None:
        cie = cies[cie_address] = parse_cie(read, cie_address)
    start = cur.encoded(cie.fde_encoding)
    length = cur.encoded(cie.fde_encoding & 0x0F)
    if cie.has_augmentation_data:
        cur.pos += cur.uleb()
    return Fde(start, start + length, cie, cur.data[cur.pos:])


def row_at(fde: Fde, pc: int) -> Row:
    """The rules in force at ``pc`` (CIE initial instructions, then the FDE's up to ``pc``)."""
    initial = Row()
    _run(fde.cie.instructions, fde, initial, None, None)
    row = initial.copy()
    _run(fde.instructions, fde, row, initial, pc)
    return row


def _run(code: bytes, fde: Fde, row: Row, initial: Row | None, pc: int | None) -> None:
    cie = fde.cie
    cur = _Cursor(code, 0)
    loc = fde.start
    stack: list[Row] = []

    def advance(delta: int) -> bool:
        nonlocal loc
        if pc is not None and loc + delta * cie.code_align > pc:
            return False
        loc += delta * cie.code_align
        return True

    while cur.pos < len(code):
        op = cur.take("B")
        high, low = op & 0xC0, op & 0x3F
        if high == 0x40:
            if not advance(low):
                return
        elif high == 0x80:
            row.regs[low] = ("off", cur.uleb() * cie.data_align)
        elif high == 0xC0:
            _restore(row, initial, low)
        elif op == 0x00:
            pass
        elif op == 0x01:
            target = cur.encoded(cie.fde_encoding)
            if pc is not None and target > pc:
                return
            loc = target
        elif op in (0x02, 0x03, 0x04):
            if not advance(cur.take({0x02: "B", 0x03: "<H", 0x04: "<I"}[op])):
                return
        elif op == 0x05:
            reg = cur.uleb()
            row.regs[reg] = ("off", cur.uleb() * cie.data_align)
        elif op == 0x06:
            _restore(row, initial, cur.uleb())
        elif op == 0x07:
            row.regs[cur.uleb()] = ("undef",)
        elif op == 0x08:
            row.regs[cur.uleb()] = ("same",)
        elif op == 0x09:
            reg = cur.uleb()
            row.regs[reg] = ("reg", cur.uleb())
        elif op == 0x0A:
            stack.append(row.copy())
        elif op == 0x0B:
            if not stack:
                raise CfiError("DW_CFA_restore_state without a remembered state")
            saved = stack.pop()
            row.cfa, row.regs = saved.cfa, saved.regs
        elif op == 0x0C:
            reg = cur.uleb()
            row.cfa = ("reg", reg, cur.uleb())
        elif op == 0x0D:
            row.cfa = ("reg", cur.uleb(), row.cfa[2] if row.cfa[0] == "reg" else 0)
        elif op == 0x0E:
            row.cfa = ("reg", row.cfa[1], cur.uleb()) if row.cfa[0] == "reg" else row.cfa
        elif op == 0x0F:
            row.cfa = ("expr", cur.block(cur.uleb()))
        elif op in (0x10, 0x16):
            reg = cur.uleb()
            row.regs[reg] = ("expr" if op == 0x10 else "val_expr", cur.block(cur.uleb()))
        elif op in (0x11, 0x14, 0x15):
            reg = cur.uleb()
            offset = (cur.sleb() if op != 0x14 else cur.uleb()) * cie.data_align
            row.regs[reg] = ("off" if op == 0x11 else "val_off", offset)
        elif op == 0x12:
            reg = cur.uleb()
            row.cfa = ("reg", reg, cur.sleb() * cie.data_align)
        elif op == 0x13:
            if row.cfa[0] == "reg":
                row.cfa = ("reg", row.cfa[1], cur.sleb() * cie.data_align)
        elif op == 0x2E:  # DW_CFA_GNU_args_size: only matters to a landing pad
            cur.uleb()
        elif op == 0x2F:  # DW_CFA_GNU_negative_offset_extended
            reg = cur.uleb()
            row.regs[reg] = ("off", -cur.uleb() * cie.data_align)
        else:
            raise CfiError(f"unknown CFA instruction {op:#x}")


def _restore(row: Row, initial: Row | None, reg: int) -> None:
    if initial is not None and reg in initial.regs:
        row.regs[reg] = initial.regs[reg]
    else:
        row.regs.pop(reg, None)


# -- the DWARF expressions CFI uses --------------------------------------------------------

_BINARY: dict[int, Callable[[int, int], int]] = {
    0x1A: lambda a, b: a & b, 0x1C: lambda a, b: a - b, 0x1E: lambda a, b: a * b,
    0x21: lambda a, b: a | b, 0x22: lambda a, b: a + b, 0x24: lambda a, b: a << b,
    0x25: lambda a, b: a >> b, 0x27: lambda a, b: a ^ b,
    0x29: lambda a, b: int(a == b), 0x2A: lambda a, b: int(a >= b),
    0x2B: lambda a, b: int(a > b), 0x2C: lambda a, b: int(a <= b),
    0x2D: lambda a, b: int(a < b), 0x2E: lambda a, b: int(a != b),
}
_CONST = {0x08: "B", 0x09: "b", 0x0A: "<H", 0x0B: "<h", 0x0C: "<I", 0x0D: "<i",
          0x0E: "<Q", 0x0F: "<q", 0x03: "<Q"}
MASK = 0xFFFF_FFFF_FFFF_FFFF


def expr(code: bytes, regs: dict[int, int], read_u64: Callable[[int], int],
         push: int | None = None) -> int:
    """Evaluate a DWARF expression (the subset CFI uses); ``push`` starts the stack."""
    stack = [] if push is None else [push]
    cur = _Cursor(code, 0)
    while cur.pos < len(code):
        op = cur.take("B")
        if 0x30 <= op <= 0x4F:
            stack.append(op - 0x30)
        elif 0x70 <= op <= 0x8F:
            stack.append((_reg(regs, op - 0x70) + cur.sleb()) & MASK)
        elif op == 0x92:
            reg = cur.uleb()
            stack.append((_reg(regs, reg) + cur.sleb()) & MASK)
        elif op in _CONST:
            stack.append(cur.take(_CONST[op]) & MASK)
        elif op == 0x10:
            stack.append(cur.uleb())
        elif op == 0x11:
            stack.append(cur.sleb() & MASK)
        elif op == 0x06:
            stack.append(read_u64(stack.pop()))
        elif op == 0x12:
            stack.append(stack[-1])
        elif op == 0x13:
            stack.pop()
        elif op == 0x16:
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif op == 0x23:
            stack.append((stack.pop() + cur.uleb()) & MASK)
        elif op in _BINARY:
            b, a = stack.pop(), stack.pop()
            stack.append(_BINARY[op](a, b) & MASK)
        elif op == 0x96:
            pass
        else:
            raise CfiError(f"DWARF operation {op:#x} in CFI")
    if not stack:
        raise CfiError("empty DWARF expression in CFI")
    return stack[-1]


def _reg(regs: dict[int, int], reg: int) -> int:
    if reg not in regs:
        raise CfiError(f"CFI uses register {reg}, whose value is not known here")
    return regs[reg]


# -- one loaded object's index --------------------------------------------------------------

@dataclass
class ObjectCfi:
    """The ``.eh_frame_hdr`` table of one object, addresses relative to its load bias."""

    build_id: str
    hdr: int  # the vaddr of .eh_frame_hdr, which the table's entries are relative to
    locs: array  # sorted initial locations, relative to hdr
    fdes: array  # FDE addresses, relative to hdr, same order
    parsed: dict[int, Fde] = field(default_factory=dict)  # runtime FDE address -> Fde
    cies: dict[int, Cie] = field(default_factory=dict)

    def find(self, read: Read, bias: int, pc: int) -> Fde | None:
        i = bisect.bisect_right(self.locs, pc - bias - self.hdr) - 1
        if i < 0:
            return None
        address = self.fdes[i] + self.hdr + bias
        fde = self.parsed.get(address)
        if fde is None:
            fde = self.parsed[address] = parse_fde(read, address, self.cies)
        return fde if fde.start <= pc < fde.end else None


def read_object(read: Read, base: int, known: dict[str, ObjectCfi] | None = None
                ) -> tuple[ObjectCfi | None, int, str]:
    """(its CFI index or None, its load bias, a reason when None) for the ELF image at ``base``.

    ``known``: indexes already read, by build-id; an object found there is not read again
    (every process of one build, and libc in all of them, share one index)."""
    header = read(base, 64)
    if header[:4] != b"\x7fELF":
        return None, 0, f"no ELF header at {base:#x}"
    phoff, = struct.unpack_from("<Q", header, 32)
    phentsize, phnum = struct.unpack_from("<HH", header, 54)
    phdrs = read(base + phoff, phentsize * phnum)
    loads, eh, notes = [], None, []
    for i in range(phnum):
        p_type, _, _, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", phdrs,
                                                                       i * phentsize)
        if p_type == PT_LOAD:
            loads.append(vaddr)
        elif p_type == PT_GNU_EH_FRAME:
            eh = vaddr
        elif p_type == PT_NOTE:
            notes.append((vaddr, filesz))
    if not loads:
        return None, 0, "no PT_LOAD"
    bias = base - (min(loads) & ~0xFFF)
    build_id = _build_id(read, bias, notes)
    if eh is None:
        return None, bias, "no .eh_frame_hdr (PT_GNU_EH_FRAME)"
    if known is not None and build_id and build_id in known:
        return known[build_id], bias, ""
    return _read_hdr(read, bias, eh + bias, build_id), bias, ""


def _build_id(read: Read, bias: int, notes: list[tuple[int, int]]) -> str:
    for vaddr, size in notes:
        data = read(vaddr + bias, min(size, 4096))
        pos = 0
        while pos + 12 <= len(data):
            namesz, descsz, kind = struct.unpack_from("<III", data, pos)
            name_end = pos + 12 + ((namesz + 3) & ~3)
            if kind == NT_GNU_BUILD_ID and data[pos + 12:pos + 12 + namesz] == b"GNU\0":
                return data[name_end:name_end + descsz].hex()
            pos = name_end + ((descsz + 3) & ~3)
    return ""


def _read_hdr(read: Read, bias: int, hdr: int, build_id: str) -> ObjectCfi:
    head = read(hdr, 4)
    version, ptr_enc, count_enc, table_enc = head
    if version != 1 or table_enc != _DATAREL_SDATA4:
        raise CfiError(f".eh_frame_hdr at {hdr:#x}: version {version}, table encoding "
                       f"{table_enc:#x} not supported")
    cur = _Cursor(read(hdr + 4, 16), hdr + 4)
    cur.encoded(ptr_enc, hdr)
    count = cur.encoded(count_enc, hdr)
    table = array("i", read(hdr + 4 + cur.pos, count * 8))
    # (initial location, FDE) pairs relative to the header, sorted: split with C slices, not
    # rebased entry by entry (libc has thousands)
    return ObjectCfi(build_id, hdr - bias, table[0::2], table[1::2])


# -- CFI a Patch Object carries for its code (katana.elf.ehframe) ----------------------------

def fde_from_blob(blob: str, section: int) -> Fde:
    """The FDE of a patch's code section loaded at ``section``, from its PO blob."""
    cur = _Cursor(bytes.fromhex(blob), 0)
    code_align, data_align, ra_reg = cur.uleb(), cur.sleb(), cur.uleb()
    offset, length = cur.uleb(), cur.uleb()
    cie_code = cur.block(cur.uleb())
    cie = Cie(code_align, data_align, ra_reg, 0, False, False, cie_code)
    start = section + offset
    return Fde(start, start + length, cie, cur.data[cur.pos:])


class PatchCfi:
    """The FDEs of the patches already loaded in a process, from their records."""

    def __init__(self, fdes: list[Fde]) -> None:
        self.fdes = sorted(fdes, key=lambda f: f.start)
        self.starts = [f.start for f in self.fdes]
        self.build_id = ""

    def find(self, read: Read, bias: int, pc: int) -> Fde | None:
        i = bisect.bisect_right(self.starts, pc) - 1
        return self.fdes[i] if i >= 0 and pc < self.fdes[i].end else None
