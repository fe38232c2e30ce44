"""The ELF64 file header, program headers and section headers, read with ``struct``.

What ``katana apply`` needs of an executable before the stop (its type, its PT_LOAD and PT_TLS
segments, where .symtab is) takes a few dozen microseconds this way; importing pyelftools for
it costs ~40 ms of every command's start-up (ELF-64 Object File Format, version 1.5).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from katana.errors import FormatError

ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_TLS = 1, 7
SHT_RELA = 4
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")


class Segment(NamedTuple):
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


class Section(NamedTuple):
    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int


class Headers(NamedTuple):
    e_type: int
    segments: list[Segment]
    sections: list[Section]

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


def read_headers(f) -> Headers:
    """The headers of the little-endian ELF64 file open as ``f`` (binary, seekable)."""
    f.seek(0)
    raw = f.read(_EHDR.size)
    if len(raw) < _EHDR.size or raw[:4] != b"\x7fELF" or raw[4] != 2 or raw[5] != 1:
        raise FormatError(f"{getattr(f, 'name', 'file')}: not a little-endian ELF64 file")
    (_ident, e_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, shstrndx) = _EHDR.unpack(raw)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    segments = []
    for i in range(phnum):
        p_type, p_flags, offset, vaddr, _paddr, filesz, memsz, align = \
            _PHDR.unpack_from(table, i * phentsize)
        segments.append(Segment(p_type, p_flags, offset, vaddr, filesz, memsz, align))
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    rows = [_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]
    names = b""
    if rows and shstrndx < len(rows):
        f.seek(rows[shstrndx][4])
        names = f.read(rows[shstrndx][5])
    sections = [Section(names[r[0]:names.index(b"\0", r[0])].decode(errors="replace")
                        if r[0] < len(names) else "", r[1], r[2], r[3], r[4], r[5], r[6], r[7])
                for r in rows]
    return Headers(e_type, segments, sections)


def read_section(f, section: Section) -> bytes:
    f.seek(section.sh_offset)
    return f.read(section.sh_size)
