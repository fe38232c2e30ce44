"""State transfer: move the live value of a variable whose type changed layout into new storage.

The PO carries, per changed type, the field operations (copy, nested struct, array, pointer).
Pointers to a changed type are followed: each pointee moves to new storage (one extra mapping for
all of them), is transformed in turn, and the pointer is re-aimed. A memo of old -> new addresses
makes shared and cyclic structures come out shared and cyclic.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable

from katana.errors import ApplyError, KatanaError
from katana.po.model import TypeTransform

Reader = Callable[[int, int], bytes]


def map_offset(types: dict[str, TypeTransform], key: str, offset: int) -> int | None:
    """Where byte ``offset`` of an old value of type ``key`` lands in the new value; None when
    it lies in something dropped (a removed field, padding). One past the end maps to one past
    the new end, as C lets a pointer do. The start of an object or sub-object (a nested
    struct, an array element) maps to the start of its new version: a pointer there means
    the object far more often than its first member, which may have moved inside it."""
    t = types[key]
    if offset == 0:
        return 0
    for op in t.ops:
        if op.kind in ("copy", "pointer"):
            size = op.size or 8
            if op.src <= offset < op.src + size:
                return op.dst + offset - op.src
        elif op.kind == "struct" and op.type is not None:
            sub = types[op.type]
            if op.src <= offset < op.src + sub.old_size:
                inner = map_offset(types, op.type, offset - op.src)  # 0 -> 0: starts to starts
                return None if inner is None else op.dst + inner
        elif op.kind == "array" and op.src <= offset < op.src + op.count * op.src_stride:
            index, rest = divmod(offset - op.src, op.src_stride)
            base = op.dst + index * op.dst_stride
            if op.type is None:
                return base + rest if rest < op.size else None
            inner = map_offset(types, op.type, rest)
            return None if inner is None else base + inner
    return t.new_size if offset == t.old_size else None


class _Moved:
    """Old objects that move, sorted by old address, for finding the one a pointer hits."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.objects: list[tuple[int, int, str, int]] = []  # (old, old size, type key, new)

    def add(self, old: int, size: int, key: str, new: int) -> None:
        i = bisect.bisect_left(self.starts, old)
        self.starts.insert(i, old)
        self.objects.insert(i, (old, size, key, new))

    def find(self, address: int, one_past: bool = False) -> tuple[int, int, str, int] | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0:
            old, size, key, new = self.objects[i]
            if address < old + size or (one_past and address == old + size):
                return self.objects[i]
        return None


class StateTransfer:
    def __init__(self, read: Reader, types: dict[str, TypeTransform]) -> None:
        self.read = read
        self.types = types
        self.moved = _Moved()
        self.roots: list[tuple[int, str]] = []
        self.pointees: list[tuple[int, str]] = []  # (old address, type key), discovery order

    def seed(self, old: int, new: int, key: str) -> None:
        """A variable that already has its new storage (a global in the patch region)."""
        self.moved.add(old, self.types[key].old_size, key, new)
        self.roots.append((old, key))

    def discover(self) -> None:
        """Find every object reachable through pointers to changed types, from every root.

        A pointer that lands inside an object already known (``&pool[1]``, a field) is not a
        new object: it will be re-aimed into the new layout of the one it lands in."""
        known: list[tuple[int, int]] = []
        queue = list(self.roots)
        while queue:
            address, key = queue.pop()
            found: list[tuple[int, str]] = []

            def note(pointer: int, pointee: str, found: list = found) -> int:
                found.append((pointer, pointee))
                return 0

            self.convert(self._read(address, key), key, note)
            for p, k in found:
                if not p or self.moved.find(p) or any(lo <= p < hi for lo, hi in known):
                    continue
                known.append((p, p + self.types[k].old_size))
                self.pointees.append((p, k))
                queue.append((p, k))

    def heap_size(self) -> int:
        return sum(_align8(self.types[k].new_size) for _, k in self.pointees)

    def place(self, heap: int) -> None:
        """Give each discovered pointee its new address inside ``heap``."""
        for old, key in self.pointees:
            self.moved.add(old, self.types[key].old_size, key, heap)
            heap += _align8(self.types[key].new_size)

    def new_address(self, address: int) -> int | None:
        """Where an old address (of a moved object, or inside one) is in the new layout."""
        hit = self.moved.find(address, one_past=True)
        if hit is None:
            return None
        old, _size, key, new = hit
        inner = map_offset(self.types, key, address - old)
        return None if inner is None else new + inner

    def writes(self) -> list[tuple[int, bytes]]:
        """(new address, new bytes) for every root variable and every moved pointee."""
        out = []
        for old, key in self.roots + self.pointees:
            new = self.new_address(old)
            assert new is not None
            out.append((new, bytes(self.convert(self._read(old, key), key, self._aim))))
        return out

    def _aim(self, pointer: int, key: str) -> int:
        if not pointer:
            return 0
        new = self.new_address(pointer)
        if new is None:
            raise ApplyError(f"a pointer to {pointer:#x} points into a part of a "
                             f"{self.types[key].name} that the new layout drops")
        return new

    def _read(self, address: int, key: str) -> bytes:
        size = self.types[key].old_size
        try:
            data = self.read(address, size)
        except (KatanaError, OSError) as e:  # a dangling or foreign pointer
            raise ApplyError(f"cannot read a {self.types[key].name} at {address:#x} to "
                             f"transform it ({e})") from e
        if len(data) != size:
            raise ApplyError(f"short read of a {self.types[key].name} at {address:#x}")
        return data

    def convert(self, old: bytes, key: str, aim: Callable[[int, str], int]) -> bytearray:
        """The new value of one object of type ``key`` from its old bytes."""
        t = self.types[key]
        new = bytearray(t.new_size)
        for op in t.ops:
            if op.kind == "copy":
                new[op.dst:op.dst + op.size] = old[op.src:op.src + op.size]
            elif op.kind == "struct":
                self._nested(new, old, op.src, op.dst, op.type, aim)
            elif op.kind == "array":
                for i in range(op.count):
                    src, dst = op.src + i * op.src_stride, op.dst + i * op.dst_stride
                    if op.type is None:
                        new[dst:dst + op.size] = old[src:src + op.size]
                    else:
                        self._nested(new, old, src, dst, op.type, aim)
            elif op.kind == "pointer":
                (pointer,) = struct.unpack_from("<Q", old, op.src)
                struct.pack_into("<Q", new, op.dst, aim(pointer, op.type or ""))
        return new

    def _nested(self, new: bytearray, old: bytes, src: int, dst: int, key: str | None,
                aim: Callable[[int, str], int]) -> None:
        assert key is not None
        sub = self.types[key]
        new[dst:dst + sub.new_size] = self.convert(old[src:src + sub.old_size], key, aim)


def _align8(n: int) -> int:
    return (n + 7) & ~7
