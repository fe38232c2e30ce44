"""LEB128 against values at every byte boundary, and the encodings DWARF 5 section 7.6 lists."""

from __future__ import annotations

import pytest

from katana.elf.leb128 import read_sleb, read_uleb, sleb, uleb


@pytest.mark.parametrize("value", [0, 1, 63, 64, 127, 128, 129, 2**14 - 1, 2**14, 2**40, 2**63])
def test_unsigned_round_trip(value):
    data = b"\xaa" + uleb(value) + b"\xbb"
    assert read_uleb(data, 1) == (value, len(data) - 1)


@pytest.mark.parametrize("value", [0, 1, -1, 63, 64, -64, -65, 127, -128, 2**40, -(2**40)])
def test_signed_round_trip(value):
    data = b"\xaa" + sleb(value) + b"\xbb"
    assert read_sleb(data, 1) == (value, len(data) - 1)


def test_the_standards_examples():
    assert uleb(2) == b"\x02" and uleb(127) == b"\x7f" and uleb(128) == b"\x80\x01"
    assert uleb(12857) == b"\xb9\x64"
    assert sleb(-2) == b"\x7e" and sleb(-127) == b"\x81\x7f" and sleb(-128) == b"\x80\x7f"
