"""State transfer on synthetic memory: the field operations, pointers, cycles, interior pointers."""

from __future__ import annotations

import struct

import pytest

from katana.errors import ApplyError
from katana.live.transfer import StateTransfer, map_offset
from katana.po.model import FieldOp, TypeTransform

# struct node { int v; struct node *next; }  ->  { int v; int extra; long w; struct node *next; }
NODE = TypeTransform("struct node", 16, 24, [FieldOp("copy", 0, 0, 4),
                                              FieldOp("pointer", 8, 16, 8, "node")])
# struct node table[3] -> same, each element transformed
TABLE = TypeTransform("struct node[3]", 48, 72, [FieldOp("array", 0, 0, type="node", count=3,
                                                         src_stride=16, dst_stride=24)])
TYPES = {"node": NODE, "table": TABLE}


class Memory:
    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}

    def put(self, address: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.bytes[address + i] = b

    def read(self, address: int, size: int) -> bytes:
        if any(address + i not in self.bytes for i in range(size)):
            raise OSError(5, "Input/output error")  # as /proc/PID/mem says of unmapped memory
        return bytes(self.bytes[address + i] for i in range(size))


def node(v: int, nxt: int) -> bytes:
    return struct.pack("<iiQ", v, 0, nxt)


def new_node(data: bytes) -> tuple[int, int]:
    v, _extra, _w, nxt = struct.unpack("<iiqQ", data)
    return v, nxt


def test_map_offset_fields_elements_and_ends():
    assert map_offset(TYPES, "node", 0) == 0
    assert map_offset(TYPES, "node", 2) == 2
    assert map_offset(TYPES, "node", 8) == 16  # the pointer field
    assert map_offset(TYPES, "node", 5) is None  # padding: dropped
    assert map_offset(TYPES, "node", 16) == 24  # one past the end
    assert map_offset(TYPES, "table", 16) == 24  # &table[1]: the element's start
    assert map_offset(TYPES, "table", 32 + 8) == 48 + 16  # &table[2].next


def test_a_heap_cycle_stays_a_cycle_and_shared_nodes_stay_shared():
    mem = Memory()
    root, a, b = 0x1000, 0x5000, 0x6000
    mem.put(root, node(1, a))
    mem.put(a, node(2, b))
    mem.put(b, node(3, a))  # a <-> b cycle
    st = StateTransfer(mem.read, TYPES)
    st.seed(root, 0x9000, "node")
    st.discover()
    assert sorted(p for p, _ in st.pointees) == [a, b]
    st.place(0x20000)
    out = dict(st.writes())
    v, nxt = new_node(out[0x9000])
    assert v == 1
    v_a, nxt_a = new_node(out[nxt])
    v_b, nxt_b = new_node(out[nxt_a])
    assert (v_a, v_b, nxt_b) == (2, 3, nxt)


def test_pointers_into_a_moved_array_follow_their_element():
    mem = Memory()
    table, head = 0x1000, 0x2000
    for i in range(3):
        mem.put(table + 16 * i, node(i + 1, table + 16 * ((i + 1) % 3)))
    mem.put(head, node(0, table + 16))  # a root whose pointer lands on table[1]
    st = StateTransfer(mem.read, TYPES)
    st.seed(table, 0x8000, "table")
    st.seed(head, 0x9000, "node")
    st.discover()
    assert st.pointees == []  # nothing outside the roots: no copies of table's elements
    out = dict(st.writes())
    assert new_node(out[0x9000])[1] == 0x8000 + 24
    elements = [new_node(out[0x8000][24 * i:24 * i + 24]) for i in range(3)]
    assert elements == [(1, 0x8000 + 24), (2, 0x8000 + 48), (3, 0x8000)]


def test_null_stays_null_and_a_dangling_pointer_is_refused():
    mem = Memory()
    mem.put(0x1000, node(7, 0))
    st = StateTransfer(mem.read, TYPES)
    st.seed(0x1000, 0x9000, "node")
    st.discover()
    assert new_node(dict(st.writes())[0x9000]) == (7, 0)
    mem.put(0x3000, node(8, 0xDEAD0000))  # points at memory that cannot be read
    st = StateTransfer(mem.read, TYPES)
    st.seed(0x3000, 0x9000, "node")
    with pytest.raises(ApplyError, match="cannot read a struct node"):
        st.discover()
