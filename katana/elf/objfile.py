"""Relocatable objects (``.o``) as plain data: sections, symbols and relocations.

The generator compares many sections of two objects and walks relocations back and forth, so
each object is read once, with ``struct`` straight from its bytes, into small dataclasses.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from katana.errors import FormatError

SHT_NOBITS = 8
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_TLS = 0x400
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2

# GCC's clone suffixes carry a counter that changes whenever any clone is added elsewhere in the
# object (foo.isra.3 becomes foo.isra.7): pair them without the counter.
_CLONE_COUNTER = re.compile(r"\.(isra|constprop|part|lto_priv|cold|localalias)\.\d+")
_STATIC_LOCAL_COUNTER = re.compile(r"\.\d+$")


def normalize_name(name: str) -> str:
    """The name a symbol is paired by across versions (clone counters dropped)."""
    return _CLONE_COUNTER.sub(lambda m: "." + m.group(1), name)


def static_local_base(name: str) -> str:
    """``counter.0`` -> ``counter``: GCC numbers function-scope statics per object."""
    return _STATIC_LOCAL_COUNTER.sub("", name)


@dataclass
class ObjReloc:
    offset: int
    type: int
    sym: int
    addend: int


@dataclass
class ObjSection:
    index: int
    name: str
    type: int
    flags: int
    size: int
    align: int
    entsize: int
    data: bytes
    relocs: list[ObjReloc] = field(default_factory=list)

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR) and bool(self.flags & SHF_ALLOC)

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)

    @property
    def is_tls(self) -> bool:
        return bool(self.flags & SHF_TLS)

    @property
    def is_strings(self) -> bool:
        return bool(self.flags & SHF_STRINGS)

    @property
    def kind(self) -> str:
        if self.is_text:
            return "text"
        if self.type == SHT_NOBITS:
            return "bss"
        # .data.rel.ro is constant data with pointers: writable only until the dynamic linker has
        # relocated it (RELRO), so it is compared and copied like any read-only data.
        if self.name.startswith(".data.rel.ro"):
            return "rodata"
        return "data" if self.is_writable else "rodata"


@dataclass
class ObjSymbol:
    index: int
    name: str
    type: str  # STT_FUNC, STT_OBJECT, STT_SECTION, STT_NOTYPE, STT_FILE, ...
    bind: str  # STB_LOCAL, STB_GLOBAL, STB_WEAK
    shndx: int
    value: int
    size: int

    @property
    def defined(self) -> bool:
        return self.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON)

    @property
    def local(self) -> bool:
        return self.bind == "STB_LOCAL"


# ELF64 little-endian records (System V gABI, "Sections", "Symbol Table", "Relocation"): read
# with struct rather than pyelftools, whose per-field parsing cost ~1 ms per 10 symbols and made
# reading one 200-function object take 300 ms.
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_ET_REL, _EM_X86_64 = 1, 62
_SHT_SYMTAB, _SHT_RELA, _SHT_SYMTAB_SHNDX = 2, 4, 18
_SHN_XINDEX = 0xFFFF
_STT = {0: "STT_NOTYPE", 1: "STT_OBJECT", 2: "STT_FUNC", 3: "STT_SECTION", 4: "STT_FILE",
        5: "STT_COMMON", 6: "STT_TLS", 10: "STT_LOOS"}  # 10: STT_GNU_IFUNC, as pyelftools says
_STB = {0: "STB_LOCAL", 1: "STB_GLOBAL", 2: "STB_WEAK", 10: "STB_LOOS"}  # 10: STB_GNU_UNIQUE


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


class ObjectFile:
    """One relocatable object, fully read."""

    def __init__(self, path: Path, relpath: str) -> None:
        self.path = path
        self.relpath = relpath
        self.sections: list[ObjSection] = []
        self.symbols: list[ObjSymbol] = []
        self.file_name: str | None = None
        try:
            self._read(Path(path).read_bytes())
        except (OSError, struct.error, IndexError, ValueError) as e:
            raise FormatError(f"{path}: not a readable ELF object ({e})") from e
        self._by_section: dict[int, list[ObjSymbol]] = {}
        for sym in self.symbols:
            if sym.defined and sym.type in ("STT_FUNC", "STT_OBJECT", "STT_TLS", "STT_NOTYPE") \
                    and sym.name:
                self._by_section.setdefault(sym.shndx, []).append(sym)

    def _read(self, raw: bytes) -> None:
        (ident, e_type, e_machine, _, _, _, shoff, _, _, _, _, shentsize, shnum,
         shstrndx) = _EHDR.unpack_from(raw, 0)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise FormatError(f"{self.path}: not a 64-bit little-endian ELF file")
        if e_type != _ET_REL or e_machine != _EM_X86_64:
            raise FormatError(f"{self.path}: not an x86-64 relocatable object")
        headers = [_SHDR.unpack_from(raw, shoff)]
        if shnum == 0:  # more than 0xff00 sections: the count is in section 0's sh_size
            shnum = headers[0][5]
        if shstrndx == _SHN_XINDEX:
            shstrndx = headers[0][6]
        headers += [_SHDR.unpack_from(raw, shoff + i * shentsize) for i in range(1, shnum)]
        names = raw[headers[shstrndx][4]:headers[shstrndx][4] + headers[shstrndx][5]]
        for i, (name, stype, flags, _, offset, size, _, _, align, entsize) in enumerate(headers):
            nobits = stype == SHT_NOBITS
            self.sections.append(ObjSection(
                index=i, name=_cstr(names, name), type=SHT_NOBITS if nobits else stype,
                flags=flags, size=size, align=max(1, align), entsize=entsize,
                data=b"" if nobits else raw[offset:offset + size]))
        symtab = next((h for h in headers if h[1] == _SHT_SYMTAB), None)
        if symtab is None:
            raise FormatError(f"{self.path}: no symbol table (was it stripped?)")
        self._read_symbols(raw, headers, symtab)
        for h in headers:
            if h[1] == _SHT_RELA:
                target = self.sections[h[7]]
                target.relocs = [ObjReloc(off, info & 0xFFFFFFFF, info >> 32, addend)
                                 for off, info, addend in
                                 _RELA.iter_unpack(raw[h[4]:h[4] + h[5]])]
                target.relocs.sort(key=lambda r: r.offset)

    def _read_symbols(self, raw: bytes, headers: list[tuple], symtab: tuple) -> None:
        strtab = headers[symtab[6]]
        strings = raw[strtab[4]:strtab[4] + strtab[5]]
        xindex = next((h for h in headers if h[1] == _SHT_SYMTAB_SHNDX), None)
        extended = struct.unpack_from(f"<{xindex[5] // 4}I", raw, xindex[4]) if xindex else ()
        for i, (name, info, _, shndx, value, size) in enumerate(
                _SYM.iter_unpack(raw[symtab[4]:symtab[4] + symtab[5]])):
            if shndx == _SHN_XINDEX and extended:
                shndx = extended[i]
            sym = ObjSymbol(i, _cstr(strings, name), _STT.get(info & 0xF, f"STT_{info & 0xF}"),
                            _STB.get(info >> 4, f"STB_{info >> 4}"), shndx, value, size)
            self.symbols.append(sym)
            if sym.type == "STT_FILE" and self.file_name is None:
                self.file_name = sym.name

    def symbols_in(self, shndx: int) -> list[ObjSymbol]:
        """Named function/object symbols defined in a section."""
        return self._by_section.get(shndx, [])

    def symbol_at(self, shndx: int, offset: int) -> ObjSymbol | None:
        """The named symbol whose extent covers ``offset`` in a section (or starts there)."""
        best = None
        for sym in self.symbols_in(shndx):
            if sym.value <= offset < sym.value + max(sym.size, 1):
                if best is None or sym.bind != "STB_LOCAL" or sym.size > best.size:
                    best = sym
        return best

    def designated(self, sym: ObjSymbol, shndx: int, offset: int) -> ObjSymbol | None:
        """What a relocation against ``sym`` refers to, its target being ``offset`` in section
        ``shndx``: a named symbol means itself whatever the addend (``arr + 16`` points one past
        the end of arr, where no symbol lies); a section symbol means the symbol covering the
        target, or else the one ending there."""
        if sym.type in ("STT_OBJECT", "STT_FUNC", "STT_TLS") and sym.name:
            return sym
        found = self.symbol_at(shndx, offset)
        if found is None:
            found = next((s for s in self.symbols_in(shndx)
                          if s.size and s.value + s.size == offset), None)
        return found

    def functions(self) -> list[ObjSymbol]:
        return [s for s in self.symbols if s.type == "STT_FUNC" and s.defined]

    def variables(self) -> list[ObjSymbol]:
        """Data objects, thread-local ones (STT_TLS) included."""
        return [s for s in self.symbols if s.type in ("STT_OBJECT", "STT_TLS") and s.defined]
