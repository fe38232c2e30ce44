"""Correlate two object trees and decide what changed.

Objects pair by path; sections and symbols pair by name through hash maps, with GCC's clone
counters dropped (``foo.isra.3`` ~ ``foo.isra.7``) and function-scope statics paired by the
functions that reference them (``counter.0`` in v0 may be ``counter.1`` in v1).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from katana.elf.objfile import ObjectFile, ObjSymbol, normalize_name, static_local_base
from katana.generate.compare import Fingerprinter
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


def _by_key(syms: list[ObjSymbol], key) -> dict[str, list[ObjSymbol]]:
    table: dict[str, list[ObjSymbol]] = defaultdict(list)
    for s in syms:
        table[key(s)].append(s)
    return table


def _variable_key(sym: ObjSymbol) -> str:
    return static_local_base(sym.name) if sym.local else sym.name


def _referrers(obj: ObjectFile, fp: Fingerprinter) -> dict[int, set[str]]:
    """Variable symbol index -> names of the functions whose code references it."""
    result: dict[int, set[str]] = defaultdict(set)
    for fn in obj.functions():
        sec = obj.sections[fn.shndx]
        for r in sec.relocs:
            target = fp.target(sec, r)
            if target is None:
                continue
            var = obj.symbol_at(*target)
            if var is not None and var.type == "STT_OBJECT":
                result[var.index].add(normalize_name(fn.name))
    return result


def _pair_variables(pair: ObjectPair, fp_old: Fingerprinter, fp_new: Fingerprinter) -> None:
    old, new = pair.old, pair.new
    assert old is not None
    old_vars = _by_key(old.variables(), _variable_key)
    old_refs, new_refs = _referrers(old, fp_old), _referrers(new, fp_new)
    for var in new.variables():
        candidates = old_vars.get(_variable_key(var), [])
        if len(candidates) > 1:  # several `static int counter` in one object: ask who uses them
            users = new_refs.get(var.index, set())
            candidates = [c for c in candidates if old_refs.get(c.index, set()) == users]
        if len(candidates) != 1:
            continue
        partner = candidates[0]
        pair.partner[var.index] = partner
        old_fp = fp_old.data_fingerprint(partner.shndx, partner.value, partner.size)
        new_fp = fp_new.data_fingerprint(var.shndx, var.value, var.size)
        if old_fp != new_fp:
            kind = new.sections[var.shndx].kind
            (pair.changed_rodata if kind == "rodata" else pair.changed_data).add(var.index)


def _compare_functions(pair: ObjectPair, fp_old: Fingerprinter, fp_new: Fingerprinter) -> None:
    old, new = pair.old, pair.new
    assert old is not None
    old_funcs = _by_key(old.functions(), lambda s: normalize_name(s.name))
    for fn in new.functions():
        candidates = old_funcs.get(normalize_name(fn.name), [])
        if not candidates:
            pair.added.add(fn.index)
            continue
        partner = candidates.pop(0)
        pair.partner[fn.index] = partner
        if fp_old.function_fingerprint(partner.shndx, partner.value, partner.size) != \
                fp_new.function_fingerprint(fn.shndx, fn.value, fn.size):
            pair.changed.add(fn.index)


def _compare(pair: ObjectPair) -> None:
    if pair.old is None:
        pair.added = {fn.index for fn in pair.new.functions()}
        return
    fp_old, fp_new = Fingerprinter(pair.old), Fingerprinter(pair.new)
    _compare_functions(pair, fp_old, fp_new)
    _pair_variables(pair, fp_old, fp_new)


def _propagate_const_changes(pairs: list[ObjectPair]) -> None:
    """A global const that changed makes every function that reads it (in any object) change:
    the readers are re-linked against the new copy, so they all see the new value."""
    changed_names = {p.new.symbols[i].name for p in pairs for i in p.changed_rodata
                     if not p.new.symbols[i].local}
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


def diff_trees(old: Tree, new: Tree) -> Diff:
    """Pair the objects of two trees and find what changed in each."""
    pairs: list[ObjectPair] = []
    identical = 0
    for rel, new_path in new.objects.items():
        old_path = old.objects.get(rel)
        if old_path is not None and old_path.read_bytes() == new_path.read_bytes():
            identical += 1  # equal bytes: nothing to learn, skip parsing
            continue
        old_obj = ObjectFile(old_path, rel) if old_path is not None else None
        pair = ObjectPair(rel, old_obj, ObjectFile(new_path, rel))
        _compare(pair)
        pairs.append(pair)
    _propagate_const_changes(pairs)
    for pair in pairs:
        _include_children(pair)
    removed = [rel for rel in old.objects if rel not in new.objects]
    return Diff(old, new, pairs, removed, identical)
