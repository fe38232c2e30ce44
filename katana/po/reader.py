"""The strict reader of Patch Object files (the format is specified in ``docs/po-format.md``).

A PO comes from disk, maybe from another machine, and is about to be loaded into a running
process: every offset, size, index and string is checked before a model is returned. Damage of
any kind raises ``FormatError`` naming the file and what is wrong; no other exception escapes.
The ELF layer is parsed with ``struct``; the metadata JSON is checked against the model's own
type hints. The ELF constants and the relocation table here are shared with the writer.
"""

from __future__ import annotations

import functools
import json
import reprlib
import struct
import typing
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType

from katana.errors import FormatError
from katana.po.model import (
    FORMAT_VERSION,
    FieldOp,
    Meta,
    PatchObject,
    Reloc,
    Section,
    Symbol,
    TypeTransform,
)

# -- ELF constants (System V gABI, x86-64 psABI), shared with the writer --------------------------

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0
ET_REL = 1
EM_X86_64 = 62

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_NAMES = {SHT_NULL: "SHT_NULL", SHT_PROGBITS: "SHT_PROGBITS", SHT_SYMTAB: "SHT_SYMTAB",
             SHT_STRTAB: "SHT_STRTAB", SHT_RELA: "SHT_RELA", SHT_NOBITS: "SHT_NOBITS"}

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_INFO_LINK = 0x40

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00  # from here on section indices are special (and e_shnum is extended)

STB_LOCAL = 0
STB_GLOBAL = 1
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
SYMBOL_KINDS = {STT_FUNC: "func", STT_OBJECT: "object", STT_NOTYPE: "notype",
                STT_SECTION: "section"}
STT_BY_KIND = {kind: stt for stt, kind in SYMBOL_KINDS.items()}

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
RELA = struct.Struct("<QQq")  # Elf64_Rela: r_offset, r_info = sym << 32 | type, r_addend

# Section kind of the model <-> (sh_type, sh_flags): the flags a linker would give such a section
SECTION_KINDS = {
    "text": (SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR),
    "rodata": (SHT_PROGBITS, SHF_ALLOC),
    "data": (SHT_PROGBITS, SHF_ALLOC | SHF_WRITE),
    "bss": (SHT_NOBITS, SHF_ALLOC | SHF_WRITE),
}
KIND_BY_FLAGS = {spec: kind for kind, spec in SECTION_KINDS.items()}

META_SECTION = ".katana.meta"
OLDCODE_SECTION = ".katana.oldcode"
# The engine maps a patch with mmap, whose placement is page-aligned: more cannot be honoured.
MAX_ALIGN = 4096
# New code must reach the program with rel32 (+-2 GiB): a larger section cannot be one of ours.
MAX_SECTION_SIZE = 1 << 31
MAX_JSON_INT = (1 << 63) - 1


class RelocType(typing.NamedTuple):
    name: str
    size: int  # bytes of the field the relocation writes at r_offset
    static: bool  # may appear in a relocatable file (False: made by the static linker only)


# Every relocation type of the x86-64 psABI (1.0, plus the APX CODE_4/5/6 types binutils 2.43
# knows). 39 and 40 were R_X86_64_PC32_BND/PLT32_BND (MPX), withdrawn: they stay unknown.
RELOC_TYPES: dict[int, RelocType] = {
    0: RelocType("R_X86_64_NONE", 0, True),
    1: RelocType("R_X86_64_64", 8, True),
    2: RelocType("R_X86_64_PC32", 4, True),
    3: RelocType("R_X86_64_GOT32", 4, True),
    4: RelocType("R_X86_64_PLT32", 4, True),
    5: RelocType("R_X86_64_COPY", 0, False),
    6: RelocType("R_X86_64_GLOB_DAT", 8, False),
    7: RelocType("R_X86_64_JUMP_SLOT", 8, False),
    8: RelocType("R_X86_64_RELATIVE", 8, False),
    9: RelocType("R_X86_64_GOTPCREL", 4, True),
    10: RelocType("R_X86_64_32", 4, True),
    11: RelocType("R_X86_64_32S", 4, True),
    12: RelocType("R_X86_64_16", 2, True),
    13: RelocType("R_X86_64_PC16", 2, True),
    14: RelocType("R_X86_64_8", 1, True),
    15: RelocType("R_X86_64_PC8", 1, True),
    16: RelocType("R_X86_64_DTPMOD64", 8, False),
    17: RelocType("R_X86_64_DTPOFF64", 8, True),  # GCC emits it in .debug_info for TLS
    18: RelocType("R_X86_64_TPOFF64", 8, True),  # as `.quad x@tpoff` makes
    19: RelocType("R_X86_64_TLSGD", 4, True),
    20: RelocType("R_X86_64_TLSLD", 4, True),
    21: RelocType("R_X86_64_DTPOFF32", 4, True),
    22: RelocType("R_X86_64_GOTTPOFF", 4, True),
    23: RelocType("R_X86_64_TPOFF32", 4, True),
    24: RelocType("R_X86_64_PC64", 8, True),
    25: RelocType("R_X86_64_GOTOFF64", 8, True),
    26: RelocType("R_X86_64_GOTPC32", 4, True),
    27: RelocType("R_X86_64_GOT64", 8, True),
    28: RelocType("R_X86_64_GOTPCREL64", 8, True),
    29: RelocType("R_X86_64_GOTPC64", 8, True),
    30: RelocType("R_X86_64_GOTPLT64", 8, True),
    31: RelocType("R_X86_64_PLTOFF64", 8, True),
    32: RelocType("R_X86_64_SIZE32", 4, True),
    33: RelocType("R_X86_64_SIZE64", 8, True),
    34: RelocType("R_X86_64_GOTPC32_TLSDESC", 4, True),
    35: RelocType("R_X86_64_TLSDESC_CALL", 0, True),  # a marker on the call: writes nothing
    36: RelocType("R_X86_64_TLSDESC", 16, False),
    37: RelocType("R_X86_64_IRELATIVE", 8, False),
    38: RelocType("R_X86_64_RELATIVE64", 8, False),
    41: RelocType("R_X86_64_GOTPCRELX", 4, True),
    42: RelocType("R_X86_64_REX_GOTPCRELX", 4, True),
    43: RelocType("R_X86_64_CODE_4_GOTPCRELX", 4, True),
    44: RelocType("R_X86_64_CODE_4_GOTTPOFF", 4, True),
    45: RelocType("R_X86_64_CODE_4_GOTPC32_TLSDESC", 4, True),
    46: RelocType("R_X86_64_CODE_5_GOTPCRELX", 4, True),
    47: RelocType("R_X86_64_CODE_5_GOTTPOFF", 4, True),
    48: RelocType("R_X86_64_CODE_5_GOTPC32_TLSDESC", 4, True),
    49: RelocType("R_X86_64_CODE_6_GOTPCRELX", 4, True),
    50: RelocType("R_X86_64_CODE_6_GOTTPOFF", 4, True),
    51: RelocType("R_X86_64_CODE_6_GOTPC32_TLSDESC", 4, True),
}
RELOC_BY_NAME = {t.name: number for number, t in RELOC_TYPES.items()}

_HINT = "the file is damaged or is not a Patch Object; copy it again or regenerate it"


@dataclass
class _Shdr:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    def label(self) -> str:
        return f"section {self.index} ({self.name})" if self.name else f"section {self.index}"


@dataclass
class _RawSymbol:
    name: str
    bind: int
    kind: str
    shndx: int
    value: int
    size: int


class _Elf:
    """The validated ELF layer of one PO: header, section headers, string and symbol tables."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.shdrs: list[_Shdr] = []

    def error(self, message: str) -> FormatError:
        return FormatError(f"{self.name}: {message}", hint=_HINT)

    def check(self, condition: object, message: str) -> None:
        if not condition:
            raise self.error(message)

    def contents(self, sh: _Shdr) -> bytes:
        return self.data[sh.offset:sh.offset + sh.size]

    # -- header and section headers ------------------------------------------------------------

    def parse_header(self) -> tuple[int, int, int]:
        """Check the ELF header; return (e_shoff, e_shnum, e_shstrndx)."""
        self.check(len(self.data) >= EHDR.size,
                   f"too short for an ELF header ({len(self.data)} bytes)")
        (ident, e_type, machine, version, entry, phoff, shoff, flags, ehsize, phentsize, phnum,
         shentsize, shnum, shstrndx) = EHDR.unpack_from(self.data)
        self.check(ident[:4] == ELFMAG, "not an ELF file (bad magic)")
        self.check(ident[4] == ELFCLASS64, "not a 64-bit ELF file (EI_CLASS)")
        self.check(ident[5] == ELFDATA2LSB, "not a little-endian ELF file (EI_DATA)")
        self.check(ident[6] == EV_CURRENT and version == EV_CURRENT, "unknown ELF version")
        self.check(ident[7] == ELFOSABI_SYSV and ident[8] == 0, "unexpected EI_OSABI/ABIVERSION")
        self.check(e_type == ET_REL, f"not a relocatable ELF file (e_type {e_type})")
        self.check(machine == EM_X86_64, f"not an x86-64 file (e_machine {machine})")
        self.check(entry == 0 and flags == 0, "e_entry and e_flags must be 0 in a PO")
        self.check(phoff == 0 and phnum == 0 and phentsize == 0, "a PO has no program headers")
        self.check(ehsize == EHDR.size, f"bad e_ehsize {ehsize}")
        self.check(shentsize == SHDR.size, f"bad e_shentsize {shentsize}")
        self.check(0 < shnum < SHN_LORESERVE, f"bad e_shnum {shnum}")
        self.check(shoff >= EHDR.size and shoff + shnum * SHDR.size <= len(self.data),
                   f"section header table (offset {shoff}, {shnum} entries) lies outside the "
                   f"file ({len(self.data)} bytes)")
        self.check(0 < shstrndx < shnum, f"bad e_shstrndx {shstrndx}")
        return shoff, shnum, shstrndx

    def parse_sections(self) -> None:
        shoff, shnum, shstrndx = self.parse_header()
        raw = [SHDR.unpack_from(self.data, shoff + i * SHDR.size) for i in range(shnum)]
        self.check(not any(raw[0]), "section header 0 is not the null entry")
        self.shdrs = [_Shdr(0, "", SHT_NULL, 0, 0, 0, 0, 0, 0, 0)]
        for i, (_, sh_type, flags, addr, offset, size, link, info, align, entsize) in \
                enumerate(raw[1:], 1):
            self.check(sh_type in SHT_NAMES and sh_type != SHT_NULL,
                       f"section {i} has an unexpected type {sh_type:#x}")
            self.check(addr == 0, f"section {i} has an address in a relocatable file")
            self.check(align == 0 or align & (align - 1) == 0,
                       f"section {i} alignment {align} is not a power of two")
            self.check(sh_type == SHT_NOBITS or offset + size <= len(self.data),
                       f"section {i} (offset {offset}, size {size}) extends past the end of "
                       f"the file ({len(self.data)} bytes)")
            self.shdrs.append(_Shdr(i, "", sh_type, flags, offset, size, link, info, align,
                                    entsize))
        shstrtab = self.shdrs[shstrndx]
        self.check(shstrtab.type == SHT_STRTAB, "e_shstrndx does not name a string table")
        names = self.strtab(shstrtab)
        for sh, fields in zip(self.shdrs[1:], raw[1:], strict=True):
            sh.name = self.string(names, fields[0], f"name of section {sh.index}")

    def strtab(self, sh: _Shdr) -> bytes:
        """The bytes of a string table, checked to start and end with a NUL."""
        table = self.contents(sh)
        self.check(table[:1] == b"\0" and table[-1:] == b"\0",
                   f"{sh.label()} is not a NUL-terminated string table")
        return table

    def string(self, table: bytes, offset: int, what: str) -> str:
        self.check(offset < len(table), f"{what}: string offset {offset} is out of range")
        end = table.index(b"\0", offset)  # found: strtab() checked the final NUL
        try:
            return table[offset:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"{what} is not valid UTF-8 ({exc.reason})") from None

    def find(self, sh_type: int, name: str | None = None) -> list[_Shdr]:
        return [sh for sh in self.shdrs
                if sh.type == sh_type and (name is None or sh.name == name)]

    def table_entries(self, sh: _Shdr, entry: struct.Struct) -> list[tuple]:
        self.check(sh.entsize == entry.size, f"{sh.label()} has sh_entsize {sh.entsize}, "
                   f"expected {entry.size}")
        self.check(sh.size % entry.size == 0,
                   f"{sh.label()} size {sh.size} is not a multiple of {entry.size}")
        return list(entry.iter_unpack(self.contents(sh)))


def _check_layout(elf: _Elf) -> list[_Shdr]:
    """Check that every section is one a PO may hold; return the content sections in order."""
    content = []
    for sh in elf.shdrs[1:]:
        if sh.type in (SHT_PROGBITS, SHT_NOBITS) and sh.name not in (META_SECTION,
                                                                      OLDCODE_SECTION):
            kind = KIND_BY_FLAGS.get((sh.type, sh.flags))
            elf.check(kind is not None, f"{sh.label()} has flags {sh.flags:#x} that fit no "
                      "section kind of a PO (text, rodata, data, bss)")
            elf.check(sh.addralign <= MAX_ALIGN,
                      f"{sh.label()} alignment {sh.addralign} exceeds {MAX_ALIGN}")
            elf.check(sh.size <= MAX_SECTION_SIZE, f"{sh.label()} is too large ({sh.size})")
            content.append(sh)
    _only_section(elf, OLDCODE_SECTION)
    elf.check(len(elf.find(SHT_SYMTAB)) == 1, "expected exactly one SHT_SYMTAB section")
    return content


def _only_section(elf: _Elf, name: str) -> _Shdr:
    found = elf.find(SHT_PROGBITS, name)
    elf.check(len(found) == 1, f"expected one {name} section, found {len(found)}")
    elf.check(found[0].flags == 0, f"{name} must have no flags")
    return found[0]


def _load_json(elf: _Elf) -> dict:
    """Parse .katana.meta and check its format_version before anything else is interpreted:
    a newer format may give other sections and fields other meanings."""
    raw = elf.contents(_only_section(elf, META_SECTION))
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise elf.error(f"{META_SECTION} is not valid UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise elf.error(f"{META_SECTION} JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, _no_duplicates, too many int digits
        raise elf.error(f"{META_SECTION} is not valid JSON: {exc}") from None
    elf.check(isinstance(obj, dict), f"{META_SECTION} JSON is not an object")
    version = obj.get("format_version")
    elf.check(type(version) is int and version >= 1,
              f"{META_SECTION} has no valid format_version")
    if version > FORMAT_VERSION:
        raise FormatError(f"{elf.name}: PO format version {version} is newer than this katana "
                          f"reads (version {FORMAT_VERSION})",
                          hint="upgrade katana to a release that reads this format")
    return obj


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _read_symbols(elf: _Elf, content: list[_Shdr]) -> tuple[_Shdr, list[_RawSymbol]]:
    """Read and check .symtab: names, kinds, bindings, sections and ranges of every symbol."""
    symtab = elf.find(SHT_SYMTAB)[0]
    entries = elf.table_entries(symtab, SYM)
    elf.check(entries and not any(entries[0]), f"{symtab.label()} lacks the null symbol")
    elf.check(0 < symtab.link < len(elf.shdrs) and elf.shdrs[symtab.link].type == SHT_STRTAB,
              f"{symtab.label()} sh_link does not name a string table")
    elf.check(1 <= symtab.info <= len(entries),
              f"{symtab.label()} sh_info {symtab.info} is out of range")
    names = elf.strtab(elf.shdrs[symtab.link])
    sizes = {sh.index: sh.size for sh in content}
    symbols = [_RawSymbol("", 0, "notype", 0, 0, 0)]
    for i, (st_name, info, other, shndx, value, size) in enumerate(entries[1:], 1):
        name = elf.string(names, st_name, f"name of symbol {i}")
        what = f"symbol {i} ({name})"
        bind, stype = info >> 4, info & 0xF
        elf.check(bind == (STB_LOCAL if i < symtab.info else STB_GLOBAL),
                  f"{what} has binding {bind}: locals must come before globals (sh_info "
                  f"{symtab.info})")
        elf.check(stype in SYMBOL_KINDS, f"{what} has an unexpected type {stype}")
        elf.check(other == 0, f"{what} has st_other {other}, expected 0")
        elf.check(shndx == SHN_UNDEF or shndx in sizes,
                  f"{what} is in section {shndx}, which is not a code or data section")
        elf.check(shndx == SHN_UNDEF or value + size <= sizes[shndx],
                  f"{what} (value {value}, size {size}) lies outside its section")
        symbols.append(_RawSymbol(name, bind, SYMBOL_KINDS[stype], shndx, value, size))
    return symtab, symbols


def _read_relocs(elf: _Elf, symtab: _Shdr, nsyms: int, content: list[_Shdr]
                 ) -> dict[int, list[tuple[int, int, int, int]]]:
    """Read every SHT_RELA section: {section index: [(offset, type, symbol, addend)]}."""
    targets = {sh.index: sh for sh in content}
    relocs: dict[int, list[tuple[int, int, int, int]]] = {}
    for sh in elf.find(SHT_RELA):
        entries = elf.table_entries(sh, RELA)
        elf.check(sh.flags == SHF_INFO_LINK, f"{sh.label()} must have flags SHF_INFO_LINK")
        elf.check(sh.link == symtab.index, f"{sh.label()} sh_link is not the .symtab")
        target = targets.get(sh.info)
        elf.check(target is not None and target.type == SHT_PROGBITS,
                  f"{sh.label()} sh_info {sh.info} is not a code or data section")
        elf.check(sh.info not in relocs, f"{target.label()} has two relocation sections")
        elf.check(sh.name == ".rela" + target.name, f"{sh.label()} should be named "
                  f".rela{target.name}")
        relocs[sh.info] = [_check_reloc(elf, sh, n, e, nsyms, target.size)
                           for n, e in enumerate(entries)]
    return relocs


def _check_reloc(elf: _Elf, sh: _Shdr, n: int, entry: tuple[int, int, int], nsyms: int,
                 limit: int) -> tuple[int, int, int, int]:
    offset, info, addend = entry
    sym, rtype = info >> 32, info & 0xFFFFFFFF
    what = f"relocation {n} of {sh.label()}"
    known = RELOC_TYPES.get(rtype)
    elf.check(known is not None, f"{what} has an unknown type {rtype}")
    elf.check(known.static, f"{what} has type {known.name}, a dynamic relocation that a "
              "relocatable PO cannot hold")
    elf.check(0 < sym < nsyms, f"{what} names symbol {sym}, out of range 1..{nsyms - 1}")
    elf.check(offset + known.size <= limit, f"{what} ({known.name} at offset {offset}) lies "
              f"outside its section (size {limit})")
    return offset, rtype, sym, addend


# -- the metadata JSON ----------------------------------------------------------------------------


@dataclass
class SymbolExtra:
    """What a symbol of the model holds beyond its ELF symbol, kept in the metadata."""

    elf: int  # index of the symbol in .symtab
    local: bool
    file: str | None
    new_name: str | None


_Fail = typing.Callable[[str], FormatError]


class _MetaDecoder:
    """Decode the metadata JSON into model objects, checking the type of every field against the
    model's own type hints (so a field the model gains is covered without a second schema)."""

    def __init__(self, oldcode: bytes, error: _Fail) -> None:
        self.oldcode = oldcode
        self.error = error

    def decode(self, obj: dict) -> tuple[Meta, list[SymbolExtra]]:
        obj = dict(obj)
        extras = self.value(list[SymbolExtra], obj.pop("symbols", None), "symbols")
        return self.value(Meta, obj, ""), extras

    def fail(self, path: str, message: str) -> FormatError:
        return self.error(f"{META_SECTION} {path or 'top level'}: {message}")

    def value(self, hint: typing.Any, value: object, path: str) -> typing.Any:
        shape, arg = _shape(hint)
        if shape == "optional":
            return None if value is None else self.value(arg, value, path)
        if shape == "literal":
            if not isinstance(value, str) or value not in arg:
                raise self.fail(path, f"expected one of {', '.join(arg)}, got {_show(value)}")
            return value
        if shape == "list":
            if not isinstance(value, list):
                raise self.fail(path, f"expected a list, got {_show(value)}")
            return [self.value(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
        if shape == "dict":
            if not isinstance(value, dict):
                raise self.fail(path, f"expected an object, got {_show(value)}")
            return {k: self.value(arg, v, f"{path}[{k!r}]") for k, v in value.items()}
        if shape == "bytes":
            return self.bytes(value, path)
        if shape == "object":
            return self.object(hint, arg, value, path)
        return self.scalar(hint, value, path)

    def scalar(self, hint: type, value: object, path: str) -> object:
        if hint is bool:
            self.expect(isinstance(value, bool), path, "true or false", value)
        elif hint is int:
            self.expect(type(value) is int and 0 <= value <= MAX_JSON_INT, path,
                        "an integer in 0..2**63-1", value)
        elif hint is str:
            self.expect(isinstance(value, str), path, "a string", value)
            try:
                value.encode("utf-8")  # type: ignore[union-attr]
            except UnicodeEncodeError:  # JSON can escape a lone surrogate (\ud800)
                raise self.fail(path, "string holds an unpaired surrogate") from None
        else:
            raise TypeError(f"no JSON mapping for {hint!r} at {path}")  # a bug in Katana
        return value

    def object(self, cls: type, hints: dict[str, typing.Any], value: object, path: str) -> object:
        self.expect(isinstance(value, dict), path, "an object", value)
        missing = [k for k in hints if k not in value]  # type: ignore[operator]
        unknown = [k for k in value if k not in hints]  # type: ignore[union-attr]
        if missing or unknown:
            raise self.fail(path, f"missing fields {missing}, unknown fields {unknown}")
        return cls(**{k: self.value(h, value[k], f"{path}.{k}" if path else k)  # type: ignore[index]
                      for k, h in hints.items()})

    def bytes(self, value: object, path: str) -> bytes:
        ref = self.value(_BytesRef, value, path)
        if ref.offset + ref.size > len(self.oldcode):
            raise self.fail(path, f"bytes {ref.offset}..{ref.offset + ref.size} lie outside "
                            f"{OLDCODE_SECTION} ({len(self.oldcode)} bytes)")
        return self.oldcode[ref.offset:ref.offset + ref.size]

    def expect(self, condition: bool, path: str, what: str, value: object) -> None:
        if not condition:
            raise self.fail(path, f"expected {what}, got {_show(value)}")


@dataclass
class _BytesRef:
    offset: int  # into .katana.oldcode
    size: int


@functools.cache
def _shape(hint: typing.Any) -> tuple[str, typing.Any]:
    """How a type hint of the model maps to JSON, worked out once per hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union):  # the model's unions are all "X | None"
        (inner,) = (a for a in args if a is not NoneType)
        return "optional", inner
    if origin is typing.Literal:
        return "literal", args
    if origin is list:
        return "list", args[0]
    if origin is dict:
        return "dict", args[1]
    if hint is bytes:
        return "bytes", None
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return "object", typing.get_type_hints(hint)
    return "scalar", None


def _show(value: object) -> str:
    return reprlib.repr(value)  # bounded in length and depth, whatever the JSON held


def _check_meta(po: PatchObject, error: _Fail) -> None:
    """Check what the types alone do not: indices in range, referenced types present, and
    transformations that stay inside the storage they read and write."""
    meta, nsyms = po.meta, len(po.symbols)

    def defined(index: int | None, path: str) -> None:
        if index is None or index >= nsyms or po.symbols[index].section is None:
            raise error(f"{META_SECTION} {path}: symbol {index} is not a symbol the PO defines")

    for i, f in enumerate(meta.functions):
        defined(f.symbol, f"functions[{i}].symbol")
    for i, v in enumerate(meta.variables):
        path = f"variables[{i}]"
        if v.status != "kept" or v.symbol is not None:
            defined(v.symbol, path + ".symbol")
        if v.type is not None or v.status == "transformed":
            t = meta.types.get(v.type) if v.type is not None else None
            if t is None:
                raise error(f"{META_SECTION} {path}.type: {v.type!r} names no entry of types")
            if t.old_size > v.old_size or t.new_size > v.new_size:
                raise error(f"{META_SECTION} {path}: type {v.type!r} is larger than the variable")
    for key, t in meta.types.items():
        for n, op in enumerate(t.ops):
            _check_op(meta.types, t, op, f"types[{key!r}].ops[{n}]", error)
    _check_no_cycle(meta.types, error)


def _check_op(types: dict[str, TypeTransform], t: TypeTransform, op: FieldOp, path: str,
              error: _Fail) -> None:
    sub = types.get(op.type) if op.type is not None else None
    if op.type is not None and sub is None:
        raise error(f"{META_SECTION} {path}.type: no type {op.type!r} in types")
    if op.kind in ("struct", "pointer") and sub is None:
        raise error(f"{META_SECTION} {path}: a {op.kind} op needs a type")
    if op.kind == "copy":
        reads, writes = op.src + op.size, op.dst + op.size
    elif op.kind == "struct":
        reads, writes = op.src + sub.old_size, op.dst + sub.new_size  # type: ignore[union-attr]
    elif op.kind == "pointer":  # x86-64 LP64: a pointer is 8 bytes
        reads, writes = op.src + 8, op.dst + 8
    else:
        old, new = (sub.old_size, sub.new_size) if sub else (op.size, op.size)
        last = max(op.count - 1, 0)
        reads = op.src + last * op.src_stride + old if op.count else 0
        writes = op.dst + last * op.dst_stride + new if op.count else 0
    if reads > t.old_size or writes > t.new_size:
        raise error(f"{META_SECTION} {path}: {op.kind} op reaches outside the {t.name!r} value "
                    f"(old size {t.old_size}, new size {t.new_size})")


def _check_no_cycle(types: dict[str, TypeTransform], error: _Fail) -> None:
    """A type cannot contain itself by value (pointers may form cycles: the engine follows them
    once each). Depth-first, without recursion: a damaged file may chain thousands of types."""
    done: set[str] = set()
    for root in types:
        if root in done:
            continue
        stack = [(root, iter(types[root].ops))]
        on_path = {root}
        while stack:
            key, ops = stack[-1]
            op = next((o for o in ops if o.kind in ("struct", "array") and o.type is not None),
                      None)
            if op is None:
                done.add(key)
                on_path.discard(key)
                stack.pop()
            elif op.type in on_path:
                raise error(f"{META_SECTION} types[{op.type!r}] contains itself by value")
            elif op.type not in done:
                on_path.add(op.type)  # type: ignore[arg-type]
                stack.append((op.type, iter(types[op.type].ops)))  # type: ignore[index]


def read_po(data: bytes, name: str = "<bytes>") -> PatchObject:
    """Parse and validate a PO; raise FormatError naming ``name`` and the damage if any."""
    elf = _Elf(bytes(data), name)
    elf.parse_sections()
    obj = _load_json(elf)
    content = _check_layout(elf)
    symtab, raw_symbols = _read_symbols(elf, content)
    relocs = _read_relocs(elf, symtab, len(raw_symbols), content)
    oldcode = elf.contents(_only_section(elf, OLDCODE_SECTION))
    meta, extras = _MetaDecoder(oldcode, elf.error).decode(obj)
    elf.check(sorted(x.elf for x in extras) == list(range(1, len(raw_symbols))),
              "metadata symbols do not list every ELF symbol exactly once")
    section_of = {sh.index: i for i, sh in enumerate(content)}
    symbols = [_model_symbol(elf, raw_symbols[x.elf], x, section_of) for x in extras]
    model_of = {x.elf: i for i, x in enumerate(extras)}
    sections = []
    for sh in content:
        sections.append(Section(
            sh.name, KIND_BY_FLAGS[(sh.type, sh.flags)],
            b"" if sh.type == SHT_NOBITS else elf.contents(sh), sh.size, sh.addralign,
            [Reloc(off, t, model_of[s], a) for off, t, s, a in relocs.get(sh.index, [])]))
    po = PatchObject(meta, sections, symbols)
    _check_meta(po, elf.error)
    return po


def _model_symbol(elf: _Elf, raw: _RawSymbol, extra: SymbolExtra, section_of: dict[int, int]
                  ) -> Symbol:
    """The model symbol of an ELF symbol and its metadata, checking that their bindings agree
    (the writer's rule: see _binding in writer.py and docs/po-format.md, section 4)."""
    defined = raw.shndx != SHN_UNDEF
    local_bind = raw.kind == "section" or (defined and extra.local)
    elf.check(raw.bind == (STB_LOCAL if local_bind else STB_GLOBAL),
              f"symbol {extra.elf} ({raw.name}) has a binding its metadata contradicts")
    return Symbol(raw.name, raw.kind, section_of.get(raw.shndx), raw.value,  # type: ignore[arg-type]
                  raw.size, extra.local, extra.file, extra.new_name)


def load_po(path: str | Path) -> PatchObject:
    """Read and validate the PO at ``path``; a missing or unreadable file is a FormatError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read Patch Object {path}: {exc.strerror or exc}",
                          hint="check the path and its permissions") from None
    return read_po(data, str(path))
