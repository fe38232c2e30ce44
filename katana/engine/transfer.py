"""State transfer: move the live value of a variable whose type changed layout into new storage.

The PO carries, per changed type, the field operations (copy, nested struct, array, pointer).
Pointers to a changed type are followed: each pointee moves to new storage (one extra mapping for
all of them), is transformed in turn, and the pointer is re-aimed. A memo of old -> new addresses
makes shared and cyclic structures come out shared and cyclic.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from katana.errors import ApplyError
from katana.po.model import TypeTransform

Reader = Callable[[int, int], bytes]


class StateTransfer:
    def __init__(self, read: Reader, types: dict[str, TypeTransform]) -> None:
        self.read = read
        self.types = types
        self.moved: dict[int, int] = {}  # old address -> new address
        self.pointees: list[tuple[int, str]] = []  # (old address, type key), discovery order

    def seed(self, old: int, new: int) -> None:
        """A variable that already has its new storage (a global in the patch region)."""
        self.moved[old] = new

    def discover(self, old: int, type_key: str) -> None:
        """Find every heap object reachable through pointers to changed types."""
        queue = [(old, type_key)]
        seen = {old}
        while queue:
            address, key = queue.pop()
            found: list[tuple[int, str]] = []

            def note(pointer: int, pointee: str, found: list = found) -> int:
                found.append((pointer, pointee))
                return 0

            self.convert(self._read(address, key), key, note)
            for p, k in found:
                if p and p not in seen and p not in self.moved:
                    seen.add(p)
                    self.pointees.append((p, k))
                    queue.append((p, k))

    def heap_size(self) -> int:
        return sum(_align8(self.types[k].new_size) for _, k in self.pointees)

    def place(self, heap: int) -> None:
        """Give each discovered pointee its new address inside ``heap``."""
        for old, key in self.pointees:
            self.moved[old] = heap
            heap += _align8(self.types[key].new_size)

    def writes(self, roots: list[tuple[int, str]]) -> list[tuple[int, bytes]]:
        """(new address, new bytes) for every root variable and every moved pointee."""
        out = []
        for old, key in roots + self.pointees:
            out.append((self.moved[old], bytes(self.convert(self._read(old, key), key,
                                                             self._aim))))
        return out

    def _aim(self, pointer: int, key: str) -> int:
        return self.moved.get(pointer, pointer) if pointer else 0

    def _read(self, address: int, key: str) -> bytes:
        size = self.types[key].old_size
        try:
            data = self.read(address, size)
        except Exception as e:  # an unreadable pointee: a dangling or foreign pointer
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
