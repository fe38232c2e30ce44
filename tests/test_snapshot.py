"""Release snapshots (katana.build.snapshot) and the build-id reader (katana.elf.buildid).

The objects and programs are compiled here with gcc, with the flags the katana tool gives;
the SCons side of releases is tested in test_scons_tool.py.
"""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from katana.build.snapshot import Snapshot, make_snapshot
from katana.elf.buildid import read_build_id
from katana.errors import BuildError, FormatError, KatanaError

CFLAGS = ["-O2", "-g", "-ffunction-sections", "-fdata-sections"]
SOURCES = {
    "main.c": "int store_put(int);\nint twice(int);\nint total;\n"
              "static int step(int i) { return twice(i) + 1; }\n"
              "int main(void) { for (int i = 0; i < 3; i++) total += store_put(step(i));\n"
              "                 return total == 0; }\n",
    "store.c": "static int table[16];\nint store_put(int v) { table[v & 15] = v; return v; }\n",
    "lib/util.c": "int twice(int x) { return 2 * x; }\n",
}


def compile_tree(root, sources=SOURCES, link_flags=("-Wl,--build-id=sha1",)):
    """Compile SOURCES into root/build/v0 (objects keep their subdirectory) and link app."""
    src, out = root / "src", root / "build" / "v0"
    objects = []
    for name, text in sources.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
        obj = out / name.replace(".c", ".o")
        obj.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", *CFLAGS, "-c", str(src / name), "-o", str(obj)], check=True)
        objects.append(obj)
    app = out / "app"
    subprocess.run(["gcc", *link_flags, "-o", str(app), *map(str, objects)], check=True)
    return app, objects


@pytest.fixture
def tree(tmp_path):
    return compile_tree(tmp_path)


def snapshot(tmp_path, tree, **kw):
    app, objects = tree
    return make_snapshot(tmp_path / "releases" / "v0", "v0", {"app": (app, "program", objects)},
                         "gcc (test) 12", ["-O2", "-g"], ["-Wl,--build-id=sha1"], **kw)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def readelf_build_id(path):
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def test_snapshot_layout_and_manifest(tmp_path, tree):
    snap = snapshot(tmp_path, tree)
    root = tmp_path / "releases" / "v0"
    assert snap.root == root and snap.version == "v0"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["version"] == "v0"
    assert manifest["compiler"] == snap.compiler == "gcc (test) 12"
    assert manifest["ccflags"] == snap.ccflags == ["-O2", "-g"]
    # the release root is the deepest directory holding everything: build/v0/
    assert sorted(manifest["files"]) == ["app", "lib/util.o", "main.o", "store.o"]
    app = manifest["programs"]["app"]
    assert app["path"] == "app" and app["kind"] == "program"
    assert app["objects"] == ["main.o", "store.o", "lib/util.o"]  # link order, as given
    build = tmp_path / "build" / "v0"
    for rel, digest in manifest["files"].items():
        assert digest == sha256(root / rel) == sha256(build / rel)
    assert app["sha256"] == manifest["files"]["app"]
    assert app["build_id"] == snap.build_id("app") == readelf_build_id(build / "app")
    assert snap.program_names() == ["app"]
    assert snap.executable("app") == root / "app"
    assert subprocess.run([snap.executable("app")]).returncode == 0  # still runnable
    assert snap.objects("app") == [root / "main.o", root / "store.o", root / "lib" / "util.o"]
    assert snap.relpath(root / "lib" / "util.o") == "lib/util.o"
    assert Snapshot.load(root).manifest == snap.manifest


def test_the_same_bytes_again_change_nothing(tmp_path, tree):
    snapshot(tmp_path, tree)
    manifest = tmp_path / "releases" / "v0" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    snapshot(tmp_path, tree)
    assert manifest.stat().st_mtime_ns == before


def test_other_bytes_are_refused_unless_forced(tmp_path, tree):
    snapshot(tmp_path, tree)
    sources = dict(SOURCES, **{"store.c": SOURCES["store.c"].replace("v & 15", "v & 7")})
    changed = compile_tree(tmp_path, sources)
    with pytest.raises(BuildError) as error:
        snapshot(tmp_path, changed)
    assert "store.o" in error.value.message and "app" in error.value.message
    assert "main.o" not in error.value.message
    assert "FORCE=1" in error.value.hint
    root = tmp_path / "releases" / "v0"
    assert Snapshot.load(root).verify() == []  # the old snapshot is untouched
    assert sha256(root / "store.o") != sha256(changed[1][1])
    snapshot(tmp_path, changed, force=True)
    assert sha256(root / "store.o") == sha256(changed[1][1])
    assert Snapshot.load(root).files()["store.o"] == sha256(changed[1][1])
    assert not any(p.name.startswith(".") for p in root.parent.iterdir())  # no leftovers


def test_a_snapshot_changed_after_it_was_made_is_not_trusted(tmp_path, tree):
    snapshot(tmp_path, tree)
    util = tmp_path / "releases" / "v0" / "lib" / "util.o"
    util.write_bytes(util.read_bytes() + b"\0")
    assert Snapshot.load(util.parents[1]).verify() == ["lib/util.o"]
    with pytest.raises(BuildError, match="lib/util.o"):
        snapshot(tmp_path, tree)


def test_a_program_without_build_id_is_refused(tmp_path):
    tree = compile_tree(tmp_path, link_flags=("-Wl,--build-id=none",))
    with pytest.raises(BuildError, match="build-id"):
        snapshot(tmp_path, tree)
    assert not (tmp_path / "releases" / "v0").exists()


def test_missing_files_and_unknown_kinds_are_refused(tmp_path, tree):
    app, objects = tree
    with pytest.raises(BuildError):
        make_snapshot(tmp_path / "r", "v0", {"app": (app, "program", [tmp_path / "gone.o"])},
                      "gcc", [], [])
    with pytest.raises(BuildError, match="kind"):
        make_snapshot(tmp_path / "r", "v0", {"app": (app, "plugin", objects)}, "gcc", [], [])
    with pytest.raises(BuildError):
        make_snapshot(tmp_path / "r", "v0", {}, "gcc", [], [])


def test_unknown_program_names_the_ones_there_are(tmp_path, tree):
    snap = snapshot(tmp_path, tree)
    with pytest.raises(BuildError, match=r"no program 'kvd' \(it has: app\)"):
        snap.executable("kvd")


def test_loading_what_is_not_a_snapshot(tmp_path):
    with pytest.raises(BuildError) as error:
        Snapshot.load(tmp_path / "releases" / "v7")
    assert "scons release VERSION=v7" in error.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="manifest.json"):
        Snapshot.load(tmp_path / "empty")


def damage(manifest, how):
    """A copy of ``manifest`` damaged in one way."""
    m = json.loads(json.dumps(manifest))
    program = m["programs"]["app"]
    if how.startswith("drop program "):
        del program[how[13:]]
    elif how.startswith("drop "):
        del m[how[5:]]
    elif how == "format 2":
        m["format"] = 2
    elif how == "files not a map":
        m["files"] = ["app"]
    elif how == "path outside":
        m["files"]["../../etc/passwd"] = m["files"].pop("main.o")
    elif how == "absolute path":
        m["files"]["/etc/passwd"] = m["files"].pop("main.o")
    elif how == "object not a file":
        program["objects"].append("other.o")
    elif how == "program not an object":
        m["programs"]["app"] = "app"
    elif how == "bad hash":
        m["files"]["main.o"] = "xyz"
    return m


@pytest.mark.parametrize("how", [
    "drop format", "drop version", "drop compiler", "drop ccflags", "drop programs",
    "drop files", "drop program path", "drop program objects", "drop program build_id",
    "format 2", "files not a map", "path outside", "absolute path", "object not a file",
    "program not an object", "bad hash",
])
def test_a_damaged_manifest_is_a_format_error(tmp_path, tree, how):
    snap = snapshot(tmp_path, tree)
    (snap.root / "manifest.json").write_text(json.dumps(damage(snap.manifest, how)))
    with pytest.raises(FormatError) as error:
        Snapshot.load(snap.root)
    assert "manifest.json" in str(error.value)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", "\"v0\""])
def test_a_manifest_that_is_not_an_object_is_a_format_error(tmp_path, tree, text):
    snap = snapshot(tmp_path, tree)
    (snap.root / "manifest.json").write_text(text)
    with pytest.raises(FormatError):
        Snapshot.load(snap.root)


def test_a_damaged_snapshot_is_replaced_only_when_forced(tmp_path, tree):
    snap = snapshot(tmp_path, tree)
    (snap.root / "manifest.json").write_text("{")
    with pytest.raises(BuildError, match="not a valid snapshot"):
        snapshot(tmp_path, tree)
    snapshot(tmp_path, tree, force=True)
    assert Snapshot.load(snap.root).verify() == []


# -- build-id --------------------------------------------------------------------------------

def test_build_id_of_a_program_and_of_an_object(tree):
    app, objects = tree
    assert read_build_id(app) == readelf_build_id(app)
    assert read_build_id(str(app)) == readelf_build_id(app)
    assert read_build_id(objects[0]) is None


def test_build_id_of_a_running_process(tmp_path, tree):
    waiter = tmp_path / "waiter.c"
    waiter.write_text("#include <stdio.h>\nint main(void) { puts(\"ready\"); fflush(stdout);\n"
                      "  return getchar() == EOF; }\n")
    exe = tmp_path / "waiter"
    subprocess.run(["gcc", "-Wl,--build-id=sha1", str(waiter), "-o", str(exe)], check=True)
    proc = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert read_build_id(f"/proc/{proc.pid}/exe") == readelf_build_id(exe)
    finally:
        proc.kill()
        proc.wait(20)


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\n", b"\x7fELF", b"\x7fELF" + b"\xff" * 60])
def test_build_id_of_what_is_not_elf_names_the_file(tmp_path, content):
    path = tmp_path / "not-elf"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=re.escape(str(path))):
        read_build_id(path)


def test_build_id_of_a_missing_file(tmp_path):
    with pytest.raises(KatanaError, match="nothing-here"):
        read_build_id(tmp_path / "nothing-here")


def test_build_id_of_python_itself_is_cheap_to_ask():
    # a real, large executable from the system: the reader must not fail on it (it may or may
    # not carry a build-id, depending on how it was linked)
    found = read_build_id(sys.executable)
    assert found is None or re.fullmatch(r"[0-9a-f]{8,}", found)
