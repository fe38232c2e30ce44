"""DWARF types of global and static variables, and how a changed type's live values transform.

``variable_type`` reads the type of a variable from a relocatable object's DWARF (parsed once per
object); ``plan_transform`` compares an old and a new type and plans the field-by-field
``TypeTransform``s (see ``katana.po.model``) that turn a live old value into a new one.
"""

from __future__ import annotations

from katana.dwarf.reader import ObjectDwarf, Variable, clear_cache, load, variable_type
from katana.dwarf.transform import TransformPlanner, plan_transform, same_layout
from katana.dwarf.types import CType, Member

__all__ = [
    "CType",
    "Member",
    "ObjectDwarf",
    "TransformPlanner",
    "Variable",
    "clear_cache",
    "load",
    "plan_transform",
    "same_layout",
    "variable_type",
]
