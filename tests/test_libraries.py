"""Shared libraries the project builds, patched live like programs (tests/scenarios/library).

libkv.so holds the logic and its state (a static counter, a thread-local counter reached with
the initial-exec model, or through __tls_get_addr when built so, a global struct); ``prog``
links it and prints one line per tick, ``other`` is a second program linking it, ``plugin``
dlopen()s it, ``threads`` calls it from three threads. The versions: v1 changes the library
(value 3 x) and prog (tag v1), v2 the library again (4 x), v3 (from v0) grows the library's
struct by a field in the middle (5 x). Every line keeps invariants: calls and the thread-local
count equal the tick, total is the sum of ticks: state lost shows as a break."""

import json
import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livekit import SCENARIOS, Live, build_library_version, katana  # noqa: E402

pytestmark = pytest.mark.live

TIMEOUT = 20.0
VERSIONS = ("v0", "v1", "v2", "v3")


class Project:
    """The library scenario's versions, built once per PIE variant; POs made on demand."""

    def __init__(self, root: Path, pie: bool) -> None:
        self.root = root
        # a build of this run's own: `apply all` takes every process on the host that maps
        # that build, and another suite may run these tests at the same time
        salt = (f"-DKV_SALT={os.getpid()}",)
        self.built = {v: build_library_version(SCENARIOS / "library" / v, root / v, pie=pie,
                                               cflags=salt)
                      for v in VERSIONS}
        self._pos: dict[tuple[str, str, str], Path] = {}

    def po(self, name: str, frm: str, to: str) -> Path:
        if (name, frm, to) not in self._pos:
            out = self.root / f"{name}-{frm}-{to}.po"
            katana("generate", "-o", str(out), str(self.root / frm), str(self.root / to), name,
                   check=True)
            self._pos[name, frm, to] = out
        return self._pos[name, frm, to]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    cache: dict[bool, Project] = {}

    def get(pie: bool) -> Project:
        if pie not in cache:
            cache[pie] = Project(tmp_path_factory.mktemp("pie" if pie else "nopie"), pie)
        return cache[pie]

    return get


@pytest.fixture
def procs():
    """start(exe, *args) -> Live, every process killed when the test ends."""
    with ExitStack() as stack:
        def start(exe: Path | str, *args: str) -> Live:
            live = Live([str(exe), *args])
            stack.callback(live.kill)
            return live
        yield start


def fields(line: str) -> dict[str, int | str]:
    found = dict(re.findall(r"(\w+) (-?\d+|v\d)", line))
    return {k: (v if v.startswith("v") else int(v)) for k, v in found.items()}


def lines_after(live: Live, count: int = 4, threads: int = 1) -> list[dict]:
    """``count`` lines all printed by the code now in place: the line each thread was
    computing while katana ran may still be the old code's, so as many are skipped."""
    start = live.mark() + threads
    live.wait_for(r".", after=start + count - 1, timeout=TIMEOUT)
    return [fields(x) for x in live.lines[start:start + count]]


def apply(po: Path, *pids: int | str) -> subprocess.CompletedProcess:
    result = katana("apply", str(po), *map(str, pids))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_state_kept(lines: list[dict]) -> None:
    """The library's statics and its thread-local counter went on from where v0 left them."""
    for f in lines:
        assert f["calls"] == f["tls"] == f["hits"] == f["direct"] == f["tick"], f
        assert f["total"] == f["tick"] * (f["tick"] + 1) // 2, f


@pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
def test_only_the_library_changes(project, procs, pie):
    p = project(pie)
    po = p.po("libkv.so", "v0", "v1")
    listing = json.loads(katana("list", "--json", str(po), check=True).stdout)
    assert (listing["kind"], listing["soname"], listing["program"]) == \
        ("library", "libkv.so", "libkv.so")
    assert [f["name"] for f in listing["functions"]] == ["kv_compute"]
    # kv_scale, hidden (local in the linked library), stays where it is: found in its .symtab
    targets = {r["target"] for r in listing["functions"][0]["relocations"]}
    assert {"kv_scale", "libkv.c:calls", "libkv.c:thread_calls", "kv_stats"} <= targets
    live = procs(p.built["v0"]["prog"])
    live.wait_for(r"^tick 5 ", timeout=TIMEOUT)
    out = apply(po, live.pid).stdout
    assert "library libkv.so at 0x" in out
    after = lines_after(live)
    for f in after:  # the changed function, which also counts in the thread-local variable
        assert f["value"] == 3 * f["tick"] and f["tag"] == "v0", f
    assert_state_kept(after)
    status = katana("status", str(live.pid), check=True).stdout
    assert "library libkv.so, soname libkv.so:" in status and "1. libkv.so v0 -> v1" in status
    patches = json.loads(katana("status", "--json", str(live.pid), check=True).stdout)["patches"]
    assert [(x["kind"], x["program"], x["soname"]) for x in patches] == \
        [("library", "libkv.so", "libkv.so")]


@pytest.mark.parametrize("pie,order", [(True, "library first"), (False, "program first")])
def test_library_and_program_both_change(project, procs, pie, order):
    p = project(pie)
    pos = [p.po("libkv.so", "v0", "v1"), p.po("prog", "v0", "v1")]
    live = procs(p.built["v0"]["prog"])
    live.wait_for(r"^tick 3 ", timeout=TIMEOUT)
    for po in pos if order == "library first" else pos[::-1]:
        apply(po, live.pid)
    after = lines_after(live)
    for f in after:
        assert f["value"] == 3 * f["tick"] and f["tag"] == "v1", f
    assert_state_kept(after)
    status = katana("status", str(live.pid), check=True).stdout
    assert re.search(r"program prog:\n.*prog v0 -> v1.*\n(.*\n)*    running: v1", status)
    assert re.search(r"library libkv.so, soname libkv.so:\n.*libkv.so v0 -> v1", status)
    # revert PID PATCH: the library's patch goes, whether or not it is the newest of the
    # process; the program keeps its own
    out = katana("revert", str(live.pid), str(pos[0]), check=True).stdout
    assert "reverted libkv.so v1 -> v0" in out
    after = lines_after(live)
    for f in after:
        assert f["value"] == 2 * f["tick"] and f["tag"] == "v1", f
    assert_state_kept(after)


def test_all_means_every_process_that_maps_the_library(project, procs):
    p = project(True)
    v0 = p.built["v0"]
    lives = [procs(v0["prog"]), procs(v0["other"]), procs(v0["plugin"])]
    newer = procs(p.built["v1"]["prog"])  # maps libkv.so of v1: another build
    # libkv.so v0 as another suite builds it: another build, left alone
    stranger = build_library_version(SCENARIOS / "library" / "v0", p.root / "stranger")
    bystander = procs(stranger["prog"])
    for live in lives + [newer, bystander]:
        live.wait_for(r"tick 2 ", timeout=TIMEOUT)
    result = katana("apply", "--json", str(p.po("libkv.so", "v0", "v1")), "all")
    assert result.returncode == 0, result.stderr
    # this test's processes only: another suite's, of other builds, are skipped as well
    results = {r["pid"]: r["result"] for r in json.loads(result.stdout)["results"]}
    assert {live.pid: results.get(live.pid) for live in lives + [newer, bystander]} == \
        {**{live.pid: "applied" for live in lives}, newer.pid: "skipped",
         bystander.pid: "skipped"}, results
    for live in lives:  # linked or dlopen'ed, by whichever program
        for f in lines_after(live, 2):
            assert f["value"] == 3 * f["tick"] and f["calls"] == f["tick"], (live.lines[-2:])
    for f in lines_after(newer, 2):
        assert f["value"] == 3 * f["tick"]  # v1 of its own


def test_stacked_library_patches_then_reverted(project, procs):
    p = project(False)
    live = procs(p.built["v0"]["prog"])
    live.wait_for(r"^tick 3 ", timeout=TIMEOUT)
    apply(p.po("libkv.so", "v0", "v1"), live.pid)
    apply(p.po("prog", "v0", "v1"), live.pid)  # the program's own patch, in between
    apply(p.po("libkv.so", "v1", "v2"), live.pid)
    for f in lines_after(live, 2):
        assert f["value"] == 4 * f["tick"] and f["tag"] == "v1", f
    status = katana("status", str(live.pid), check=True).stdout
    assert re.search(r"1\. libkv.so v0 -> v1(.*\n)*.*3\. libkv.so v1 -> v2(.*\n)*"
                     r"    running: v2", status), status
    # revert takes the newest patch of the process, whichever object it patched
    expected = [(3, "v1", "libkv.so v2 -> v1"), (3, "v0", "prog v1 -> v0"),
                (2, "v0", "libkv.so v1 -> v0")]
    for factor, tag, what in expected:
        out = katana("revert", str(live.pid), check=True).stdout
        assert f"reverted {what}" in out
        after = lines_after(live, 2)
        for f in after:
            assert f["value"] == factor * f["tick"] and f["tag"] == tag, f
        assert_state_kept(after)
    assert "no katana patches applied" in katana("status", str(live.pid)).stdout


def test_a_library_struct_grows(project, procs):
    p = project(True)
    po = p.po("libkv.so", "v0", "v3")
    listing = json.loads(katana("list", "--json", str(po), check=True).stdout)
    assert [(v["name"], v["status"]) for v in listing["variables"]] == [("kv_stats", "transformed")]
    live = procs(p.built["v0"]["prog"])
    first = live.wait_for(r"^tick 6 ", timeout=TIMEOUT)
    assert fields(first.string)["misses"] == -1
    apply(po, live.pid)
    after = lines_after(live)
    # hits and total kept their values in the new layout, misses (the new field) started at 0
    # and counts the odd ticks since; kv_hits, unchanged, reads the moved struct too
    assert_state_kept(after)
    odd = [f["misses"] for f in after]
    assert all(b - a == f["tick"] % 2 for a, b, f in zip(odd, odd[1:], after[1:], strict=False))
    assert 0 <= odd[0] <= (after[0]["tick"] - 6) // 2 + 1
    for f in after:
        assert f["value"] == 5 * f["tick"], f
    refused = katana("revert", str(live.pid))
    assert refused.returncode == 11 and "cannot be reverted" in refused.stderr


def test_a_process_without_that_library_build_is_refused(project, procs):
    p = project(True)
    po = p.po("libkv.so", "v0", "v1")
    newer = procs(p.built["v1"]["prog"])
    newer.wait_for(r"^tick 2 ", timeout=TIMEOUT)
    refused = katana("apply", str(po), str(newer.pid))
    assert refused.returncode == 9, refused.stderr
    lib_v1 = p.root / "v1" / "libkv.so"
    assert "does not map the library this patch is for: libkv.so v0, build-id" in refused.stderr
    assert f"it maps {lib_v1} build-id" in refused.stderr
    assert "katana apply PO all" in refused.stderr and "Traceback" not in refused.stderr
    for f in lines_after(newer, 2):
        assert f["value"] == 3 * f["tick"]
    # a process that maps no libkv.so at all
    plain = procs("sleep", "60")
    refused = katana("apply", str(po), str(plain.pid))
    assert refused.returncode == 9 and "maps no library named libkv.so" in refused.stderr


def test_a_library_po_that_does_not_say_so_gets_a_hint_that_leads_there(project, procs,
                                                                         tmp_path):
    """A PO of a library made before POs recorded their object reads as a program's: the
    refusal says which mapped library it is for and how to make a PO that says so."""
    from katana.po import load_po, write_po

    p = project(True)
    po = load_po(p.po("libkv.so", "v0", "v1"))
    po.meta.target = None
    old = tmp_path / "old.po"
    write_po(po, old)
    live = procs(p.built["v0"]["prog"])
    live.wait_for(r"^tick 2 ", timeout=TIMEOUT)
    refused = katana("apply", str(old), str(live.pid))
    assert refused.returncode == 9
    assert f"the patch is for the library {p.root / 'v0' / 'libkv.so'} that this process " \
        "maps" in refused.stderr.replace("\n", " ")
    assert "katana generate OLD NEW LIBRARY" in refused.stderr


def test_a_library_global_the_program_copied(tmp_path, procs):
    """The program reads kv_stats itself: the linker gave it a copy, and the dynamic linker
    bound the library's GOT slot to that copy. The patch's code must use the same one; a
    change of its layout cannot be made by the library's patch, and is refused."""
    for v in ("v0", "v1", "v3"):
        build_library_version(SCENARIOS / "library" / v, tmp_path / v, pie=False,
                              cflags=("-DDIRECT_STATS",))
    pos = {}
    for to in ("v1", "v3"):
        pos[to] = tmp_path / f"{to}.po"
        katana("generate", "-o", str(pos[to]), str(tmp_path / "v0"), str(tmp_path / to),
               "libkv.so", check=True)
    live = procs(tmp_path / "v0" / "prog")
    live.wait_for(r"^tick 3 ", timeout=TIMEOUT)
    refused = katana("apply", str(pos["v3"]), str(live.pid))
    assert refused.returncode == 11, refused.stderr
    assert "variable kv_stats of libkv.so lives in the program" in refused.stderr
    apply(pos["v1"], live.pid)
    after = lines_after(live)
    for f in after:  # the new kv_compute counts in the program's copy, which everyone reads
        assert f["value"] == 3 * f["tick"], f
    assert_state_kept(after)


@pytest.mark.parametrize("model", ["initial-exec", "global-dynamic", "local-dynamic"])
def test_thread_local_variable_of_the_library(tmp_path, procs, model):
    """The -fPIC default is for the library's code to ask __tls_get_addr for its variable:
    the patch does the same, with a tls_index of its own holding the library's module id;
    with initial-exec it reaches it at the block's fixed offset from the thread pointer.
    Each of three threads counts in its own copy, before the patch and after."""
    for v in ("v0", "v1"):
        build_library_version(SCENARIOS / "library" / v, tmp_path / v,
                              cflags=(f'-DKV_TLS_MODEL="{model}"',))
    po = tmp_path / "tls.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"), "libkv.so",
           check=True)
    live = procs(tmp_path / "v0" / "prog")
    threads = procs(tmp_path / "v0" / "threads")
    live.wait_for(r"^tick 3 ", timeout=TIMEOUT)
    threads.wait_for(r"^thread 2 tick 3 ", timeout=TIMEOUT)
    apply(po, live.pid)
    apply(po, threads.pid)
    after = lines_after(live)
    for f in after:
        assert f["value"] == 3 * f["tick"], f
    assert_state_kept(after)  # tls == calls: the patch counts in the same thread's variable
    seen = set()
    for f in lines_after(threads, 12, threads=3):
        assert f["value"] == 3 * f["tick"] and f["tls"] == f["tick"], f
        seen.add(f["thread"])
    assert seen == {0, 1, 2}


def test_thread_local_through_a_tls_descriptor_is_refused_at_generation(tmp_path):
    for v in ("v0", "v1"):
        build_library_version(SCENARIOS / "library" / v, tmp_path / v,
                              cflags=('-DKV_TLS_MODEL="global-dynamic"', "-mtls-dialect=gnu2"))
    refused = katana("generate", "-o", str(tmp_path / "x.po"), str(tmp_path / "v0"),
                     str(tmp_path / "v1"), "libkv.so")
    assert refused.returncode == 5, refused.stderr
    assert "thread_calls through a TLS descriptor" in refused.stderr
    assert "-mtls-dialect=gnu2" in refused.stderr and "Traceback" not in refused.stderr


SCONSTRUCT = """\
import katana.build.scons_tool
env = Environment(tools=['default', 'katana'], toolpath=[katana.build.scons_tool.TOOLPATH])
env.Append(SHLINKFLAGS=['-Wl,-soname,libkv.so'])
env.SharedLibrary('kv', ['libkv.c'])
prog = env.Clone()
prog.Append(LINKFLAGS=['-Wl,-rpath,\\\\$$ORIGIN'])  # finds libkv.so beside it, in a release too
prog.Program('prog', ['prog.c'], LIBS=['kv'], LIBPATH=['.'])
"""


def scons(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCONS")}
    result = subprocess.run([sys.executable, "-m", "SCons", "-Q", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.scons
def test_scons_releases_and_patches_a_library_like_a_program(tmp_path, procs):
    (tmp_path / "SConstruct").write_text(SCONSTRUCT)
    for version in ("v0", "v1"):  # one tree, checked out at each version in turn
        for name in ("libkv.c", "kv.h", "prog.c"):
            (tmp_path / name).write_text((SCENARIOS / "library" / version / name).read_text())
        out = scons(tmp_path, "release", f"VERSION={version}")
        assert " -fPIC " in out and "-Wl,--build-id=sha1" in out
    manifest = json.loads((tmp_path / "releases" / "v0" / "manifest.json").read_text())
    lib = manifest["programs"]["libkv.so"]
    assert (lib["kind"], lib["soname"], lib["objects"]) == \
        ("shared_library", "libkv.so", ["libkv.os"])
    out = scons(tmp_path, "patch", "FROM=v0", "TO=v1")
    assert "patches/libkv.so-v0-v1.po: libkv.so (shared library) v0 -> v1" in out, out
    assert "patches/prog-v0-v1.po: prog v0 -> v1" in out, out
    # the snapshot's own copy runs, and takes its library's patch
    live = procs(tmp_path / "releases" / "v0" / "prog")
    live.wait_for(r"^tick 2 ", timeout=TIMEOUT)
    apply(tmp_path / "patches" / "libkv.so-v0-v1.po", live.pid)
    for f in lines_after(live, 2):
        assert f["value"] == 3 * f["tick"] and f["tag"] == "v0", f
    # katana generate on the snapshots names the PO as scons patch does
    again = katana("generate", str(tmp_path / "releases" / "v0"),
                   str(tmp_path / "releases" / "v1"), "libkv.so", check=True).stdout
    assert "patches/libkv.so-v0-v1.po" in again


def test_the_safe_point_covers_the_library_functions(tmp_path, procs):
    for v in ("v0", "v1"):
        build_library_version(SCENARIOS / "library_busy" / v, tmp_path / v)
    po = tmp_path / "busy.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"),
           "libbusy.so", check=True)
    config = tmp_path / "katana.conf"
    config.write_text("{maxWaitForPatching: 1}")
    live = procs(tmp_path / "v0" / "prog")
    live.wait_for(r"^tick 2$", timeout=TIMEOUT)
    refused = katana("-c", str(config), "apply", str(po), str(live.pid))
    assert refused.returncode == 10, refused.stderr
    assert "busy_work" in refused.stderr
    assert "no katana patches applied" in katana("status", str(live.pid)).stdout
    live.wait_for(r"^tick", after=live.mark() + 1, timeout=TIMEOUT)


def test_a_library_deleted_since_it_was_loaded_is_found_by_what_is_mapped(project, procs,
                                                                          tmp_path):
    """An upgrade in place removes the file a running process loaded: its maps say
    "(deleted)", and the library is read through /proc/PID/map_files."""
    import shutil

    p = project(True)
    here = tmp_path / "installed"
    shutil.copytree(p.root / "v0", here)
    live = procs(here / "prog")
    live.wait_for(r"^tick 2 ", timeout=TIMEOUT)
    (here / "libkv.so").unlink()
    shutil.copy(p.root / "v1" / "libkv.so", here / "libkv.so")  # the new release, installed
    apply(p.po("libkv.so", "v0", "v1"), live.pid)
    for f in lines_after(live, 2):
        assert f["value"] == 3 * f["tick"] and f["calls"] == f["tick"], f


@pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
def test_a_library_patch_calls_into_the_program(tmp_path, procs, pie):
    """A plugin's new code calls its host's API, which the old plugin never used: the patch
    reaches the program's function through a stub (the program lies beyond rel32 reach)."""
    for v in ("v0", "v1"):
        build_library_version(SCENARIOS / "library_host" / v, tmp_path / v, pie=pie)
    po = tmp_path / "plug.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"),
           "libplug.so", check=True)
    live = procs(tmp_path / "v0" / "host")
    live.wait_for(r"^tick 3 ", timeout=TIMEOUT)
    apply(po, live.pid)
    for f in lines_after(live):
        assert f["value"] == 10 * f["tick"] + 2, f


@pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
def test_a_program_patch_calls_what_the_library_patch_added(tmp_path, procs, pie):
    """The program's v1 calls kv_bonus, which only the library's v1 patch brings: applied
    after it, the program's patch finds it in the library patch's record (no loaded file
    exports it); applied before it, the program's patch is refused, and nothing changes."""
    built = {v: build_library_version(SCENARIOS / "library_new_api" / v, tmp_path / v, pie=pie)
             for v in ("v0", "v1")}
    pos = {}
    for name in ("libapi.so", "prog"):
        pos[name] = tmp_path / f"{name}.po"
        katana("generate", "-o", str(pos[name]), str(tmp_path / "v0"), str(tmp_path / "v1"),
               name, check=True)
    live = procs(built["v0"]["prog"])
    live.wait_for(r"tick 2 ", timeout=TIMEOUT)
    early = katana("apply", str(pos["prog"]), str(live.pid))
    assert early.returncode == 11 and "kv_bonus" in early.stderr, early.stderr
    apply(pos["libapi.so"], live.pid)
    apply(pos["prog"], live.pid)
    for f in lines_after(live, 3):
        assert f["value"] == 2 * f["tick"] + 1000 + f["tick"], f
