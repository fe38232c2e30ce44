"""The katana SCons tool: flags, refusals, recorded objects, variables, release and patch targets.

In-process tests build an Environment with ``katana.build.scons_tool.generate`` and read the command
lines SCons would run; end-to-end tests run ``python -m SCons`` in a subprocess on a small C
project made in tmp_path (loaded through TOOLPATH, so without site_scons) and on a copy of the
repository's example.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import SCons.Environment
import SCons.Errors
from elftools.elf.elffile import ELFFile
from exampletree import advance, copy_project

from katana.build import flags as buildflags
from katana.build import scons_tool
from katana.build.scons_tool import generate

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120
KATANA_CCFLAGS = ["-g", "-ffunction-sections", "-fdata-sections", "-flive-patching=inline-clone",
                  "-fno-inline-functions-called-once", "-fno-inline-small-functions"]
KATANA_LINKFLAGS = ["-Wl,--emit-relocs", "-Wl,--build-id=sha1"]


# -- in-process ------------------------------------------------------------------------------

def katana_env(**kw):
    return SCons.Environment.Environment(tools=["default", generate], **kw)


def compile_args(env, tmp_path, name="x"):
    obj = env.Object(str(tmp_path / f"{name}.o"), str(tmp_path / f"{name}.c"))[0]
    return env.subst("$CCCOM", target=[obj], source=obj.sources).split()


def link_args(env, tmp_path, name="prog"):
    prog = env.Program(str(tmp_path / name), [str(tmp_path / f"{name}_main.c")])[0]
    return prog, env.subst("$LINKCOM", target=[prog], source=prog.sources).split()


def test_flags_are_on_the_command_lines_exactly_once(tmp_path):
    env = katana_env()
    args = compile_args(env, tmp_path)
    top = env.Dir("#").get_abspath()
    for flag in [*KATANA_CCFLAGS, f"-ffile-prefix-map={top}=."]:
        assert args.count(flag) == 1, (flag, args)
    _, args = link_args(env, tmp_path)
    for flag in KATANA_LINKFLAGS:
        assert args.count(flag) == 1, (flag, args)


def test_loaded_before_default_the_tool_cannot_do_its_job(tmp_path):
    # why docs/scons-tool.md says "after": loaded first, the tool runs before $CC is set (no GCC
    # version, so no -flive-patching) and before the link tool resets LINKFLAGS
    env = SCons.Environment.Environment(tools=[generate, "default"])
    assert "-Wl,--emit-relocs" not in env.subst("$LINKFLAGS").split()
    assert buildflags.LIVE_PATCHING not in compile_args(env, tmp_path)
    assert buildflags.LIVE_PATCHING in compile_args(katana_env(), tmp_path, "y")


@pytest.mark.scons
def test_loaded_first_the_tool_still_completes_the_command_lines(tmp_path):
    # what docs/scons-tool.md says of tools=['katana', 'default'] in a real SConstruct: the
    # environment lacks the link flags until a target is declared; the command lines do not
    (tmp_path / "m.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "SConstruct").write_text(
        "import katana.build.scons_tool\n"
        "env = Environment(tools=['katana', 'default'],\n"
        "                  toolpath=[katana.build.scons_tool.TOOLPATH])\n"
        "print('LINKFLAGS=' + env.subst('$LINKFLAGS'))\n"
        "env.Program('m', ['m.c'])\n")
    out = ok(scons(tmp_path)).stdout
    assert "LINKFLAGS=\n" in out
    compile_line = next(line for line in out.splitlines() if " -c " in line)
    link_line = next(line for line in out.splitlines() if line.startswith("gcc -o m "))
    assert buildflags.LIVE_PATCHING in compile_line.split()
    assert {"-Wl,--emit-relocs", "-Wl,--build-id=sha1"} <= set(link_line.split())


def test_a_users_string_flags_are_not_doubled(tmp_path):
    # Environment(CCFLAGS=...) puts the user's value back after the tools ran: the flags must
    # still arrive, added when the object is declared, and -g not twice
    env = katana_env(CCFLAGS="-O2 -g", LINKFLAGS="-Wl,--emit-relocs")
    args = compile_args(env, tmp_path)
    assert args.count("-g") == 1 and "-O2" in args
    for flag in KATANA_CCFLAGS:
        assert args.count(flag) == 1, (flag, args)
    _, args = link_args(env, tmp_path)
    assert args.count("-Wl,--emit-relocs") == 1 and args.count("-Wl,--build-id=sha1") == 1


def test_flags_the_user_gave_in_another_spelling_are_kept(tmp_path):
    env = katana_env(CCFLAGS=["-g3", "-flive-patching=inline-only-static"],
                     LINKFLAGS=["-Wl,--build-id=md5"])
    args = compile_args(env, tmp_path)
    assert "-g" not in args and "-g3" in args
    assert [a for a in args if a.startswith("-flive-patching")] == [
        "-flive-patching=inline-only-static"]
    _, args = link_args(env, tmp_path)
    assert "-Wl,--build-id=sha1" not in args and "-Wl,--build-id=md5" in args


def test_a_flag_in_both_cflags_and_cxxflags_is_not_added(tmp_path):
    env = katana_env(CFLAGS=["-fdata-sections"], CXXFLAGS=["-fdata-sections"])
    assert compile_args(env, tmp_path).count("-fdata-sections") == 1
    assert "-fdata-sections" not in env.subst("$CCFLAGS").split()
    assert env.subst("$CXXFLAGS").split().count("-fdata-sections") == 1


def test_a_flag_in_cflags_only_is_added_for_cxx_only(tmp_path):
    env = katana_env(CFLAGS="-std=c11 -g")
    assert compile_args(env, tmp_path).count("-g") == 1
    assert env.subst("$CXXFLAGS").split().count("-g") == 1


def test_flags_appended_after_loading_count(tmp_path):
    env = katana_env()
    env.Append(CCFLAGS="-O2")
    args = compile_args(env, tmp_path)
    assert "-O2" in args and args.count("-g") == 1


def test_outline_callees_can_be_turned_off(tmp_path):
    env = katana_env(KATANA_OUTLINE_CALLEES=False)
    args = compile_args(env, tmp_path)
    assert "-fno-inline-small-functions" not in args
    assert "-ffunction-sections" in args


def test_outline_callees_turned_off_after_loading(tmp_path):
    env = katana_env(CCFLAGS=["-O2"])
    env["KATANA_OUTLINE_CALLEES"] = False
    args = compile_args(env, tmp_path)
    assert "-fno-inline-small-functions" not in args
    assert "-fno-inline-functions-called-once" not in args
    assert "-ffunction-sections" in args


REFUSED = [
    ("CCFLAGS", "-g0"), ("CCFLAGS", "-g1"), ("CCFLAGS", "-gsplit-dwarf"),
    ("CCFLAGS", "-flto"), ("CCFLAGS", "-flto=auto"), ("CFLAGS", "-flto=4"),
    ("CCFLAGS", "-fno-function-sections"), ("CXXFLAGS", "-fno-data-sections"),
    ("LINKFLAGS", "-s"), ("LINKFLAGS", "-Wl,-s"), ("LINKFLAGS", "-Wl,--strip-all"),
    ("LINKFLAGS", "-Wl,--build-id=none"), ("LINKFLAGS", "-Wl,--gc-sections,--strip-all"),
    ("LINKFLAGS", "-Wl,-x"), ("LINKFLAGS", "-flto"),
]


@pytest.mark.parametrize("var,flag", REFUSED)
def test_flags_that_defeat_patching_are_refused(tmp_path, var, flag):
    # at the latest when the objects and the program are declared (the tools SCons loads before
    # katana reset CFLAGS, which Environment() only puts back afterwards)
    with pytest.raises(SCons.Errors.UserError) as error:
        env = katana_env(**{var: [flag]})
        compile_args(env, tmp_path)
        link_args(env, tmp_path)
    message = str(error.value)
    assert var in message and "remove it" in message
    named = flag.split(",")[-1] if flag.startswith("-Wl,") else flag
    assert named.lstrip("-") in message
    assert "test_scons_tool.py" in message  # the line of the build description that did it


@pytest.mark.parametrize("var,flag", [("CCFLAGS", "-flto"), ("CCFLAGS", "-g0")])
def test_flags_given_to_the_environment_are_refused_when_loading(var, flag):
    with pytest.raises(SCons.Errors.UserError, match=re.escape(flag)):
        katana_env(**{var: [flag]})


@pytest.mark.parametrize("var,flag", [("CCFLAGS", "-flto"), ("CCFLAGS", "-g0"),
                                      ("LINKFLAGS", "-Wl,--build-id=none"), ("LINKFLAGS", "-s")])
def test_flags_that_defeat_patching_are_refused_when_appended_later(tmp_path, var, flag):
    env = katana_env()
    env.Append(**{var: [flag]})
    with pytest.raises(SCons.Errors.UserError, match=re.escape(flag)):
        compile_args(env, tmp_path) if var == "CCFLAGS" else link_args(env, tmp_path)


def test_an_environment_without_the_tool_is_left_alone(tmp_path):
    # a Clone shares the object builders with its parent: the check must follow the tool
    plain = SCons.Environment.Environment(tools=["default"], CCFLAGS=["-flto"])
    plain.Clone(tools=[generate], CCFLAGS=[])
    args = compile_args(plain, tmp_path)
    assert "-flto" in args and "-ffunction-sections" not in args


def test_programs_record_their_objects_in_link_order(tmp_path):
    env = katana_env()
    sources = [str(tmp_path / f"{n}.c") for n in ("main", "store", "net")]
    prog = env.Program(str(tmp_path / "server"), sources)[0]
    lib = env.SharedLibrary(str(tmp_path / "libutil"), [str(tmp_path / "util.c")])[0]
    kind, objects = prog.attributes.katana_linked
    assert kind == "program"
    assert [o.name for o in objects] == ["main.o", "store.o", "net.o"]
    kind, objects = lib.attributes.katana_linked
    assert kind == "shared_library" and [o.name for o in objects] == ["util.os"]
    plugin = env.LoadableModule(str(tmp_path / "plugin"), [str(tmp_path / "plug.c")])[0]
    kind, objects = plugin.attributes.katana_linked
    assert kind == "shared_library" and [o.name for o in objects] == ["plug.os"]
    release = env.Alias("release")[0]
    assert {prog, lib, plugin} <= set(release.sources)


def test_library_objects_are_position_independent(tmp_path):
    env = katana_env()
    env.Replace(SHCCFLAGS=["$CCFLAGS"])  # a project that dropped SCons's own -fPIC
    env.SharedLibrary(str(tmp_path / "libutil"), [str(tmp_path / "util.c")])
    assert "-fPIC" in env.subst("$SHCCFLAGS").split()


def fake_compiler(tmp_path, name, version_text, dumpversion):
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\ncase \"$1\" in\n"
                    f"  --version) printf '%s\\n' '{version_text}' ;;\n"
                    f"  -dumpversion) echo {dumpversion} ;;\nesac\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("banner,dump,live", [
    ("gcc (GCC) 8.5.0\nCopyright (C) 2018 Free Software Foundation, Inc.", "8", False),
    ("gcc (GCC) 13.2.0\nCopyright (C) 2023 Free Software Foundation, Inc.", "13", True),
    ("Ubuntu clang version 15.0.7\nTarget: x86_64-pc-linux-gnu", "15.0.7", False),
])
def test_live_patching_flag_only_for_gcc_9_and_later(tmp_path, banner, dump, live):
    cc = fake_compiler(tmp_path, f"cc{dump}", banner, dump)
    env = katana_env(CC=cc)
    assert ("-flive-patching=inline-clone" in env.subst("$CCFLAGS").split()) == live
    assert scons_tool._compiler(env).banner == banner.splitlines()[0]


def test_a_missing_compiler_does_not_break_loading():
    env = katana_env(CC="/nonexistent/cc")
    assert "-ffunction-sections" in env.subst("$CCFLAGS").split()


def test_toolpath_holds_a_katana_tool():
    assert (Path(scons_tool.TOOLPATH) / "katana.py").is_file()
    shim = REPO / "site_scons" / "site_tools" / "katana" / "__init__.py"
    # the repository's site_scons tool is the same shim as the installed one
    assert shim.read_bytes() == (Path(scons_tool.TOOLPATH) / "katana.py").read_bytes()


# -- end to end ------------------------------------------------------------------------------

SCONSTRUCT = """\
from katana.build.scons_tool import TOOLPATH
V = ARGUMENTS.get('VERSION', 'v0')
env = Environment(tools=['default', 'katana'], toolpath=[TOOLPATH], CCFLAGS='-O2 -g')
env.Append(CCFLAGS=' ' + ARGUMENTS.get('EXTRA_CCFLAGS', ''),
           LINKFLAGS=' ' + ARGUMENTS.get('EXTRA_LINKFLAGS', ''))
env.VariantDir('build/' + V, 'src/' + V, duplicate=False)
env.Program('build/%s/app' % V, ['build/%s/%s.c' % (V, n) for n in ('main', 'store', 'util')])
"""

SOURCES = {
    "main.c": """\
#include <stdio.h>
int store_put(int key, int value);
int util_twice(int x);
int counter;
static int step(int i) { return util_twice(i) + 1; }
int main(void)
{
    for (int i = 0; i < 3; i++)
        counter += store_put(i, step(i));
    printf("%d\\n", counter);
    return 0;
}
""",
    "store.c": """\
struct entry { int key; int value; };
static struct entry table[16];
static int used;
static int slot(int key) { return key & 15; }
int store_put(int key, int value)
{
    table[slot(key)] = (struct entry){key, value};
    return ++used;
}
""",
    "util.c": "int util_twice(int x) { return 2 * x; }\n",
}


def make_project(root):
    root.mkdir(parents=True)
    (root / "SConstruct").write_text(SCONSTRUCT)
    for version in ("v0", "v1"):
        src = root / "src" / version
        src.mkdir(parents=True)
        for name, text in SOURCES.items():
            (src / name).write_text(text)
    store = root / "src" / "v1" / "store.c"
    store.write_text(store.read_text().replace("key & 15", "(key * 7) & 15"))
    return root


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project")


def scons(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCONS")}
    return subprocess.run([sys.executable, "-m", "SCons", "-Q", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def readelf_build_id(path):
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def defined_symbols(elf, kind):
    symtab = elf.get_section_by_name(".symtab")
    return [(s.name, elf.get_section(s["st_shndx"]).name) for s in symtab.iter_symbols()
            if s["st_info"]["type"] == kind and isinstance(s["st_shndx"], int)]


TOOL_LOADING = {
    # the usual way: import TOOLPATH from the package, then load the tool twice
    "imported first": """\
import sys
from katana.build.scons_tool import TOOLPATH
import katana
package = katana
Environment(tools=['default', 'katana'], toolpath=[TOOLPATH])
Environment(tools=['default', 'katana'], toolpath=[TOOLPATH])
assert sys.modules['katana'] is package
""",
    # a literal path: SCons finds the tool before anything imported the package
    "literal path": f"""\
import sys
Environment(tools=['default', 'katana'], toolpath=[{scons_tool.TOOLPATH!r}])
package = sys.modules['katana']
Environment(tools=['default', 'katana'], toolpath=[{scons_tool.TOOLPATH!r}])
assert sys.modules['katana'] is package
""",
}


@pytest.mark.scons
@pytest.mark.parametrize("how", sorted(TOOL_LOADING))
def test_loading_the_tool_leaves_the_katana_package_in_place(tmp_path, how):
    (tmp_path / "SConstruct").write_text(TOOL_LOADING[how] + """\
import katana.generate.api
assert package.__path__ and package.generate.api.generate_patch
print('PACKAGE', package.__file__)
""")
    out = ok(scons(tmp_path, ".")).stdout
    assert f"PACKAGE {Path(scons_tool.__file__).parents[1] / '__init__.py'}" in out


@pytest.mark.scons
def test_release_of_a_project_loaded_through_toolpath(project):
    out = ok(scons(project, "release", "VERSION=v0")).stdout
    compiles = [line.split() for line in out.splitlines() if " -c " in line]
    assert len(compiles) == 3 and all(args.count("-g") == 1 for args in compiles)
    assert "releases/v0 written: app" in out
    snap = project / "releases" / "v0"
    manifest = json.loads((snap / "manifest.json").read_text())
    app = manifest["programs"]["app"]
    assert app["objects"] == ["main.o", "store.o", "util.o"] and app["kind"] == "program"
    assert set(manifest["files"]) == {"app", "main.o", "store.o", "util.o"}
    for rel, digest in manifest["files"].items():
        assert digest == sha256(snap / rel) == sha256(project / "build" / "v0" / rel)
    assert app["build_id"] == readelf_build_id(snap / "app")
    assert "-ffile-prefix-map=#=." in manifest["ccflags"] and "-O2" in manifest["ccflags"]
    assert manifest["compiler"].startswith("gcc")
    for rel in app["objects"]:  # one section per function and per variable, in every object
        with open(snap / rel, "rb") as f:
            elf = ELFFile(f)
            for name, section in defined_symbols(elf, "STT_FUNC"):
                assert section.startswith(".text.") and section.endswith("." + name)
            for name, section in defined_symbols(elf, "STT_OBJECT"):
                assert section.split(".")[-1] == name, (rel, name, section)
    with open(snap / "app", "rb") as f:  # --emit-relocs kept the relocations
        assert ELFFile(f).get_section_by_name(".rela.text") is not None
    again = ok(scons(project, "release", "VERSION=v0")).stdout
    assert "releases/v0 unchanged" in again and "gcc" not in again


@pytest.mark.scons
def test_a_release_is_immutable_unless_forced(project):
    ok(scons(project, "release", "VERSION=v0"))
    store = project / "src" / "v0" / "store.c"
    store.write_text(store.read_text().replace("++used", "used += 2"))
    result = scons(project, "release", "VERSION=v0")
    assert result.returncode == 2
    assert "store.o" in result.stdout + result.stderr and "FORCE=1" in result.stderr
    assert "Traceback" not in result.stderr
    manifest = project / "releases" / "v0" / "manifest.json"
    old_hash = json.loads(manifest.read_text())["files"]["store.o"]
    ok(scons(project, "release", "VERSION=v0", "FORCE=1"))
    assert json.loads(manifest.read_text())["files"]["store.o"] != old_hash
    assert sha256(project / "releases" / "v0" / "store.o") == sha256(project / "build/v0/store.o")


@pytest.mark.scons
def test_builds_do_not_depend_on_where_the_tree_is(tmp_path):
    trees = [make_project(tmp_path / "a"), make_project(tmp_path / "somewhere" / "else" / "b")]
    for tree in trees:
        ok(scons(tree, "release", "VERSION=v0"))
    files = [sorted((tree / "releases" / "v0").iterdir()) for tree in trees]
    assert [p.name for p in files[0]] == [p.name for p in files[1]]
    for a, b in zip(*files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.scons
def test_help_documents_the_variables(project):
    out = ok(scons(project, "-h")).stdout
    for name in ("VERSION", "FROM", "TO", "FORCE", "scons release", "scons patch"):
        assert name in out


@pytest.mark.scons
@pytest.mark.parametrize("args,expected", [
    (["FORM=v0"], "did you mean FROM=v0?"),
    (["version=v1"], "did you mean VERSION=v1?"),
    (["release"], "usage: scons release VERSION=<version>"),
    (["patch", "FROM=v0"], "usage: scons patch FROM=<version> TO=<version>"),
    (["patch", "TO=v1"], "usage: scons patch FROM=<version> TO=<version>"),
    (["release", "VERSION=../v1"], "is not a release name"),
    (["EXTRA_CCFLAGS=-flto"], "CCFLAGS contains -flto"),
    (["EXTRA_LINKFLAGS=-Wl,--strip-all"], "LINKFLAGS contains -Wl,--strip-all"),
])
def test_command_line_mistakes_exit_2_with_one_line(project, args, expected):
    result = scons(project, *args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "scons_tool.py" not in result.stderr
    assert not (project / "build").exists()


@pytest.mark.scons
def test_refusal_names_the_users_line(project):
    result = scons(project, "EXTRA_CCFLAGS=-fno-function-sections")
    assert "(SConstruct, line 7)" in result.stderr  # the env.Program() call


@pytest.mark.scons
def test_patch_needs_both_snapshots(project):
    result = scons(project, "patch", "FROM=v0", "TO=v1")
    assert result.returncode == 2
    assert "release v0 has no snapshot" in result.stderr
    assert "scons release VERSION=v0" in result.stderr
    ok(scons(project, "release", "VERSION=v0"))
    result = scons(project, "patch", "FROM=v0", "TO=v1")
    assert result.returncode == 2 and "scons release VERSION=v1" in result.stderr
    assert not (project / "patches").exists()


@pytest.mark.scons
def test_patch_from_a_damaged_snapshot_fails_cleanly(project):
    for version in ("v0", "v1"):
        ok(scons(project, "release", f"VERSION={version}"))
    out = ok(scons(project, "patch", "FROM=v0", "TO=v1")).stdout
    assert "app v0 -> v1" in out and (project / "patches" / "app-v0-v1.po").is_file()
    # an object of TO that the manifest vouches for, but that the generator cannot read: the
    # snapshot changed, so the patch is made again, and fails with the generator's one line
    manifest = project / "releases" / "v1" / "manifest.json"
    store = project / "releases" / "v1" / "store.o"
    store.write_bytes(b"not an object")
    data = json.loads(manifest.read_text())
    data["files"]["store.o"] = sha256(store)
    manifest.write_text(json.dumps(data))
    result = scons(project, "patch", "FROM=v0", "TO=v1")
    assert result.returncode == 2
    assert re.search(r"\[patches/app-v0-v1.po\] katana: .*store.o", result.stderr)
    assert "Traceback" not in result.stderr
    manifest.write_text(manifest.read_text().replace('"format": 1', '"format": 99'))
    result = scons(project, "patch", "FROM=v0", "TO=v1")
    assert result.returncode == 2 and "unsupported manifest format 99" in result.stderr
    assert "Traceback" not in result.stderr


# -- the repository's own example ------------------------------------------------------------

@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("repo"))


@pytest.mark.scons
def test_repository_sconstruct_builds_the_tree_quietly(repo_copy):
    out = ok(scons(repo_copy)).stdout
    for name in ("kvd", "libkvstore.so", "kv"):
        assert (repo_copy / "build" / name).is_file(), name
    assert "compile example_project/src/store.c" in out and "link build/kvd" in out
    assert "link build/libkvstore.so" in out  # the library's lines are quiet too
    assert "gcc" not in out
    ok(scons(repo_copy, "-c"))
    assert "-ffunction-sections" in ok(scons(repo_copy, "VERBOSE=1")).stdout
    assert "VERBOSE: 1 prints the compiler" in ok(scons(repo_copy, "-h")).stdout
    # the tree is at v0: a release named otherwise is refused, naming the change to apply
    result = scons(repo_copy, "release", "VERSION=v1")
    assert result.returncode == 2 and "example_project/changes/v0-v1.diff" in result.stdout


@pytest.mark.scons
def test_repository_release_and_patch(repo_copy):
    for version in ("v0", "v1"):
        if version != "v0":
            advance(repo_copy, version)
        out = ok(scons(repo_copy, "release", f"VERSION={version}")).stdout
        written = re.search(rf"releases/{version} written: (.*) \(", out)
        assert written and sorted(written.group(1).split(", ")) == ["kv", "kvd", "libkvstore.so"]
    manifest = json.loads((repo_copy / "releases" / "v0" / "manifest.json").read_text())
    # the store is a library of its own, which kvd loads
    assert manifest["programs"]["kvd"]["objects"] == ["main.o", "net.o", "protocol.o", "stats.o"]
    library = manifest["programs"]["libkvstore.so"]
    assert library["kind"] == "shared_library" and library["objects"] == ["store.os"]
    assert manifest["programs"]["kv"]["objects"] == ["client.o"]
    out = ok(scons(repo_copy, "patch", "FROM=v0", "TO=v1")).stdout
    # one PO per object that changed: the library (the lookup fixed) and kvd
    assert (repo_copy / "patches" / "libkvstore.so-v0-v1.po").is_file()
    assert (repo_copy / "patches" / "kvd-v0-v1.po").is_file()
    # kv's sources did not change: one tree, built twice, links the same bytes
    assert "kv v0 -> v1: the same build, no patch for it" in out
    assert not (repo_copy / "patches" / "kv-v0-v1.po").exists()
    # the PO depends on the two snapshots only: nothing changed, nothing is generated again
    again = ok(scons(repo_copy, "patch", "FROM=v0", "TO=v1")).stdout
    assert "patch patches/kvd-v0-v1.po" not in again
    assert "patch patches/libkvstore.so-v0-v1.po" not in again


# -- the flag rules, without SCons -----------------------------------------------------------

def test_linker_options_are_split_one_per_argument():
    words = ["-O2", "-Wl,--gc-sections,--strip-all", "-Xlinker", "-x", "-Wl,", "-s"]
    assert buildflags.linker_split(words) == [
        "-O2", "-Wl,--gc-sections", "-Wl,--strip-all", "-Wl,-x", "-s"]


@pytest.mark.parametrize("arg,flag,same", [
    ("-g", "-g", True), ("-g3", "-g", True), ("-ggdb", "-g", True), ("-gdwarf-4", "-g", True),
    ("-g1", "-g", False), ("-gsplit-dwarf", "-g", False), ("-gz", "-g", False),
    ("-flive-patching=inline-only-static", "-flive-patching=inline-clone", True),
    ("-Wl,--build-id", "-Wl,--build-id=sha1", True),
    ("-Wl,--build-id=0xbeef", "-Wl,--build-id=sha1", True),
    ("-Wl,--build-id=none", "-Wl,--build-id=sha1", False),
    ("-ffunction-sections", "-fdata-sections", False),
])
def test_which_user_flags_do_the_tools_job(arg, flag, same):
    assert buildflags.satisfies(arg, flag) == same


@pytest.mark.parametrize("arg", ["-O2", "-g", "-fno-lto", "-Wl,--gc-sections", "-Wl,-S",
                                 "-Wl,--build-id=md5", "-ggdb3", "-static"])
def test_ordinary_flags_are_not_refused(arg):
    assert buildflags.refusal(arg) is None
