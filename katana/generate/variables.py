"""Writable globals: which keep their live storage, which are new, which change layout.

Live state wins: an existing variable keeps its storage and its value even when the TO version
initialises it differently (the PO records a warning). A variable whose DWARF type changed layout
gets new storage and a field-by-field transformation of its live value.
"""

from __future__ import annotations

from katana.elf.objfile import ObjSymbol
from katana.errors import GenerateError
from katana.generate.build import Closure
from katana.generate.diff import ObjectPair
from katana.po.model import FunctionRef, Meta, VariablePatch


def _referencing_functions(pair: ObjectPair, old_var: ObjSymbol) -> list[ObjSymbol]:
    assert pair.old is not None
    users = []
    for fn in pair.old.functions():
        sec = pair.old.sections[fn.shndx]
        for r in sec.relocs:
            sym = pair.old.symbols[r.sym]
            if sym.index == old_var.index or (sym.type == "STT_SECTION" and
                                               sym.shndx == old_var.shndx):
                users.append(fn)
                break
    return users


def _transform(pair: ObjectPair, var: ObjSymbol, old: ObjSymbol, planner) -> str | None:
    """The root transform key, or None when the layout is the same (transforms go to planner)."""
    from katana.dwarf import variable_type

    assert pair.old is not None
    old_type = variable_type(pair.old.path, old.name)
    new_type = variable_type(pair.new.path, var.name)
    if old_type is None or new_type is None:
        if old.size != var.size:
            raise GenerateError(
                f"{pair.relpath}: variable {var.name} changed size ({old.size} -> {var.size}) "
                "but its type is not in the debug information",
                hint="build with -g (the katana SCons tool does)")
        return None
    return planner.plan(old_type, new_type, variable=var.name)


def plan_variables(closure: Closure, meta: Meta) -> list[VariablePatch]:
    """Transformed and kept variables; seeds the closure with the new storage of the former."""
    from katana.dwarf import TransformPlanner

    result: list[VariablePatch] = []
    for pair in closure.diff.pairs:
        if pair.old is None:
            continue
        planner = TransformPlanner(pair.relpath)
        for var in pair.new.variables():
            old = pair.partner.get(var.index)
            if old is None or pair.new.sections[var.shndx].kind == "rodata":
                continue
            root = _transform(pair, var, old, planner)
            if root is not None and pair.new.sections[var.shndx].is_tls:
                raise GenerateError(
                    f"{pair.relpath}: thread-local variable {var.name} changed layout; every "
                    "thread has its own copy, which a patch cannot move",
                    hint="keep its type as it was, or restart the program for this change")
            file = pair.new.file_name if var.local else None
            old_name = old.name if old.name != var.name else None
            if root is not None:
                closure.added_vars.add((pair.relpath, var.index))
                result.append(VariablePatch(
                    var.name, pair.relpath, "transformed", closure.defined(pair, var), old.size,
                    var.size, root, var.local, file, old_name))
                for fn in _referencing_functions(pair, old):
                    ref = FunctionRef(fn.name, pair.old.file_name if fn.local else None,
                                      fn.local)
                    meta.safety.append(ref)
                    closure.safety_reasons.setdefault((ref.name, ref.file), []).append(
                        (pair.relpath, f"it reads {old.name}, whose layout changes"))
            elif var.index in pair.changed_data:
                result.append(VariablePatch(var.name, pair.relpath, "kept", None, old.size,
                                            var.size, None, var.local, file, old_name))
                meta.warnings.append(
                    f"{pair.relpath}: the initial value of {var.name} changed in {meta.to_label}; "
                    "the running process keeps its live value")
        meta.types.update(planner.types)
    return result


def added_variables(closure: Closure, planned: list[VariablePatch]) -> list[VariablePatch]:
    """Variables that are new in TO and reached by the patch's code."""
    taken = {(v.object, v.name) for v in planned}
    result = []
    for relpath, index in sorted(closure.added_vars):
        pair = closure.pairs[relpath]
        var = pair.new.symbols[index]
        if (relpath, var.name) in taken:
            continue
        result.append(VariablePatch(var.name, relpath, "added", closure.defined(pair, var), 0,
                                    var.size, None, var.local,
                                    pair.new.file_name if var.local else None))
    return result
