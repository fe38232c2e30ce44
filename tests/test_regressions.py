"""Live regressions: programs that once made katana produce a wrong or crashing patch.

Each prints invariants that hold in v0 and v1 alike, so state that is lost, duplicated or left
behind in old storage shows up on the lines printed after the patch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from livekit import CFLAGS, LDFLAGS, Live, build_scenario, katana

pytestmark = pytest.mark.live
PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])


@contextmanager
def _running_patched(v0: Path, v1: Path, program: str = "prog"):
    """Generate v0 -> v1, start v0, apply the patch once it runs; the live process, killed
    afterwards whatever happens."""
    po = v0 / "p.po"
    katana("generate", "-o", str(po), str(v0), str(v1), program, check=True)
    live = Live([str(v0 / program)])
    try:
        live.wait_for(r"tick 3\b")
        result = katana("apply", str(po), str(live.pid))
        assert result.returncode == 0, result.stderr
        yield live
    finally:
        live.kill()


def _lines(live: Live, pattern: str, count: int) -> list[re.Match]:
    """The next ``count`` lines matching ``pattern``, from now on."""
    after, found = live.mark(), []
    for _ in range(count):
        found.append(live.wait_for(pattern, after=after))
        after = live.last_index + 1
    return found


def _patched(name: str, tmp_path, pie: bool, pattern: str, lines: int = 6) -> list[re.Match]:
    """Start v0, apply v0 -> v1, and return ``lines`` matches of ``pattern`` printed after."""
    trees = build_scenario(name, tmp_path, pie=pie)
    with _running_patched(trees["v0"].parent, trees["v1"].parent) as live:
        found = _lines(live, pattern, lines)
        assert live.alive()
        return found


@PIE
def test_library_data_read_by_new_code(tmp_path, pie):
    found = _patched("library_data", tmp_path, pie, r"tick (\d+) V1")
    ticks = [int(m.group(1)) for m in found]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))


@PIE
def test_pointer_one_past_the_end(tmp_path, pie):
    found = _patched("one_past_end", tmp_path, pie, r"tick (\d+) index (-?\d+)", lines=20)
    indexes = [int(m.group(2)) for m in found]
    assert all(0 <= i < 16 for i in indexes)
    assert all(b == (a + 1) % 16 for a, b in zip(indexes, indexes[1:], strict=False))


@PIE
def test_reference_with_an_immediate_after_the_displacement(tmp_path, pie):
    found = _patched("immediate_after_disp", tmp_path, pie,
                     r"tick (\d+) hits (\d+) misses (\d+) total (\d+) other (\d+) V1")
    for m in found:
        tick, hits, misses, total, other = map(int, m.groups())
        assert (hits, misses, total, other) == (100 * tick, tick, tick * (tick + 1) // 2,
                                                1000 * tick)


@PIE
def test_pointer_to_a_field_that_moves(tmp_path, pie):
    found = _patched("interior_pointer", tmp_path, pie,
                     r"tick (\d+) hits (\d+) misses (\d+) total (\d+) V1 extra (\d+)")
    for m in found:
        tick, hits, misses, total, extra = map(int, m.groups())
        assert (hits, misses, total, extra) == (tick, tick, tick * (tick + 1) // 2, 0)


@PIE
def test_pointer_ring_inside_a_transformed_array(tmp_path, pie):
    found = _patched("pointer_ring_in_array", tmp_path, pie,
                     r"tick (\d+) 1:(\d+) 2:(\d+) 3:(\d+) V1")
    for m in found:
        tick, *visits = map(int, m.groups())
        assert sum(visits) == tick and max(visits) - min(visits) <= 1


@PIE
def test_function_pointers_keep_their_identity(tmp_path, pie):
    found = _patched("function_pointer_identity", tmp_path, pie,
                     r"tick (\d+) same (\d) same2 (\d) cb (\d+) V1")
    for m in found:
        tick, same, same2, cb = map(int, m.groups())
        assert (same, same2, cb) == (1, 1, tick + 1000)


@PIE
def test_hidden_function_changed_under_an_unchanged_caller(tmp_path, pie):
    found = _patched("hidden_visibility", tmp_path, pie, r"tick (\d+) helper (\d+)")
    assert all(int(m.group(2)) == int(m.group(1)) + 500 for m in found)


@PIE
def test_same_named_static_locals_keep_their_values(tmp_path, pie):
    found = _patched("same_named_statics", tmp_path, pie, r"tick (\d+) id (\d+) ev (\d+) o 0")
    for m in found:
        tick, ident, ev = map(int, m.groups())
        assert (ident, ev) == (tick, tick + 1000)


def test_revert_leaves_no_pointer_into_the_patch(tmp_path):
    trees = build_scenario("revert_stored_pointer", tmp_path)
    with _running_patched(trees["v0"].parent, trees["v1"].parent) as live:
        m = live.wait_for(r"fire (\d+) -> (\d+)")  # the patched step() stored &f
        assert int(m.group(2)) == int(m.group(1)) + 1000
        katana("revert", str(live.pid), check=True)
        for m in _lines(live, r"fire (\d+) -> (\d+)", 5):  # handler works: v0's f now
            assert int(m.group(2)) == int(m.group(1)) + 1
        assert live.alive()


@PIE
def test_existing_thread_local_variables_read_by_new_code(tmp_path, pie):
    found = _patched("thread_local", tmp_path, pie,
                     r"who (\d) tick (\d+) tl (\d+) tl2 (\d+) v1", lines=10)
    for m in found:
        _who, tick, tl, tl2 = map(int, m.groups())
        assert (tl, tl2) == (tick, 100 + tick)  # each thread its own, carried on


def _build_nested(src, out, pie: bool) -> None:
    """Like livekit.build_version, keeping subdirectories: objects a/util.o and b/util.o."""
    objects = []
    for c in sorted(src.rglob("*.c")):
        rel = c.relative_to(src)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(c, out / rel)
        obj = str(rel.with_suffix(".o"))
        subprocess.run(["gcc", *CFLAGS, "-fPIE" if pie else "-fno-pie",
                        f"-ffile-prefix-map={out}=.", "-c", str(rel), "-o", obj], cwd=out,
                       check=True)
        objects.append(obj)
    subprocess.run(["gcc", *LDFLAGS, "-pie" if pie else "-no-pie", *objects, "-o", "prog"],
                   cwd=out, check=True)


@PIE
def test_two_objects_with_one_source_basename(tmp_path, pie):
    src = Path(__file__).parent / "nested" / "same_basename"
    for v in ("v0", "v1"):
        _build_nested(src / v, tmp_path / v, pie)
    with _running_patched(tmp_path / "v0", tmp_path / "v1") as live:
        # a keeps counting from 0, b from 1000: each its own count
        for m in _lines(live, r"tick (\d+) a (\d+) b (\d+)", 5):
            tick, a, b = map(int, m.groups())
            assert (a, b) == (tick, 1000 + tick)
