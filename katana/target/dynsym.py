"""Exported symbols of shared libraries (``.dynsym``), read with lief.

lief reads libc's 2,800 dynamic symbols in a few milliseconds (pyelftools: ~70 ms), but importing
it costs ~0.3 s, so it is imported on first use only.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from katana.errors import TargetError

_VERSYM_HIDDEN = 0x8000  # versym bit: a non-default version ("name@VER", not "name@@VER")


class DynSymbol(NamedTuple):
    """An exported definition in a shared library (value: link-time, add the library's bias)."""

    name: str
    value: int
    size: int
    ifunc: bool  # STT_GNU_IFUNC: value is the resolver, not the function
    default: bool  # the default version (name@@VER) or unversioned
    version: str | None
    weak: bool
    function: bool = True  # STT_FUNC or STT_GNU_IFUNC; data cannot hide behind a code stub


class LibrarySymbols:
    """The exported symbols of one library file. Use ``library_symbols(path)`` (cached)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._by_name: dict[str, list[DynSymbol]] = {}
        for sym in _read_dynsym(path):
            self._by_name.setdefault(sym.name, []).append(sym)

    def find(self, name: str, version: str | None = None) -> DynSymbol | None:
        """The definition an unversioned reference binds to (the default version), or the one
        of ``version`` when given; GLOBAL preferred over WEAK."""
        found = [
            s for s in self._by_name.get(name, ())
            if (s.version == version if version is not None else s.default)
        ]
        return min(found, key=lambda s: s.weak) if found else None


def _read_dynsym(path: str) -> list[DynSymbol]:
    from katana.target.process import sigint_deferred

    with sigint_deferred():
        import lief  # noqa: PLC0415 - 0.3 s to import: only when a library symbol is needed

    binary = lief.ELF.parse(path)
    if binary is None:
        raise TargetError(f"cannot read the dynamic symbols of {path}")
    kinds = {
        lief.ELF.Symbol.TYPE.FUNC: False,
        lief.ELF.Symbol.TYPE.OBJECT: False,
        lief.ELF.Symbol.TYPE.NOTYPE: False,
        lief.ELF.Symbol.TYPE.GNU_IFUNC: True,
    }
    binds = {lief.ELF.Symbol.BINDING.GLOBAL, lief.ELF.Symbol.BINDING.WEAK,
             lief.ELF.Symbol.BINDING.GNU_UNIQUE}
    result = []
    for s in binary.dynamic_symbols:
        if s.shndx == 0 or s.type not in kinds or s.binding not in binds or not s.name:
            continue
        result.append(DynSymbol(s.name, s.value, s.size, kinds[s.type], *_version(s),
                                s.binding == lief.ELF.Symbol.BINDING.WEAK,
                                s.type in (lief.ELF.Symbol.TYPE.FUNC,
                                           lief.ELF.Symbol.TYPE.GNU_IFUNC)))
    return result


def _version(sym: object) -> tuple[bool, str | None]:
    sv = sym.symbol_version  # type: ignore[attr-defined]
    if sv is None:
        return True, None
    name = sv.symbol_version_auxiliary.name if sv.has_auxiliary_version else None
    return not (sv.value & _VERSYM_HIDDEN), name


_CACHE: dict[tuple[int, int, int, int], LibrarySymbols] = {}


def library_symbols(path: str) -> LibrarySymbols:
    """The exported symbols of the library at ``path``, cached by file identity and mtime."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise TargetError(f"cannot read the symbols of {path}: {e.strerror}") from None
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE[key] = LibrarySymbols(path)
    return _CACHE[key]
