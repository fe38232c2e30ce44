"""Moving bitfields with byte copies.

A FieldOp copies whole bytes, and bitfields share bytes. Consecutive bitfields that share bytes form
a run; a run is moved as one byte copy when every kept bitfield moved by the same whole number of
bytes with its width unchanged. The copy may carry padding bits along (harmless) but must not carry
an old field's bits into a new bitfield, which has to start at zero: such a layout is refused.
"""

from __future__ import annotations

from katana.dwarf.types import CType, Member
from katana.errors import GenerateError
from katana.po.model import FieldOp

Keyed = tuple[str, Member]


def group_runs(members: dict[str, Member]) -> list[list[Keyed]]:
    """Members in order, each alone, except bitfields sharing bytes, which are grouped."""
    groups: list[list[Keyed]] = []
    run_end = -1
    for key, m in members.items():
        start, end = m.byte_span()
        if m.is_bitfield and groups and groups[-1][-1][1].is_bitfield and start < run_end:
            groups[-1].append((key, m))
            run_end = max(run_end, end)
        else:
            groups.append([(key, m)])
            run_end = end
    return groups


def plan_run(run: list[Keyed], old_members: dict[str, Member], old: CType, new: CType,
             where: str) -> tuple[list[FieldOp], list[str]]:
    """The byte copy moving one run of new bitfields, and its ``fields`` lines.

    ``where`` names the struct for messages ("variable 'cfg': struct conf").
    """
    lines = [f"{key}: new, zero" for key, _ in run if key not in old_members]
    matched = [(key, old_members[key], m) for key, m in run if key in old_members]
    if not matched:
        return [], lines
    for key, om, nm in matched:
        _check_kept(key, om, nm, where)
    shifts = {nm.bit_offset - om.bit_offset for _, om, nm in matched}  # type: ignore[operator]
    shift = shifts.pop()
    if shifts or shift % 8:
        raise GenerateError(
            f"{where}: bitfields {', '.join(k for k, _, _ in matched)} moved within their bytes,"
            " and a patch moves bitfields only by whole bytes",
            hint="keep the order and width of existing bitfields; add new ones after them",
        )
    delta = shift // 8
    lo = min(nm.byte_span()[0] for _, _, nm in matched)
    hi = max(nm.byte_span()[1] for _, _, nm in matched)
    lo, hi = max(lo, delta), min(hi, old.size + delta)  # stay inside the old value
    _check_new_bits_clean(lo, hi, delta, old, new, old_members, where)
    for key, om, nm in matched:
        lines.append(f"{key}: {_bits(om)} -> {_bits(nm)}")
    return [FieldOp("copy", lo - delta, lo, size=hi - lo)], lines


def _check_kept(key: str, om: Member, nm: Member, where: str) -> None:
    if om.is_bitfield and om.bit_size == nm.bit_size and om.type.is_integer() \
            and nm.type.is_integer():
        return
    before = f"{om.bit_size} bits" if om.is_bitfield else om.type.spelling()
    raise GenerateError(
        f"{where}: field '{key}' changed from {before} to {nm.bit_size} bits,"
        " which a patch cannot convert",
        hint="keep the field as it was (add a new field and convert in code)",
    )


def _check_new_bits_clean(lo: int, hi: int, delta: int, old: CType, new: CType,
                          old_members: dict[str, Member], where: str) -> None:
    kept = set(old_members)
    for bit in range(lo * 8, hi * 8):
        new_owner = _owner(new, bit)
        if new_owner is None or new_owner.name in kept:
            continue
        old_owner = _owner(old, bit - delta * 8)
        if old_owner is not None:
            raise GenerateError(
                f"{where}: new bitfield '{new_owner.name}' shares bytes with the bits of old field"
                f" '{old_owner.name}', and would not start at zero",
                hint="add new bitfields after the existing ones, where the old layout had padding",
            )


def _owner(record: CType, bit: int) -> Member | None:
    for m in record.members:
        start, end = m.bit_span()
        if start <= bit < end:
            return m
    return None


def _bits(m: Member) -> str:
    assert m.bit_offset is not None
    return f"+{m.bit_offset // 8} bit {m.bit_offset % 8} ({m.bit_size} bits)"
