"""C types as the DWARF of one object describes them, reduced to what layout needs.

A ``CType`` is built from a DWARF type DIE: base types, enums, structs, unions, arrays (one level
per dimension: ``int [3][4]`` is an array of 3 arrays of 4 ints), pointers, typedefs (kept, with
their name, and resolved by ``strip()``) and function types. ``const`` and ``volatile`` do not
change a layout, so the builder steps through them. Types refer to each other (``struct node``
holds a pointer to ``struct node``), so the graph can have cycles: compare and print them with care.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from elftools.dwarf import constants as dw
from elftools.dwarf.die import DIE

TypeKind = Literal[
    "void", "base", "enum", "struct", "union", "array", "pointer", "typedef", "function"
]

# DWARF 5 section 5.1.1, table 5.2: base type encodings, as the DW_ATE_* names spell them
_ENCODINGS = {
    dw.DW_ATE_address: "address",
    dw.DW_ATE_boolean: "boolean",
    dw.DW_ATE_complex_float: "complex_float",
    dw.DW_ATE_float: "float",
    dw.DW_ATE_signed: "signed",
    dw.DW_ATE_signed_char: "signed_char",
    dw.DW_ATE_unsigned: "unsigned",
    dw.DW_ATE_unsigned_char: "unsigned_char",
    dw.DW_ATE_UTF: "UTF",
}
_SIGNED = {"signed", "signed_char"}
_UNSIGNED = {"unsigned", "unsigned_char", "boolean", "UTF", "address"}

# Qualifiers that change how a value is accessed, never where its bytes are.
_QUALIFIERS = {
    "DW_TAG_const_type",
    "DW_TAG_volatile_type",
    "DW_TAG_restrict_type",
    "DW_TAG_atomic_type",
}
_RECORDS = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union"}

POINTER_SIZE = 8  # LP64, x86-64 psABI section 3.1.2


@dataclass(eq=False, repr=False)
class Member:
    """A struct or union member. Bitfields also carry their bit position and width."""

    name: str | None  # None for an anonymous struct/union member (C11)
    type: CType
    offset: int  # bytes from the start of the enclosing struct (first byte of a bitfield)
    bit_offset: int | None = None  # bitfields: bits from the start of the struct (LSB first)
    bit_size: int | None = None  # bitfields: width in bits

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size is not None

    def byte_span(self) -> tuple[int, int]:
        """The bytes ``[start, end)`` the member occupies in its struct."""
        if self.bit_size is None or self.bit_offset is None:
            return self.offset, self.offset + self.type.size
        return self.bit_offset // 8, (self.bit_offset + self.bit_size + 7) // 8

    def bit_span(self) -> tuple[int, int]:
        """The bits ``[start, end)`` the member occupies, counted from the start of its struct."""
        if self.bit_size is None or self.bit_offset is None:
            return self.offset * 8, (self.offset + self.type.size) * 8
        return self.bit_offset, self.bit_offset + self.bit_size

    def __repr__(self) -> str:
        where = f"+{self.offset}"
        if self.is_bitfield:
            where = f"bit {self.bit_offset}:{self.bit_size}"
        return f"Member({self.name!r}, {self.type.spelling()}, {where})"


@dataclass(eq=False, repr=False)
class CType:
    """One C type. ``target`` is the pointee, the aliased type, the element or the enum's base."""

    kind: TypeKind
    name: str = ""  # "int", "struct entry", "u32"; "" for anonymous records and derived types
    size: int = 0
    encoding: str | None = None  # base types (and enums, from their underlying type)
    target: CType | None = None
    count: int | None = None  # arrays: number of elements; None for a flexible array member
    members: list[Member] = field(default_factory=list)
    enumerators: dict[str, int] = field(default_factory=dict)
    declaration: bool = False  # a struct/union/enum this object only declares (no body)

    def strip(self) -> CType:
        """The type with every typedef resolved."""
        t = self
        while t.kind == "typedef" and t.target is not None:
            t = t.target
        return t

    def member(self, name: str) -> Member | None:
        """The member called ``name``, or None."""
        return next((m for m in self.members if m.name == name), None)

    def is_integer(self) -> bool:
        """An integer-like scalar: an integer base type, a boolean, a character or an enum."""
        t = self.strip()
        return t.kind == "enum" or (t.kind == "base" and t.encoding in _SIGNED | _UNSIGNED)

    def is_signed(self) -> bool:
        """For an integer-like type: whether it is signed (an enum by its underlying type)."""
        t = self.strip()
        if t.kind == "enum" and t.encoding is None:
            # Without DW_AT_type GCC's rule applies: a negative enumerator makes the enum signed.
            return any(v < 0 for v in t.enumerators.values())
        return t.encoding in _SIGNED

    def spelling(self) -> str:
        """The type as C spells it: "struct entry", "int [3][4]", "struct node *"."""
        if self.kind == "pointer":
            target = self.target
            inner = "void" if target is None else target.spelling()
            if target is not None and target.kind == "function":
                return f"{inner} (*)()"
            return f"{inner} *"
        if self.kind == "array":
            dims, t = [], self
            while t.kind == "array" and t.target is not None:
                dims.append("[]" if t.count is None else f"[{t.count}]")
                t = t.target
            element = t.spelling()
            return f"{element}{'' if element.endswith('*') else ' '}{''.join(dims)}"
        if self.kind == "function":
            return "function"
        if self.name:
            return self.name
        return f"{self.kind} <anonymous>"

    def __repr__(self) -> str:
        return f"CType({self.kind}, {self.spelling()!r}, size={self.size})"


VOID = CType("void", "void", 0)


def _attr(die: DIE, name: str) -> object | None:
    attr = die.attributes.get(name)
    return None if attr is None else attr.value


def die_name(die: DIE) -> str | None:
    """A DIE's DW_AT_name, decoded."""
    value = _attr(die, "DW_AT_name")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None


def _member_location(die: DIE) -> int:
    value = _attr(die, "DW_AT_data_member_location")
    if value is None:
        return 0  # union members, and DWARF 5 allows leaving out a zero offset
    if isinstance(value, list):
        # DWARF 2 style: a location expression, DW_OP_plus_uconst <uleb128>
        return _uleb(value[1:]) if value and value[0] == dw.DW_OP_plus_uconst else 0
    return int(value)


def _uleb(data: list[int]) -> int:
    result, shift = 0, 0
    for byte in data:
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return result


class TypeBuilder:
    """Turns the type DIEs of one DWARF info into ``CType``s, each DIE once (cycles included)."""

    def __init__(self) -> None:
        self._memo: dict[int, CType] = {}

    def type_of(self, die: DIE) -> CType:
        """The CType that ``die``'s DW_AT_type names (void when it has none)."""
        if "DW_AT_type" not in die.attributes:
            return VOID
        return self.build(die.get_DIE_from_attribute("DW_AT_type"))

    def build(self, die: DIE) -> CType:
        """The CType of a type DIE."""
        while die.tag in _QUALIFIERS:
            if "DW_AT_type" not in die.attributes:
                return VOID  # "const void"
            die = die.get_DIE_from_attribute("DW_AT_type")
        known = self._memo.get(die.offset)
        if known is not None:
            return known
        ctype = CType("void", "void")
        # Registered before its parts are built, so that a member pointing back finds it.
        self._memo[die.offset] = ctype
        self._fill(ctype, die)
        return ctype

    def _fill(self, t: CType, die: DIE) -> None:
        name = die_name(die)
        t.size = int(_attr(die, "DW_AT_byte_size") or 0)
        t.declaration = bool(_attr(die, "DW_AT_declaration"))
        tag = die.tag
        if tag == "DW_TAG_base_type":
            t.kind, t.name = "base", name or "?"
            t.encoding = _ENCODINGS.get(int(_attr(die, "DW_AT_encoding") or 0), "other")
        elif tag in _RECORDS:
            t.kind = _RECORDS[tag]  # type: ignore[assignment]
            t.name = f"{t.kind} {name}" if name else ""
            t.members = [self._member(child) for child in die.iter_children()
                         if child.tag == "DW_TAG_member"]
        elif tag == "DW_TAG_enumeration_type":
            self._fill_enum(t, die, name)
        elif tag == "DW_TAG_array_type":
            self._fill_array(t, die)
        elif tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            t.kind, t.size = "pointer", t.size or POINTER_SIZE
            t.target = self.type_of(die)
        elif tag == "DW_TAG_typedef":
            t.kind, t.name = "typedef", name or "?"
            t.target = self.type_of(die)
            t.size = t.target.size
        elif tag == "DW_TAG_subroutine_type":
            t.kind = "function"
        # anything else (DW_TAG_unspecified_type, ...) stays "void": it has no layout to keep

    def _fill_enum(self, t: CType, die: DIE, name: str | None) -> None:
        t.kind = "enum"
        t.name = f"enum {name}" if name else ""
        t.enumerators = {
            die_name(child) or "?": int(_attr(child, "DW_AT_const_value") or 0)
            for child in die.iter_children()
            if child.tag == "DW_TAG_enumerator"
        }
        if "DW_AT_type" in die.attributes:
            base = self.type_of(die).strip()
            t.target, t.encoding = base, base.encoding
            t.size = t.size or base.size

    def _fill_array(self, t: CType, die: DIE) -> None:
        element = self.type_of(die)
        bounds = [self._count(child) for child in die.iter_children()
                  if child.tag in ("DW_TAG_subrange_type", "DW_TAG_enumeration_type")]
        # DWARF gives a multi-dimensional array one DIE with a subrange per dimension, outermost
        # first; we nest one CType per dimension so that each level has its own element type.
        for count in reversed(bounds[1:]):
            element = CType("array", target=element, count=count,
                            size=element.size * (count or 0))
        count = bounds[0] if bounds else None
        t.kind, t.target, t.count = "array", element, count
        t.size = element.size * (count or 0)

    @staticmethod
    def _count(subrange: DIE) -> int | None:
        count = _attr(subrange, "DW_AT_count")
        if isinstance(count, int):
            return count
        upper = _attr(subrange, "DW_AT_upper_bound")
        if not isinstance(upper, int):
            return None  # flexible array member, or a bound held in a variable (VLA)
        lower = _attr(subrange, "DW_AT_lower_bound")
        return upper - (lower if isinstance(lower, int) else 0) + 1

    def _member(self, die: DIE) -> Member:
        mtype = self.type_of(die)
        offset = _member_location(die)
        bit_size = _attr(die, "DW_AT_bit_size")
        if not isinstance(bit_size, int):
            return Member(die_name(die), mtype, offset)
        data_bit_offset = _attr(die, "DW_AT_data_bit_offset")
        if isinstance(data_bit_offset, int):  # DWARF 4 and later
            bit_offset = data_bit_offset
        else:
            # DWARF 2/3: DW_AT_bit_offset counts from the most significant bit of a storage unit
            # of DW_AT_byte_size bytes at DW_AT_data_member_location; x86-64 is little-endian.
            unit = int(_attr(die, "DW_AT_byte_size") or mtype.strip().size)
            msb_offset = int(_attr(die, "DW_AT_bit_offset") or 0)
            bit_offset = offset * 8 + unit * 8 - msb_offset - bit_size
        return Member(die_name(die), mtype, bit_offset // 8, bit_offset, bit_size)
