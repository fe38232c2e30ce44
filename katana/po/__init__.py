"""The Patch Object: its in-memory model, its ELF file format (``docs/po-format.md``), and the
writer and strict reader that turn one into the other.

The names below are imported on first use (PEP 562): ``katana apply`` reads POs and never
writes one, and ``katana status`` needs neither, so neither pays for the other's modules.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "FORMAT_VERSION": "model", "FieldOp": "model", "FunctionPatch": "model",
    "FunctionRef": "model", "Meta": "model", "PatchObject": "model", "PatchTarget": "model",
    "Reloc": "model",
    "Section": "model", "Symbol": "model", "TypeTransform": "model", "VariablePatch": "model",
    "RELOC_BY_NAME": "reader", "RELOC_TYPES": "reader", "RelocType": "reader",
    "load_po": "reader", "read_po": "reader",
    "po_bytes": "writer", "write_po": "writer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"katana.po.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
