"""The patch generator at plan level: for each scenario of SCENARIOS.md, both versions are compiled
here with the katana flags (PIE and non-PIE), ``build_patch`` diffs them, and the tests assert what
the plan holds: which functions (changed or added, from which object), which variables (added,
transformed by which type transformation, kept), which symbols stay external, which functions
form the safety set, which warnings are stored. Nothing is applied to a process here; the live
behaviour is ``test_scenarios.py``'s business.

Each scenario is built once per module and PIE mode (the ``scenario`` fixture). Expectations come
from the scenario sources (read them next to each test); where a name depends on GCC's numbering
(static locals, clones) it is read from the objects, not guessed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livekit import SCENARIOS, build_version, function_addresses  # noqa: E402

from katana.elf.objfile import ObjectFile  # noqa: E402
from katana.errors import GenerateError, NoChangeError  # noqa: E402
from katana.generate.plan import build_patch  # noqa: E402
from katana.generate.tree import load_tree  # noqa: E402
from katana.po import po_bytes, read_po  # noqa: E402

PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
CFLAGS = {"clone_rename": ("-fipa-cp-clone",),  # as -O3 does: the scenario needs clones
          "plain_rodata": ("-fno-merge-constants",)}  # strings in one plain .rodata
VERSIONS = {"stacked": ("v0", "v1", "v2"), "never_returns": ("v0", "v1", "v2")}
# a scenario with a lib*.c builds a shared library and programs (tests/test_libraries.py);
# missing_symbol links libm in v1 only (tests/test_operations.py)
ALL_SCENARIOS = sorted(p.name for p in SCENARIOS.iterdir()
                       if (p / "v0").is_dir() and not any((p / "v0").glob("lib*.c"))
                       and p.name != "missing_symbol")
# no PO from v0 to v1: no functional change / refused
NO_CHANGE = {"line_only", "new_constructor", "never_returns"}


# -- variants: a scenario's v0 against a v1 edited here ------------------------------------------

def _clone_numbers_only(src):
    # weigh's body as in v0: the new k == 7 callers still renumber the k == 3 clone
    return src.replace("(x >> 1)", "(x >> 2)")


def _static_renumbered(src):
    # a new function with its own `static int counter`, defined after the others: GCC numbers
    # function-scope statics from the last one, so next_id's counter.1 becomes counter.2
    src = src.replace("int __attribute__((noinline)) next_id(void)",
                      "int next_even(void);\n\nint __attribute__((noinline)) next_id(void)", 1)
    src = src.replace("return counter + 1000000;", "return counter + 1000000 + next_even();")
    even = ("int __attribute__((noinline)) next_even(void)\n{\n    static int counter;\n\n"
            "    counter += 2;\n    return counter;\n}\n\nint main(void)")
    return src.replace("int main(void)", even, 1)


def _farewell_too(src):
    # a string of the same length whose text changes: moved and changed at once
    return src.replace("farewell bye", "farewell BYE")


def _constant_only(src):
    # only the anonymous 8-byte constant after the strings changes (the string grows back)
    return src.replace("greet hello there, a longer string", "greet hi").replace("2.5", "3.5")


VARIANTS = {"clone_numbers_only": ("clone_rename", _clone_numbers_only),
            "plain_rodata_farewell": ("plain_rodata", _farewell_too),
            "plain_rodata_constant": ("plain_rodata", _constant_only),
            "static_renumbered": ("static_local", _static_renumbered)}


class Built:
    """One scenario's versions, built as PIE or not; plans between them made on demand."""

    def __init__(self, root, pie):
        self.root = root
        self.pie = pie
        self._plans = {}

    def exe(self, version):
        return self.root / version / "prog"

    def obj(self, version, rel="main.o"):
        return ObjectFile(self.root / version / rel, rel)

    def plan(self, frm="v0", to="v1"):
        if (frm, to) not in self._plans:
            self._plans[frm, to] = build_patch(load_tree(self.root / frm, "prog"),
                                               load_tree(self.root / to, "prog"), "prog")
        return self._plans[frm, to]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """scenario(name, pie) -> Built: a scenario of tests/scenarios, or one of VARIANTS."""
    cache = {}

    def get(name, pie):
        key = (name, pie)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{name}-{'pie' if pie else 'nopie'}")
            base, edit = VARIANTS.get(name, (name, None))
            cflags = CFLAGS.get(base, ())
            for version in VERSIONS.get(base, ("v0", "v1")):
                src = SCENARIOS / base / version
                if edit is not None and version == "v1":
                    src = root / "src-v1"
                    src.mkdir()
                    (src / "main.c").write_text(edit((SCENARIOS / base / "v1/main.c").read_text()))
                build_version(src, root / version, pie=pie, cflags=cflags)
            cache[key] = Built(root, pie)
        return cache[key]

    return get


# -- reading a plan -------------------------------------------------------------------------------

def functions(po):
    """name -> (status, object, old_name) of every function patch (names are unique here)."""
    names = [f.name for f in po.meta.functions]
    assert len(names) == len(set(names)), f"a function is in the patch twice: {names}"
    return {f.name: (f.status, f.object, f.old_name) for f in po.meta.functions}


def variables(po):
    """name -> VariablePatch."""
    return {v.name: v for v in po.meta.variables}


def safety(po):
    return {f.name for f in po.meta.safety}


def externals(po):
    """name -> Symbol of every symbol that stays in the running program (or its libraries)."""
    return {s.name: s for s in po.symbols if s.section is None}


def defined(po):
    """name -> Symbol of every named function or object the PO itself defines."""
    return {s.name: s for s in po.symbols if s.section is not None and s.kind in ("func",
                                                                                  "object")}


def symbol_of(po, name):
    """The PO symbol that a function or variable patch named ``name`` points at."""
    patch = next(p for p in po.meta.functions + po.meta.variables if p.name == name)
    return po.symbols[patch.symbol]


def reloc_targets(po, section):
    return [po.symbols[r.symbol] for r in po.sections[section].relocs]


def value_bytes(po, sym):
    return po.sections[sym.section].data[sym.value:sym.value + sym.size]


def byte_map(types, key):
    """What a transformation does, whatever ops express it: (new offset -> old offset for every
    copied byte, [(old offset, new offset, pointee type)] for every moved pointee)."""
    copies, pointers = {}, []

    def walk(key, src, dst):
        for op in types[key].ops:
            s, d = src + op.src, dst + op.dst
            if op.kind == "copy":
                copies.update({d + i: s + i for i in range(op.size)})
            elif op.kind == "struct":
                walk(op.type, s, d)
            elif op.kind == "array":
                for k in range(op.count):
                    if op.type is None:
                        copies.update({d + k * op.dst_stride + i: s + k * op.src_stride + i
                                       for i in range(op.size)})
                    else:
                        walk(op.type, s + k * op.src_stride, d + k * op.dst_stride)
            else:
                assert op.kind == "pointer", op
                pointers.append((s, d, op.type))

    walk(key, 0, 0)
    return copies, pointers


def moves(*fields):
    """The byte map of fields that move: (old offset, new offset, size) each."""
    return {new + i: old + i for old, new, size in fields for i in range(size)}


def field_names(transform):
    return [line.split(":")[0] for line in transform.fields]


def statics_used_by(obj, function, base="counter"):
    """Names of the function-scope statics ``base.N`` that ``function``'s code references."""
    fn = next(s for s in obj.functions() if s.name == function)
    found = set()
    for r in obj.sections[fn.shndx].relocs:
        sym = obj.symbols[r.sym]
        target = obj.symbol_at(sym.shndx, 0) if sym.type == "STT_SECTION" else sym
        if target is not None and target.name.startswith(base + "."):
            found.add(target.name)
    return found


# -- every plan: the model is coherent ----------------------------------------------------------

def _applying():
    return [n for n in ALL_SCENARIOS if n not in NO_CHANGE] + sorted(VARIANTS)


@PIE
@pytest.mark.parametrize("name", _applying())
def test_plan_is_coherent(scenario, name, pie):
    built = scenario(name, pie)
    po = built.plan()
    assert po.meta.pie is pie
    assert (po.meta.from_label, po.meta.to_label, po.meta.program) == ("v0", "v1", "prog")
    assert po.meta.from_build_id != po.meta.to_build_id
    for f in po.meta.functions:
        sym = po.symbols[f.symbol]
        assert (sym.name, sym.kind, sym.size, sym.local) == (f.name, "func", f.new_size, f.local)
        assert po.sections[sym.section].kind == "text"
        assert (f.file is not None) == f.local
        if f.status == "changed":
            assert len(f.old_code) == f.old_size > 0, f.name
        else:
            assert (f.old_size, f.old_code, f.old_name) == (0, b"", None), f.name
    for v in po.meta.variables:
        if v.status == "kept":
            assert v.symbol is None and v.old_size == v.new_size
            continue
        sym = po.symbols[v.symbol]
        assert (sym.name, sym.kind, sym.size) == (v.name, "object", v.new_size)
        assert po.sections[sym.section].kind in ("data", "bss")
        if v.status == "transformed":
            t = po.meta.types[v.type]
            assert (t.old_size, t.new_size) == (v.old_size, v.new_size)
        else:
            assert v.old_size == 0 and v.type is None
    # the safety set names functions of the FROM executable, as it spells them
    old_functions = function_addresses(built.exe("v0"))
    assert safety(po) <= set(old_functions)
    changed = {f.old_name or f.name for f in po.meta.functions if f.status == "changed"}
    assert changed <= safety(po)
    for sec in po.sections:
        assert all(0 <= r.symbol < len(po.symbols) for r in sec.relocs)


@PIE
@pytest.mark.parametrize("name", _applying())
def test_po_round_trip_and_readelf(scenario, name, pie, tmp_path):
    po = scenario(name, pie).plan()
    data = po_bytes(po)
    assert read_po(data) == po
    path = tmp_path / f"{name}.po"
    path.write_bytes(data)
    result = subprocess.run(["readelf", "-a", "-W", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "Warning" in line]
    assert warnings == []


# -- functions ----------------------------------------------------------------------------------

@PIE
def test_body_change(scenario, pie):
    po = scenario("body_change", pie).plan()
    assert functions(po) == {"compute": ("changed", "main.o", None)}
    assert po.meta.variables == [] and po.meta.warnings == []
    assert safety(po) == {"compute"}
    assert [s.name for s in po.sections] == [".text.compute"]
    assert "main" not in defined(po)


@PIE
def test_new_function(scenario, pie):
    po = scenario("new_function", pie).plan()
    assert functions(po) == {"bonus": ("added", "main.o", None),
                             "compute": ("changed", "main.o", None)}
    bonus = next(f for f in po.meta.functions if f.name == "bonus")
    assert (bonus.local, bonus.file) == (True, "main.c")
    # the changed caller reaches the new code in the PO, not anything of the running program
    bonus_sym = symbol_of(po, "bonus")
    calls = reloc_targets(po, symbol_of(po, "compute").section)
    assert [s.section for s in calls] == [bonus_sym.section]
    assert safety(po) == {"compute"}  # bonus has no old code to wait for
    assert po.meta.warnings == []


@PIE
def test_new_libc_call(scenario, pie):
    po = scenario("new_libc_call", pie).plan()
    assert functions(po) == {"measure": ("changed", "main.o", None)}
    ext = externals(po)
    for name in ("snprintf", "strlen"):
        assert ext[name].section is None and not ext[name].local
        assert name not in defined(po)
    targets = {s.name for s in reloc_targets(po, symbol_of(po, "measure").section)}
    assert {"snprintf", "strlen"} <= targets
    assert any(b"%d-%d\0" in s.data for s in po.sections if s.kind == "rodata")
    assert po.meta.variables == [] and po.meta.warnings == []


@PIE
def test_string_change(scenario, pie):
    built = scenario("string_change", pie)

    def greet_code(version):
        obj = built.obj(version)
        return next(s.data for s in obj.sections if s.name == ".text.greet")

    # the scenario means something only if the code bytes are equal (only the string moved)
    assert greet_code("v0") == greet_code("v1")
    po = built.plan()
    assert functions(po) == {"greet": ("changed", "main.o", None)}
    rodata = [i for i, s in enumerate(po.sections) if s.kind == "rodata"]
    assert [po.sections[i].data for i in rodata] == [b"tick %d says HOWDY from v1\n\0"]
    targets = reloc_targets(po, symbol_of(po, "greet").section)
    assert rodata[0] in {s.section for s in targets}
    assert not any(b"hello from v0" in s.data for s in po.sections)


@PIE
def test_plain_rodata(scenario, pie):
    built = scenario("plain_rodata", pie)
    names = {s.name for s in built.obj("v0").sections}
    # the scenario means something only if the strings share one plain .rodata
    assert ".rodata" in names and not any(n.startswith(".rodata.str") for n in names)
    po = built.plan()
    # farewell's and main's strings moved, their text did not: only greet is in the patch
    assert functions(po) == {"greet": ("changed", "main.o", None)}
    assert po.meta.warnings == []


@PIE
def test_plain_rodata_changed_and_moved(scenario, pie):
    po = scenario("plain_rodata_farewell", pie).plan()
    assert set(functions(po)) == {"greet", "farewell"}


@PIE
def test_plain_rodata_constant(scenario, pie):
    po = scenario("plain_rodata_constant", pie).plan()
    assert set(functions(po)) == {"scaled"}


@PIE
def test_inline_callers(scenario, pie):
    built = scenario("inline_callers", pie)
    # the scenario means something only if GCC inlined the helper everywhere
    assert "helper" not in function_addresses(built.exe("v0"))
    assert "helper" not in function_addresses(built.exe("v1"))
    po = built.plan()
    assert functions(po) == {"left": ("changed", "main.o", None),
                             "right": ("changed", "main.o", None)}
    assert safety(po) == {"left", "right"}
    assert "main" not in defined(po) and po.meta.warnings == []


@PIE
def test_multi_object(scenario, pie):
    po = scenario("multi_object", pie).plan()
    assert functions(po) == {"part_b": ("changed", "b.o", None),
                             "part_d": ("changed", "d.o", None)}
    assert {s.name for s in po.sections} == {".text.part_b", ".text.part_d"}
    assert set(defined(po)) == {"part_b", "part_d"}
    assert po.meta.variables == [] and po.meta.warnings == []


@PIE
def test_new_object(scenario, pie):
    po = scenario("new_object", pie).plan()
    assert functions(po) == {"extra_value": ("added", "extra.o", None),
                             "compute": ("changed", "main.o", None)}
    (base,) = po.meta.variables
    assert (base.name, base.object, base.status, base.local, base.file) == \
        ("extra_base", "extra.o", "added", True, "extra.c")
    assert value_bytes(po, symbol_of(po, "extra_base")) == (70000).to_bytes(4, "little")
    assert {s.name for s in reloc_targets(po, symbol_of(po, "compute").section)} == \
        {"extra_value"}
    assert po.meta.warnings == []


@PIE
def test_removed_object(scenario, pie):
    po = scenario("removed_object", pie).plan()
    assert functions(po) == {"compute": ("changed", "main.o", None)}
    (warning,) = po.meta.warnings
    assert "unused.o" in warning and "removed" in warning
    assert "unused_helper" not in {s.name for s in po.symbols}


@PIE
def test_clone_rename(scenario, pie):
    built = scenario("clone_rename", pie)
    # the scenario means something only if the k == 3 clone was renumbered
    assert "weigh.constprop.1" not in function_addresses(built.exe("v0"))
    assert "weigh.constprop.1" in function_addresses(built.exe("v1"))
    po = built.plan()
    assert functions(po) == {"weigh": ("changed", "main.o", None),
                             "weigh.constprop.1": ("changed", "main.o", "weigh.constprop.0"),
                             "weigh.constprop.0": ("added", "main.o", None),
                             "first": ("added", "main.o", None),
                             "second": ("added", "main.o", None),
                             "report": ("changed", "main.o", None)}
    assert po.meta.warnings == []  # no clone reported removed and added again
    assert safety(po) == {"weigh", "weigh.constprop.0", "report"}
    # unchanged callers of the renumbered clone stay in the process (their calls are redirected)
    assert {"left", "right", "mid"} <= set(externals(po))


@PIE
def test_clone_numbers_only(scenario, pie):
    built = scenario("clone_numbers_only", pie)
    assert "weigh.constprop.1" not in function_addresses(built.exe("v0"))
    assert "weigh.constprop.1" in function_addresses(built.exe("v1"))
    po = built.plan()
    # the renumbered clone's body is the same: it is not in the patch at all
    assert functions(po) == {"weigh.constprop.0": ("added", "main.o", None),
                             "first": ("added", "main.o", None),
                             "second": ("added", "main.o", None),
                             "report": ("changed", "main.o", None)}
    assert safety(po) == {"report"}
    assert po.meta.warnings == []


@PIE
def test_line_only(scenario, pie):
    with pytest.raises(NoChangeError, match="no functional change"):
        scenario("line_only", pie).plan()


@PIE
def test_threads(scenario, pie):
    po = scenario("threads", pie).plan()
    assert functions(po) == {"compute": ("changed", "main.o", None)}
    assert safety(po) == {"compute"}
    assert po.meta.variables == [] and po.meta.warnings == []
    assert not {"last", "calls", "worker"} & {s.name for s in po.symbols}


@PIE
def test_busy_forever(scenario, pie):
    po = scenario("busy_forever", pie).plan()
    assert functions(po) == {"serve": ("changed", "main.o", None)}
    assert safety(po) == {"serve"}


@PIE
def test_busy_thread(scenario, pie):
    po = scenario("busy_thread", pie).plan()
    assert functions(po) == {"compute": ("changed", "main.o", None)}
    assert safety(po) == {"compute"}
    progress = externals(po)["progress"]  # the live counter, a static of main.c
    assert (progress.kind, progress.local, progress.file) == ("object", True, "main.c")


@PIE
def test_revert_busy_static_function(scenario, pie):
    po = scenario("revert_busy", pie).plan()
    assert functions(po) == {"work": ("changed", "main.o", None)}
    work = po.meta.functions[0]
    assert (work.local, work.file) == (True, "main.c")
    assert [(f.name, f.file, f.local) for f in po.meta.safety] == [("work", "main.c", True)]
    assert externals(po)["rounds"].local


@PIE
def test_stacked_second_step(scenario, pie):
    built = scenario("stacked", pie)
    first, second = built.plan("v0", "v1"), built.plan("v1", "v2")
    assert functions(first) == {"compute": ("changed", "main.o", None)}
    assert (second.meta.from_label, second.meta.to_label) == ("v1", "v2")
    assert second.meta.from_build_id == first.meta.to_build_id
    assert functions(second) == {"compute": ("changed", "main.o", None)}
    assert [(v.name, v.status) for v in second.meta.variables] == [("bonus", "added")]
    assert value_bytes(second, symbol_of(second, "bonus")) == (1000).to_bytes(4, "little")


# -- variables ----------------------------------------------------------------------------------

@PIE
def test_new_global(scenario, pie):
    po = scenario("new_global", pie).plan()
    assert functions(po) == {"compute": ("changed", "main.o", None)}
    (bonus,) = po.meta.variables
    assert (bonus.name, bonus.status, bonus.local, bonus.new_size) == ("bonus", "added", False, 4)
    sym = symbol_of(po, "bonus")
    assert po.sections[sym.section].kind == "data"
    assert value_bytes(po, sym) == (4000).to_bytes(4, "little")
    assert "bonus" not in externals(po)


@PIE
def test_static_local(scenario, pie):
    built = scenario("static_local", pie)
    (old_name,) = statics_used_by(built.obj("v0"), "next_id")
    (new_name,) = statics_used_by(built.obj("v1"), "next_id")
    po = built.plan()
    assert functions(po) == {"next_id": ("changed", "main.o", None)}
    assert po.meta.variables == []  # live storage kept: nothing added, nothing transformed
    counters = {s.name: s for s in po.symbols if s.name.startswith("counter")}
    assert set(counters) == {old_name}
    counter = counters[old_name]
    assert (counter.section, counter.kind, counter.local, counter.file) == \
        (None, "object", True, "main.c")
    assert counter.new_name == (new_name if new_name != old_name else None)


@PIE
def test_static_local_renumbered(scenario, pie):
    built = scenario("static_renumbered", pie)
    (old_name,) = statics_used_by(built.obj("v0"), "next_id")
    (new_name,) = statics_used_by(built.obj("v1"), "next_id")
    (even_name,) = statics_used_by(built.obj("v1"), "next_even")
    # the scenario means something only if GCC renumbered next_id's counter, and gave the new
    # function's counter a name the FROM object uses for another function's counter
    assert old_name != new_name
    assert even_name in {s.name for s in built.obj("v0").variables()}
    po = built.plan()
    assert functions(po) == {"next_even": ("added", "main.o", None),
                             "next_id": ("changed", "main.o", None)}
    counter = externals(po)[old_name]
    assert (counter.local, counter.file, counter.new_name) == (True, "main.c", new_name)
    (even,) = po.meta.variables
    assert (even.name, even.status, even.local, even.file) == (even_name, "added", True, "main.c")
    assert po.symbols[even.symbol].section is not None
    counters = {(s.name, s.section is None) for s in po.symbols
                if s.kind == "object" and s.name.startswith("counter")}
    assert counters == {(old_name, True), (even_name, False)}
    assert po.meta.warnings == []


@PIE
def test_const_change(scenario, pie):
    po = scenario("const_change", pie).plan()
    # a.o and b.o are byte-identical in v0 and v1, yet their readers must see the new value
    assert functions(po) == {"scale_a": ("changed", "a.o", None),
                             "scale_b": ("changed", "b.o", None)}
    scale = defined(po)["scale"]
    assert po.sections[scale.section].kind == "rodata"
    assert value_bytes(po, scale) == (5).to_bytes(4, "little")
    assert "scale" not in externals(po)
    for reader in ("scale_a", "scale_b"):
        assert [s.name for s in reloc_targets(po, symbol_of(po, reader).section)] == ["scale"]
    assert po.meta.variables == [] and po.meta.warnings == []


@PIE
def test_changed_initial_value(scenario, pie):
    po = scenario("changed_initial_value", pie).plan()
    assert functions(po) == {"step": ("changed", "main.o", None)}
    (limit,) = po.meta.variables
    assert (limit.name, limit.status, limit.symbol, limit.old_size) == ("limit", "kept", None, 4)
    assert externals(po)["limit"].kind == "object"  # the new step() uses the live storage
    assert "limit" not in defined(po)
    (warning,) = po.meta.warnings
    assert warning == ("main.o: the initial value of limit changed in v1; the running process "
                       "keeps its live value")


@PIE
def test_struct_grows(scenario, pie):
    po = scenario("struct_grows", pie).plan()
    assert functions(po) == {"record": ("changed", "main.o", None),
                             "report": ("changed", "main.o", None)}
    (stats,) = po.meta.variables
    assert (stats.name, stats.status, stats.old_size, stats.new_size) == \
        ("stats", "transformed", 16, 24)
    assert stats.type == "main.o:struct stats"
    t = po.meta.types[stats.type]
    assert t.name == "struct stats"
    assert {op.kind for op in t.ops} == {"copy"}
    assert byte_map(po.meta.types, stats.type) == (moves((0, 0, 4), (4, 8, 4), (8, 16, 8)), [])
    assert field_names(t) == ["hits", "extra", "misses", "total"]
    assert "extra: new, zero" in t.fields
    # hits_of's bytes did not change, but it reads stats: it must be off every stack too
    assert safety(po) == {"record", "report", "hits_of"}
    assert po.meta.warnings == []


@PIE
def test_nested_struct(scenario, pie):
    po = scenario("nested_struct", pie).plan()
    assert functions(po) == {"update": ("changed", "main.o", None),
                             "report": ("changed", "main.o", None)}
    (state,) = po.meta.variables
    assert (state.status, state.type, state.old_size, state.new_size) == \
        ("transformed", "main.o:struct outer", 24, 32)
    types = po.meta.types
    assert set(types) == {"main.o:struct outer", "main.o:struct inner"}
    outer, inner = types["main.o:struct outer"], types["main.o:struct inner"]
    assert [(op.kind, op.src, op.dst, op.type) for op in outer.ops if op.kind != "copy"] == \
        [("struct", 4, 8, "main.o:struct inner")]
    assert byte_map(types, "main.o:struct inner") == (moves((0, 0, 4), (4, 8, 4)), [])
    # id, in.a, in.b, sum: every old byte lands where the new layout has it
    assert byte_map(types, state.type) == \
        (moves((0, 0, 4), (4, 8, 4), (8, 16, 4), (16, 24, 8)), [])
    assert field_names(outer) == ["id", "flags", "in", "sum"]
    assert "flags: new, zero" in outer.fields
    assert field_names(inner) == ["a", "c", "b"]
    assert "c: new, zero" in inner.fields


@PIE
def test_same_named_types(scenario, pie):
    po = scenario("same_named_types", pie).plan()
    assert functions(po) == {"update_a": ("changed", "a.o", None),
                             "report_a": ("changed", "a.o", None),
                             "update_b": ("changed", "b.o", None),
                             "report_b": ("changed", "b.o", None)}
    v = variables(po)
    assert set(v) == {"fa", "fb"}
    assert (v["fa"].object, v["fa"].type, v["fa"].status) == ("a.o", "a.o:struct foo",
                                                              "transformed")
    assert (v["fb"].object, v["fb"].type, v["fb"].status) == ("b.o", "b.o:struct foo",
                                                              "transformed")
    types = po.meta.types
    assert types["a.o:struct foo"].name == types["b.o:struct foo"].name == "struct foo"
    assert byte_map(types, "a.o:struct foo") == (moves((0, 0, 4), (4, 8, 4)), [])
    assert byte_map(types, "b.o:struct foo") == (moves((0, 8, 8), (8, 16, 8)), [])
    assert field_names(types["a.o:struct foo"]) == ["x", "w", "y"]
    assert "w: new, zero" in types["a.o:struct foo"].fields
    assert field_names(types["b.o:struct foo"]) == ["r", "p", "q"]
    assert "r: new, zero" in types["b.o:struct foo"].fields


@PIE
def test_union_enum(scenario, pie):
    po = scenario("union_enum", pie).plan()
    assert functions(po) == {"step": ("changed", "main.o", None),
                             "report": ("changed", "main.o", None)}
    (box,) = po.meta.variables  # last_mode's enum gained values but kept its size: untouched
    assert (box.name, box.status, box.type, box.old_size, box.new_size) == \
        ("box", "transformed", "main.o:struct box", 12, 32)
    t = po.meta.types[box.type]
    assert {op.kind for op in t.ops} == {"copy"}
    # mode stays, the union's 4 old bytes move to its new place (8, aligned for long long),
    # count moves past the 16-byte union
    assert byte_map(po.meta.types, box.type) == (moves((0, 0, 4), (4, 8, 4), (8, 24, 4)), [])
    assert field_names(t) == ["mode", "slot", "count"]
    assert "union" in t.fields[1]
    assert externals(po)["last_mode"].kind == "object"
    assert safety(po) == {"step", "report"}


@PIE
def test_pointer_to_struct(scenario, pie):
    po = scenario("pointer_to_struct", pie).plan()
    # build() changed too: sizeof(struct node) is an immediate of its calloc call
    assert functions(po) == {"build": ("changed", "main.o", None),
                             "step": ("changed", "main.o", None),
                             "report": ("changed", "main.o", None)}
    v = variables(po)
    assert set(v) == {"head", "last"}
    assert {x.status for x in v.values()} == {"transformed"}
    assert v["head"].type == v["last"].type == "main.o:struct node *"
    types = po.meta.types
    assert set(types) == {"main.o:struct node *", "main.o:struct node"}
    ptr = types["main.o:struct node *"]
    assert [(op.kind, op.src, op.dst, op.type) for op in ptr.ops] == \
        [("pointer", 0, 0, "main.o:struct node")]
    # next points to a struct node again: the transformation refers to itself (the ring)
    assert byte_map(types, "main.o:struct node") == \
        (moves((0, 0, 4), (4, 8, 4)), [(8, 16, "main.o:struct node")])
    node = types["main.o:struct node"]
    assert (node.old_size, node.new_size) == (16, 24)
    assert "weight: new, zero" in node.fields
    assert field_names(node) == ["id", "weight", "visits", "next"]
    assert externals(po)["calloc"].section is None
    assert safety(po) == {"build", "step", "report"}


@PIE
def test_new_constructor_is_refused(scenario, pie):
    with pytest.raises(GenerateError, match=r"main\.o: \.init_array"):
        scenario("new_constructor", pie).plan()


# -- main never returns -------------------------------------------------------------------------

@PIE
def test_main_changed_is_refused(scenario, pie):
    with pytest.raises(GenerateError, match=r"^main\.o: main changed \(its code differs\), and "
                       r"main never returns while the program runs") as refused:
        scenario("never_returns", pie).plan()
    assert "function main calls" in refused.value.hint


@PIE
def test_thread_routine_that_never_returns_is_generated(scenario, pie):
    # serve() never returns either, but whether it is busy is the engine's to find out: the
    # patch is made
    po = scenario("never_returns", pie).plan("v0", "v2")
    assert functions(po) == {"serve": ("changed", "main.o", None)}
    assert safety(po) == {"serve"}


def _main_reads_hits(src):
    # main's own code stays the same (hits keeps offset 0), but it reads stats, which grows
    return src.replace("usleep(20000);", "usleep(20000 + stats.hits % 2);")


@PIE
def test_main_reading_a_moved_variable_is_refused(tmp_path, pie):
    for version in ("v0", "v1"):
        src = tmp_path / f"src-{version}"
        src.mkdir()
        text = (SCENARIOS / "struct_grows" / version / "main.c").read_text()
        (src / "main.c").write_text(_main_reads_hits(text))
        build_version(src, tmp_path / version, pie=pie)
    with pytest.raises(GenerateError, match=r"^main\.o: main changed \(it reads stats, whose "
                       r"layout changes\), and main never returns"):
        build_patch(load_tree(tmp_path / "v0", "prog"), load_tree(tmp_path / "v1", "prog"),
                    "prog")
