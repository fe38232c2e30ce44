"""DWARF types of globals and their transformations, on C compiled here with gcc.

Expected offsets come from programs that print offsetof()/sizeof() (compiled and run here), never
from the DWARF under test. Where a transform's meaning matters, the old program dumps a value's
bytes, the ops are executed by the small reference interpreter below (what the engine does for
copy/struct/array ops), and the new program loads the result and prints its fields.
"""

import subprocess

import pytest

from katana.dwarf import (
    ObjectDwarf,
    TransformPlanner,
    clear_cache,
    load,
    plan_transform,
    same_layout,
    variable_type,
)
from katana.errors import BuildError, FormatError, GenerateError
from katana.po.model import FieldOp

CFLAGS = ["-g", "-O2", "-ffunction-sections", "-fdata-sections"]


def gcc(args, cwd):
    proc = subprocess.run(["gcc", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def compile_obj(tmp_path, name, source, flags=CFLAGS):
    """Compile ``source`` into tmp_path/name (e.g. "old/store.o")."""
    obj = tmp_path / name
    obj.parent.mkdir(parents=True, exist_ok=True)
    src = obj.with_suffix(".c")
    src.write_text(source)
    gcc([*flags, "-c", str(src), "-o", str(obj)], tmp_path)
    return obj


def run_c(tmp_path, name, source, *args):
    """Compile and run a program, returning its stdout."""
    exe = tmp_path / name
    exe.with_suffix(".c").write_text(source)
    gcc(["-O0", str(exe.with_suffix(".c")), "-o", str(exe)], tmp_path)
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


PROBE = """
#include <stddef.h>
#include <stdio.h>
#include <string.h>
%s
/* the first bit set in an object: where a bitfield lives, since offsetof() cannot say */
static long bitpos(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n * 8; i++) if (b[i / 8] >> (i %% 8) & 1) return (long)i;
    return -1;
}
int main(void) {
%s
    return 0;
}
"""


def measure(tmp_path, exe, decls, **exprs):
    """Ground truth: each keyword's C expression (offsetof, sizeof, ...) evaluated by gcc."""
    body = "\n".join(f'    printf("{k}=%ld\\n", (long)({e}));' for k, e in exprs.items())
    out = run_c(tmp_path, exe, PROBE % (decls, body))
    return {k: int(v) for k, v in (line.split("=") for line in out.split())}


def bit_of(record, field):
    """A probe expression: the first bit of a bitfield."""
    return (f"({{ {record} v; memset(&v, 0, sizeof v); v.{field} = 1;"
            f" bitpos(&v, sizeof v); }})")


def run_transform(types, key, old):
    """Reference interpreter of copy/struct/array ops: unwritten bytes stay zero."""
    tt = types[key]
    assert len(old) == tt.old_size
    out = bytearray(tt.new_size)
    for op in tt.ops:
        if op.kind == "copy":
            out[op.dst:op.dst + op.size] = old[op.src:op.src + op.size]
        elif op.kind == "struct":
            sub = types[op.type]
            part = run_transform(types, op.type, old[op.src:op.src + sub.old_size])
            out[op.dst:op.dst + sub.new_size] = part
        elif op.kind == "array":
            for i in range(op.count):
                src, dst = op.src + i * op.src_stride, op.dst + i * op.dst_stride
                if op.type is None:
                    out[dst:dst + op.size] = old[src:src + op.size]
                else:
                    sub = types[op.type]
                    out[dst:dst + sub.new_size] = run_transform(
                        types, op.type, old[src:src + sub.old_size])
        else:
            raise AssertionError(f"not interpretable here: {op}")
    assert len(out) == tt.new_size
    return bytes(out)


DUMP = """
#include <stdio.h>
%s
int main(void) {
%s
    const unsigned char *p = (const void *)&%s;
    for (size_t i = 0; i < sizeof %s; i++) printf("%%02x", p[i]);
    return 0;
}
"""

LOAD = """
#include <stdio.h>
%s
int main(int argc, char **argv) {
    unsigned char *p = (void *)&%s;
    for (size_t i = 0; i < sizeof %s; i++) sscanf(argv[1] + 2 * i, "%%2hhx", &p[i]);
%s
    return 0;
}
"""


def live_check(tmp_path, types, key, var, old_decls, fill, new_decls, prints):
    """Old program fills ``var`` and dumps it; the ops move it; the new program prints it."""
    dumped = run_c(tmp_path, "dump", DUMP % (old_decls, fill, var, var))
    moved = run_transform(types, key, bytes.fromhex(dumped))
    body = "\n".join(f'    printf("%ld\\n", (long)({e}));' for e in prints)
    out = run_c(tmp_path, "load", LOAD % (new_decls, var, var, body), moved.hex())
    return [int(v) for v in out.split()]


def pair(tmp_path, name, old_src, new_src, symbol, function=None):
    """The old and the new type of one variable, read from objects compiled here."""
    old = compile_obj(tmp_path, f"old/{name}", old_src)
    new = compile_obj(tmp_path, f"new/{name}", new_src)
    return variable_type(old, symbol, function), variable_type(new, symbol, function)


# -- reading types ------------------------------------------------------------------------------

ENTRY = """
#include <stddef.h>
typedef unsigned int u32;
enum color { RED, GREEN, BLUE = -1 };
struct inner { int a; char b; };
typedef struct { short x; short y; } point_t;
struct entry {
    int id;
    u32 flags : 3;
    u32 mode : 5;
    const char *name;
    struct inner in;
    int grid[3][4];
    enum color c;
    union { int i; float f; } u;
    point_t pt;
    struct opaque *op;
    volatile long vl;
    double (*fn)(int);
};
"""
ENTRY_USE = """extern struct entry table[];
struct entry table[8];
int get(int i) { return table[i].id; }
"""


def test_reads_every_kind_of_type(tmp_path):
    obj = compile_obj(tmp_path, "entry.o", ENTRY + ENTRY_USE)
    truth = measure(tmp_path, "probe", ENTRY,
                    size="sizeof(struct entry)", name="offsetof(struct entry, name)",
                    inner="offsetof(struct entry, in)", b="offsetof(struct inner, b)",
                    grid="offsetof(struct entry, grid)", u="offsetof(struct entry, u)",
                    pt="offsetof(struct entry, pt)", vl="offsetof(struct entry, vl)",
                    flags=bit_of("struct entry", "flags"), mode=bit_of("struct entry", "mode"))
    table = variable_type(obj, "table")
    # the definition's own type (8 elements), not the extern declaration's incomplete one
    assert (table.kind, table.count, table.spelling()) == ("array", 8, "struct entry [8]")
    entry = table.target
    assert entry.size == truth["size"] and table.size == 8 * truth["size"]
    assert [m.name for m in entry.members] == [
        "id", "flags", "mode", "name", "in", "grid", "c", "u", "pt", "op", "vl", "fn"]
    flags, mode = entry.member("flags"), entry.member("mode")
    assert (flags.bit_offset, flags.bit_size) == (truth["flags"], 3)
    assert (mode.bit_offset, mode.bit_size) == (truth["mode"], 5)
    assert flags.type.kind == "typedef" and flags.type.name == "u32"
    assert flags.type.strip().encoding == "unsigned"
    name = entry.member("name")
    assert name.offset == truth["name"] and name.type.spelling() == "char *"  # const stripped
    inner = entry.member("in")
    assert inner.offset == truth["inner"] and inner.type.member("b").offset == truth["b"]
    grid = entry.member("grid").type
    assert entry.member("grid").offset == truth["grid"]
    assert (grid.count, grid.target.count, grid.target.target.name) == (3, 4, "int")
    assert grid.spelling() == "int [3][4]" and grid.size == 48
    color = entry.member("c").type
    assert color.kind == "enum" and color.enumerators == {"RED": 0, "GREEN": 1, "BLUE": -1}
    assert color.is_signed() and color.size == 4
    union = entry.member("u")
    assert union.offset == truth["u"] and union.type.kind == "union"
    assert [m.offset for m in union.type.members] == [0, 0]
    pt = entry.member("pt")
    assert pt.offset == truth["pt"] and pt.type.spelling() == "point_t"
    assert pt.type.strip().kind == "struct" and pt.type.strip().name == ""
    op = entry.member("op").type
    assert op.kind == "pointer" and op.target.declaration and op.target.name == "struct opaque"
    vl = entry.member("vl")
    assert vl.offset == truth["vl"] and vl.type.spelling() == "long int"  # volatile stripped
    assert entry.member("fn").type.target.kind == "function"


def test_bitfields_read_the_same_from_dwarf_4(tmp_path):
    src = "struct f { char c; unsigned a:3; unsigned b:13; int n; } fl;\n"
    v5 = variable_type(compile_obj(tmp_path, "v5.o", src), "fl")
    v4 = variable_type(compile_obj(tmp_path, "v4.o", src, ["-gdwarf-4", "-O2"]), "fl")
    truth = measure(tmp_path, "probe", src, a=bit_of("struct f", "a"), b=bit_of("struct f", "b"))
    for t in (v5, v4):
        assert [(m.name, m.bit_offset, m.bit_size) for m in t.members[1:3]] == [
            ("a", truth["a"], 3), ("b", truth["b"], 13)]


STATICS = """
struct stats { int calls; long total; };
int tick(int x) { static struct stats st; st.calls++; st.total += x; return st.calls; }
static int counter_file;
int f(void) { static int counter; return ++counter + counter_file++; }
int g(void) { static long counter; return ++counter; }
static int helper(void) { static short hits; return ++hits; }
int caller(void) { return helper() + 1; }
"""


def test_static_locals_by_symbol_and_by_function(tmp_path):
    obj = compile_obj(tmp_path, "statics.o", STATICS)
    dwarf = load(obj)
    symbols = _object_symbols(obj)
    st = next(s for s in symbols if s.startswith("st."))
    assert variable_type(obj, st).name == "struct stats"
    assert variable_type(obj, "st", function="tick").name == "struct stats"
    # two statics called counter: the symbol (size from .symtab) or the function tells them apart
    for sym, size in symbols.items():
        if sym.startswith("counter."):
            assert variable_type(obj, sym).size == size
    assert variable_type(obj, "counter", "f").name == "int"
    assert variable_type(obj, "counter", "g").name == "long int"
    with pytest.raises(GenerateError, match="counter.*f, g"):
        variable_type(obj, "counter")
    assert variable_type(obj, "counter_file").name == "int"
    # helper() is inlined into caller(): its static local is found from the caller's name
    assert dwarf.get_variable("hits", "caller").function == "helper"
    assert variable_type(obj, "nonexistent") is None


def _object_symbols(obj):
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: s["st_size"] for s in symtab.iter_symbols()
                if s["st_info"]["type"] == "STT_OBJECT"}


def test_parsing_is_cached_once_per_object(tmp_path):
    obj = compile_obj(tmp_path, "statics.o", STATICS)
    clear_cache()
    before = ObjectDwarf.parse_count
    first = load(obj)
    assert variable_type(obj, "counter_file") is variable_type(str(obj), "counter_file")
    assert load(obj) is first and ObjectDwarf.parse_count == before + 1
    compile_obj(tmp_path, "statics.o", STATICS + "int extra;\n")  # rebuilt in place
    assert load(obj) is not first and ObjectDwarf.parse_count == before + 2


def test_unreadable_objects_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file at all")
    with pytest.raises(FormatError, match="junk.o"):
        variable_type(junk, "x")
    nodebug = compile_obj(tmp_path, "nodebug.o", "int x;\n", ["-O2", "-c"])
    with pytest.raises(BuildError, match="no DWARF"):
        variable_type(nodebug, "x")
    with pytest.raises(FormatError, match="cannot read"):
        variable_type(tmp_path / "missing.o", "x")


# -- transformations ----------------------------------------------------------------------------

GROW_OLD = "struct entry { int id; char tag; long count; int legacy; };\n"
GROW_NEW = "struct entry { int id; long hits; char tag; long count; };\n"


def test_struct_grows_a_field_in_the_middle(tmp_path):
    use = "struct entry cur;\nlong get(void) { return cur.count; }\n"
    old, new = pair(tmp_path, "store.o", GROW_OLD + use, GROW_NEW + use, "cur")
    o = measure(tmp_path, "po", GROW_OLD, tag="offsetof(struct entry, tag)",
                count="offsetof(struct entry, count)", size="sizeof(struct entry)")
    n = measure(tmp_path, "pn", GROW_NEW, tag="offsetof(struct entry, tag)",
                count="offsetof(struct entry, count)", size="sizeof(struct entry)")
    key, types = plan_transform(old, new, "store.o", "cur")
    assert key == "store.o:struct entry" and list(types) == [key]
    tt = types[key]
    assert (tt.name, tt.old_size, tt.new_size) == ("struct entry", o["size"], n["size"])
    assert tt.ops == [
        FieldOp("copy", 0, 0, size=4),
        FieldOp("copy", o["tag"], n["tag"], size=1),
        FieldOp("copy", o["count"], n["count"], size=8),
    ]
    assert tt.fields == [
        "id: +0 -> +0", "hits: new, zero", f"tag: +{o['tag']} -> +{n['tag']}",
        f"count: +{o['count']} -> +{n['count']}", "legacy: dropped"]
    got = live_check(tmp_path, types, key, "cur", GROW_OLD + "struct entry cur;",
                     "cur.id = 7; cur.tag = 'x'; cur.count = -5; cur.legacy = 9;",
                     GROW_NEW + "struct entry cur;",
                     ["cur.id", "cur.hits", "cur.tag", "cur.count"])
    assert got == [7, 0, ord("x"), -5]


def test_struct_grown_at_the_end_is_one_copy(tmp_path):
    old_src = "struct st { char kind; int n; short s; } v;\n"
    new_src = "struct st { char kind; int n; short s; long extra; } v;\n"
    old, new = pair(tmp_path, "s.o", old_src, new_src, "v")
    o = measure(tmp_path, "p", old_src, s="offsetof(struct st, s)")
    key, types = plan_transform(old, new, "s.o", "v")
    assert types[key].ops == [FieldOp("copy", 0, 0, size=o["s"] + 2)]
    assert types[key].fields[-1] == "extra: new, zero"


NESTED_OLD = """struct inner { int a; int b; };
struct outer { int id; struct inner in; long total; };
"""
NESTED_NEW = """struct inner { int a; int extra; int b; };
struct outer { int id; int flags; struct inner in; long total; };
"""


def test_nested_struct_grows_and_outer_gains_a_field(tmp_path):
    use = "struct outer state;\nint get(void) { return state.in.b; }\n"
    old, new = pair(tmp_path, "nest.o", NESTED_OLD + use, NESTED_NEW + use, "state")
    exprs = dict(inner="offsetof(struct outer, in)", total="offsetof(struct outer, total)",
                 b="offsetof(struct inner, b)")
    o = measure(tmp_path, "po", NESTED_OLD, **exprs)
    n = measure(tmp_path, "pn", NESTED_NEW, **exprs)
    key, types = plan_transform(old, new, "nest.o", "state")
    assert key == "nest.o:struct outer" and set(types) == {key, "nest.o:struct inner"}
    assert types[key].ops == [
        FieldOp("copy", 0, 0, size=4),
        FieldOp("struct", o["inner"], n["inner"], type="nest.o:struct inner"),
        FieldOp("copy", o["total"], n["total"], size=8),
    ]
    assert types["nest.o:struct inner"].ops == [
        FieldOp("copy", 0, 0, size=4), FieldOp("copy", o["b"], n["b"], size=4)]
    assert "in: +4 -> +8, struct inner transformed" in types[key].fields
    got = live_check(tmp_path, types, key, "state", NESTED_OLD + "struct outer state;",
                     "state.id = 7; state.in.a = 1; state.in.b = 2; state.total = 99;",
                     NESTED_NEW + "struct outer state;",
                     ["state.id", "state.flags", "state.in.a", "state.in.extra", "state.in.b",
                      "state.total"])
    assert got == [7, 0, 1, 0, 2, 99]


def test_same_named_types_of_two_objects_stay_apart(tmp_path):
    a_old = "struct foo { int x; int y; } foo_a;\n"
    a_new = "struct foo { int x; int z; int y; } foo_a;\n"
    b_old = "struct foo { char c; long big; } foo_b;\n"
    b_new = "struct foo { long big; char c; } foo_b;\n"
    ka, ta = plan_transform(*pair(tmp_path, "a.o", a_old, a_new, "foo_a"), "a.o", "foo_a")
    kb, tb = plan_transform(*pair(tmp_path, "b.o", b_old, b_new, "foo_b"), "b.o", "foo_b")
    assert (ka, kb) == ("a.o:struct foo", "b.o:struct foo")
    both = {**ta, **tb}
    assert both[ka].ops == [FieldOp("copy", 0, 0, size=4), FieldOp("copy", 4, 8, size=4)]
    assert both[kb].ops == [FieldOp("copy", 8, 0, size=8), FieldOp("copy", 0, 8, size=1)]


def test_union_grows_raw_copy(tmp_path):
    old_src = "union val { int i; float f; };\nstruct holder { int tag; union val v; };\n"
    new_src = ("union val { int i; float f; double d; };\n"
               "struct holder { int tag; union val v; };\n")
    use = "union val u;\nstruct holder h;\n"
    old_obj = compile_obj(tmp_path, "old/u.o", old_src + use)
    new_obj = compile_obj(tmp_path, "new/u.o", new_src + use)
    key, types = plan_transform(variable_type(old_obj, "u"), variable_type(new_obj, "u"),
                                "u.o", "u")
    assert key == "u.o:union val"
    assert (types[key].old_size, types[key].new_size) == (4, 8)
    assert types[key].ops == [FieldOp("copy", 0, 0, size=4)]
    n = measure(tmp_path, "p", new_src, v="offsetof(struct holder, v)")
    key, types = plan_transform(variable_type(old_obj, "h"), variable_type(new_obj, "h"),
                                "u.o", "h")
    assert types[key].ops == [FieldOp("copy", 0, 0, size=4), FieldOp("copy", 4, n["v"], size=4)]
    assert types[key].fields[1] == (
        f"v: +4 -> +{n['v']}, union, raw copy of 4 bytes (its active member is unknown)")


def test_enum_gains_values_and_widens(tmp_path):
    old, new = pair(tmp_path, "e.o", "enum color { RED, GREEN } c;\n",
                    "enum color { RED, GREEN, BLUE, CYAN } c;\n", "c")
    assert old.enumerators != new.enumerators
    assert plan_transform(old, new, "e.o", "c") == (None, {}) and same_layout(old, new)
    old_src = "enum level { LOW, HIGH };\nstruct s { enum level lv; int n; } s;\n"
    new_src = old_src.replace("HIGH", "HIGH, HUGE = 0x100000000")
    old, new = pair(tmp_path, "w.o", old_src, new_src, "s")
    n = measure(tmp_path, "p", new_src, size="sizeof(enum level)", n="offsetof(struct s, n)")
    assert n["size"] == 8
    key, types = plan_transform(old, new, "w.o", "s")
    # GCC makes an enum without negative values unsigned: zero extension keeps every value
    assert types[key].ops == [FieldOp("copy", 0, 0, size=4), FieldOp("copy", 4, n["n"], size=4)]
    assert types[key].fields[0] == "lv: +0 -> +0, zero-extended from 4 to 8 bytes"


def test_integer_widening_zero_extends_only_unsigned(tmp_path):
    old, new = pair(tmp_path, "u.o", "struct c { unsigned n; int k; } cnt;\n",
                    "struct c { unsigned long n; int k; } cnt;\n", "cnt")
    key, types = plan_transform(old, new, "u.o", "cnt")
    assert types[key].ops == [FieldOp("copy", 0, 0, size=4), FieldOp("copy", 4, 8, size=4)]
    old, new = pair(tmp_path, "s.o", "struct c { int n; } cnt;\n",
                    "struct c { long n; } cnt;\n", "cnt")
    with pytest.raises(GenerateError, match="'cnt'.*'cnt.n'.*int to long int.*sign extension"):
        plan_transform(old, new, "s.o", "cnt")
    old, new = pair(tmp_path, "n.o", "struct c { long n; } cnt;\n",
                    "struct c { short n; } cnt;\n", "cnt")
    with pytest.raises(GenerateError, match="loses values"):
        plan_transform(old, new, "n.o", "cnt")


def test_global_pointer_to_a_heap_struct_that_grows(tmp_path):
    old_src = "struct conf { int port; int verbose; } *cfg;\n"
    new_src = "struct conf { int port; char name[16]; int verbose; } *cfg;\n"
    old, new = pair(tmp_path, "p.o", old_src, new_src, "cfg")
    n = measure(tmp_path, "p", new_src, verbose="offsetof(struct conf, verbose)")
    key, types = plan_transform(old, new, "p.o", "cfg")
    assert key == "p.o:struct conf *"
    assert types[key].ops == [FieldOp("pointer", 0, 0, size=8, type="p.o:struct conf")]
    assert types["p.o:struct conf"].ops == [
        FieldOp("copy", 0, 0, size=4), FieldOp("copy", 4, n["verbose"], size=4)]


def test_self_referential_struct_points_to_its_own_transform(tmp_path):
    old_src = "struct node { int v; struct node *next; } *head;\n"
    new_src = "struct node { int v; long w; struct node *next; } *head;\n"
    old, new = pair(tmp_path, "l.o", old_src, new_src, "head")
    o = measure(tmp_path, "po", old_src, next="offsetof(struct node, next)")
    n = measure(tmp_path, "pn", new_src, next="offsetof(struct node, next)")
    key, types = plan_transform(old, new, "l.o", "head")
    node = "l.o:struct node"
    assert set(types) == {key, node}
    assert types[key].ops == [FieldOp("pointer", 0, 0, size=8, type=node)]
    assert types[node].ops == [
        FieldOp("copy", 0, 0, size=4), FieldOp("pointer", o["next"], n["next"], size=8, type=node)]
    assert "w: new, zero" in types[node].fields


def test_unchanged_struct_reaching_a_changed_one_is_transformed(tmp_path):
    # struct b does not change in the source, but its pointer now points at a bigger struct a:
    # b's values must be followed too (and the a <-> b cycle must end).
    old_src = "struct b; struct a { struct b *b; int x; };\nstruct b { struct a *a; } *root;\n"
    new_src = ("struct b; struct a { struct b *b; int x; int y; };\n"
               "struct b { struct a *a; } *root;\n")
    old, new = pair(tmp_path, "m.o", old_src, new_src, "root")
    key, types = plan_transform(old, new, "m.o", "root")
    assert types["m.o:struct b"].ops == [FieldOp("pointer", 0, 0, size=8, type="m.o:struct a")]
    assert types["m.o:struct a"].ops == [
        FieldOp("pointer", 0, 0, size=8, type="m.o:struct b"), FieldOp("copy", 8, 8, size=4)]


ARR_OLD = "struct item { int a; };\nstruct item items[4];\nint hist[4];\nint grid[2][3];\n"
ARR_NEW = "struct item { int a; int b; };\nstruct item items[8];\nint hist[8];\nint grid[2][4];\n"


def test_arrays_grow_in_count_and_element_size(tmp_path):
    old_obj = compile_obj(tmp_path, "old/r.o", ARR_OLD)
    new_obj = compile_obj(tmp_path, "new/r.o", ARR_NEW)

    def plan(name):
        return plan_transform(variable_type(old_obj, name), variable_type(new_obj, name),
                              "r.o", name)

    key, types = plan("items")
    assert key == "r.o:struct item [8]"
    assert types[key].ops == [FieldOp("array", 0, 0, type="r.o:struct item", count=4,
                                      src_stride=4, dst_stride=8)]
    assert types["r.o:struct item"].ops == [FieldOp("copy", 0, 0, size=4)]
    got = live_check(tmp_path, types, key, "items", ARR_OLD,
                     "for (int i = 0; i < 4; i++) items[i].a = 10 + i;", ARR_NEW,
                     [f"items[{i}].{f}" for i in (0, 3, 4, 7) for f in "ab"])
    assert got == [10, 0, 13, 0, 0, 0, 0, 0]
    key, types = plan("hist")
    assert types[key].ops == [FieldOp("copy", 0, 0, size=16)]
    key, types = plan("grid")
    assert types[key].ops == [FieldOp("array", 0, 0, size=12, count=2, src_stride=12,
                                      dst_stride=16)]
    got = live_check(tmp_path, types, key, "grid", ARR_OLD,
                     "for (int i = 0; i < 6; i++) grid[i / 3][i % 3] = i + 1;", ARR_NEW,
                     [f"grid[{i}][{j}]" for i in range(2) for j in range(4)])
    assert got == [1, 2, 3, 0, 4, 5, 6, 0]


def test_static_local_of_struct_type(tmp_path):
    old_src = ("struct stats { int calls; long total; };\n"
               "int tick(int x) { static struct stats st; st.total += x; return ++st.calls; }\n")
    new_src = old_src.replace("int calls;", "int calls; long errors;")
    old_obj = compile_obj(tmp_path, "old/t.o", old_src)
    new_obj = compile_obj(tmp_path, "new/t.o", new_src)
    decls = "struct stats { int calls; long total; };"
    o = measure(tmp_path, "po", decls, total="offsetof(struct stats, total)")
    n = measure(tmp_path, "pn", decls.replace("int calls;", "int calls; long errors;"),
                total="offsetof(struct stats, total)")
    symbol = next(s for s in _object_symbols(old_obj) if s.startswith("st."))
    old = variable_type(old_obj, symbol)
    new = variable_type(new_obj, "st", function="tick")
    key, types = plan_transform(old, new, "t.o", symbol)
    assert key == "t.o:struct stats"
    assert types[key].ops == [
        FieldOp("copy", 0, 0, size=4), FieldOp("copy", o["total"], n["total"], size=8)]
    assert n["total"] != o["total"]


def test_identical_layouts_need_no_transform(tmp_path):
    same_src = "struct s { int a; char *p; } v;\n"
    cases = [
        (same_src + "int f(void) { return 1; }\n", same_src + "int f(void) { return 2; }\n"),
        ("typedef struct { int a; } s_t; s_t v;\n", "typedef struct { int a; } t_t; t_t v;\n"),
        ("int v;\n", "unsigned v;\n"),
        ("struct x { int a; };\nstruct s { void *p; } v;\n",
         "struct x { int a; };\nstruct s { struct x *p; } v;\n"),
        ("struct n { struct n *next; int a; } v;\n", "struct n { struct n *next; int a; } v;\n"),
    ]
    for i, (old_src, new_src) in enumerate(cases):
        old, new = pair(tmp_path, f"i{i}.o", old_src, new_src, "v")
        assert plan_transform(old, new, f"i{i}.o", "v") == (None, {}), (old_src, new_src)


def test_untransformable_changes_are_refused(tmp_path):
    refused = [
        ("struct in { int a; };\nstruct c { struct in in; } cfg;\n",
         "struct in { int a; };\nstruct c { int in; } cfg;\n",
         r"variable 'cfg': field 'cfg.in' changed from struct in to int"),
        ("struct opaque;\nstruct h { struct opaque *p; } cfg;\n",
         "struct opaque { int a; };\nstruct h { struct opaque *p; } cfg;\n",
         r"'cfg.p'.*forward-declares"),
        ("struct h { int *p; } cfg;\n", "struct h { long *p; } cfg;\n",
         r"'cfg.p'.*number of values it points at is unknown"),
        ("struct h { float f; } cfg;\n", "struct h { double f; } cfg;\n",
         r"'cfg.f' changed from float to double"),
    ]
    for i, (old_src, new_src, message) in enumerate(refused):
        old, new = pair(tmp_path, f"x{i}.o", old_src, new_src, "cfg")
        with pytest.raises(GenerateError, match=message) as info:
            plan_transform(old, new, f"x{i}.o", "cfg")
        assert info.value.hint


BITS_OLD = "struct flags { unsigned a:3; unsigned b:5; int n; };\n"
BITS_NEW = "struct flags { int pre; unsigned a:3; unsigned b:5; unsigned c:2; int n; };\n"


def test_bitfield_run_moves_by_whole_bytes(tmp_path):
    use = "struct flags fl;\n"
    old, new = pair(tmp_path, "b.o", BITS_OLD + use, BITS_NEW + use, "fl")
    o = measure(tmp_path, "po", BITS_OLD, a=bit_of("struct flags", "a"),
                n="offsetof(struct flags, n)")
    n = measure(tmp_path, "pn", BITS_NEW, a=bit_of("struct flags", "a"),
                n="offsetof(struct flags, n)")
    key, types = plan_transform(old, new, "b.o", "fl")
    assert types[key].ops == [
        FieldOp("copy", o["a"] // 8, n["a"] // 8, size=1), FieldOp("copy", o["n"], n["n"], size=4)]
    assert "c: new, zero" in types[key].fields
    got = live_check(tmp_path, types, key, "fl", BITS_OLD + use,
                     "fl.a = 5; fl.b = 17; fl.n = -3;", BITS_NEW + use,
                     ["fl.pre", "fl.a", "fl.b", "fl.c", "fl.n"])
    assert got == [0, 5, 17, 0, -3]


def test_bitfield_changes_a_byte_copy_cannot_do_are_refused(tmp_path):
    refused = [
        ("struct f { unsigned a:3; unsigned b:5; } fl;\n",
         "struct f { unsigned a:3; unsigned c:2; unsigned b:3; } fl;\n", "b.*width|3 bits"),
        ("struct f { unsigned a:3; unsigned b:5; } fl;\n",
         "struct f { unsigned a:3; unsigned c:1; unsigned b:5; } fl;\n", "within their bytes"),
        ("struct f { unsigned a:3; unsigned old:2; unsigned b:3; } fl;\n",
         "struct f { unsigned a:3; unsigned c:2; unsigned b:3; } fl;\n", "'c'.*'old'"),
    ]
    for i, (old_src, new_src, message) in enumerate(refused):
        old, new = pair(tmp_path, f"f{i}.o", old_src, new_src, "fl")
        with pytest.raises(GenerateError, match=message):
            plan_transform(old, new, f"f{i}.o", "fl")


def test_array_of_pointers_to_a_changed_struct(tmp_path):
    old_src = "struct node { int v; struct node *next; };\nstruct node *heads[4];\n"
    new_src = old_src.replace("int v;", "int v; long w;")
    old, new = pair(tmp_path, "h.o", old_src, new_src, "heads")
    key, types = plan_transform(old, new, "h.o", "heads")
    assert key == "h.o:struct node *[4]"
    assert types[key].ops == [FieldOp("array", 0, 0, type="h.o:struct node *", count=4,
                                      src_stride=8, dst_stride=8)]
    assert types["h.o:struct node *"].ops == [
        FieldOp("pointer", 0, 0, size=8, type="h.o:struct node")]


def test_one_planner_shares_keys_between_variables_and_rolls_back_failures(tmp_path):
    use = "struct entry cur, *last;\nstruct bad { int x; } bad;\n"
    old_obj = compile_obj(tmp_path, "old/store.o", GROW_OLD + use)
    new_obj = compile_obj(tmp_path, "new/store.o",
                          GROW_NEW + use.replace("int x;", "struct entry x;"))
    planner = TransformPlanner("store.o")
    assert planner.plan(variable_type(old_obj, "cur"), variable_type(new_obj, "cur"),
                        "cur") == "store.o:struct entry"
    assert planner.plan(variable_type(old_obj, "last"), variable_type(new_obj, "last"),
                        "last") == "store.o:struct entry *"
    assert list(planner.types) == ["store.o:struct entry", "store.o:struct entry *"]
    assert planner.types["store.o:struct entry *"].ops[0].type == "store.o:struct entry"
    before = dict(planner.types)
    with pytest.raises(GenerateError, match="variable 'bad'"):
        planner.plan(variable_type(old_obj, "bad"), variable_type(new_obj, "bad"), "bad")
    assert planner.types == before
