"""What a linked object's dynamic section says: is it a shared library, its soname, and the
dynamic relocations the dynamic linker applied to it (``.rela.dyn``).

A PIE executable and a shared library are both ET_DYN; only an executable asks for an
interpreter (PT_INTERP). Read with ``struct`` (katana.elf.headers), as apply reads executables.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from katana.elf.headers import ET_DYN, read_headers, read_section
from katana.errors import FormatError

PT_INTERP = 3
DT_NULL, DT_SONAME = 0, 14
SHT_DYNSYM = 11
R_X86_64_64 = 1
R_X86_64_GLOB_DAT = 6
R_X86_64_JUMP_SLOT = 7
R_X86_64_RELATIVE = 8
R_X86_64_DTPMOD64 = 16
R_X86_64_TPOFF64 = 18
_DYN = struct.Struct("<qQ")
_RELA = struct.Struct("<QQq")
_SYM = struct.Struct("<IBBHQQ")


@dataclass(frozen=True)
class DynamicReloc:
    """One relocation of ``.rela.dyn``: where (link-time), what type, against which symbol."""

    offset: int
    type: int
    symbol: str  # "" for none (a local: its value is in the addend)
    value: int  # the symbol's st_value in this object (0 when undefined or none)
    addend: int


@dataclass(frozen=True)
class DynamicInfo:
    library: bool  # ET_DYN without an interpreter: a shared library, not a PIE program
    soname: str | None


def _string(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode(errors="replace")


def _identity(path: str | Path) -> tuple[str, int, int, int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise FormatError(f"{path}: cannot read its dynamic section ({e.strerror})") from e
    return str(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def read_dynamic(path: str | Path) -> DynamicInfo:
    """Whether the ELF file at ``path`` is a shared library, and its soname (a few reads)."""
    return _read_dynamic(*_identity(path))


def dynamic_relocs(path: str | Path) -> tuple[DynamicReloc, ...]:
    """The relocations of ``.rela.dyn`` (read once per file and version: a big library has
    tens of thousands, so only the library a patch is for is read)."""
    return _dynamic_relocs(*_identity(path))


def bound_relocs(path: str | Path) -> tuple[DynamicReloc, ...]:
    """The relocations that bind a GOT slot to a symbol's final address (``R_X86_64_JUMP_SLOT``
    of ``.rela.plt``, ``R_X86_64_GLOB_DAT`` of ``.rela.dyn``): where an object's calls to an
    IFUNC find the implementation the dynamic linker chose."""
    return _bound_relocs(*_identity(path))


@functools.lru_cache(maxsize=64)
def _read_dynamic(path: str, _dev: int, _ino: int, _mtime: int, _size: int) -> DynamicInfo:
    try:
        with open(path, "rb") as f:
            headers = read_headers(f)
            library = headers.e_type == ET_DYN and \
                not any(p.p_type == PT_INTERP for p in headers.segments)
            soname = None
            dynamic = headers.section(".dynamic")
            if dynamic is not None and dynamic.sh_link < len(headers.sections):
                strtab = read_section(f, headers.sections[dynamic.sh_link])
                raw = read_section(f, dynamic)
                for i in range(len(raw) // _DYN.size):
                    tag, value = _DYN.unpack_from(raw, i * _DYN.size)
                    if tag == DT_NULL:
                        break
                    if tag == DT_SONAME:
                        soname = _string(strtab, value)
    except (OSError, ValueError, struct.error) as e:
        raise FormatError(f"{path}: cannot read its dynamic section ({e})") from e
    return DynamicInfo(library, soname)


@functools.lru_cache(maxsize=8)
def _dynamic_relocs(path: str, _dev: int, _ino: int, _mtime: int,
                    _size: int) -> tuple[DynamicReloc, ...]:
    try:
        with open(path, "rb") as f:
            return tuple(_relocs(f, read_headers(f)))
    except (OSError, ValueError, struct.error) as e:
        raise FormatError(f"{path}: cannot read its dynamic relocations ({e})") from e


@functools.lru_cache(maxsize=32)
def _bound_relocs(path: str, _dev: int, _ino: int, _mtime: int,
                  _size: int) -> tuple[DynamicReloc, ...]:
    try:
        with open(path, "rb") as f:
            headers = read_headers(f)
            return tuple(r for section in (".rela.plt", ".rela.dyn")
                         for r in _relocs(f, headers, section)
                         if r.type in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT) and r.symbol)
    except (OSError, ValueError, struct.error) as e:
        raise FormatError(f"{path}: cannot read its dynamic relocations ({e})") from e


def _relocs(f, headers, section: str = ".rela.dyn") -> list[DynamicReloc]:
    rela = headers.section(section)
    if rela is None or rela.sh_link >= len(headers.sections):
        return []
    symtab = headers.sections[rela.sh_link]
    syms = read_section(f, symtab) if symtab.sh_type == SHT_DYNSYM else b""
    names = read_section(f, headers.sections[symtab.sh_link]) if syms else b""
    raw = read_section(f, rela)
    found = []
    for i in range(len(raw) // _RELA.size):
        offset, info, addend = _RELA.unpack_from(raw, i * _RELA.size)
        index, name, value = info >> 32, "", 0
        if index and (index + 1) * _SYM.size <= len(syms):
            st_name, _info, _other, shndx, st_value, _size = _SYM.unpack_from(
                syms, index * _SYM.size)
            name, value = _string(names, st_name), st_value if shndx else 0
        found.append(DynamicReloc(offset, info & 0xFFFFFFFF, name, value, addend))
    return found


def is_shared_library(path: str | Path) -> bool:
    return read_dynamic(path).library
