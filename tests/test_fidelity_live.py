"""Live: a program whose build directory also makes the shared library it uses. The patch made
from the tree carries the program's change only; applied to a running v0, the program computes
as v1 does, and it still calls the library it loaded (whose code the patch does not touch).
And new code that reads a libc variable v0 never used (stderr), through the patch's own slot.

The plain-.rodata scenario (strings that move) is test_scenarios.py's test_plain_rodata.
"""

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livekit import Live, katana  # noqa: E402
from test_fidelity import build_with_library, library_variable_trees  # noqa: E402

pytestmark = pytest.mark.live
PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])


@PIE
def test_library_beside_program_live(tmp_path, pie):
    build_with_library(tmp_path / "v0", 2, 100, pie)
    build_with_library(tmp_path / "v1", 3, 200, pie)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"), "prog",
           check=True)
    listing = json.loads(katana("list", "--json", str(po), check=True).stdout)
    assert [(f["name"], f["object"]) for f in listing["functions"]] == [("compute", "main.o")]
    live = Live([str(tmp_path / "v0" / "prog")])
    try:
        live.wait_for(r"^tick 3 value 206$")
        katana("apply", str(po), str(live.pid), check=True)
        # v1's compute (x 3) over the library the process loaded (v0's: + 100)
        m = live.wait_for(r"^tick (\d+) value (\d+)$", after=live.mark() + 1)
        for _ in range(3):
            tick, value = int(m.group(1)), int(m.group(2))
            assert value == (tick + 100) * 3, live.lines[-4:]
            m = live.wait_for(r"^tick (\d+) value (\d+)$", after=live.last_index + 1)
        assert live.alive()
        assert re.search(r"v0 -> v1", katana("status", str(live.pid), check=True).stdout)
    finally:
        live.kill()


@PIE
def test_new_library_variable_live(tmp_path, pie):
    library_variable_trees(tmp_path, pie)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"), "prog",
           check=True)
    live = Live([str(tmp_path / "v0" / "prog")])  # stderr goes to the same pipe as stdout
    try:
        live.wait_for(r"^tick 3 v0$")
        katana("apply", str(po), str(live.pid), check=True)
        m = live.wait_for(r"^tick (\d+) v1$", after=live.mark())
        tick = int(m.group(1))
        live.wait_for(rf"^tick {tick} to stderr$", after=live.last_index)
        live.wait_for(rf"^tick {tick + 1} to stderr$", after=live.last_index)
        assert live.alive()
    finally:
        live.kill()
