"""Turn a diff into a Patch Object: the closure of what the changed code needs.

Starting from the changed and added functions, every relocation of every included section is
followed. Its target either joins the patch (changed or new code, new data, read-only data the
new code reads, storage for a transformed variable) or stays in the running program and becomes
an external symbol named as the FROM version spells it (so static locals keep their live storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from katana.elf.executable import Executable
from katana.elf.objfile import ObjectFile, ObjSection, ObjSymbol
from katana.elf.relocs import (
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_GOTPCREL,
    R_X86_64_PC32,
    R_X86_64_PLT32,
    TLS_DESCRIPTORS,
)
from katana.elf.symtab import STT_OBJECT, STT_TLS
from katana.errors import GenerateError
from katana.generate.compare import Fingerprinter
from katana.generate.diff import Diff, ObjectPair
from katana.generate.indirect import plan_rewrite
from katana.po.model import Reloc, Section, Symbol

# fields that hold a 32-bit address or displacement: what a copy relocation exists for
_REACH_32 = (R_X86_64_PC32, R_X86_64_32, R_X86_64_32S)

Origin = tuple[str, int]  # (object relpath, index of a section or a symbol)


def _dynamic_tls(pair: ObjectPair, sec: ObjSection, name: str) -> GenerateError:
    return GenerateError(
        f"{pair.relpath}: {sec.name} reaches the thread-local variable {name or '(a local)'} "
        "through a TLS descriptor (-mtls-dialect=gnu2): katana patches the initial-exec, "
        "local-exec and __tls_get_addr (general and local dynamic) forms only",
        hint="build without -mtls-dialect=gnu2, in both releases")


@dataclass
class Closure:
    """The sections and symbols of the PO being built."""

    diff: Diff
    old_exe: Executable
    new_exe: Executable | None = None
    sections: list[Section] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)
    section_index: dict[Origin, int] = field(default_factory=dict)
    symbol_index: dict[tuple, int] = field(default_factory=dict)
    pending: list[tuple[ObjectPair, ObjSection]] = field(default_factory=list)
    added_vars: set[Origin] = field(default_factory=set)  # new storage (added or transformed)
    included_funcs: set[Origin] = field(default_factory=set)
    # why each function of the safety set is there, keyed as its FunctionRef ((name, file of a
    # static) -> [(object, reason as a user reads it)]), so that a refusal can say what changed
    safety_reasons: dict[tuple[str, str | None], list[tuple[str, str]]] = field(
        default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = {p.relpath: p for p in self.diff.pairs}
        self.globals: dict[str, tuple[ObjectPair, ObjSymbol]] = {}
        for pair in self.diff.pairs:
            for sym in pair.new.symbols:
                if sym.defined and not sym.local and sym.type in ("STT_FUNC", "STT_OBJECT",
                                                                  "STT_TLS"):
                    self.globals[sym.name] = (pair, sym)
        self.fingerprinters = {p.relpath: Fingerprinter(p.new) for p in self.diff.pairs}

    # -- sections -------------------------------------------------------------------------------

    def include_section(self, pair: ObjectPair, sec: ObjSection) -> int:
        key = (pair.relpath, sec.index)
        if key not in self.section_index:
            if sec.is_tls:
                raise GenerateError(
                    f"{pair.relpath}: the patch needs thread-local data ({sec.name}); new or "
                    "changed thread-local variables cannot be hot-patched",
                    hint="keep the variable as it was, or restart the program for this change")
            self.section_index[key] = len(self.sections)
            self.sections.append(Section(sec.name, sec.kind, b"" if sec.kind == "bss" else
                                         sec.data, sec.size, sec.align))
            self.pending.append((pair, sec))
        return self.section_index[key]

    def run(self) -> None:
        while self.pending:
            pair, sec = self.pending.pop()
            po_sec = self.sections[self.section_index[(pair.relpath, sec.index)]]
            fp = self.fingerprinters[pair.relpath]
            for r in sec.relocs:
                name = pair.new.symbols[r.sym].name
                if r.type in TLS_DESCRIPTORS:
                    raise _dynamic_tls(pair, sec, name)
                if not pair.new.symbols[r.sym].defined and \
                        self._new_library_variable(name, r.type):
                    self._through_slot(pair, sec, po_sec, r, name)
                    continue
                sym, addend = self.resolve(pair, fp, sec, r)
                po_sec.relocs.append(Reloc(r.offset, r.type, sym, addend))

    # -- symbols --------------------------------------------------------------------------------

    def _symbol(self, key: tuple, make) -> int:
        if key not in self.symbol_index:
            self.symbol_index[key] = len(self.symbols)
            self.symbols.append(make())
        return self.symbol_index[key]

    def defined(self, pair: ObjectPair, sym: ObjSymbol) -> int:
        """A PO symbol for a symbol of a new object whose section joins the patch."""
        shndx = self.include_section(pair, pair.new.sections[sym.shndx])
        kind = {"STT_FUNC": "func", "STT_OBJECT": "object", "STT_SECTION": "section"}.get(
            sym.type, "notype")
        name = sym.name or pair.new.sections[sym.shndx].name
        return self._symbol(("def", pair.relpath, sym.index), lambda: Symbol(
            name, kind, shndx, sym.value, sym.size, sym.local,  # type: ignore[arg-type]
            pair.new.file_name if sym.local else None))

    def external(self, old_obj: ObjectFile | None, old: ObjSymbol, new_name: str) -> int:
        """A PO symbol for something that stays in the running program."""
        file = old_obj.file_name if (old.local and old_obj is not None) else None
        kind = "func" if old.type == "STT_FUNC" else "object" \
            if old.type in ("STT_OBJECT", "STT_TLS") \
            else "notype"
        return self._symbol(("ext", old.name, file), lambda: Symbol(
            old.name, kind, None, 0, old.size, old.local, file,  # type: ignore[arg-type]
            new_name if new_name != old.name else None))

    def entry(self, old_obj: ObjectFile | None, old: ObjSymbol) -> int:
        """The program's own entry of a replaced function, for code that takes its address:
        function pointers the program already holds point there, so comparisons keep working,
        and no pointer into a patch outlives its revert (the entry jumps on to the new code)."""
        file = old_obj.file_name if (old.local and old_obj is not None) else None
        return self._symbol(("entry", old.name, file), lambda: Symbol(
            old.name, "func", None, 0, old.size, old.local, file, None, True))

    def global_symbol(self, name: str) -> int:
        """A global the patch leaves where it is: in an unchanged object of the program, or in a
        shared library (apply looks in the program first)."""
        return self._symbol(("ext", name, None), lambda: Symbol(name, "notype", None))

    def _takes_address_of_replaced(self, pair: ObjectPair, named: ObjSymbol, rtype: int) -> bool:
        """A reference that is not a call (R_X86_64_PLT32) to a function the program has."""
        return (named.type == "STT_FUNC" and rtype != R_X86_64_PLT32 and
                named.index in pair.partner and
                self._in_from_executable(pair, pair.partner[named.index]))

    # -- relocation targets ---------------------------------------------------------------------

    def resolve(self, pair: ObjectPair, fp: Fingerprinter, sec: ObjSection, r) -> tuple[int, int]:
        """The PO symbol and addend a relocation of an included section uses."""
        sym = pair.new.symbols[r.sym]
        if not sym.defined:
            return self.resolve_undefined(sym.name, r.type), r.addend
        target_sec = pair.new.sections[sym.shndx]
        _, off = fp.target(sec, r)  # type: ignore[misc]
        named = pair.new.designated(sym, sym.shndx, off)
        if target_sec.kind == "rodata" or named is None:
            return self.resolve_rodata(pair, sym, named), r.addend
        if self.joins_patch(pair, named):
            if self._takes_address_of_replaced(pair, named, r.type):
                return (self.entry(pair.old, pair.partner[named.index]),
                        r.addend + sym.value - named.value)
            return self.defined(pair, sym), r.addend
        partner = pair.partner.get(named.index)
        if partner is None:  # unchanged and unpaired cannot happen for a paired object
            raise GenerateError(f"{pair.relpath}: cannot pair '{named.name}' with the FROM "
                                "version")
        return self.external(pair.old, partner, named.name), r.addend + sym.value - named.value

    def _new_library_variable(self, name: str, rtype: int) -> bool:
        """A library variable that FROM never used has no copy in the running program (TO has
        one: a copy relocation the linker made for the new reference), and the library's copy
        is beyond the reach of a 32-bit field of the patch (apply maps it next to the
        executable): see ``katana.generate.indirect``."""
        if rtype not in _REACH_32 or self.new_exe is None or name in self.globals:
            return False
        in_to = self.new_exe.lookup(name)
        return in_to is not None and in_to.type in (STT_OBJECT, STT_TLS) and \
            self.old_exe.lookup(name) is None

    def _through_slot(self, pair: ObjectPair, sec: ObjSection, po_sec: Section, r,
                      name: str) -> None:
        """Rewrite the instruction to read ``name`` through a GOT slot the loader fills."""
        rewrite = plan_rewrite(sec.data, r.offset, r.addend) if sec.is_text and \
            self.new_exe is not None and \
            self.new_exe.lookup(name).type == STT_OBJECT else None  # type: ignore[union-attr]
        if rewrite is None:
            raise GenerateError(
                f"{pair.relpath}: {sec.name} uses {name}, a library variable that "
                f"{self.diff.old.label} never used, in a form katana cannot redirect (only loads "
                "of it and its address are): the running program has no copy of it, and the "
                "library's copy is beyond the 32-bit reach of the patch's code",
                hint=f"patch from a release that already uses {name}, or let the new code reach "
                     "it through a library function (calls are reached by stubs)")
        data = bytearray(po_sec.data)
        data[rewrite.start:rewrite.end] = rewrite.replacement
        po_sec.data = bytes(data)
        variable = self.global_symbol(name)
        if not rewrite.thunk:  # lea -> mov from the slot, in place
            po_sec.relocs.append(Reloc(rewrite.slot_field, R_X86_64_GOTPCREL, variable, r.addend))
            return
        here = self._section_symbol(pair, self.sections.index(po_sec))
        index = len(self.sections)
        thunk = Section(f"{sec.name}.katana_slot.{r.offset:x}", "text", rewrite.thunk,
                        len(rewrite.thunk), 16)
        self.sections.append(thunk)
        there = self._section_symbol(pair, index)
        thunk.relocs = [Reloc(rewrite.slot_field, R_X86_64_GOTPCREL, variable, -4),
                        Reloc(rewrite.back_field, R_X86_64_PC32, here, rewrite.end - 4)]
        po_sec.relocs.append(Reloc(rewrite.jump_field, R_X86_64_PC32, there, -4))

    def _section_symbol(self, pair: ObjectPair, po_index: int) -> int:
        return self._symbol(("section", po_index), lambda: Symbol(
            self.sections[po_index].name, "section", po_index, 0, 0, True, pair.new.file_name))

    def joins_patch(self, pair: ObjectPair, named: ObjSymbol) -> bool:
        key = (pair.relpath, named.index)
        if key in self.included_funcs or key in self.added_vars:
            return True
        if named.index in pair.changed or named.index in pair.added:
            return True
        if named.type in ("STT_OBJECT", "STT_TLS") and named.index not in pair.partner:
            self.added_vars.add(key)  # a new variable: fresh storage, initial value
            return True
        if named.index not in pair.partner:
            return True
        return not self._in_from_executable(pair, pair.partner[named.index])

    def _in_from_executable(self, pair: ObjectPair, old: ObjSymbol) -> bool:
        """GCC may have inlined every call of a static function in FROM: then it has no symbol
        there and the patch must carry it."""
        file = pair.old.file_name if (old.local and pair.old is not None) else None
        return self.old_exe.lookup(old.name, file) is not None

    def resolve_rodata(self, pair: ObjectPair, sym: ObjSymbol, named: ObjSymbol | None) -> int:
        """Read-only data is copied with the code that reads it, unless it is an unchanged
        global constant of the program (then the live one is used)."""
        if named is not None and not named.local and named.index in pair.partner and \
                named.index not in pair.changed_rodata and \
                self._in_from_executable(pair, pair.partner[named.index]) and \
                sym.type != "STT_SECTION":
            return self.external(pair.old, pair.partner[named.index], named.name)
        return self.defined(pair, sym)

    def resolve_undefined(self, name: str, rtype: int) -> int:
        hit = self.globals.get(name)
        if hit is None:  # defined in an object that did not change, or in a library
            return self.global_symbol(name)
        pair, sym = hit
        if sym.index in pair.changed and self._takes_address_of_replaced(pair, sym, rtype):
            return self.entry(pair.old, pair.partner[sym.index])
        if sym.index in pair.changed or sym.index in pair.added or \
                (pair.relpath, sym.index) in self.added_vars or sym.index in pair.changed_rodata:
            return self.defined(pair, sym)
        if sym.index not in pair.partner:
            self.added_vars.add((pair.relpath, sym.index))
            return self.defined(pair, sym)
        return self.global_symbol(name) if self._in_from_executable(pair, pair.partner[sym.index]) \
            else self.defined(pair, sym)
