"""Generation on builds the katana tool did not make: a make-style build directory that lacks a
flag, a tree where a shared library is built beside the program, a new reference to a library
variable, where the PO goes without -o, and version labels. C compiled here with gcc (and make);
nothing is applied to a process here (see test_fidelity_live.py).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livekit import CFLAGS, LDFLAGS, SCENARIOS, build_version, katana  # noqa: E402

from katana.build.snapshot import make_snapshot  # noqa: E402
from katana.elf.relocs import R_X86_64_GOTPCREL  # noqa: E402
from katana.errors import GenerateError  # noqa: E402
from katana.generate.plan import build_patch  # noqa: E402
from katana.generate.tree import load_tree  # noqa: E402

PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])

MAIN_C = """#include <stdio.h>
int step(int);
int hits;
int main(void) { hits++; printf("%d\\n", step(hits)); return 0; }
"""
UTIL_C = """static int calls;
int total = 7;
int __attribute__((noinline)) step(int x) { calls++; total += x; return x * FACTOR + calls; }
"""
MAKEFILE = """prog: main.o util.o
\t$(CC) $(LDFLAGS) $^ -o $@
%.o: %.c
\t$(CC) $(CFLAGS) -c $< -o $@
"""
KATANA_CFLAGS = [*CFLAGS, "-fPIE", "-ffile-prefix-map=$(CURDIR)=."]
KATANA_LDFLAGS = [*LDFLAGS, "-pie"]


def make_release(work: Path, dest: Path, factor: int, cflags, ldflags) -> Path:
    """Build with make in ``work`` (sources rewritten for this version), then copy the objects
    and the program to ``dest``: how a make user keeps the build of each release."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "Makefile").write_text(MAKEFILE)
    (work / "main.c").write_text(MAIN_C)
    (work / "util.c").write_text(UTIL_C.replace("FACTOR", str(factor)))
    subprocess.run(["make", "-s", "-C", str(work), "-B", f"CFLAGS={' '.join(cflags)}",
                    f"LDFLAGS={' '.join(ldflags)}"], check=True, capture_output=True)
    dest.mkdir(parents=True)
    for name in ("main.o", "util.o", "prog"):
        shutil.copy(work / name, dest / name)
    return dest


def _without(flags, flag):
    assert any(f.startswith(flag) for f in flags), flag
    return [f for f in flags if not f.startswith(flag)]


# -- 3. every flag the tool guarantees, checked from the files ---------------------------------

@pytest.mark.parametrize("flag, code, message", [
    ("-g", 4, "without -g"),
    ("-ffunction-sections", 4, "without -ffunction-sections"),
    ("-flive-patching", 4, "without -flive-patching=inline-clone"),
    ("-fdata-sections", 0, "built without -fdata-sections (util.o)"),
    ("-fpatchable-function-entry", 0, "built without -fpatchable-function-entry=5,5 (util.o)"),
    ("-ffile-prefix-map", 0, "built without -ffile-prefix-map (util.o)"),
    ("-Wl,--emit-relocs", 0, "linked without -Wl,--emit-relocs"),
    ("-Wl,--build-id", 4, "linked without a GNU build-id"),
])
def test_missing_flag(tmp_path, flag, code, message):
    cflags, ldflags = KATANA_CFLAGS, KATANA_LDFLAGS
    if flag.startswith("-Wl,"):
        ldflags = _without(ldflags, flag)
        if flag == "-Wl,--build-id":
            ldflags.append("-Wl,--build-id=none")  # the distribution's gcc adds one otherwise
    else:
        cflags = _without(cflags, flag)
    for version, factor in (("v0", 2), ("v1", 3)):
        make_release(tmp_path / "work", tmp_path / version, factor, cflags, ldflags)
    result = katana("generate", "-o", str(tmp_path / "p.po"), str(tmp_path / "v0"),
                    str(tmp_path / "v1"), "prog")
    assert result.returncode == code, result.stdout + result.stderr
    shown = result.stderr if code else result.stdout
    assert message in shown, shown
    spelt = {"-flive-patching": "-flive-patching=inline-clone",
             "-fpatchable-function-entry": "-fpatchable-function-entry=5,5",
             "-Wl,--build-id": "-Wl,--build-id=sha1"}.get(flag, flag)
    for fix in ("make: add", "CMake: add_", "SCons: load the katana tool"):
        assert fix in shown, shown
    assert spelt in shown.split("make: add", 1)[1]
    assert "Traceback" not in result.stderr
    if code == 0:  # the warning stays in the PO, for katana list
        listing = json.loads(katana("list", "--json", str(tmp_path / "p.po"), check=True).stdout)
        assert any(message in w for w in listing["warnings"]), listing["warnings"]
        assert [f["name"] for f in listing["functions"]] == ["step"]


def test_refused_flag_recorded(tmp_path):
    # -g1 keeps line tables but no types: the producer says so
    cflags = [*_without(KATANA_CFLAGS, "-g"), "-g1"]
    for version, factor in (("v0", 2), ("v1", 3)):
        make_release(tmp_path / "work", tmp_path / version, factor, cflags, KATANA_LDFLAGS)
    result = katana("generate", "-o", str(tmp_path / "p.po"), str(tmp_path / "v0"),
                    str(tmp_path / "v1"), "prog")
    assert result.returncode == 4 and "built with -g1" in result.stderr, result.stderr


def test_complete_flags_no_warning(tmp_path):
    for version, factor in (("v0", 2), ("v1", 3)):
        make_release(tmp_path / "work", tmp_path / version, factor, KATANA_CFLAGS, KATANA_LDFLAGS)
    po = build_patch(load_tree(tmp_path / "v0", "prog"), load_tree(tmp_path / "v1", "prog"),
                     "prog")
    assert po.meta.warnings == []


def test_no_prefix_map_in_two_directories(tmp_path):
    # each version built where it lives: every object records its own directory
    cflags = _without(KATANA_CFLAGS, "-ffile-prefix-map")
    for version, factor in (("v0", 2), ("v1", 3)):
        make_release(tmp_path / f"work-{version}", tmp_path / version, factor, cflags,
                     KATANA_LDFLAGS)
    result = katana("generate", "-o", str(tmp_path / "p.po"), str(tmp_path / "v0"),
                    str(tmp_path / "v1"), "prog")
    assert result.returncode == 4, result.stderr
    assert "without -ffile-prefix-map" in result.stderr and "work-v0" in result.stderr
    assert "-ffile-prefix-map=$(CURDIR)=." in result.stderr
    assert not (tmp_path / "p.po").exists()


# -- 2. only what the program links ---------------------------------------------------------------

LIB_C = "int __attribute__((noinline)) lib_value(int x) { return x + LIB; }\n"
PROG_C = """#include <stdio.h>
#include <unistd.h>
int lib_value(int);
int __attribute__((noinline)) compute(int x) { return lib_value(x) * FACTOR; }
int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d value %d\\n", tick, compute(tick));
        usleep(20000);
    }
}
"""


def build_with_library(out: Path, factor: int, lib: int, pie: bool = True) -> Path:
    """One build directory: liblib.so from lib.c, and prog (main.c) linked against it."""
    out.mkdir(parents=True)
    (out / "lib.c").write_text(LIB_C.replace("LIB", str(lib)))
    (out / "main.c").write_text(PROG_C.replace("FACTOR", str(factor)))
    prefix = f"-ffile-prefix-map={out}=."
    pic = ["-fPIE"] if pie else ["-fno-pie"]
    steps = [["gcc", *CFLAGS, "-fPIC", prefix, "-c", "lib.c", "-o", "lib.o"],
             ["gcc", "-shared", "-Wl,--build-id=sha1", "lib.o", "-o", "liblib.so"],
             ["gcc", *CFLAGS, *pic, prefix, "-c", "main.c", "-o", "main.o"],
             ["gcc", *LDFLAGS, "-pie" if pie else "-no-pie", "main.o", "-L.", "-llib",
              "-Wl,-rpath,$ORIGIN", "-o", "prog"]]
    for argv in steps:
        subprocess.run(argv, cwd=out, check=True)
    return out / "prog"


def _plan(tmp_path):
    return build_patch(load_tree(tmp_path / "v0", "prog"), load_tree(tmp_path / "v1", "prog"),
                       "prog")


@PIE
def test_library_beside_program(tmp_path, pie):
    build_with_library(tmp_path / "v0", 2, 100, pie)
    build_with_library(tmp_path / "v1", 3, 200, pie)  # both the program and the library change
    po = _plan(tmp_path)
    assert [(f.name, f.status, f.object) for f in po.meta.functions] == \
        [("compute", "changed", "main.o")]
    assert "lib_value" not in {s.name for s in po.symbols if s.section is not None}
    assert not any("lib.o" in w for w in po.meta.warnings), po.meta.warnings


def test_only_the_library_changed(tmp_path):
    build_with_library(tmp_path / "v0", 2, 100)
    build_with_library(tmp_path / "v1", 2, 200)
    # the program is the same build: no patch of it (the library is not the program's)
    with pytest.raises(GenerateError, match="same build"):
        _plan(tmp_path)


# -- 4. a library variable the program never used ----------------------------------------------

REPORT_V0 = 'printf("tick %d v0\\n", tick);'
REPORT_V1 = 'printf("tick %d v1\\n", tick); fprintf(stderr, "tick %d to stderr\\n", tick);'
REPORT_STORE = 'printf("tick %d v1\\n", tick); if (tick < 0) stderr = NULL;'


def library_variable_trees(tmp_path, pie, v1=REPORT_V1):
    """v0 never uses stderr; v1's report() reads it (TO has a copy relocation for it)."""
    src = (SCENARIOS / "library_data" / "v0" / "main.c").read_text()
    src = src.replace('printf("tick %d V0\\n", tick);', REPORT_V0)
    for version, body in (("v0", REPORT_V0), ("v1", v1)):
        (tmp_path / f"src-{version}").mkdir()
        (tmp_path / f"src-{version}" / "main.c").write_text(src.replace(REPORT_V0, body))
        build_version(tmp_path / f"src-{version}", tmp_path / version, pie=pie)


@PIE
def test_new_library_variable_read_through_a_slot(tmp_path, pie):
    library_variable_trees(tmp_path, pie)
    po = _plan(tmp_path)
    assert [f.name for f in po.meta.functions] == ["report"]
    stderr = next(i for i, s in enumerate(po.symbols) if s.name == "stderr")
    assert po.symbols[stderr].section is None  # resolved at apply, in the loaded libc
    uses = [(sec.name, r.type) for sec in po.sections for r in sec.relocs if r.symbol == stderr]
    # one load through a GOT slot, from a thunk of its own; no 32-bit reference left
    assert [t for _, t in uses] == [R_X86_64_GOTPCREL], uses
    assert "katana_slot" in uses[0][0]


@PIE
def test_new_library_variable_stored_is_refused(tmp_path, pie):
    library_variable_trees(tmp_path, pie, REPORT_STORE)
    with pytest.raises(GenerateError, match=r"uses stderr, a library variable that v0 never "
                       r"used") as err:
        _plan(tmp_path)
    assert "library function" in err.value.hint
    result = katana("generate", "-o", str(tmp_path / "p.po"), str(tmp_path / "v0"),
                    str(tmp_path / "v1"), "prog")
    assert result.returncode == 5 and "stderr" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "p.po").exists()


# The two forms rewritten, in every register and width GCC may pick, assembled here; the thunk
# must decode to the two loads and the jump back.
ASM_CASES = [
    ("movq stderr(%rip), %rdi", ["mov rdi, qword ptr [rip]", "mov rdi, qword ptr [rdi]"]),
    ("movq stderr+8(%rip), %r12", ["mov r12, qword ptr [rip]",
                                   "mov r12, qword ptr [r12 + 8]"]),
    ("movl optind(%rip), %eax", ["mov rax, qword ptr [rip]", "mov eax, dword ptr [rax]"]),
    ("movl optind(%rip), %r13d", ["mov r13, qword ptr [rip]", "mov r13d, dword ptr [r13]"]),
    ("movq stderr(%rip), %rbp", ["mov rbp, qword ptr [rip]", "mov rbp, qword ptr [rbp]"]),
]


@pytest.mark.parametrize("source, thunk", ASM_CASES, ids=[c[0] for c in ASM_CASES])
def test_rewrite_forms(tmp_path, source, thunk):
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    from katana.elf.objfile import ObjectFile
    from katana.generate.indirect import plan_rewrite

    (tmp_path / "a.s").write_text(f".text\nf:\n\tnop\n\t{source}\n\tret\n")
    subprocess.run(["gcc", "-c", "a.s", "-o", "a.o"], cwd=tmp_path, check=True)
    obj = ObjectFile(tmp_path / "a.o", "a.o")
    text = next(s for s in obj.sections if s.name == ".text")
    (r,) = text.relocs
    rewrite = plan_rewrite(text.data, r.offset, r.addend)
    assert rewrite is not None and rewrite.start == 1 and rewrite.end == len(text.data) - 1
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    decoded = [f"{i.mnemonic} {i.op_str}" for i in cs.disasm(rewrite.thunk, 0)]
    assert decoded[:2] == thunk and decoded[2].startswith("jmp")
    assert rewrite.thunk[rewrite.back_field - 1] == 0xE9
    jump = [i.mnemonic for i in cs.disasm(rewrite.replacement, 0)]
    assert jump[0] == "jmp" and set(jump[1:]) <= {"nop"}


def test_rewrite_lea_in_place(tmp_path):
    from katana.elf.objfile import ObjectFile
    from katana.generate.indirect import plan_rewrite

    (tmp_path / "a.s").write_text(".text\nf:\n\tleaq stderr(%rip), %rsi\n"
                                  "\tmovq $0, stderr(%rip)\n\tret\n")
    subprocess.run(["gcc", "-c", "a.s", "-o", "a.o"], cwd=tmp_path, check=True)
    obj = ObjectFile(tmp_path / "a.o", "a.o")
    text = next(s for s in obj.sections if s.name == ".text")
    lea, store = text.relocs
    rewrite = plan_rewrite(text.data, lea.offset, lea.addend)
    assert rewrite is not None and not rewrite.thunk
    assert rewrite.replacement[:2] == b"\x48\x8b" and rewrite.slot_field == lea.offset
    assert plan_rewrite(text.data, store.offset, store.addend) is None  # a store: refused


# -- 5 and 6. where the PO goes, and what its versions are called ------------------------------

def _release(project: Path, version: str, built: Path) -> Path:
    objects = sorted(built.parent.glob("*.o"))
    make_snapshot(project / "releases" / version, version,
                  {"prog": (built, "program", objects)}, "gcc (test)", ["-O2", "-g"],
                  ["-Wl,--build-id=sha1"])
    return project / "releases" / version


def test_default_output_never_in_a_snapshot(tmp_path):
    project = tmp_path / "project"
    releases = {v: _release(project, v, build_version(SCENARIOS / "body_change" / v,
                                                      tmp_path / "build" / v))
                for v in ("v0", "v1")}
    before = sorted(p.name for p in releases["v0"].rglob("*"))
    result = katana("generate", str(releases["v0"]), str(releases["v1"]), "prog")
    assert result.returncode == 0, result.stderr
    po = project / "patches" / "prog-v0-v1.po"
    assert po.is_file()
    assert f"wrote {po}" in result.stdout
    assert sorted(p.name for p in releases["v0"].rglob("*")) == before


def test_labels(tmp_path):
    trees = {v: build_version(SCENARIOS / "body_change" / v, tmp_path / f"build-{v}")
             for v in ("v0", "v1")}
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), "--from-label", "1.4.0", "--to-label", "1.4.1",
           str(trees["v0"].parent), str(trees["v1"].parent), "prog", check=True)
    listing = json.loads(katana("list", "--json", str(po), check=True).stdout)
    assert (listing["from"]["label"], listing["to"]["label"]) == ("1.4.0", "1.4.1")
    assert "prog: 1.4.0 -> 1.4.1" in katana("list", str(po), check=True).stdout
    # without them, the directory names
    katana("generate", "-o", str(po), str(trees["v0"].parent), str(trees["v1"].parent), "prog",
           check=True)
    listing = json.loads(katana("list", "--json", str(po), check=True).stdout)
    assert (listing["from"]["label"], listing["to"]["label"]) == ("build-v0", "build-v1")
