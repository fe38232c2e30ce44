"""Relocatable objects (``.o``) as plain data: sections, symbols and relocations.

pyelftools parses lazily and its objects keep the file open; the generator compares many
sections of two objects and walks relocations back and forth, so each object is read once into
small dataclasses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

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


class ObjectFile:
    """One relocatable object, fully read."""

    def __init__(self, path: Path, relpath: str) -> None:
        self.path = path
        self.relpath = relpath
        self.sections: list[ObjSection] = []
        self.symbols: list[ObjSymbol] = []
        self.file_name: str | None = None
        try:
            with open(path, "rb") as f:
                self._read(ELFFile(f))
        except (ELFError, OSError, ValueError) as e:
            raise FormatError(f"{path}: not a readable ELF object ({e})") from e
        self._by_section: dict[int, list[ObjSymbol]] = {}
        for sym in self.symbols:
            if sym.defined and sym.type in ("STT_FUNC", "STT_OBJECT", "STT_TLS", "STT_NOTYPE") \
                    and sym.name:
                self._by_section.setdefault(sym.shndx, []).append(sym)

    def _read(self, elf: ELFFile) -> None:
        if elf["e_type"] != "ET_REL" or elf["e_machine"] != "EM_X86_64":
            raise FormatError(f"{self.path}: not an x86-64 relocatable object")
        for i, sec in enumerate(elf.iter_sections()):
            nobits = sec["sh_type"] == "SHT_NOBITS"
            self.sections.append(ObjSection(
                index=i, name=sec.name, type=SHT_NOBITS if nobits else 0,
                flags=sec["sh_flags"], size=sec["sh_size"], align=max(1, sec["sh_addralign"]),
                entsize=sec["sh_entsize"], data=b"" if nobits else sec.data()))
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise FormatError(f"{self.path}: no symbol table (was it stripped?)")
        for i, s in enumerate(symtab.iter_symbols()):
            shndx = s["st_shndx"]
            shndx = {"SHN_UNDEF": SHN_UNDEF, "SHN_ABS": SHN_ABS, "SHN_COMMON": SHN_COMMON}.get(
                shndx, shndx) if isinstance(shndx, str) else shndx
            sym = ObjSymbol(i, s.name, s["st_info"]["type"], s["st_info"]["bind"], shndx,
                            s["st_value"], s["st_size"])
            self.symbols.append(sym)
            if sym.type == "STT_FILE" and self.file_name is None:
                self.file_name = sym.name
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_RELA":
                continue
            target = self.sections[sec["sh_info"]]
            target.relocs = [ObjReloc(r["r_offset"], r["r_info_type"], r["r_info_sym"],
                                      r["r_addend"]) for r in sec.iter_relocations()]
            target.relocs.sort(key=lambda r: r.offset)

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
