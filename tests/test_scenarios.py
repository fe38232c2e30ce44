"""The hot-patch scenarios of SCENARIOS.md, live: build v0 and v1 of a small C program, generate
the Patch Object with ``katana generate``, start v0, apply with ``katana apply`` and watch what the
process prints afterwards.

Each scenario is built once per module and PIE/non-PIE variant (the ``scenario`` fixture). Every
process is started by ``running`` and killed when the test ends, pass or fail. Tests wait for what
the program prints, never for a fixed time.

The programs print one line per tick, with invariants that hold in v0 and v1 alike (a counter
equals the tick, a sum equals the sum of ticks): state lost or reset in the patch shows up as a
broken invariant, v1 behaviour as a new result on the same line.
"""

import json
import re
import sys
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livekit import (  # noqa: E402
    Live,
    build_scenario,
    changed_runs,
    code_snapshot,
    function_addresses,
    katana,
    load_bias,
)

from katana.elf.buildid import read_build_id  # noqa: E402

pytestmark = pytest.mark.live

PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
TIMEOUT = 20.0
JMP_REL32 = 0xE9
JMP_SIZE = 5


class Built:
    """One scenario's versions, built as PIE or not; patches between them made on demand."""

    def __init__(self, name, root, pie, versions, cflags):
        self.name = name
        self.root = root
        self.exes = build_scenario(name, root, pie=pie, versions=versions, cflags=cflags)
        self._pos = {}
        self._listings = {}

    def dir(self, version):
        return self.exes[version].parent

    def po(self, frm="v0", to="v1"):
        """The PO from ``frm`` to ``to`` (``katana generate`` must succeed)."""
        if (frm, to) not in self._pos:
            out = self.root / f"{frm}-{to}.po"
            katana("generate", "-o", str(out), str(self.dir(frm)), str(self.dir(to)), "prog",
                   check=True)
            self._pos[frm, to] = out
        return self._pos[frm, to]

    def listing(self, frm="v0", to="v1"):
        """``katana list --json`` of the PO, as data."""
        if (frm, to) not in self._listings:
            result = katana("list", "--json", str(self.po(frm, to)), check=True)
            self._listings[frm, to] = json.loads(result.stdout)
        return self._listings[frm, to]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """scenario(name, pie, versions=("v0", "v1"), cflags=()) -> Built, built once per module."""
    cache = {}

    def get(name, pie, versions=("v0", "v1"), cflags=()):
        key = (name, pie, tuple(versions), tuple(cflags))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{name}-{'pie' if pie else 'nopie'}")
            cache[key] = Built(name, root, pie, versions, tuple(cflags))
        return cache[key]

    return get


@contextmanager
def running(exe):
    live = Live([str(exe)])
    try:
        yield live
    finally:
        live.kill()


# -- helpers ------------------------------------------------------------------------------------

def ints(line, *names):
    """The integers that follow each ``name `` in a line."""
    return [int(re.search(rf"\b{name} (-?\d+)", line).group(1)) for name in names]


def apply_ok(live, po):
    """Apply through the CLI; return (index of the first line surely printed by patched code,
    code snapshot taken before the patch)."""
    before = code_snapshot(live.pid)
    result = katana("apply", str(po), str(live.pid))
    assert result.returncode == 0, f"apply failed ({result.returncode}):\n{result.stderr}"
    assert "applied" in result.stdout
    # Lines read by mark() may predate the patch; the first one after it may have been computed
    # before the stop and written after: from the second line on, everything ran patched code.
    after = live.mark()
    live.wait_for(r".", after=after)
    return live.last_index + 1, before


def wait_lines(live, start, count):
    """``count`` complete lines from index ``start`` on."""
    live.wait_for(r".", after=start + count - 1, timeout=TIMEOUT)
    return live.lines[start:start + count]


def assert_ticks_continue(lines):
    """The tick counter of main goes on, one by one: nothing restarted."""
    ticks = [int(re.match(r"tick (\d+)", x).group(1)) for x in lines if x.startswith("tick ")]
    assert ticks, lines
    assert all(b in (a, a + 1) for a, b in pairwise(ticks)), ticks


def assert_only_entries_changed(built, live, before):
    """The patch changed the running code at the entries of the replaced functions only (a jump
    each), and nowhere else: old code untouched."""
    after = code_snapshot(live.pid)
    addresses = function_addresses(built.exes["v0"])
    bias = load_bias(live.pid, built.exes["v0"])
    replaced = [f["old_name"] or f["name"] for f in built.listing()["functions"]
                if f["status"] == "changed"]
    entries = {addresses[name] + bias for name in replaced}
    start, code = after
    for entry in entries:
        assert code[entry - start] == JMP_REL32, f"no jump at the entry of {replaced}"
    for address, length in changed_runs(before, after):
        assert any(e <= address and address + length <= e + JMP_SIZE for e in entries), \
            f"code changed at {address:#x} (+{length}), outside the replaced functions' entries"


def assert_refused_untouched(live, before, pattern_v0):
    """The process runs exactly the code it ran before, and goes on printing v0 behaviour."""
    assert code_snapshot(live.pid) == before
    mark = live.mark()
    live.wait_for(pattern_v0, after=mark + 1, timeout=TIMEOUT)
    assert live.alive()


def patched_lines(built, pattern_v0, count=5, entries_only=True):
    """Start v0, wait for ``pattern_v0``, apply v0 -> v1; (all lines, lines after the patch)."""
    with running(built.exes["v0"]) as live:
        live.wait_for(pattern_v0, timeout=TIMEOUT)
        first, before = apply_ok(live, built.po())
        after = wait_lines(live, first, count)
        if entries_only:
            assert_only_entries_changed(built, live, before)
        assert live.alive()
        return live.lines[:first + count], after


# -- must patch ---------------------------------------------------------------------------------

@PIE
def test_body_change(scenario, pie):
    built = scenario("body_change", pie)
    lines, after = patched_lines(built, r"^tick 8 result")
    for line in after:
        tick, result = ints(line, "tick", "result")
        assert result == (7 if tick % 7 == 0 else tick * 1000)
    assert_ticks_continue(lines)


@PIE
def test_new_function(scenario, pie):
    built = scenario("new_function", pie)
    assert [f["status"] for f in built.listing()["functions"] if f["name"] == "bonus"] == \
        ["added"]
    lines, after = patched_lines(built, r"^tick 3 result")
    for line in after:
        tick, result = ints(line, "tick", "result")
        assert result == tick * tick + 12346
    assert_ticks_continue(lines)


def _dynamic_imports(exe):
    from elftools.elf.elffile import ELFFile

    with open(exe, "rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        return {s.name for s in dynsym.iter_symbols()}


@PIE
def test_new_libc_call(scenario, pie):
    built = scenario("new_libc_call", pie)
    # the scenario means something only if v0 never linked against these
    assert not {"snprintf", "strlen"} & _dynamic_imports(built.exes["v0"])
    assert {"snprintf", "strlen"} <= _dynamic_imports(built.exes["v1"])
    lines, after = patched_lines(built, r"^tick 3 measure")
    for line in after:
        tick, measure = ints(line, "tick", "measure")
        assert measure == len(f"{tick}-{tick * 7}") * 1000000 + tick
    assert_ticks_continue(lines)


@PIE
def test_new_global(scenario, pie):
    built = scenario("new_global", pie)
    variables = built.listing()["variables"]
    assert [(v["name"], v["status"]) for v in variables] == [("bonus", "added")]
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 3 result 6$", timeout=TIMEOUT)
        mark = live.mark()
        before = code_snapshot(live.pid)
        katana("apply", str(built.po()), str(live.pid), check=True)
        assert_only_entries_changed(built, live, before)
        # the first result of patched code is the initial value plus one, then one by one
        first = live.wait_for(r"result 40\d\d$", after=mark, timeout=TIMEOUT)
        assert int(first.group(0).split()[-1]) == 4001
        lines = wait_lines(live, live.last_index, 4)
        assert [ints(x, "result")[0] for x in lines] == [4001, 4002, 4003, 4004]
        assert_ticks_continue(live.lines)
        assert live.alive()


@PIE
def test_static_local(scenario, pie):
    built = scenario("static_local", pie)
    lines, after = patched_lines(built, r"^tick 5 id 5 odd 11$")
    for line in lines:
        tick, ident, odd = ints(line, "tick", "id", "odd")
        # both counters went on from their live values: never reset to 0 or 1
        assert ident % 1000000 == tick
        assert odd == 2 * tick + 1
    assert all(ints(x, "id")[0] > 1000000 for x in after)
    assert_ticks_continue(lines)


@PIE
def test_string_change(scenario, pie):
    built = scenario("string_change", pie)
    lines, after = patched_lines(built, r"^tick 3 says hello from v0$")
    assert all(re.fullmatch(r"tick \d+ says HOWDY from v1", x) for x in after), after
    assert_ticks_continue(lines)


@PIE
def test_plain_rodata(scenario, pie):
    # -fno-merge-constants: one plain .rodata; greet's string grows and moves every later one
    built = scenario("plain_rodata", pie, cflags=("-fno-merge-constants",))
    assert [f["name"] for f in built.listing()["functions"]] == ["greet"]
    lines, after = patched_lines(built, r"^tick 4 scaled 10\.0$", count=9)
    for line in after:
        tick = ints(line, "tick")[0]
        assert line in (f"tick {tick} greet hello there, a longer string",
                        f"tick {tick} farewell bye", f"tick {tick} scaled {tick * 2.5:.1f}"), line
    assert any("farewell bye" in x for x in after) and any("longer" in x for x in after)
    assert_ticks_continue(lines)


@PIE
def test_const_change(scenario, pie):
    built = scenario("const_change", pie)
    names = {f["name"] for f in built.listing()["functions"]}
    assert {"scale_a", "scale_b"} <= names
    lines, after = patched_lines(built, r"^tick 3 a 9 b 6$")
    for line in after:
        tick, a, b = ints(line, "tick", "a", "b")
        assert (a, b) == (tick * 5, tick + 5), "a reader still sees the old constant"
    assert_ticks_continue(lines)


@PIE
def test_struct_grows(scenario, pie):
    built = scenario("struct_grows", pie)
    assert [(v["name"], v["status"]) for v in built.listing()["variables"]] == \
        [("stats", "transformed")]
    lines, after = patched_lines(built, r"^tick 5 hits 5 misses 1 total 15 v0$", count=8,
                                 entries_only=False)
    extras = []
    for line in lines:
        tick = ints(line, "tick")[0]
        if "hits_of" in line:  # unchanged code reads the moved variable
            assert ints(line, "hits_of") == [tick]
            continue
        hits, misses, total = ints(line, "hits", "misses", "total")
        assert (hits, misses, total) == (tick, tick // 3, tick * (tick + 1) // 2), line
        if line.endswith("v1"):
            extras.append(ints(line, "extra")[0])
    assert extras and extras[0] <= 30 and all(b - a == 10 for a, b in pairwise(extras))
    assert any(x.endswith("v1") for x in after)


@PIE
def test_nested_struct(scenario, pie):
    built = scenario("nested_struct", pie)
    lines, after = patched_lines(built, r"^tick 5 id 7 a 5 b 10 sum 15 v0$", entries_only=False)
    cs = []
    for line in lines:
        tick, ident, a, b, total = ints(line, "tick", "id", "a", "b", "sum")
        assert (ident, a, b, total) == (7, tick, 2 * tick, tick * (tick + 1) // 2), line
        if line.endswith("v1"):
            cs.append(ints(line, "c")[0])
            assert ints(line, "flags") == [1]
    assert cs and cs[0] <= 9 and all(y - x == 3 for x, y in pairwise(cs))
    assert all(x.endswith("v1") for x in after)


@PIE
def test_same_named_types(scenario, pie):
    built = scenario("same_named_types", pie)
    variables = {(v["name"], v["object"]): v["status"] for v in built.listing()["variables"]}
    assert variables == {("fa", "a.o"): "transformed", ("fb", "b.o"): "transformed"}
    lines, after = patched_lines(built, r"^tick 5 b p 600 q 205 v0$", count=8,
                                 entries_only=False)
    for line in lines:
        tick = ints(line, "tick")[0]
        if " a " in line:
            assert ints(line, "x", "y") == [tick + 1, 2 * tick + 2], line
            if line.endswith("v1"):
                assert 0 < ints(line, "w")[0] <= 5 * tick
        else:
            assert ints(line, "p", "q") == [100 * tick + 100, tick + 200], line
            if line.endswith("v1"):
                assert 0 < ints(line, "r")[0] <= 7 * tick
    assert all(x.endswith("v1") for x in after)


def _mode(tick, v1):
    if v1 and tick % 5 == 0:
        return 3  # PAUSE, new in v1
    return 1 if tick % 2 else 2  # RUN, STOP


@PIE
def test_union_enum(scenario, pie):
    built = scenario("union_enum", pie)
    lines, after = patched_lines(built, r"^tick 5 mode .* v0$", entries_only=False)
    for line in lines:
        tick, mode, slot, count = ints(line, "tick", "mode", "slot", "count")
        assert (slot, count) == (1000 + 3 * tick, tick), line
        assert mode == _mode(tick, line.endswith("v1")), line
    assert all(x.endswith("v1") for x in after)


def _ring(line):
    return {int(m[0]): [int(x) for x in m[1:] if x] for m in
            re.findall(r" (\d+):(\d+)(?::(\d+))?", line)}


@PIE
def test_pointer_to_struct(scenario, pie):
    built = scenario("pointer_to_struct", pie)
    lines, after = patched_lines(built, r"^tick 5 head .* v0$", entries_only=False)
    for line in lines:
        tick, head, last = ints(line, "tick", "head", "last")
        assert (head, last) == (tick % 3 + 1, (tick - 1) % 3 + 1), line
        ring = _ring(line)
        assert sorted(ring) == [1, 2, 3], line
        for node, values in ring.items():
            assert values[0] == (tick - node) // 3 + 1, line  # visits went on
            if line.endswith("v1"):
                assert values[1] in (0, node * 10), line  # new field: 0 until visited
    assert all(x.endswith("v1") for x in after)


@PIE
def test_multi_object(scenario, pie):
    built = scenario("multi_object", pie)
    listing = built.listing()
    assert sorted((f["name"], f["object"]) for f in listing["functions"]) == \
        [("part_b", "b.o"), ("part_d", "d.o")]
    assert sorted(s["name"] for s in listing["sections"]) == [".text.part_b", ".text.part_d"]
    lines, after = patched_lines(built, r"^tick 3 a")
    for line in after:
        tick, a, b, c, d = ints(line, "tick", "a", "b", "c", "d")
        q = tick >> 2
        assert (a, b, c, d) == (3 * tick + q + 1, 200 * tick + q, 3 * tick + q + 3,
                                400 * tick + q)
    assert_ticks_continue(lines)


@PIE
def test_new_object(scenario, pie):
    built = scenario("new_object", pie)
    added = [(f["name"], f["object"]) for f in built.listing()["functions"]
             if f["status"] == "added"]
    assert added == [("extra_value", "extra.o")]
    lines, after = patched_lines(built, r"^tick 3 result 6$")
    for line in after:
        tick, result = ints(line, "tick", "result")
        assert result == 70000 + 3 * tick + 1
    assert_ticks_continue(lines)


@PIE
def test_removed_object(scenario, pie):
    built = scenario("removed_object", pie)
    warnings = built.listing()["warnings"]
    assert any("unused.o" in w and "removed" in w for w in warnings), warnings
    lines, after = patched_lines(built, r"^tick 3 result 6$")
    for line in after:
        tick, result = ints(line, "tick", "result")
        assert result == 2 * tick + (tick >> 3) + 50000
    assert_ticks_continue(lines)


@PIE
def test_inline_callers(scenario, pie):
    built = scenario("inline_callers", pie)
    # the scenario means something only if GCC inlined the helper
    assert "helper" not in function_addresses(built.exes["v0"])
    assert sorted(f["name"] for f in built.listing()["functions"]) == ["left", "right"]
    lines, after = patched_lines(built, r"^tick 3 left")
    for line in after:
        tick, left, right = ints(line, "tick", "left", "right")
        h = 500 * tick + (tick >> 1)
        assert (left, right) == (h + 1, h - 1)
    assert_ticks_continue(lines)


def _weigh_v1(x, k):
    return x * k + (x >> 1) + k * k


@PIE
def test_clone_rename(scenario, pie):
    built = scenario("clone_rename", pie, cflags=("-fipa-cp-clone",))
    # the scenario means something only if the k == 3 clone was renumbered
    assert "weigh.constprop.1" not in function_addresses(built.exes["v0"])
    assert "weigh.constprop.1" in function_addresses(built.exes["v1"])
    functions = built.listing()["functions"]
    names = [f["name"] for f in functions]
    assert len(names) == len(set(names)), f"a clone is in the patch twice: {names}"
    clones = {f["name"]: (f["status"], f["old_name"]) for f in functions
              if f["name"].startswith("weigh.constprop")}
    assert clones == {"weigh.constprop.1": ("changed", "weigh.constprop.0"),
                      "weigh.constprop.0": ("added", None)}
    lines, after = patched_lines(built, r"^tick 3 left")
    for line in after:
        tick, left, right, mid, seven = ints(line, "tick", "left", "right", "mid", "seven")
        assert (left, right, mid) == (_weigh_v1(tick, 3) + 1, _weigh_v1(tick, 3) + 2,
                                      _weigh_v1(tick, 9) + 2), line
        assert seven == 2 * _weigh_v1(tick, 7) + 6
    assert_ticks_continue(lines)


def _threads(line):
    return [tuple(map(int, m)) for m in re.findall(r" (\d+):(\d+)", line)]


@PIE
def test_threads(scenario, pie):
    built = scenario("threads", pie)
    with running(built.exes["v0"]) as live:
        v0 = " ".join(rf"{2 * (i + 1)}:[1-9]\d*" for i in range(8))
        live.wait_for(rf"^tick \d+ {v0}$", timeout=TIMEOUT)  # every thread has run
        mark = live.mark()
        before = _threads(live.lines[mark - 1])
        assert [r for r, _ in before] == [2 * (i + 1) for i in range(8)]
        katana("apply", str(built.po()), str(live.pid), check=True)
        v1 = " ".join(rf"{1000 + i}:\d+" for i in range(8))
        live.wait_for(rf"^tick \d+ {v1}$", after=mark, timeout=TIMEOUT)
        later = _threads(wait_lines(live, live.last_index + 1, 3)[-1])
        assert [r for r, _ in later] == [1000 + i for i in range(8)]
        # every thread goes on calling: none crashed or hangs
        assert all(c2 > c1 for (_, c1), (_, c2) in zip(before, later, strict=True))
        assert live.alive()


def test_line_only(scenario):
    built = scenario("line_only", True)
    result = katana("generate", "-o", str(built.root / "p.po"), str(built.dir("v0")),
                    str(built.dir("v1")), "prog")
    assert result.returncode == 6, result.stderr
    assert "no functional change" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (built.root / "p.po").exists()


# -- must refuse, leaving the process exactly as it was ----------------------------------------

@pytest.fixture
def impatient(tmp_path):
    config = tmp_path / "katana.conf"
    config.write_text("{maxWaitForPatching: 1}\n")  # relaxed JSON, as users write it
    return config


@PIE
@pytest.mark.parametrize("name, pattern, still_v0, function", [
    ("busy_forever", r"^tick 3 serving v0$", r"^tick \d+ serving v0$", "serve"),
    ("busy_thread", r"^tick 3 result 6 progress [1-9]", r"^tick (\d+) result \d+ progress",
     "compute"),
], ids=["busy_forever", "busy_thread"])
def test_busy(scenario, impatient, pie, name, pattern, still_v0, function):
    built = scenario(name, pie)
    with running(built.exes["v0"]) as live:
        live.wait_for(pattern, timeout=TIMEOUT)
        before = code_snapshot(live.pid)
        result = katana("-c", str(impatient), "apply", str(built.po()), str(live.pid))
        assert result.returncode == 10, result.stderr
        assert re.search(rf"\b{function}\b", result.stderr), result.stderr
        assert "within 1 s" in result.stderr, "maxWaitForPatching of the -c file not used"
        assert "Traceback" not in result.stderr
        if name == "busy_thread":  # the stuck helper thread is the one named
            tids = {int(t) for t in re.findall(rf"{function} \(thread (\d+)", result.stderr)}
            assert tids - {live.pid}, result.stderr
        assert_refused_untouched(live, before, still_v0)
        if name == "busy_thread":
            tick, result = ints(live.lines[live.last_index], "tick", "result")
            assert result == 2 * tick


@PIE
def test_wrong_build(scenario, pie):
    built = scenario("wrong_build", pie)
    # the same change, made from another build of v0 (its main differs: a patch of main itself
    # would be refused at generation)
    other = scenario("wrong_build", pie, cflags=('-DFLAVOR="other"',))
    po = other.po()
    running_id, po_id = read_build_id(built.exes["v0"]), read_build_id(other.exes["v0"])
    assert running_id != po_id
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 3 result 6 flavor plain$", timeout=TIMEOUT)
        before = code_snapshot(live.pid)
        result = katana("apply", str(po), str(live.pid))
        assert result.returncode == 9, result.stderr
        assert running_id in result.stderr and po_id in result.stderr
        assert "Traceback" not in result.stderr
        assert_refused_untouched(live, before, r"^tick \d+ result \d+ flavor plain$")


def _truncated(data):
    return data[:len(data) // 2]


def _flip_header(data):
    raw = bytearray(data)
    raw[0x28 + 2] ^= 0x10  # e_shoff: the section headers lie far beyond the file
    return bytes(raw)


def _flip_meta(data):
    raw = bytearray(data)
    at = raw.find(b'"functions"')
    raw[at + 1] ^= 0x01  # the metadata's "functions" key is misspelt: "gunctions"
    return bytes(raw)


def _flip_section_size(data):
    import io

    from elftools.elf.elffile import ELFFile

    raw = bytearray(data)
    elf = ELFFile(io.BytesIO(data))
    index = next(i for i, s in enumerate(elf.iter_sections()) if s.name.startswith(".text"))
    at = elf["e_shoff"] + index * elf["e_shentsize"] + 0x20  # sh_size
    raw[at + 3] ^= 0x40
    return bytes(raw)


@PIE
@pytest.mark.parametrize("damage", [_truncated, _flip_header, _flip_meta, _flip_section_size],
                         ids=["truncated", "e_shoff", "meta", "sh_size"])
def test_corrupt_po(scenario, tmp_path, pie, damage):
    built = scenario("body_change", pie)
    bad = tmp_path / "bad.po"
    bad.write_bytes(damage(built.po().read_bytes()))
    listed = katana("list", str(bad))
    assert listed.returncode == 7, listed.stderr
    assert "Traceback" not in listed.stderr
    with running(built.exes["v0"]) as live:
        live.wait_for(r"^tick 3 result 6$", timeout=TIMEOUT)
        before = code_snapshot(live.pid)
        result = katana("apply", str(bad), str(live.pid))
        assert result.returncode == 7, result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert str(bad) in result.stderr
        assert_refused_untouched(live, before, r"^tick \d+ result \d+$")


@PIE
def test_changed_initial_value(scenario, pie):
    built = scenario("changed_initial_value", pie)
    listing = built.listing()
    assert [(v["name"], v["status"]) for v in listing["variables"]] == [("limit", "kept")]
    assert any("limit" in w and "initial value" in w for w in listing["warnings"])
    shown = katana("list", str(built.po()), check=True).stdout
    assert re.search(r"(?i)warning.*initial value of limit", shown), shown
    lines, after = patched_lines(built, r"^tick 4 limit 9 v0$")
    for line in lines:
        tick, limit = ints(line, "tick", "limit")
        assert limit == 5 + tick, f"live value lost: {line}"
    assert all(x.endswith(" v1") for x in after)
    assert_ticks_continue(lines)


def test_changed_initial_value_alone(scenario):
    # v0 -> v2 changes only the initial value: a running process keeps its live value, so the
    # patch changes no code, but it is written (with its warning) and applying it records that
    # the process now runs v2, so that a patch made FROM v2 applies next.
    built = scenario("changed_initial_value", True, versions=("v0", "v1", "v2"))
    po = built.root / "p-v0-v2.po"
    result = katana("generate", "-o", str(po), str(built.dir("v0")), str(built.dir("v2")),
                    "prog")
    assert result.returncode == 0, result.stderr
    assert "initial value of limit changed" in result.stdout
    listing = json.loads(katana("list", "--json", str(po), check=True).stdout)
    assert any("limit" in w and "initial value" in w for w in listing["warnings"])
    live = Live([str(built.dir("v0") / "prog")])
    try:
        live.wait_for(r"tick \d+ limit \d+ v0")
        katana("apply", str(po), str(live.pid), check=True)
        assert "running: v2" in katana("status", str(live.pid), check=True).stdout
        for _ in range(3):  # the live value (5 + tick), not v2's initial one
            m = live.wait_for(r"tick (\d+) limit (\d+) v0", after=live.mark())
            assert int(m.group(2)) == 5 + int(m.group(1))
    finally:
        live.kill()
