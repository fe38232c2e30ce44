"""Correlate two object trees and decide what changed.

Objects pair by path; sections and symbols pair by name through hash maps, with GCC's clone
counters dropped (``foo.isra.3`` ~ ``foo.isra.7``) and function-scope statics paired by the
functions that reference them (``counter.0`` in v0 may be ``counter.1`` in v1).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from katana.elf.executable import open_executable
from katana.elf.objfile import ObjectFile, ObjSymbol, normalize_name, static_local_base
from katana.elf.relocs import field_size
from katana.elf.symtab import STT_TLS
from katana.errors import GenerateError, KatanaError
from katana.generate.compare import Fingerprinter
from katana.generate.flags import FlagCheck
from katana.generate.tree import Tree

CHILD_SUFFIXES = (".cold", ".part")


@dataclass
class ObjectPair:
    relpath: str
    old: ObjectFile | None
    new: ObjectFile
    changed: set[int] = field(default_factory=set)  # new function symbol indices
    added: set[int] = field(default_factory=set)
    # new symbol index -> paired old symbol (functions and variables alike)
    partner: dict[int, ObjSymbol] = field(default_factory=dict)
    changed_data: set[int] = field(default_factory=set)  # variables whose initial value differs
    changed_rodata: set[int] = field(default_factory=set)  # const objects whose content differs


@dataclass
class Diff:
    old: Tree
    new: Tree
    pairs: list[ObjectPair]
    removed: list[str]
    identical: int  # objects skipped because their bytes are equal
    foreign: list[str] = field(default_factory=list)  # changed, but not linked into the program
    flags: FlagCheck = field(default_factory=FlagCheck)  # what the objects lack


def _by_key(syms: list[ObjSymbol], key) -> dict[str, list[ObjSymbol]]:
    table: dict[str, list[ObjSymbol]] = defaultdict(list)
    for s in syms:
        table[key(s)].append(s)
    return table


def _variable_key(sym: ObjSymbol) -> str:
    return static_local_base(sym.name) if sym.local else sym.name


def _referrers(obj: ObjectFile, fp: Fingerprinter,
               kind: str = "STT_OBJECT") -> dict[int, set[str]]:
    """Symbol index (of a variable, or a function with ``kind`` STT_FUNC) -> names of the
    functions whose code references it."""
    result: dict[int, set[str]] = defaultdict(set)
    for fn in obj.functions():
        sec = obj.sections[fn.shndx]
        for r in sec.relocs:
            target = fp.target(sec, r)
            if target is None:
                continue
            sym = obj.designated(obj.symbols[r.sym], *target)
            if sym is not None and sym.type == kind:
                result[sym.index].add(normalize_name(fn.name))
    return result


def _match_statics(news: list[ObjSymbol], olds: list[ObjSymbol], users_new: dict[int, set[str]],
                   users_old: dict[int, set[str]], init_new, init_old) -> dict[int, ObjSymbol]:
    """Pair several ``static int counter`` of one object (GCC numbers them ``counter.0``,
    ``counter.1`` in an order that a new function can upset). Evidence, strongest first: the
    functions that use them (overlap, not equality: a new caller may appear), the same initial
    value, the same size, then the order of GCC's numbers. A variable with no evidence for any
    old one is new: it gets fresh storage rather than another's live value."""
    if len(news) == 1 and len(olds) == 1:
        return {news[0].index: olds[0]}
    scored = []
    for i, var in enumerate(news):
        for j, old in enumerate(olds):
            a, b = users_new.get(var.index, set()), users_old.get(old.index, set())
            overlap = len(a & b) / len(a | b) if a | b else 0.0
            same_init = init_new(var) == init_old(old)
            score = 10 * overlap + 5 * same_init + (var.size == old.size) - 0.01 * abs(i - j)
            if overlap or same_init:
                scored.append((score, var.index, old))
    result: dict[int, ObjSymbol] = {}
    taken: set[int] = set()
    for _score, index, old in sorted(scored, key=lambda t: -t[0]):
        if index not in result and old.index not in taken:
            result[index] = old
            taken.add(old.index)
    return result


def _pair_variables(pair: ObjectPair, fp_old: Fingerprinter, fp_new: Fingerprinter) -> None:
    old, new = pair.old, pair.new
    assert old is not None
    old_vars = _by_key(old.variables(), _variable_key)
    new_vars = _by_key(new.variables(), _variable_key)
    old_refs, new_refs = _referrers(old, fp_old), _referrers(new, fp_new)
    partners: dict[int, ObjSymbol] = {}
    for name, news in new_vars.items():
        olds = sorted(old_vars.get(name, []), key=lambda s: s.name)
        partners.update(_match_statics(
            sorted(news, key=lambda s: s.name), olds, new_refs, old_refs,
            lambda s: fp_new.data_fingerprint(s.shndx, s.value, s.size),
            lambda s: fp_old.data_fingerprint(s.shndx, s.value, s.size)))
    for var in new.variables():
        partner = partners.get(var.index)
        if partner is None:
            continue
        pair.partner[var.index] = partner
        old_fp = fp_old.data_fingerprint(partner.shndx, partner.value, partner.size)
        new_fp = fp_new.data_fingerprint(var.shndx, var.value, var.size)
        if old_fp != new_fp:
            kind = new.sections[var.shndx].kind
            (pair.changed_rodata if kind == "rodata" else pair.changed_data).add(var.index)


def _body(fp: Fingerprinter, fn: ObjSymbol):
    return fp.function_fingerprint(fn.shndx, fn.value, fn.size)


class _Clones:
    """Pairs the clones of one function (``foo.constprop.0``, ``foo.constprop.1``).

    GCC numbers a function's clones in the order it makes them, and a new caller elsewhere in
    the object can make one first: v0's ``foo.constprop.0`` (k == 3) may be v1's
    ``foo.constprop.1``, while v1's ``.0`` is a new specialisation (k == 7). Pairing by number
    would redirect the old callers to the wrong specialisation. Equal bodies pair first, then
    clones called from the same functions; only what remains pairs in order.
    """

    def __init__(self, pair: ObjectPair, fp_old: Fingerprinter, fp_new: Fingerprinter) -> None:
        self.fp_old, self.fp_new = fp_old, fp_new
        assert pair.old is not None
        self._obj_old, self._obj_new = pair.old, pair.new
        self._callers: tuple[dict[int, set[str]], dict[int, set[str]]] | None = None

    def callers(self) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
        if self._callers is None:  # only objects with clones pay for it
            self._callers = (_referrers(self._obj_old, self.fp_old, "STT_FUNC"),
                             _referrers(self._obj_new, self.fp_new, "STT_FUNC"))
        return self._callers

    def match(self, news: list[ObjSymbol], olds: list[ObjSymbol]) -> dict[int, ObjSymbol]:
        """New symbol index -> old partner, for the ones that pair."""
        result: dict[int, ObjSymbol] = {}
        free = list(olds)
        for fn in news:
            body = _body(self.fp_new, fn)
            same = next((o for o in free if _body(self.fp_old, o) == body), None)
            if same is not None:
                result[fn.index] = same
                free.remove(same)
        old_callers, new_callers = self.callers()
        scored = sorted(((len(new_callers.get(fn.index, set()) & old_callers.get(o.index, set())),
                          -i, -j, fn, o) for i, fn in enumerate(news) if fn.index not in result
                         for j, o in enumerate(free)), key=lambda t: t[:3], reverse=True)
        for score, _, _, fn, o in scored:
            if score and fn.index not in result and o in free:
                result[fn.index] = o
                free.remove(o)
        for fn in news:
            if fn.index not in result and free:
                result[fn.index] = free.pop(0)
        return result


def _compare_functions(pair: ObjectPair, fp_old: Fingerprinter, fp_new: Fingerprinter) -> None:
    assert pair.old is not None
    old_funcs = _by_key(pair.old.functions(), lambda s: normalize_name(s.name))
    new_funcs = _by_key(pair.new.functions(), lambda s: normalize_name(s.name))
    clones = _Clones(pair, fp_old, fp_new)
    for key, news in new_funcs.items():
        olds = old_funcs.get(key, [])
        if len(news) == 1 and len(olds) <= 1:
            partners = {news[0].index: olds[0]} if olds else {}
        else:
            partners = clones.match(news, olds)
        for fn in news:
            partner = partners.get(fn.index)
            if partner is None:
                pair.added.add(fn.index)
                continue
            pair.partner[fn.index] = partner
            if _body(fp_old, partner) != _body(fp_new, fn):
                pair.changed.add(fn.index)


def _compare(pair: ObjectPair) -> None:
    if pair.old is None:
        pair.added = {fn.index for fn in pair.new.functions()}
        return
    fp_old, fp_new = Fingerprinter(pair.old), Fingerprinter(pair.new)
    _compare_functions(pair, fp_old, fp_new)
    _pair_variables(pair, fp_old, fp_new)


def _changed_const_names(pairs: list[ObjectPair]) -> set[str]:
    return {p.new.symbols[i].name for p in pairs for i in p.changed_rodata
            if not p.new.symbols[i].local}


def _reads_any(obj: ObjectFile, names: set[str]) -> bool:
    return any(not s.defined and s.name in names for s in obj.symbols)


def _const_readers(pairs: list[ObjectPair], identical: dict[str, tuple[Path, Path]],
                   old: Tree, new: Tree) -> list[ObjectPair]:
    """Pairs for byte-identical objects that read a changed global const.

    Such a reader compiles to the same bytes in both versions (the value lives in another
    object), yet it must join the patch to be re-linked against the new copy."""
    names = _changed_const_names(pairs)
    if not names:
        return []
    readers = []
    for rel, (old_path, new_path) in identical.items():
        new_obj = ObjectFile(new_path, rel)
        if _reads_any(new_obj, names) and linked_into(new_obj, new.executable):
            old_obj = ObjectFile(old_path, rel)
            pair = ObjectPair(rel, old_obj if linked_into(old_obj, old.executable) else None,
                              new_obj)
            _compare(pair)
            readers.append(pair)
    return readers


def _propagate_const_changes(pairs: list[ObjectPair]) -> None:
    """A global const that changed makes every function that reads it (in any object) change:
    the readers are re-linked against the new copy, so they all see the new value."""
    changed_names = _changed_const_names(pairs)
    if not changed_names:
        return
    for pair in pairs:
        for fn in pair.new.functions():
            sec = pair.new.sections[fn.shndx]
            if any(pair.new.symbols[r.sym].name in changed_names and
                   not pair.new.symbols[r.sym].defined for r in sec.relocs):
                if fn.index not in pair.added:
                    pair.changed.add(fn.index)


def _include_children(pair: ObjectPair) -> None:
    """``foo.cold`` is part of ``foo`` (it jumps back into foo's body): they change together."""
    by_name = {normalize_name(fn.name): fn for fn in pair.new.functions()}
    for fn in pair.new.functions():
        name = normalize_name(fn.name)
        for suffix in CHILD_SUFFIXES:
            if suffix in name:
                parent = by_name.get(name.split(suffix)[0])
                if parent is None:
                    continue
                touched = pair.changed | pair.added
                if fn.index in touched and parent.index not in touched:
                    pair.changed.add(parent.index)


def _placed(obj: ObjectFile, executable: Path) -> ObjectFile:
    """Name the object's locals as the executable does when two objects share a source
    basename (src/a/util.c, src/b/util.c): the executable numbers the second group "util.c#2";
    the object is the group whose local functions and variables it has."""
    if obj.file_name is None:
        return obj
    exe = open_executable(executable)
    groups = exe.symbols.file_groups(obj.file_name)
    if len(groups) > 1:
        locals_ = [s for s in obj.symbols if s.local and s.defined and s.name
                   and s.type in ("STT_FUNC", "STT_OBJECT", "STT_TLS")]
        mine = {(s.name, s.size) for s in locals_}

        def likeness(group: tuple[str, set[tuple[str, int]]]) -> float:
            # same names and sizes first; then the same bytes (code with its relocated fields
            # masked, initial values of data), which tells two copies of one source apart
            same = sum(_same_bytes(obj, s, exe, group[0]) for s in locals_)
            return len(mine & group[1]) / max(len(mine | group[1]), 1) + same

        best = max(groups, key=likeness)
        if sorted(likeness(g) for g in groups)[-2:] == [likeness(best)] * 2:
            raise GenerateError(f"{obj.relpath}: two objects named {obj.file_name} define the "
                                "same static functions and variables; cannot tell which is which",
                                hint="rename one of the source files")
        obj.file_name = best[0]
    return obj


def _same_bytes(obj: ObjectFile, sym: ObjSymbol, exe, group: str) -> bool:
    """Whether a local of the object has, in the executable's group, the bytes it has in the
    object (relocated fields masked on both sides; bss as zeros)."""
    other = exe.lookup(sym.name, group)
    if other is None or other.size != sym.size or other.type == STT_TLS:  # no address
        return False
    sec = obj.sections[sym.shndx]
    mine = bytearray(sec.data[sym.value:sym.value + sym.size] if sec.kind != "bss"
                     else bytes(sym.size))
    theirs = bytearray(exe.read(other.value, other.size))
    for r in sec.relocs:
        if sym.value <= r.offset < sym.value + sym.size:
            at = r.offset - sym.value
            width = field_size(r.type)
            mine[at:at + width] = theirs[at:at + width] = bytes(width)
    return mine == theirs


_DEFINITIONS = ("STT_FUNC", "STT_OBJECT", "STT_TLS")


def linked_into(obj: ObjectFile, executable: Path) -> bool:
    """Whether ``obj`` went into ``executable``. A build directory may hold objects of other
    targets beside the program's (a shared library built from sources next to it): their code
    is not the program's, and a patch of the program must not carry or redirect it.

    The linker leaves one STT_FILE symbol per object that brought symbols; an object defines
    globals the executable then has too (the same name and size). An object with locals only
    is linked when its STT_FILE group holds one of them."""
    symbols = open_executable(executable).symbols
    if obj.file_name is not None and symbols.file_names and \
            obj.file_name not in symbols.file_names:
        return False
    defined = [s for s in obj.symbols if s.defined and s.name and s.type in _DEFINITIONS]
    globals_ = [s for s in defined if not s.local]
    if globals_:
        # find(): a hidden global is a local of the executable (-fvisibility=hidden)
        return any(_same(symbols.find_global(s.name) or _only_local(symbols, s.name), s)
                   for s in globals_)
    if not defined or obj.file_name is None:
        return True  # nothing that could be told apart, nothing a patch would take from it
    mine = {(s.name, s.size) for s in defined}
    return any(mine & group for _, group in symbols.file_groups(obj.file_name))


def _only_local(symbols, name: str):
    try:
        return symbols.find(name)
    except KatanaError:  # several locals of that name: none is the global's
        return None


def _same(found, sym: ObjSymbol) -> bool:
    return found is not None and found.size == sym.size


def _read(path: Path, rel: str, executable: Path) -> ObjectFile | None:
    """The object, placed, or None when the executable was not linked from it."""
    obj = ObjectFile(path, rel)
    if not linked_into(obj, executable):
        return None
    return _placed(obj, executable)


def diff_trees(old: Tree, new: Tree) -> Diff:
    """Pair the objects of two trees and find what changed in each."""
    pairs: list[ObjectPair] = []
    identical: dict[str, tuple[Path, Path]] = {}
    removed: list[str] = []
    foreign: list[str] = []  # objects of the trees that the program was not linked from
    flags = FlagCheck()
    for rel, new_path in new.objects.items():
        old_path = old.objects.get(rel)
        if old_path is not None and old_path.read_bytes() == new_path.read_bytes():
            identical[rel] = (old_path, new_path)  # equal bytes: skip parsing (mostly)
            continue
        old_obj = _read(old_path, rel, old.executable) if old_path is not None else None
        new_obj = _read(new_path, rel, new.executable)
        if new_obj is None:
            (removed if old_obj is not None else foreign).append(rel)
            continue
        cu_new = flags.check_object(new_obj)
        if old_obj is not None:
            flags.check_pair(old_obj, new_obj, flags.check_object(old_obj), cu_new)
        pair = ObjectPair(rel, old_obj, new_obj)
        _compare(pair)
        pairs.append(pair)
    readers = _const_readers(pairs, identical, old, new)
    pairs += readers
    _propagate_const_changes(pairs)
    for pair in pairs:
        _include_children(pair)
    removed += [rel for rel, path in old.objects.items() if rel not in new.objects and
                linked_into(ObjectFile(path, rel), old.executable)]
    return Diff(old, new, pairs, removed, len(identical) - len(readers), foreign, flags)
