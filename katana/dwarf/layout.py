"""Whether the bytes of an old value are, unchanged, a valid value of a new type.

Two types have the same layout when every member is where it was, by name, with a type of the same
layout, down to what pointers point at (a pointer to a struct that grew must be followed, so the
pointer's type has changed even though the pointer has not moved). Type graphs have cycles
(``struct node *next``): the comparison walks the pairs of types reachable from the root and answers
"same" only if none of them differs, which needs no assumption about pairs still being compared.
"""

from __future__ import annotations

from katana.dwarf.types import CType, Member

Pair = tuple[CType, CType]


def member_keys(record: CType) -> dict[str, Member]:
    """A struct's or union's members by the name they are matched by.

    Anonymous members (C11 ``struct { ... };`` inside a struct) have no name to match: the n-th
    anonymous member of the old type is matched with the n-th of the new one.
    """
    keyed: dict[str, Member] = {}
    anonymous = 0
    for m in record.members:
        if m.name is None:
            anonymous += 1
            keyed[f"<anonymous #{anonymous}>"] = m
        else:
            keyed[m.name] = m
    return keyed


def is_opaque_pointee(t: CType) -> bool:
    """A pointee a pointer's type says nothing reliable about: ``void``, ``char``, a function.

    Programs cast such pointers to whatever they hold, so the pointee cannot be followed; the
    pointer is kept as it is. (Function pointers stay valid: replaced code is redirected.)
    """
    t = t.strip()
    return t.kind in ("void", "function") or (t.is_integer() and t.size == 1)


def is_unresolved(old: CType, new: CType) -> bool:
    """A record pair whose layouts cannot be compared: a side only forward-declares its type."""
    old, new = old.strip(), new.strip()
    if old.kind not in ("struct", "union") or new.kind not in ("struct", "union"):
        return False
    if old.declaration and new.declaration:
        return old.name != new.name
    return old.declaration or new.declaration


class LayoutComparer:
    """Answers ``same(old, new)`` for type pairs, remembering the answers."""

    def __init__(self) -> None:
        # (id, id) -> (old, new, answer): the pair is held so that its ids stay unique
        self._memo: dict[tuple[int, int], tuple[CType, CType, bool]] = {}

    def same(self, old: CType, new: CType) -> bool:
        """True when an old value's bytes are a valid new value, as they are."""
        root = (old.strip(), new.strip())
        seen: dict[tuple[int, int], Pair] = {}
        stack = [root]
        while stack:
            o, n = stack.pop()
            key = (id(o), id(n))
            if key in seen:
                continue
            known = self._memo.get(key)
            if known is not None:
                if not known[2]:
                    return self._remember(root, False)
                continue
            seen[key] = (o, n)
            alike, parts = _shallow(o, n)
            if not alike:
                return self._remember(root, False)
            stack.extend((a.strip(), b.strip()) for a, b in parts)
        # Everything reachable from the root is alike, so is everything reachable from each pair.
        for o, n in seen.values():
            self._remember((o, n), True)
        return True

    def _remember(self, pair: Pair, answer: bool) -> bool:
        self._memo[(id(pair[0]), id(pair[1]))] = (pair[0], pair[1], answer)
        return answer


def _shallow(o: CType, n: CType) -> tuple[bool, list[Pair]]:
    """Whether two (stripped) types agree at their own level, and the pairs below to check."""
    if o is n:
        return True, []
    if o.is_integer() and n.is_integer():
        # Same-size integers (and enums, whatever their enumerators) share a representation:
        # C converts between them modulo 2^N, which is copying the bytes.
        return o.size == n.size, []
    if o.kind != n.kind:
        return False, []
    if o.kind in ("void", "function"):
        return True, []
    if o.kind == "base":
        return o.size == n.size and o.encoding == n.encoding, []
    if o.kind == "array":
        return o.count == n.count, [(o.target, n.target)]  # type: ignore[list-item]
    if o.kind == "pointer":
        po, pn = o.target, n.target
        if po is None or pn is None or is_opaque_pointee(po) or is_opaque_pointee(pn):
            return True, []
        return True, [(po, pn)]
    return _shallow_record(o, n)


def _shallow_record(o: CType, n: CType) -> tuple[bool, list[Pair]]:
    if o.declaration or n.declaration:
        return not is_unresolved(o, n), []
    if o.size != n.size:
        return False, []
    old_members, new_members = member_keys(o), member_keys(n)
    if o.kind == "union":
        if set(old_members) != set(new_members):
            return False, []
    elif [_where(k, m) for k, m in old_members.items()] != [
        _where(k, m) for k, m in new_members.items()
    ]:
        return False, []
    return True, [(old_members[k].type, m.type) for k, m in new_members.items()]


def _where(key: str, m: Member) -> tuple[str, int, int | None, int | None]:
    return key, m.offset, m.bit_offset, m.bit_size
