"""LEB128, the variable-length integers of DWARF (DWARF 5 section 7.6): read and written.

Readers take the bytes and a position and return (value, position after it), the shape every
DWARF and CFI reader here walks its data with.
"""

from __future__ import annotations


def read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def read_sleb(data: bytes, pos: int) -> tuple[int, int]:
    value, end = read_uleb(data, pos)
    bits = 7 * (end - pos)
    if data[end - 1] & 0x40:  # the sign bit of the last byte
        value -= 1 << bits
    return value, end


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)
