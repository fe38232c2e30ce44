"""What an object's compile unit says about how it was built: DW_AT_producer (the compiler and
its code-generation flags), DW_AT_comp_dir and DW_AT_name.

Only the first DIE of ``.debug_info`` is decoded, by hand: pyelftools applies every relocation of
``.debug_info`` before it returns anything, ~350 ms for one object of 200 functions, to read three
strings. DWARF 4 and 5 (DWARF 5 section 7.5: unit headers, abbreviations, attribute forms).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from katana.elf.leb128 import read_uleb
from katana.elf.objfile import ObjectFile, ObjSection

DW_AT_producer, DW_AT_name, DW_AT_comp_dir = 0x25, 0x03, 0x1B
_WANTED = {DW_AT_producer: "producer", DW_AT_name: "name", DW_AT_comp_dir: "comp_dir"}
DW_FORM_string, DW_FORM_strp, DW_FORM_line_strp = 0x08, 0x0E, 0x1F
DW_FORM_implicit_const = 0x21
_FIXED = {0x0B: 1, 0x05: 2, 0x06: 4, 0x07: 8, 0x1E: 16, 0x0C: 1, 0x19: 0, 0x11: 1, 0x12: 2,
          0x13: 4, 0x14: 8, 0x20: 8, 0x0E: 4, 0x1F: 4, 0x17: 4, 0x10: 4, 0x25: 1, 0x26: 2,
          0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4, 0x1C: 4, 0x1D: 8}
_LEB = {0x0D, 0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23}  # sdata, udata, ref_udata, strx, addrx, ...
DW_FORM_addr = 0x01


@dataclass(frozen=True)
class CompileUnit:
    producer: str  # "GNU C17 12.2.0 -mtune=generic -g -O2 -ffunction-sections ..."
    name: str
    comp_dir: str

    @property
    def flags(self) -> list[str]:
        """The command-line options GCC recorded (those that affect code generation)."""
        return [w for w in self.producer.split() if w.startswith("-")]

    @property
    def gcc_major(self) -> int | None:
        words = self.producer.split()
        if len(words) < 3 or words[0] != "GNU" or not words[2][:1].isdigit():
            return None  # clang: "clang version 15.0.7 ..."
        return int(words[2].split(".")[0])


def _abbrev(data: bytes, at: int, code: int) -> list[tuple[int, int, int]] | None:
    """The (attribute, form, implicit constant) list of abbreviation ``code``."""
    while at < len(data):
        this, at = read_uleb(data, at)
        if this == 0:
            return None
        _tag, at = read_uleb(data, at)
        at += 1  # DW_CHILDREN_yes/no
        specs = []
        while True:
            name, at = read_uleb(data, at)
            form, at = read_uleb(data, at)
            const = 0
            if form == DW_FORM_implicit_const:
                const, at = read_uleb(data, at)  # a signed LEB; only its length matters here
            if name == 0 and form == 0:
                break
            specs.append((name, form, const))
        if this == code:
            return specs
    return None


def _string(sec: ObjSection | None, offset: int) -> str:
    if sec is None:
        return ""
    end = sec.data.find(b"\0", offset)
    return sec.data[offset:end if end >= 0 else len(sec.data)].decode("utf-8", "replace")


def compile_unit(obj: ObjectFile) -> CompileUnit | None:
    """The first compile unit's producer, name and directory; None without DWARF (or in a
    form this reader does not know: then nothing is checked from it)."""
    by_name = {s.name: s for s in obj.sections}
    info, abbrev = by_name.get(".debug_info"), by_name.get(".debug_abbrev")
    if info is None or abbrev is None or len(info.data) < 12:
        return None
    try:
        return _read(obj, info, abbrev, by_name)
    except (IndexError, struct.error):
        return None


def _read(obj: ObjectFile, info: ObjSection, abbrev: ObjSection,
          by_name: dict[str, ObjSection]) -> CompileUnit | None:
    data = info.data
    version = struct.unpack_from("<H", data, 4)[0]
    if version >= 5:
        addr_size, at = data[7], 12
    elif version >= 2:
        addr_size, at = data[10], 11
    else:
        return None
    # in a .o, string offsets are relocations against .debug_str (RELA: the field holds 0)
    relocated = {r.offset: obj.symbols[r.sym].value + r.addend for r in info.relocs
                 if r.offset < 512}
    code, at = read_uleb(data, at)
    specs = _abbrev(abbrev.data, 0, code)
    if specs is None:
        return None
    found: dict[str, str] = {}
    for name, form, _const in specs:
        if form == DW_FORM_string:
            end = data.index(b"\0", at)
            value, at = data[at:end].decode("utf-8", "replace"), end + 1
        elif form in (DW_FORM_strp, DW_FORM_line_strp):
            offset = relocated.get(at, struct.unpack_from("<I", data, at)[0])
            table = by_name.get(".debug_str" if form == DW_FORM_strp else ".debug_line_str")
            value, at = _string(table, offset), at + 4
        elif form == DW_FORM_addr:
            value, at = "", at + addr_size
        elif form in _FIXED:
            value, at = "", at + _FIXED[form]
        elif form in _LEB:
            value, at = "", read_uleb(data, at)[1]
        elif form == DW_FORM_implicit_const:
            value = ""
        else:
            return None  # a form we cannot skip: stop rather than misread
        if name in _WANTED:
            found[_WANTED[name]] = value
    if "producer" not in found:
        return None
    return CompileUnit(found["producer"], found.get("name", ""), found.get("comp_dir", ""))
