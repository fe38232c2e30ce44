"""The writer of Patch Object files (the format is specified in ``docs/po-format.md``).

A PO is a small ELF64 relocatable file, written here byte by byte: lief cannot add sections to a
relocatable file reliably, and the few sections a PO holds are simple to lay out. The same model
always gives the same bytes (no timestamps, nothing reordered but what ELF requires). Every file is
read back with the strict reader before it is written, so Katana never writes a PO it would refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path

from katana.errors import FormatError, GenerateError
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
    META_SECTION,
    OLDCODE_SECTION,
    RELA,
    SECTION_KINDS,
    SHDR,
    SHF_INFO_LINK,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LOCAL,
    STT_BY_KIND,
    SYM,
)
from katana.po.model import PatchObject, Section, Symbol
from katana.po.reader import read_po

_FILE_ALIGN = 16  # file offsets of contents; the load address alignment is sh_addralign's job


class _StringTable:
    """An ELF string table: a NUL, then each distinct string once, NUL-terminated."""

    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}

    def add(self, text: str) -> int:
        if text not in self.offsets:
            if "\0" in text:
                raise GenerateError(f"cannot write a PO: the name {text!r} holds a NUL byte")
            self.offsets[text] = len(self.data)
            self.data += text.encode("utf-8") + b"\0"
        return self.offsets[text]


class _Out:
    """Section headers and their contents, laid out into one file at the end."""

    def __init__(self) -> None:
        self.shstrtab = _StringTable()
        self.headers: list[list] = []  # [name, type, flags, link, info, align, entsize, data]

    def add(self, name: str, sh_type: int, flags: int, data: bytes | int, *, link: int = 0,
            info: int = 0, align: int = 1, entsize: int = 0) -> int:
        """Add a section (data is its size for SHT_NOBITS); return its index."""
        self.headers.append([name, sh_type, flags, link, info, align, entsize, data])
        return len(self.headers)  # index 0 is the null section header, added at layout

    def layout(self, shstrndx: int) -> bytes:
        body = bytearray(EHDR.size)
        table = [b"\0" * SHDR.size]
        for name, sh_type, flags, link, info, align, entsize, data in self.headers:
            if sh_type == SHT_NOBITS:
                offset, size = len(body), data
            else:
                body += b"\0" * (-len(body) % min(max(align, 1), _FILE_ALIGN))
                offset, size = len(body), len(data)
                body += data
            table.append(SHDR.pack(self.shstrtab.add(name), sh_type, flags, 0, offset, size,
                                   link, info, align, entsize))
        body += b"\0" * (-len(body) % 8)  # Elf64_Shdr fields are 8-byte words
        shoff = len(body)
        body += b"".join(table)
        ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV]) + bytes(8)
        body[:EHDR.size] = EHDR.pack(ident, ET_REL, EM_X86_64, EV_CURRENT, 0, 0, shoff, 0,
                                     EHDR.size, 0, 0, SHDR.size, len(table), shstrndx)
        return bytes(body)


def _binding(sym: Symbol) -> int:
    # gABI: STT_SECTION symbols are STB_LOCAL, and an undefined symbol that is local means
    # nothing to ELF tools; model locals of the target program are kept in the metadata.
    if sym.kind == "section" or (sym.section is not None and sym.local):
        return STB_LOCAL
    return STB_GLOBAL


def _symbol_order(po: PatchObject) -> list[int]:
    """Model indices in .symtab order: ELF wants every STB_LOCAL before the first STB_GLOBAL."""
    locals_ = [i for i, s in enumerate(po.symbols) if _binding(s) == STB_LOCAL]
    globals_ = [i for i, s in enumerate(po.symbols) if _binding(s) == STB_GLOBAL]
    return locals_ + globals_


def _symtab(po: PatchObject, order: list[int], strtab: _StringTable) -> bytes:
    out = bytearray(SYM.size)
    for i in order:
        sym = po.symbols[i]
        if sym.kind not in STT_BY_KIND:
            raise GenerateError(f"cannot write a PO: symbol {sym.name!r} has kind {sym.kind!r}")
        if sym.section is not None and not 0 <= sym.section < len(po.sections):
            raise GenerateError(f"cannot write a PO: symbol {sym.name!r} names section "
                                f"{sym.section}, out of range")
        shndx = SHN_UNDEF if sym.section is None else sym.section + 1
        info = _binding(sym) << 4 | STT_BY_KIND[sym.kind]
        out += _pack(SYM, f"symbol {sym.name!r}", strtab.add(sym.name), info, 0, shndx,
                     sym.value, sym.size)
    return bytes(out)


def _rela(sec: Section, elf_index: dict[int, int]) -> bytes:
    out = bytearray()
    for n, r in enumerate(sec.relocs):
        if r.symbol not in elf_index:
            raise GenerateError(f"cannot write a PO: relocation {n} of {sec.name} names symbol "
                                f"{r.symbol}, out of range")
        out += _pack(RELA, f"relocation {n} of {sec.name}", r.offset,
                     elf_index[r.symbol] << 32 | r.type, r.addend)
    return bytes(out)


def _pack(layout: struct.Struct, what: str, *values: int) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:  # a value does not fit its ELF field
        raise GenerateError(f"cannot write a PO: {what} has a field out of range ({exc})") \
            from None


def _meta_json(po: PatchObject, order: list[int]) -> tuple[bytes, bytes]:
    """The .katana.meta JSON and the .katana.oldcode bytes it points into."""
    oldcode = bytearray()

    def encode(value: object) -> object:
        if is_dataclass(value):
            return {f.name: encode(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, bytes):
            ref = {"offset": len(oldcode), "size": len(value)}
            oldcode.extend(value)
            return ref
        return value

    elf_index = {model: elf for elf, model in enumerate(order, 1)}
    obj = encode(po.meta)
    if po.meta.target is None:  # a program's PO: as written before libraries were patched
        del obj["target"]  # type: ignore[union-attr]
    obj["symbols"] = [{"elf": elf_index[i], "local": s.local, "file": s.file,  # type: ignore[index]
                       "new_name": s.new_name, "entry": s.entry} for i, s in enumerate(po.symbols)]
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8"), bytes(oldcode)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise GenerateError(f"cannot write a PO: its metadata is not valid JSON ({exc})") \
            from None


def _build(po: PatchObject) -> bytes:
    out, strtab = _Out(), _StringTable()
    order = _symbol_order(po)
    elf_index = {model: elf for elf, model in enumerate(order, 1)}
    for sec in po.sections:
        if sec.kind not in SECTION_KINDS:
            raise GenerateError(f"cannot write a PO: section {sec.name} has kind {sec.kind!r}")
        sh_type, flags = SECTION_KINDS[sec.kind]
        out.add(sec.name, sh_type, flags, sec.size if sh_type == SHT_NOBITS else sec.data,
                align=sec.align)
    with_relocs = [(i, sec) for i, sec in enumerate(po.sections, 1) if sec.relocs]
    symtab_index = len(po.sections) + len(with_relocs) + 3  # after the relas, meta, oldcode
    for i, sec in with_relocs:
        out.add(".rela" + sec.name, SHT_RELA, SHF_INFO_LINK, _rela(sec, elf_index),
                link=symtab_index, info=i, align=8, entsize=RELA.size)
    meta, oldcode = _meta_json(po, order)
    out.add(META_SECTION, SHT_PROGBITS, 0, meta)
    out.add(OLDCODE_SECTION, SHT_PROGBITS, 0, oldcode)
    symbols = _symtab(po, order, strtab)
    nlocals = sum(1 for i in order if _binding(po.symbols[i]) == STB_LOCAL)
    out.add(".symtab", SHT_SYMTAB, 0, symbols, link=symtab_index + 1, info=nlocals + 1,
            align=8, entsize=SYM.size)
    out.add(".strtab", SHT_STRTAB, 0, bytes(strtab.data))
    out.shstrtab.add(".shstrtab")
    for name, *_ in out.headers:
        out.shstrtab.add(name)  # complete the table before it is itself laid out
    shstrndx = out.add(".shstrtab", SHT_STRTAB, 0, bytes(out.shstrtab.data))
    return out.layout(shstrndx)


def po_bytes(po: PatchObject) -> bytes:
    """The bytes of the PO file for ``po``; GenerateError if the model cannot be written
    faithfully (the written file is read back and must give the same model). Sets the model's
    ``meta.digest``."""
    po.meta.digest = content_digest(po)
    data = _build(po)
    try:
        again = read_po(data, "<generated PO>")
    except FormatError as exc:
        raise GenerateError(f"cannot write a valid PO: {exc.message}") from None
    if again != po:
        raise GenerateError("cannot write a PO that reads back as written: "
                            f"{_first_difference(po, again, 'po')}")
    return data


def _first_difference(a: object, b: object, path: str) -> str:
    """Where two models first differ, for a message a developer can act on."""
    if is_dataclass(a) and type(a) is type(b):
        for f in fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                return _first_difference(getattr(a, f.name), getattr(b, f.name),
                                         f"{path}.{f.name}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path} is {a!r:.60} in the model but {b!r:.60} in the file"


def write_po(po: PatchObject, path: str | Path) -> None:
    """Write ``po`` to ``path`` atomically: a temporary file in the same directory, renamed."""
    path = Path(path)
    if not path.name or (path.exists() and not path.is_file()):
        # writing means renaming a new file over the path: over /dev/null, as root, that would
        # replace the device itself
        raise GenerateError(f"{path} is not a regular file: a Patch Object cannot be written "
                            "there", hint="give a file path (ending in .po) for the output")
    data = po_bytes(po)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a PO is a build artifact others read
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise GenerateError(f"cannot write Patch Object {path}: {exc.strerror or exc}",
                            hint="check that the directory exists and is writable") from None
