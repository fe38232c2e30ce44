"""The metadata of a Patch Object: the JSON in its ``.katana.meta`` section, decoded and checked.

The JSON is parsed strictly (no duplicate keys, no NaN), its ``format_version`` checked first,
then every field decoded against the model's own type hints (``katana/po/model.py``), so a field
the model gains is covered without a second schema. Byte strings are references into
``.katana.oldcode``. Last come the checks the types alone cannot make: indices in range, types
present, transformations inside their storage. Every failure is a FormatError through the
caller's ``error``, so it names the file like the reader's ELF checks do.
"""

from __future__ import annotations

import functools
import json
import reprlib
import typing
from dataclasses import dataclass
from types import NoneType, UnionType

from katana.errors import FormatError
from katana.po.elfdefs import META_SECTION, OLDCODE_SECTION
from katana.po.model import FORMAT_VERSION, FieldOp, Meta, PatchObject, TypeTransform

# Integers in the metadata are offsets, sizes and counts: a signed 64-bit value holds any of them.
MAX_JSON_INT = (1 << 63) - 1

# Builds the FormatError for a message; the reader's names the file and gives its hint.
Fail = typing.Callable[[str], FormatError]


def load_meta_json(raw: bytes, name: str, error: Fail) -> dict:
    """Parse the bytes of .katana.meta and check its format_version before anything else is
    interpreted: a newer format may give other sections and fields other meanings."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise error(f"{META_SECTION} is not valid UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise error(f"{META_SECTION} JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, _no_duplicates, too many int digits
        raise error(f"{META_SECTION} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise error(f"{META_SECTION} JSON is not an object")
    version = obj.get("format_version")
    if not (type(version) is int and version >= 1):
        raise error(f"{META_SECTION} has no valid format_version")
    if version > FORMAT_VERSION:
        raise FormatError(f"{name}: PO format version {version} is newer than this katana "
                          f"reads (version {FORMAT_VERSION})",
                          hint="upgrade katana to a release that reads this format")
    return obj


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


# Fields added after format version 1, which a PO written before them does not have; every
# other field is required.
LATER_FIELDS = {("Meta", "cfi"), ("Meta", "target")}


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


@dataclass
class SymbolExtra:
    """What a symbol of the model holds beyond its ELF symbol, kept in the metadata."""

    elf: int  # index of the symbol in .symtab
    local: bool
    file: str | None
    new_name: str | None
    entry: bool = False


class MetaDecoder:
    """Decode the metadata JSON into model objects, checking the type of every field against the
    model's own type hints (so a field the model gains is covered without a second schema)."""

    def __init__(self, oldcode: bytes, error: Fail) -> None:
        self.oldcode = oldcode
        self.error = error

    def decode(self, obj: dict) -> tuple[Meta, list[SymbolExtra]]:
        obj = dict(obj)
        extras = self.value(list[SymbolExtra], obj.pop("symbols", None), "symbols")
        return self.value(Meta, obj, ""), extras

    def fail(self, path: str, message: str) -> FormatError:
        return self.error(f"{META_SECTION} {path or 'top level'}: {message}")

    def value(self, hint: typing.Any, value: object, path: str) -> typing.Any:
        shape, arg = _shape(hint)
        if shape == "optional":
            return None if value is None else self.value(arg, value, path)
        if shape == "literal":
            if not isinstance(value, str) or value not in arg:
                raise self.fail(path, f"expected one of {', '.join(arg)}, got {_show(value)}")
            return value
        if shape == "list":
            if not isinstance(value, list):
                raise self.fail(path, f"expected a list, got {_show(value)}")
            return [self.value(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
        if shape == "dict":
            if not isinstance(value, dict):
                raise self.fail(path, f"expected an object, got {_show(value)}")
            return {k: self.value(arg, v, f"{path}[{k!r}]") for k, v in value.items()}
        if shape == "bytes":
            return self.bytes(value, path)
        if shape == "object":
            return self.object(hint, arg, value, path)
        return self.scalar(hint, value, path)

    def scalar(self, hint: type, value: object, path: str) -> object:
        if hint is bool:
            self.expect(isinstance(value, bool), path, "true or false", value)
        elif hint is int:
            self.expect(type(value) is int and 0 <= value <= MAX_JSON_INT, path,
                        "an integer in 0..2**63-1", value)
        elif hint is str:
            self.expect(isinstance(value, str), path, "a string", value)
            try:
                value.encode("utf-8")  # type: ignore[union-attr]
            except UnicodeEncodeError:  # JSON can escape a lone surrogate (\ud800)
                raise self.fail(path, "string holds an unpaired surrogate") from None
        else:
            raise TypeError(f"no JSON mapping for {hint!r} at {path}")  # a bug in Katana
        return value

    def object(self, cls: type, hints: dict[str, typing.Any], value: object, path: str) -> object:
        self.expect(isinstance(value, dict), path, "an object", value)
        missing = [k for k in hints if k not in value  # type: ignore[operator]
                   and (cls.__name__, k) not in LATER_FIELDS]
        unknown = [k for k in value if k not in hints]  # type: ignore[union-attr]
        if missing or unknown:
            raise self.fail(path, f"missing fields {missing}, unknown fields {unknown}")
        return cls(**{k: self.value(h, value[k], f"{path}.{k}" if path else k)  # type: ignore[index]
                      for k, h in hints.items() if k in value})  # type: ignore[operator]

    def bytes(self, value: object, path: str) -> bytes:
        ref = self.value(_BytesRef, value, path)
        if ref.offset + ref.size > len(self.oldcode):
            raise self.fail(path, f"bytes {ref.offset}..{ref.offset + ref.size} lie outside "
                            f"{OLDCODE_SECTION} ({len(self.oldcode)} bytes)")
        return self.oldcode[ref.offset:ref.offset + ref.size]

    def expect(self, condition: bool, path: str, what: str, value: object) -> None:
        if not condition:
            raise self.fail(path, f"expected {what}, got {_show(value)}")


@dataclass
class _BytesRef:
    offset: int  # into .katana.oldcode
    size: int


@functools.cache
def _shape(hint: typing.Any) -> tuple[str, typing.Any]:
    """How a type hint of the model maps to JSON, worked out once per hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union):  # the model's unions are all "X | None"
        (inner,) = (a for a in args if a is not NoneType)
        return "optional", inner
    if origin is typing.Literal:
        return "literal", args
    if origin is list:
        return "list", args[0]
    if origin is dict:
        return "dict", args[1]
    if hint is bytes:
        return "bytes", None
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return "object", typing.get_type_hints(hint)
    return "scalar", None


def _show(value: object) -> str:
    return reprlib.repr(value)  # bounded in length and depth, whatever the JSON held


def check_meta(po: PatchObject, error: Fail) -> None:
    """Check what the types alone do not: indices in range, referenced types present, and
    transformations that stay inside the storage they read and write."""
    meta, nsyms = po.meta, len(po.symbols)

    def defined(index: int | None, path: str) -> None:
        if index is None or index >= nsyms or po.symbols[index].section is None:
            raise error(f"{META_SECTION} {path}: symbol {index} is not a symbol the PO defines")

    for i, f in enumerate(meta.functions):
        defined(f.symbol, f"functions[{i}].symbol")
    for key, blob in meta.cfi.items():
        if not key.isdigit() or int(key) >= len(po.sections) or \
                po.sections[int(key)].kind != "text":
            raise error(f"{META_SECTION} cfi[{key!r}]: not a code section of the PO")
        try:
            bytes.fromhex(blob)
        except ValueError:
            raise error(f"{META_SECTION} cfi[{key!r}]: not a hex string") from None
    for i, v in enumerate(meta.variables):
        path = f"variables[{i}]"
        if v.status != "kept" or v.symbol is not None:
            defined(v.symbol, path + ".symbol")
        if v.type is not None or v.status == "transformed":
            t = meta.types.get(v.type) if v.type is not None else None
            if t is None:
                raise error(f"{META_SECTION} {path}.type: {v.type!r} names no entry of types")
            if t.old_size > v.old_size or t.new_size > v.new_size:
                raise error(f"{META_SECTION} {path}: type {v.type!r} is larger than the variable")
    for key, t in meta.types.items():
        for n, op in enumerate(t.ops):
            _check_op(meta.types, t, op, f"types[{key!r}].ops[{n}]", error)
    _check_no_cycle(meta.types, error)


def _check_op(types: dict[str, TypeTransform], t: TypeTransform, op: FieldOp, path: str,
              error: Fail) -> None:
    sub = types.get(op.type) if op.type is not None else None
    if op.type is not None and sub is None:
        raise error(f"{META_SECTION} {path}.type: no type {op.type!r} in types")
    if op.kind in ("struct", "pointer") and sub is None:
        raise error(f"{META_SECTION} {path}: a {op.kind} op needs a type")
    if op.kind == "copy":
        reads, writes = op.src + op.size, op.dst + op.size
    elif op.kind == "struct":
        reads, writes = op.src + sub.old_size, op.dst + sub.new_size  # type: ignore[union-attr]
    elif op.kind == "pointer":  # x86-64 LP64: a pointer is 8 bytes
        reads, writes = op.src + 8, op.dst + 8
    else:
        old, new = (sub.old_size, sub.new_size) if sub else (op.size, op.size)
        last = max(op.count - 1, 0)
        reads = op.src + last * op.src_stride + old if op.count else 0
        writes = op.dst + last * op.dst_stride + new if op.count else 0
    if reads > t.old_size or writes > t.new_size:
        raise error(f"{META_SECTION} {path}: {op.kind} op reaches outside the {t.name!r} value "
                    f"(old size {t.old_size}, new size {t.new_size})")


def _check_no_cycle(types: dict[str, TypeTransform], error: Fail) -> None:
    """A type cannot contain itself by value (pointers may form cycles: the engine follows them
    once each). Depth-first, without recursion: a damaged file may chain thousands of types."""
    done: set[str] = set()
    for root in types:
        if root in done:
            continue
        stack = [(root, iter(types[root].ops))]
        on_path = {root}
        while stack:
            key, ops = stack[-1]
            op = next((o for o in ops if o.kind in ("struct", "array") and o.type is not None),
                      None)
            if op is None:
                done.add(key)
                on_path.discard(key)
                stack.pop()
            elif op.type in on_path:
                raise error(f"{META_SECTION} types[{op.type!r}] contains itself by value")
            elif op.type not in done:
                on_path.add(op.type)  # type: ignore[arg-type]
                stack.append((op.type, iter(types[op.type].ops)))  # type: ignore[index]

