"""Lay out a Patch Object in one region of the target and link it there.

Everything here is pure computation, done before the target is stopped: given the region's base
address and a resolver for external symbols, the whole image is ready to be written in one go, so
the stop does not grow with the size of the patch.

Region layout (page aligned parts, one mapping):

    [record]  header + JSON record of the applied patch             read/write
    [text]    code sections, then 16-byte absolute-jump stubs       read/exec after loading
    [data]    read-only and writable data, bss, then the GOT        read/write
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from katana.elf.relocs import (
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_64,
    R_X86_64_DTPOFF32,
    R_X86_64_GOTPCREL,
    R_X86_64_GOTPCRELX,
    R_X86_64_GOTTPOFF,
    R_X86_64_NONE,
    R_X86_64_PC32,
    R_X86_64_PC64,
    R_X86_64_PLT32,
    R_X86_64_REX_GOTPCRELX,
    R_X86_64_TLSLD,
    R_X86_64_TPOFF32,
    TLS_INDEX,
)
from katana.errors import ApplyError
from katana.po.model import PatchObject, Symbol

PAGE = 4096

_GOT_TYPES = {R_X86_64_GOTPCREL, R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX, R_X86_64_GOTTPOFF}
TLS_TYPES = {R_X86_64_GOTTPOFF, R_X86_64_TPOFF32}
SUPPORTED = {R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32,
             R_X86_64_32S, R_X86_64_PC64, R_X86_64_TPOFF32, R_X86_64_DTPOFF32} | _GOT_TYPES | \
    TLS_INDEX
# (module id, offset of the variable in the module's TLS block) of a thread-local symbol
TlsIndex = Callable[[int], tuple[int, int]]
STUB_SIZE = 16  # jmp *0(%rip); .quad target; 2 bytes of padding


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def check_relocations(po: PatchObject) -> None:
    """Refuse, before anything is written, a relocation this loader cannot apply."""
    for sec in po.sections:
        for r in sec.relocs:
            if r.type not in SUPPORTED:
                raise ApplyError(f"{sec.name}+{r.offset:#x}: relocation type {r.type} is not "
                                 "supported by this katana (thread-local or large-model code?)",
                                 hint="rebuild without -mcmodel=large; report the type")


@dataclass
class Layout:
    record_size: int
    text_size: int
    size: int
    offsets: list[int]  # section index -> offset in the region
    stub_offset: dict[int, int] = field(default_factory=dict)  # symbol -> stub offset
    got_offset: dict[int, int] = field(default_factory=dict)  # symbol -> GOT slot offset
    # (symbol, R_X86_64_TLSGD or TLSLD) -> offset of its tls_index pair, for __tls_get_addr
    tls_offset: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def text_start(self) -> int:
        return self.record_size


def plan_layout(po: PatchObject, record_size: int, far: set[int]) -> Layout:
    """Where each section, stub and GOT slot goes; ``far`` lists the symbols that need a stub
    (external functions that may lie beyond rel32 reach, such as libc's)."""
    check_relocations(po)
    offsets = [0] * len(po.sections)
    cursor = _align(record_size, PAGE)
    for i, sec in enumerate(po.sections):
        if sec.kind == "text":
            cursor = _align(cursor, max(sec.align, 16))
            offsets[i] = cursor
            cursor += sec.size
    stubs: dict[int, int] = {}
    got_syms = sorted({r.symbol for s in po.sections for r in s.relocs if r.type in _GOT_TYPES})
    call_syms = sorted({r.symbol for s in po.sections for r in s.relocs
                        if r.type in (R_X86_64_PLT32, R_X86_64_PC32) and r.symbol in far})
    cursor = _align(cursor, 16)
    for sym in call_syms:
        stubs[sym] = cursor
        cursor += STUB_SIZE
    text_end = _align(cursor, PAGE)
    cursor = text_end
    for kind in ("rodata", "data", "bss"):
        for i, sec in enumerate(po.sections):
            if sec.kind == kind:
                cursor = _align(cursor, max(sec.align, 1))
                offsets[i] = cursor
                cursor += sec.size
    cursor = _align(cursor, 8)
    got = {}
    for sym in got_syms:
        got[sym] = cursor
        cursor += 8
    cursor = _align(cursor, 16)
    tls = {}
    for pair in sorted({(r.symbol, r.type) for s in po.sections for r in s.relocs
                        if r.type in TLS_INDEX}):
        tls[pair] = cursor
        cursor += 16  # tls_index: unsigned long ti_module, ti_offset (x86-64 psABI)
    return Layout(_align(record_size, PAGE), text_end - _align(record_size, PAGE),
                  _align(max(cursor, text_end + 1), PAGE), offsets, stubs, got, tls)


def link(po: PatchObject, layout: Layout, base: int,
         resolve: Callable[[int, Symbol], int], tls: TlsIndex | None = None) -> bytearray:
    """The region's bytes (record part left zero) with every relocation applied.

    ``resolve(index, symbol)`` gives the runtime address of an external symbol; ``tls(index)``
    the module id and block offset of a thread-local one reached through __tls_get_addr.
    """
    image = bytearray(layout.size)
    addresses = []
    for i, sym in enumerate(po.symbols):
        if sym.section is not None:
            addresses.append(base + layout.offsets[sym.section] + sym.value)
        else:
            addresses.append(resolve(i, sym))
    for i, sec in enumerate(po.sections):
        if sec.kind != "bss":
            image[layout.offsets[i]:layout.offsets[i] + sec.size] = sec.data
    for sym, off in layout.stub_offset.items():
        # jmp *0(%rip): ff 25 00 00 00 00, then the absolute target (reaches any address)
        image[off:off + 14] = b"\xff\x25\0\0\0\0" + struct.pack("<Q", addresses[sym])
    for sym, off in layout.got_offset.items():
        # a GOTTPOFF slot holds a thread-pointer offset, negative (TLS variant II)
        image[off:off + 8] = struct.pack("<Q", addresses[sym] & (2**64 - 1))
    for (sym, rtype), off in layout.tls_offset.items():
        assert tls is not None
        module, offset = tls(sym)
        # local dynamic asks __tls_get_addr for the block, then adds DTPOFF32 fields itself
        struct.pack_into("<QQ", image, off, module, offset if rtype != R_X86_64_TLSLD else 0)
    for i, sec in enumerate(po.sections):
        for r in sec.relocs:
            s = addresses[r.symbol]
            if r.type == R_X86_64_DTPOFF32:
                assert tls is not None
                s = tls(r.symbol)[1]
            _apply(image, layout, base, layout.offsets[i] + r.offset, r.type, s, r.symbol,
                   r.addend, sec.name)
    return image


def _apply(image: bytearray, layout: Layout, base: int, where: int, rtype: int, s: int,
           sym: int, addend: int, secname: str) -> None:
    p = base + where
    if rtype == R_X86_64_NONE:
        return
    if rtype in (R_X86_64_PLT32, R_X86_64_PC32) and sym in layout.stub_offset:
        s = base + layout.stub_offset[sym]
    if rtype in _GOT_TYPES:
        s, rtype = base + layout.got_offset[sym], R_X86_64_PC32
    if rtype in TLS_INDEX:  # lea sym@tlsgd(%rip), %rdi: the address of its tls_index pair
        s, rtype = base + layout.tls_offset[(sym, rtype)], R_X86_64_PC32
    if rtype == R_X86_64_64:
        struct.pack_into("<Q", image, where, (s + addend) & (2**64 - 1))
    elif rtype == R_X86_64_PC64:
        struct.pack_into("<q", image, where, s + addend - p)
    elif rtype in (R_X86_64_PC32, R_X86_64_PLT32):
        _put32(image, where, s + addend - p, True, secname)
    elif rtype == R_X86_64_32:
        _put32(image, where, s + addend, False, secname)
    elif rtype == R_X86_64_32S:
        _put32(image, where, s + addend, True, secname)
    elif rtype in (R_X86_64_TPOFF32, R_X86_64_DTPOFF32):  # s: offset from the thread pointer,
        _put32(image, where, s + addend, True, secname)  # or in the module's block


def _put32(image: bytearray, where: int, value: int, signed: bool, secname: str) -> None:
    lo, hi = (-(2**31), 2**31 - 1) if signed else (0, 2**32 - 1)
    if not lo <= value <= hi:
        raise ApplyError(f"{secname}: relocation truncated to fit ({value:#x}): the patch region "
                         "is out of 32-bit reach of its target",
                         hint="this should not happen with the default allocator; please report")
    struct.pack_into("<i" if signed else "<I", image, where, value)
