"""Plan how a live value of an old type becomes a value of the new type (``TypeTransform``).

Fields are matched by name, recursively; bytes the plan does not write are zero, so new fields
start at zero and removed fields are dropped. Choices made where C leaves room:

- Integers that widen are zero-extended, which keeps every value of an unsigned (or boolean, or
  non-negative enum) type. A signed integer that widens would need sign extension, which FieldOps
  cannot express, and an integer that narrows loses values: both are refused. Same-size integers
  (``int`` -> ``unsigned``, an enum that gained values) keep their bytes, as C's conversion does.
- A union is copied as raw bytes, ``min(old, new)`` of them: which member is active is known only
  to the program, so it cannot be transformed member by member.
- Arrays keep ``min(old, new)`` elements; elements added are zero.
- A pointer to a type whose layout changed gets a "pointer" op: the pointee moves to new storage,
  transformed (the engine keeps a memo, so cycles end). A pointer to ``void``, ``char`` or a
  function is copied: what it points at cannot be known. A pointer to a changed integer type is
  refused, since the pointee may be an array of unknown length.
"""

from __future__ import annotations

from katana.dwarf.bitfields import group_runs, plan_run
from katana.dwarf.layout import LayoutComparer, is_unresolved, member_keys
from katana.dwarf.types import CType
from katana.errors import GenerateError
from katana.po.model import FieldOp, TypeTransform

Ops = tuple[list[FieldOp], str]  # the ops and a description of what they do ("" for a plain move)

_KEEP_HINT = "keep the old field as it is (add a new field with the new type and convert in code)"


def plan_transform(old: CType, new: CType, scope: str,
                   variable: str | None = None) -> tuple[str | None, dict[str, TypeTransform]]:
    """Plan turning a value of ``old`` into a value of ``new``.

    Returns the key of the root transform (None when the layouts are identical) and every
    transform needed, keyed "<scope>:<type>" ("store.o:struct entry"): ``scope``, the object's
    path, keeps same-named types of different objects apart. ``variable`` names the variable in
    errors. Raises GenerateError for a change that cannot be carried out field by field.
    To plan several variables of one object, one ``TransformPlanner`` keeps their keys coherent.
    """
    planner = TransformPlanner(scope)
    return planner.plan(old, new, variable), planner.types


def same_layout(old: CType, new: CType) -> bool:
    """True when an old value's bytes are, unchanged, a valid value of the new type."""
    return LayoutComparer().same(old, new)


class TransformPlanner:
    """Plans the transforms of the variables of one object, into one ``types`` dict.

    A type pair reached from several variables is planned once and has one key; two different
    types with the same name (a struct tag declared again in a block) get "#2", "#3" keys.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.variable = "?"
        self.layout = LayoutComparer()
        self.types: dict[str, TypeTransform] = {}
        self._keys: dict[tuple[int, int], str] = {}
        self._pairs: list[tuple[CType, CType]] = []  # keeps the ids in _keys unique

    def plan(self, old: CType, new: CType, variable: str | None = None) -> str | None:
        """The key of the root transform for a variable, None when its layout is unchanged.

        On GenerateError, nothing this call planned stays in ``types``.
        """
        if self.layout.same(old, new):
            return None
        self.variable = variable or "?"
        types, keys, pairs = dict(self.types), dict(self._keys), len(self._pairs)
        try:
            return self.transform(old, new, variable or "value")
        except GenerateError:
            self.types, self._keys = types, keys
            del self._pairs[pairs:]
            raise

    def transform(self, old: CType, new: CType, path: str) -> str:
        """The key of the transform for the pair, planned once (a pair can reach itself)."""
        o, n = old.strip(), new.strip()
        known = self._keys.get((id(o), id(n)))
        if known is not None:
            return known
        self._check_resolved(o, n, path)
        tt = TypeTransform(_type_name(old, new, path), o.size, n.size)
        key = self._register(o, n, tt)
        if o.kind == n.kind == "struct":
            self._fill_struct(tt, o, n, path)
        else:
            tt.ops, what = self.value_ops(old, new, 0, 0, path)
            tt.fields.append(what or "copied")
        return key

    def _register(self, o: CType, n: CType, tt: TypeTransform) -> str:
        key, number = f"{self.scope}:{tt.name}", 1
        while key in self.types:  # another pair of types with the same name (a nested scope)
            number += 1
            key = f"{self.scope}:{tt.name} #{number}"
        self.types[key] = tt
        self._keys[(id(o), id(n))] = key
        self._pairs.append((o, n))
        return key

    def value_ops(self, old: CType, new: CType, src: int, dst: int, path: str) -> Ops:
        """The ops moving a value of ``old`` at ``src`` to a value of ``new`` at ``dst``."""
        o, n = old.strip(), new.strip()
        if self.layout.same(o, n):
            return [FieldOp("copy", src, dst, size=n.size)], ""
        self._check_resolved(o, n, path)
        if o.kind == n.kind == "struct":
            key = self.transform(old, new, path)
            return [FieldOp("struct", src, dst, type=key)], f"{self.types[key].name} transformed"
        if o.kind == n.kind == "union":
            size = min(o.size, n.size)
            return [FieldOp("copy", src, dst, size=size)], \
                f"union, raw copy of {size} bytes (its active member is unknown)"
        if o.kind == n.kind == "array":
            return self._array_ops(o, n, src, dst, path)
        if o.kind == n.kind == "pointer":
            return self._pointer_ops(o, n, src, dst, path)
        if o.is_integer() and n.is_integer():
            return self._integer_ops(o, n, src, dst, path)
        raise self._cannot(path, o, n, "which cannot be converted")

    def _fill_struct(self, tt: TypeTransform, o: CType, n: CType, path: str) -> None:
        old_members, new_members = member_keys(o), member_keys(n)
        ops: list[FieldOp] = []
        for group in group_runs(new_members):
            key, nm = group[0]
            if nm.is_bitfield:
                where = f"variable '{self.variable}': {tt.name} ({path})"
                run_ops, lines = plan_run(group, old_members, o, n, where)
                ops += run_ops
                tt.fields += lines
                continue
            om = old_members.get(key)
            if om is None:
                tt.fields.append(f"{key}: new, zero")
                continue
            if om.is_bitfield:
                raise self._cannot(f"{path}.{key}", om.type, nm.type, "from a bitfield")
            moved, what = self.value_ops(om.type, nm.type, om.offset, nm.offset, f"{path}.{key}")
            ops += moved
            tt.fields.append(f"{key}: +{om.offset} -> +{nm.offset}" + (f", {what}" if what else ""))
        tt.fields += [f"{key}: dropped" for key in old_members if key not in new_members]
        tt.ops = _merge_copies(ops, o, n)

    def _array_ops(self, o: CType, n: CType, src: int, dst: int, path: str) -> Ops:
        eo, en = o.target, n.target
        assert eo is not None and en is not None
        count = min(o.count or 0, n.count or 0)
        what = f"{_count(o)} -> {_count(n)} elements, {count} kept"
        if count == 0:
            return [], what
        if self.layout.same(eo, en):
            return [FieldOp("copy", src, dst, size=count * en.size)], what
        es, ens = eo.strip(), en.strip()
        if es.kind == ens.kind == "struct":
            key, each = self.transform(eo, en, f"{path}[]"), 0
        else:
            ops, _ = self.value_ops(eo, en, 0, 0, f"{path}[]")
            if len(ops) == 1 and ops[0].kind == "copy" and ops[0].src == ops[0].dst == 0:
                key, each = None, ops[0].size  # a prefix of each element: no transform needed
            else:
                key, each = self.transform(eo, en, f"{path}[]"), 0
        op = FieldOp("array", src, dst, size=each, type=key, count=count,
                     src_stride=eo.size, dst_stride=en.size)
        each_what = f"{self.types[key].name} transformed" if key else f"{each} bytes copied"
        return [op], f"{what}, each {each_what} (stride {eo.size} -> {en.size})"

    def _pointer_ops(self, o: CType, n: CType, src: int, dst: int, path: str) -> Ops:
        po, pn = o.target, n.target
        assert po is not None and pn is not None
        self._check_resolved(po.strip(), pn.strip(), path)
        if po.strip().kind in ("base", "enum") or pn.strip().kind in ("base", "enum"):
            raise self._cannot(path, o, n, "and the number of values it points at is unknown")
        key = self.transform(po, pn, f"(*{path})")
        return [FieldOp("pointer", src, dst, size=8, type=key)], \
            f"pointee moved, {self.types[key].name} transformed"

    def _integer_ops(self, o: CType, n: CType, src: int, dst: int, path: str) -> Ops:
        if n.size > o.size and not o.is_signed():
            # x86-64 is little-endian: the low bytes come first, the zeroed rest extends them.
            return [FieldOp("copy", src, dst, size=o.size)], \
                f"zero-extended from {o.size} to {n.size} bytes"
        why = "which would need sign extension" if n.size > o.size else "which loses values"
        raise self._cannot(path, o, n, why)

    def _check_resolved(self, o: CType, n: CType, path: str) -> None:
        if is_unresolved(o, n):
            raise GenerateError(
                f"variable '{self.variable}': '{path}' has type {o.spelling()} -> {n.spelling()},"
                " which this object only forward-declares: its layout change cannot be checked",
                hint="define the type where the variable is defined, or keep its type unchanged",
            )

    def _cannot(self, path: str, o: CType, n: CType, why: str) -> GenerateError:
        what = "its type" if path == self.variable else f"field '{path}'"
        return GenerateError(
            f"variable '{self.variable}': {what} changed from {o.spelling()} to {n.spelling()},"
            f" {why}",
            hint=_KEEP_HINT,
        )


def _merge_copies(ops: list[FieldOp], old: CType, new: CType) -> list[FieldOp]:
    """Adjacent copies as one: where only padding lies between, in the old and the new layout."""
    merged: list[FieldOp] = []
    for op in ops:
        if op.kind == "copy" and op.size == 0:
            continue  # a flexible array member: nothing of it is inside the value
        prev = merged[-1] if merged else None
        if (prev is not None and prev.kind == op.kind == "copy"
                and op.src - prev.src == op.dst - prev.dst
                and op.src >= prev.src + prev.size
                and _is_padding(old, prev.src + prev.size, op.src)
                and _is_padding(new, prev.dst + prev.size, op.dst)):
            prev.size = op.src + op.size - prev.src
        else:
            merged.append(op)
    return merged


def _is_padding(record: CType, lo: int, hi: int) -> bool:
    return all(not (start < hi and lo < end) for start, end in
               (m.byte_span() for m in record.members))


def _count(array: CType) -> str:
    return "?" if array.count is None else str(array.count)


def _type_name(old: CType, new: CType, path: str) -> str:
    """The name a transform is known by: the type as C spells it, or where it is, if anonymous."""
    for t in (new.strip(), new, old.strip(), old):
        if "<anonymous>" not in t.spelling():
            return t.spelling()
    return new.strip().spelling().replace("<anonymous>", f"<anonymous: {path}>")
