"""The variables of one relocatable object and their DWARF types, parsed once per object.

A variable DIE is tied to its ELF symbol by the relocation of its DW_OP_addr operand: in a ``.o``
the address is zero until linked, and ``.rela.debug_info`` says which symbol it will be (or which
section plus addend, for a local: the assembler rewrites references to local symbols that way). This
is exact where names are not: GCC calls a static local ``counter.0``, two functions may each have a
``counter``, and a static function inlined into its caller takes its static locals along. Variables
without a location (optimised out, or only declared here) are found by name.
"""

from __future__ import annotations

import io
import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from katana.dwarf.types import CType, TypeBuilder, die_name
from katana.errors import BuildError, FormatError, GenerateError

R_X86_64_DTPOFF64 = 17
R_X86_64_DTPOFF32 = 21


def _teach_pyelftools_tls_relocations() -> None:
    """The DWARF of a thread-local variable locates it by its offset in the TLS block, with an
    R_X86_64_DTPOFF32/64 relocation pyelftools 0.33 does not know (it refuses the whole
    .debug_info). For reading types, the value is plain symbol + addend."""
    from elftools.elf import relocation

    handler = relocation.RelocationHandler
    recipes = dict(handler._RELOCATION_RECIPES_X64)
    for rtype, size in ((R_X86_64_DTPOFF32, 4), (R_X86_64_DTPOFF64, 8)):
        recipes.setdefault(rtype, handler._RELOCATION_RECIPE_TYPE(
            bytesize=size, has_addend=True, calc_func=relocation._reloc_calc_sym_plus_addend))
    handler._RELOCATION_RECIPES_X64 = recipes


_teach_pyelftools_tls_relocations()

_DW_OP_addr = 0x03
_DW_OP_const8u = 0x0E  # TLS variables: DW_OP_const8u <dtpoff> DW_OP_form_tls_address
_LOCAL_SUFFIX = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")  # GCC's static local symbols: counter.0
_CACHE_SIZE = 256


@dataclass
class Variable:
    """A variable DIE of an object, with what identifies it."""

    name: str  # the C name
    function: str | None  # the enclosing function of a static local, None at file scope
    symbol: str | None  # the ELF symbol its storage is, when its location says so
    declaration: bool  # only declared here (extern), no storage in this object
    die: DIE


class _SectionCache(ELFFile):
    """ELFFile with each section made once. pyelftools builds a section anew at every
    ``get_section``, and finding the relocations of each debug section walks them all: for a
    small object that was 30 of the 45 ms it took to read its DWARF."""

    def get_section(self, n: int, type=None):  # noqa: A002 (pyelftools' parameter name)
        cache = self.__dict__.setdefault("_katana_sections", {})
        if n not in cache:
            cache[n] = super().get_section(n)
        section = cache[n]
        if type and section["sh_type"] not in type:
            return super().get_section(n, type)  # pyelftools' own error
        return section


class ObjectDwarf:
    """The DWARF of one relocatable object, with its variables indexed by symbol and by name."""

    parse_count = 0  # objects parsed so far, in this process: the cache is judged by it

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        ObjectDwarf.parse_count += 1
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise FormatError(f"{self.path}: cannot read: {exc.strerror}") from exc
        try:
            self._elf = _SectionCache(io.BytesIO(data))
            self._dwarf = self._load_dwarf()
            self._addr_symbols = self._relocated_addresses()
            # function -> the functions inlined into it: a static local of an inlined function
            # is referenced from its callers' code, and a caller may be all the generator knows
            self._inlined: dict[str, set[str]] = {}
            self._variables = list(self._walk())
        except (ELFError, ELFParseError, DWARFError) as exc:
            raise FormatError(f"{self.path}: damaged ELF or DWARF: {exc}") from exc
        self._types = TypeBuilder()
        self._by_symbol = {v.symbol: v for v in self._variables if v.symbol}
        self._by_name: dict[str, list[Variable]] = {}
        for var in self._variables:
            self._by_name.setdefault(var.name, []).append(var)

    def _load_dwarf(self) -> DWARFInfo:
        if not self._elf.has_dwarf_info() or self._elf.get_section_by_name(".debug_info") is None:
            raise BuildError(
                f"{self.path}: no DWARF debug information",
                hint="compile with -g (the katana SCons tool adds it; for make or CMake, "
                     "`katana flags` prints every flag needed): types of globals need it",
            )
        # A .o's DWARF points into other sections (.debug_str, .debug_abbrev, ...) through
        # relocations the linker has not applied yet: pyelftools applies .rela.debug_* for us.
        return self._elf.get_dwarf_info(relocate_dwarf_sections=True)

    def _relocated_addresses(self) -> dict[int, str]:
        """Offsets in .debug_info of 8-byte address fields -> the ELF symbol each will hold."""
        rela = self._elf.get_section_by_name(".rela.debug_info")
        symtab = self._elf.get_section_by_name(".symtab")
        if rela is None or not isinstance(symtab, SymbolTableSection):
            return {}
        objects: dict[tuple[int, int], str] = {}
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] in ("STT_OBJECT", "STT_TLS") and sym.name:
                objects.setdefault((sym["st_shndx"], sym["st_value"]), sym.name)
        found = {}
        for reloc in rela.iter_relocations():
            sym = symtab.get_symbol(reloc["r_info_sym"])
            addend = reloc["r_addend"] if reloc.is_RELA() else 0
            if sym["st_info"]["type"] == "STT_SECTION":
                name = objects.get((sym["st_shndx"], addend))
            else:
                name = sym.name if addend == 0 else None
            if name:
                found[reloc["r_offset"]] = name
        return found

    def _walk(self) -> Iterator[Variable]:
        for cu in self._dwarf.iter_CUs():
            yield from self._walk_die(cu.get_top_DIE(), None, None)

    def _walk_die(self, die: DIE, function: str | None,
                  inlined: set[str] | None) -> Iterator[Variable]:
        for child in die.iter_children():
            if child.tag == "DW_TAG_variable":
                var = self._variable(child, function)
                if var is not None:
                    yield var
            elif child.tag == "DW_TAG_subprogram":
                name = _origin_name(child)
                calls = self._inlined.setdefault(name, set()) if name else None
                yield from self._walk_die(child, name, calls)
            elif child.tag in ("DW_TAG_lexical_block", "DW_TAG_inlined_subroutine"):
                callee = _origin_name(child) if child.tag == "DW_TAG_inlined_subroutine" else None
                if callee and inlined is not None:
                    inlined.add(callee)
                yield from self._walk_die(child, function, inlined)

    def _variable(self, die: DIE, function: str | None) -> Variable | None:
        name = _origin_name(die)
        if name is None:
            return None
        if function is not None and not _has_static_location(die):
            return None  # an automatic variable (register, stack): not storage a patch keeps
        # DW_AT_declaration is read on the DIE itself: a definition's DW_AT_specification points
        # at a declaration that carries it.
        return Variable(name, function, self._location_symbol(die),
                        bool(die.attributes.get("DW_AT_declaration")), die)

    def _location_symbol(self, die: DIE) -> str | None:
        attr = die.attributes.get("DW_AT_location")
        if attr is None or not isinstance(attr.value, list) or len(attr.value) < 9:
            return None
        if attr.value[0] not in (_DW_OP_addr, _DW_OP_const8u):
            return None
        # attr.offset is where the block starts in .debug_info; the operand follows its length
        # (a ULEB128 for DW_FORM_exprloc/DW_FORM_block) and the one-byte opcode.
        length_size = {"DW_FORM_block1": 1, "DW_FORM_block2": 2, "DW_FORM_block4": 4}.get(
            attr.form, _uleb_size(len(attr.value)))
        return self._addr_symbols.get(attr.offset + length_size + 1)

    def iter_variables(self) -> Iterator[Variable]:
        """Every variable with static storage this object declares or defines."""
        return iter(self._variables)

    def get_variable(self, symbol: str, function: str | None = None) -> Variable | None:
        """The variable whose ELF symbol is ``symbol`` (``counter.0``), or whose C name it is.

        ``function`` picks among static locals of the same name: the function that declares it
        or, failing that, any hint the caller has (a referencing function).
        """
        exact = self._by_symbol.get(symbol)
        if exact is not None:
            return exact
        # C names hold no dot: a dotted symbol is GCC's name for a static local.
        match = _LOCAL_SUFFIX.match(symbol)
        local = match is not None
        candidates = self._by_name.get(match.group("base") if match else symbol, [])
        if function is not None:
            candidates = self._in_function(candidates, function)
        if not candidates:
            return None
        # Prefer what fits the symbol's form (a suffixed name is a static local, a plain one is
        # at file scope), then a definition over an extern declaration of the same variable.
        ranked = sorted(candidates, key=lambda v: _rank(v, local))
        best = [v for v in ranked if _rank(v, local) == _rank(ranked[0], local)]
        scopes = {v.function for v in best}
        if len(scopes) > 1:
            where = ", ".join(sorted(f or "<file scope>" for f in scopes))
            raise GenerateError(
                f"{self.path}: symbol {symbol} could be any of several static variables"
                f" (in {where})",
                hint="pass the function that declares it",
            )
        return best[0]

    def _in_function(self, candidates: list[Variable], function: str) -> list[Variable]:
        """The candidates declared in ``function``, else in a function inlined into it."""
        for scope in ({function}, self._inlined.get(function, set())):
            inside = [v for v in candidates if v.function in scope]
            if inside:
                return inside
        return candidates

    def type_of(self, var: Variable) -> CType:
        """The CType of a variable: its own DW_AT_type, else its declaration's."""
        die = var.die
        while "DW_AT_type" not in die.attributes:
            origin = _origin(die)
            if origin is None:
                break
            die = origin
        return self._types.type_of(die)


def _rank(var: Variable, local: bool) -> tuple[bool, bool]:
    return ((var.function is None) == local, var.declaration)


def _uleb_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _origin(die: DIE) -> DIE | None:
    # A definition points at its declaration (DW_AT_specification); a concrete instance of an
    # inlined function, or of its variables, at the abstract one (DW_AT_abstract_origin).
    for attr in ("DW_AT_specification", "DW_AT_abstract_origin"):
        if attr in die.attributes:
            return die.get_DIE_from_attribute(attr)
    return None


def _origin_name(die: DIE) -> str | None:
    seen = 0
    while die is not None and seen < 8:
        name = die_name(die)
        if name is not None:
            return name
        die, seen = _origin(die), seen + 1
    return None


def _has_static_location(die: DIE) -> bool:
    attr = die.attributes.get("DW_AT_location")
    if attr is None:
        # GCC gives a static local of an inlined function one DIE, in the abstract instance,
        # with its location; concrete and inlined instances repeat only automatic variables.
        return False
    return isinstance(attr.value, list) and bool(attr.value) and attr.value[0] in (
        _DW_OP_addr, _DW_OP_const8u)


_cache: OrderedDict[tuple[str, int, int, int], ObjectDwarf] = OrderedDict()


def load(obj_path: str | Path) -> ObjectDwarf:
    """The parsed DWARF of an object, parsed once and then served from a cache.

    The cache key includes the file's inode, size and mtime, so that an object rebuilt in place is
    parsed again (snapshots are immutable, but a build tree is not).
    """
    path = Path(obj_path).resolve()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FormatError(f"{obj_path}: cannot read: {exc.strerror}") from exc
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    parsed = _cache.get(key)
    if parsed is None:
        parsed = ObjectDwarf(path)
        _cache[key] = parsed
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return parsed


def clear_cache() -> None:
    """Forget every parsed object."""
    _cache.clear()


def variable_type(obj_path: str | Path, symbol: str, function: str | None = None) -> CType | None:
    """The type of the variable that is ELF symbol ``symbol`` of object ``obj_path``, or None.

    ``symbol`` is a global's or a file-scope static's name, or a static local's symbol as GCC
    names it (``counter.0``); a static local can also be named ``counter`` with ``function`` the
    function that declares it. Raises GenerateError when the name alone is ambiguous.
    """
    dwarf = load(obj_path)
    var = dwarf.get_variable(symbol, function)
    return None if var is None else dwarf.type_of(var)
