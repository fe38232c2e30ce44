"""The executable's ``.symtab``: functions and objects, global and local, by name and by address.

A katana build is never stripped, so the static symbol table names every function and variable,
``static`` ones included. Local symbols are told apart by the STT_FILE symbol that precedes them
(the source file's basename, ``store.c``): the ELF spec puts every local symbol before the first
global, and GNU ld keeps each input object's locals together behind its STT_FILE.

The table is located and its entries unpacked with ``struct`` in one pass, about ten times faster
than pyelftools' per-symbol objects on a 1 MB executable.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

from katana.errors import BuildError, FormatError

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_TLS = 6
STT_GNU_IFUNC = 10
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
SHN_UNDEF = 0
SHN_ABS = 0xFFF1

_ELF64_SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
# Kinds a patch can refer to. STT_TLS values are offsets in the TLS block, not addresses: who
# looks one up checks the type.
_ADDRESSABLE = {STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_GNU_IFUNC, STT_TLS}


class ElfSymbol(NamedTuple):
    """A symbol as the file says (link-time value: add the load bias for a PIE)."""

    name: str
    value: int
    size: int
    type: int  # STT_*
    bind: int  # STB_*
    file: str | None  # the STT_FILE name a local symbol belongs to; None for globals
    absolute: bool = False  # SHN_ABS: the value is an address already, no bias

    @property
    def local(self) -> bool:
        return self.bind == STB_LOCAL


def _file_matches(owner: str | None, file: str) -> bool:
    if owner is None:
        return False
    return owner == file or os.path.basename(owner) == os.path.basename(file)


class ExecutableSymbols:
    """The symbols of one executable file. Use ``executable_symbols(path)`` (cached)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._globals: dict[str, list[ElfSymbol]] = {}
        self._locals: dict[str, list[ElfSymbol]] = {}
        # every STT_FILE name: which objects went into the link, locals or not
        self.file_names: set[str] = set()
        for sym in _read_symtab(path, self.file_names):
            table = self._locals if sym.local else self._globals
            table.setdefault(sym.name, []).append(sym)
        funcs = sorted(
            (s for group in (self._globals, self._locals) for syms in group.values() for s in syms
             if s.type in (STT_FUNC, STT_GNU_IFUNC) and s.size > 0),
            key=lambda s: (s.value, s.local),  # at one address, a global name wins
        )
        self._funcs: list[ElfSymbol] = []
        for s in funcs:
            if not self._funcs or self._funcs[-1].value != s.value:
                self._funcs.append(s)
        self._starts = [s.value for s in self._funcs]
        # every function entry, sizeless ones too (_init, _fini): what bounds a function's room
        self._entries = sorted({s.value for group in (self._globals, self._locals)
                                for syms in group.values() for s in syms
                                if s.type in (STT_FUNC, STT_GNU_IFUNC)})

    def find(self, name: str, file: str | None = None) -> ElfSymbol | None:
        """The symbol called ``name``; None when there is none.

        Without ``file``: the global (GLOBAL before WEAK), else the only local of that name.
        With ``file``: the local of that name under that STT_FILE name. Two candidates that
        cannot be told apart raise FormatError.
        """
        if file is not None:
            found = [s for s in self._locals.get(name, ()) if _file_matches(s.file, file)]
            return self._one(found, name, f" in {file}")
        globals_ = self._globals.get(name, [])
        if globals_:
            return min(globals_, key=lambda s: s.bind != STB_GLOBAL)
        return self._one(self._locals.get(name, []), name, "")

    def _one(self, found: list[ElfSymbol], name: str, where: str) -> ElfSymbol | None:
        if len(found) > 1:
            files = ", ".join(sorted({s.file or "?" for s in found}))
            raise FormatError(
                f"{len(found)} local symbols '{name}'{where} in {self.path} (files: {files})",
                hint="two objects with the same source file name define it; rename one file "
                "or make the symbol unique",
            )
        return found[0] if found else None

    def function_at(self, value: int) -> ElfSymbol | None:
        """The function whose [value, value + size) holds ``value`` (link-time address)."""
        index = bisect.bisect_right(self._starts, value) - 1
        if index >= 0 and value < self._funcs[index].value + self._funcs[index].size:
            return self._funcs[index]
        return None

    def file_groups(self, file: str) -> list[tuple[str, set[tuple[str, int]]]]:
        """Every STT_FILE group of one source basename, in link order: its key ("util.c",
        "util.c#2") and the (name, size) of its local functions and variables."""
        groups: dict[str, set[tuple[str, int]]] = {}
        for syms in self._locals.values():
            for s in syms:
                if s.file is not None and s.file.partition("#")[0] == file and \
                        s.type in (STT_FUNC, STT_OBJECT, STT_TLS):
                    groups.setdefault(s.file, set()).add((s.name, s.size))
        return sorted(groups.items(), key=lambda g: int(g[0].partition("#")[2] or 1))

    def next_function(self, value: int) -> int | None:
        """Link-time start of the first function above ``value`` (None past the last one)."""
        index = bisect.bisect_right(self._entries, value)
        return self._entries[index] if index < len(self._entries) else None

    def previous_function_end(self, value: int) -> int | None:
        """Link-time end of the last function that starts below ``value`` (None if none)."""
        index = bisect.bisect_left(self._starts, value) - 1
        return self._funcs[index].value + self._funcs[index].size if index >= 0 else None

    def find_global(self, name: str) -> ElfSymbol | None:
        """The global (or weak) symbol called ``name``, never a local of that name."""
        found = self._globals.get(name, [])
        return min(found, key=lambda s: s.bind != STB_GLOBAL) if found else None

    def iter_symbols(self) -> list[ElfSymbol]:
        """Every addressable defined symbol, globals then locals."""
        return [s for group in (self._globals, self._locals) for v in group.values() for s in v]


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SHT_SYMTAB = 2


def _read_symtab(path: str, files: set[str] | None = None) -> list[ElfSymbol]:
    try:
        with open(path, "rb") as f:
            data, strtab = _symtab_bytes(f)
    except (OSError, struct.error, ValueError) as e:
        raise FormatError(f"cannot read the symbols of {path}: {e}") from None
    if data is None:
        raise BuildError(
            f"{path} has no .symtab: it was stripped",
            hint="patching needs the build's own executable, symbols kept (the katana "
                 "SCons tool refuses -s and --strip-all; for make, link with "
                 "`katana flags --ldflags` and without -s)",
        )
    return list(_parse(data, strtab, files))


def _symtab_bytes(f) -> tuple[bytes | None, bytes]:
    """The SHT_SYMTAB section and its string table, found through the section headers with
    ``struct`` (ELF64 little-endian, gABI "Sections"); pyelftools built every header for it."""
    ident, *_, shoff, _, _, _, _, shentsize, shnum, _ = _EHDR.unpack(f.read(_EHDR.size))
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    f.seek(shoff)
    table = f.read(max(shnum, 1) * shentsize)
    first = _SHDR.unpack_from(table, 0)
    if shnum == 0:  # more than 0xff00 sections: the count is in section 0's sh_size
        shnum = first[5]
        f.seek(shoff)
        table = f.read(shnum * shentsize)
    headers = [_SHDR.unpack_from(table, i * shentsize) for i in range(shnum)]
    symtab = next((h for h in headers if h[1] == _SHT_SYMTAB), None)
    if symtab is None:
        return None, b""
    f.seek(symtab[4])
    data = f.read(symtab[5])
    strings = headers[symtab[6]]
    f.seek(strings[4])
    return data, f.read(strings[5])


def _parse(data: bytes, strtab: bytes, files: set[str] | None = None) -> Iterator[ElfSymbol]:
    current_file: str | None = None
    # Two objects of one source basename (src/a/util.c, src/b/util.c) both open an STT_FILE
    # "util.c" group, in link order: the second one's locals belong to "util.c#2".
    seen: dict[str, int] = {}
    for st_name, info, _other, shndx, value, size in _ELF64_SYM.iter_unpack(data):
        kind, bind = info & 0xF, info >> 4
        name = strtab[st_name : strtab.index(b"\0", st_name)].decode(errors="replace")
        # GNU ld spells a copy-relocated library object by its version (stdout@GLIBC_2.2.5):
        # the program's copy is the one the library itself uses, so it answers to the bare name.
        name = name.partition("@")[0]
        if kind == STT_FILE:
            if files is not None:
                files.add(name)
            seen[name] = seen.get(name, 0) + 1
            current_file = name if seen[name] == 1 else f"{name}#{seen[name]}"
            continue
        if kind not in _ADDRESSABLE or shndx == SHN_UNDEF or not name:
            continue
        owner = current_file if bind == STB_LOCAL else None
        yield ElfSymbol(name, value, size, kind, bind, owner, shndx == SHN_ABS)


_CACHE: dict[tuple[int, int, int, int], ExecutableSymbols] = {}
_CACHE_SIZE = 16


def executable_symbols(path: str) -> ExecutableSymbols:
    """The symbols of the executable at ``path`` (``/proc/PID/exe`` works too), cached by the
    file's identity and mtime, so every process of one build shares one table."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise FormatError(f"cannot read the symbols of {path}: {e.strerror}") from None
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ExecutableSymbols(path)
    return _CACHE[key]
