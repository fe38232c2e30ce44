"""The Patch Object: its in-memory model, its ELF file format (``docs/po-format.md``), and the
writer and strict reader that turn one into the other."""

from __future__ import annotations

from katana.po.model import (
    FORMAT_VERSION,
    FieldOp,
    FunctionPatch,
    FunctionRef,
    Meta,
    PatchObject,
    PatchTarget,
    Reloc,
    Section,
    Symbol,
    TypeTransform,
    VariablePatch,
)
from katana.po.reader import RELOC_BY_NAME, RELOC_TYPES, RelocType, load_po, read_po
from katana.po.writer import po_bytes, write_po

__all__ = [
    "FORMAT_VERSION",
    "RELOC_BY_NAME",
    "RELOC_TYPES",
    "FieldOp",
    "FunctionPatch",
    "FunctionRef",
    "Meta",
    "PatchObject",
    "PatchTarget",
    "Reloc",
    "RelocType",
    "Section",
    "Symbol",
    "TypeTransform",
    "VariablePatch",
    "load_po",
    "po_bytes",
    "read_po",
    "write_po",
]
