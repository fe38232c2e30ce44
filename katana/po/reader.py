"""The strict reader of Patch Object files (the format is specified in ``docs/po-format.md``).

A PO comes from disk, maybe from another machine, and is about to be loaded into a running
process: every offset, size, index and string is checked before a model is returned. Damage of
any kind raises ``FormatError`` naming the file and what is wrong; no other exception escapes.
The ELF layer is parsed here with ``struct`` against the constants of ``katana.po.elfdefs``
(shared with the writer); the metadata JSON is decoded and checked by ``katana.po.meta``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from katana.errors import FormatError
from katana.po.digest import content_digest
from katana.po.elfdefs import (
    EHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ELFOSABI_SYSV,
    EM_X86_64,
    ET_REL,
    EV_CURRENT,
    KIND_BY_FLAGS,
    META_SECTION,
    OLDCODE_SECTION,
    RELA,
    RELOC_BY_NAME,
    RELOC_TYPES,
    SHDR,
    SHF_INFO_LINK,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NAMES,
    SHT_NOBITS,
    SHT_NULL,
    SHT_PROGBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LOCAL,
    SYM,
    SYMBOL_KINDS,
    RelocType,
)
from katana.po.meta import MetaDecoder, SymbolExtra, check_meta, load_meta_json
from katana.po.model import PatchObject, Reloc, Section, Symbol

# katana.po and the tests import these from here, where they were defined before the split.
__all__ = ["EHDR", "RELOC_BY_NAME", "RELOC_TYPES", "SHDR", "RelocType", "SymbolExtra", "load_po",
           "read_po", "read_po_bytes"]

# The engine maps a patch with mmap, whose placement is page-aligned: more cannot be honoured.
MAX_ALIGN = 4096
# New code must reach the program with rel32 (+-2 GiB): a larger section cannot be one of ours.
MAX_SECTION_SIZE = 1 << 31

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
    elf.check(found or name != META_SECTION,
              f"no {name} section: an ordinary ELF file (an object?), not a Patch Object")
    elf.check(len(found) == 1, f"expected one {name} section, found {len(found)}")
    elf.check(found[0].flags == 0, f"{name} must have no flags")
    return found[0]


def _load_json(elf: _Elf) -> dict:
    """The metadata JSON, parsed and its format_version checked (see katana.po.meta)."""
    return load_meta_json(elf.contents(_only_section(elf, META_SECTION)), elf.name, elf.error)


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


def read_po(data: bytes, name: str = "<bytes>") -> PatchObject:
    """Parse and validate a PO; raise FormatError naming ``name`` and the damage if any."""
    elf = _Elf(bytes(data), name)
    elf.parse_sections()
    obj = _load_json(elf)
    content = _check_layout(elf)
    symtab, raw_symbols = _read_symbols(elf, content)
    relocs = _read_relocs(elf, symtab, len(raw_symbols), content)
    oldcode = elf.contents(_only_section(elf, OLDCODE_SECTION))
    meta, extras = MetaDecoder(oldcode, elf.error).decode(obj)
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
    check_meta(po, elf.error)
    if po.meta.digest != content_digest(po):
        raise elf.error("its content does not match its digest: code or data bytes are damaged")
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
                  raw.size, extra.local, extra.file, extra.new_name, extra.entry)


def read_po_bytes(path: str | Path) -> bytes:
    """The bytes of the PO file at ``path``; a missing or unreadable file is a FormatError."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read Patch Object {path}: {exc.strerror or exc}",
                          hint="check the path and its permissions") from None


def load_po(path: str | Path) -> PatchObject:
    """Read and validate the PO at ``path``; a missing or unreadable file is a FormatError."""
    return read_po(read_po_bytes(path), str(path))
