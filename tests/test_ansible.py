"""The Ansible collection katana.hotpatch (ansible/), run by ansible-core against localhost
(connection: local) on the example server, as docs/fleet.md runs it against a fleet.

Every playbook targets the test's own server (by PID, or `all` narrowed to the test's executable):
other kvd processes of the machine are never touched. The example's store is a library kvd loads,
libkvstore.so, and each release has a PO for it (the lookup fix of v1 is there) and one for kvd:
the playbooks apply the library's, then kvd's where the story needs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from exampletree import REPO, advance, copy_project
from livekit import Live, code_snapshot, katana

BIN = Path(sys.executable).parent  # the venv's ansible-playbook, ansible-galaxy and katana
pytestmark = [pytest.mark.live, pytest.mark.scons,
              pytest.mark.skipif(not (BIN / "ansible-playbook").exists(),
                                 reason="ansible-core is not installed (pip install -e '.[test]')")]
COLLECTION = REPO / "ansible" / "ansible_collections" / "katana" / "hotpatch"
RECAP = re.compile(r"localhost\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)")


@pytest.fixture(scope="module")
def needs_json():
    """Skip, naming them, when the katana commands the collection calls are not there yet."""
    missing = [f"katana {c}" for c in ("check", "ps") if katana(c, "--help").returncode != 0]
    missing += [f"katana {c} --json" for c in ("apply", "revert")
                if "--json" not in katana(c, "--help").stdout]
    if missing:
        pytest.skip(f"the collection calls {', '.join(missing)}, which this katana lacks")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The example at v0, v1 and v2 (snapshots), and the patches (signed) of the library and of
    kvd: libkvstore.so-v0-v1.po, kvd-v0-v1.po, libkvstore.so-v1-v2.po, kvd-v1-v2.po."""
    root = copy_project(tmp_path_factory.mktemp("fleet"))
    scons = [sys.executable, "-m", "SCons", "-Q"]
    for version in ("v0", "v1", "v2"):
        if version != "v0":
            advance(root, version)
        subprocess.run([*scons, "release", f"VERSION={version}"], cwd=root, check=True,
                       capture_output=True, timeout=300)
    katana("keygen", str(root / "ci"), check=True)
    for a, b in (("v0", "v1"), ("v1", "v2")):
        subprocess.run([*scons, "patch", f"FROM={a}", f"TO={b}", "SIGN_KEY=ci.key"], cwd=root,
                       check=True, capture_output=True, timeout=300)
    # the managed host's own configuration trusts the key (HOME is the test's: ~/.katana)
    (root / "home").mkdir()
    (root / "home" / ".katana").write_text(f'{{trustedKeys: ["{root / "ci.pub"}"]}}\n')
    return root


@pytest.fixture
def server(project):
    live = Live([str(project / "releases/v0/kvd"), "0"])
    try:
        port = int(live.wait_for(r"kvd v0 listening on 127\.0\.0\.1:(\d+)").group(1))
        yield live, port
    finally:
        live.kill()


def ask(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(line.encode() + b"\n")
        return sock.makefile().readline().rstrip("\n")


def ansible_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every ansible command here: the collection where it is in the
    repository, and nothing of Ansible's (config, cache, temporary files) outside tmp_path."""
    (tmp_path / "ansible.cfg").write_text("")
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible"),
            "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"), "ANSIBLE_HOME": str(tmp_path / "ah"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "lt"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "rt"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def playbook(tmp_path: Path, tasks: str, *options: str, home: Path | None = None
             ) -> tuple[subprocess.CompletedProcess, tuple[int, int, int], dict]:
    """Run a play of ``tasks`` on localhost; (the run, (ok, changed, failed), what the tasks
    registered as ``result``... written to result_<name>.json)."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    play = tmp_path / "play.yml"
    play.write_text(f"- hosts: localhost\n  gather_facts: false\n  tasks:\n{tasks}")
    env = ansible_env(tmp_path)
    if home:
        env["HOME"] = str(home)
    run = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"katana={BIN / 'katana'}",
         "-e", f"out={out}", *options, str(play)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    recap = RECAP.search(run.stdout)
    assert recap, run.stdout + run.stderr
    saved = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    for p in out.glob("*.json"):
        p.unlink()
    return run, tuple(int(x) for x in recap.groups()), saved


def patch_task(name: str, ignore_errors: bool = False, **args) -> str:
    """A katana_patch task registering its result, and a task saving it to out/<name>.json
    (saved in check mode too: check_mode: false)."""
    options = "".join(f"        {k}: {json.dumps(v)}\n" for k, v in args.items())
    return (f"    - name: {name}\n      katana.hotpatch.katana_patch:\n{options}"
            "        katana: \"{{ katana }}\"\n"
            f"      register: {name}\n"
            + ("      ignore_errors: true\n" if ignore_errors else "") +
            f"    - ansible.builtin.copy:\n"
            f"        content: \"{{{{ {name} | to_json }}}}\"\n"
            f"        dest: \"{{{{ out }}}}/{name}.json\"\n"
            "      check_mode: false\n      changed_when: false\n")


def code_mapping(pid: int, name: str | None = None) -> tuple[str, int, int, int]:
    """(path, start, end, file offset) of the code mapping of the executable, or of the mapped
    file whose name is ``name`` (a library)."""
    exe = os.readlink(f"/proc/{pid}/exe")
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[1].startswith("r-x"):
                continue
            path = fields[5].strip()
            if (Path(path).name == name) if name else path == exe:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                return path, lo, hi, int(fields[2], 16)
    raise AssertionError(f"process {pid} maps no code of {name or exe}")


def file_code(pid: int, name: str | None = None) -> tuple[int, bytes]:
    """(address, bytes) of that code mapping as its file holds them."""
    path, lo, hi, offset = code_mapping(pid, name)
    with open(path, "rb") as f:
        f.seek(offset)
        return lo, f.read(hi - lo)


def mapped_code(pid: int, name: str) -> tuple[int, bytes]:
    """(address, bytes) of the library's code mapping as the process holds them (/proc/PID/mem):
    what it runs, including any jump a patch wrote over it."""
    _, lo, hi, _ = code_mapping(pid, name)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(lo)
        return lo, mem.read(hi - lo)


def test_apply_changed_then_ok_and_facts(needs_json, project, server, tmp_path):
    live, port = server
    exe = str(project / "releases/v0/kvd")
    assert ask(port, "SET a 1") == "OK" and ask(port, "GET ab") == "VALUE 1"  # the v0 bug
    # from the controller's copy (signed), to where the host keeps it; every kvd of this
    # executable (for the library's PO: every process that maps the library, narrowed to it);
    # signed by a key the host trusts. The library's patch (the fix), then kvd's.
    tasks = "".join(
        patch_task(task, src=str(project / f"patches/{name}-v0-v1.po"),
                   patch=str(tmp_path / f"{name}-v0-v1.po"), target="all", exe=exe, timeout=10,
                   require_signature=True)
        for task, name in (("first", "libkvstore.so"), ("second", "kvd")))
    home = project / "home"
    run, (_, changed, failed), saved = playbook(tmp_path, tasks, home=home)
    assert (changed, failed) == (2, 0), run.stdout
    for task, name in (("first", "libkvstore.so"), ("second", "kvd")):
        result = saved[task]
        assert result["copied"] is True and result["object"] == name
        assert (result["from"], result["to"]) == ("v0", "v1")
        assert (tmp_path / f"{name}-v0-v1.po.sig").read_bytes() == \
            (project / f"patches/{name}-v0-v1.po.sig").read_bytes()
        assert [(r["pid"], r["result"]) for r in result["results"]] == [(live.pid, "applied")]
    assert katana("status", str(live.pid)).stdout.count("(trusted)") == 2
    assert ask(port, "GET ab") == "ERR no such key" and ask(port, "GET a") == "VALUE 1"
    # the second run: nothing to copy, the process runs v1 already; the facts say so
    tasks += ("    - katana.hotpatch.katana_facts:\n        program: kvd\n"
              "        katana: \"{{ katana }}\"\n"
              "    - ansible.builtin.copy:\n"
              "        content: \"{{ katana_processes | to_json }}\"\n"
              "        dest: \"{{ out }}/facts.json\"\n"
              "      changed_when: false\n")
    run, (_, changed, failed), saved = playbook(tmp_path, tasks, home=home)
    assert (changed, failed) == (0, 0), run.stdout
    for task in ("first", "second"):
        assert saved[task]["copied"] is False
        assert [r["result"] for r in saved[task]["results"]] == ["unchanged"]
    mine = [p for p in saved["facts"] if p["pid"] == live.pid]
    assert len(mine) == 1 and mine[0]["patched"] is True
    effective = {o["object"]: o["effective"] for o in mine[0]["objects"]}
    assert effective == {"kvd": "v1", "libkvstore.so": "v1"}
    assert live.alive()


def test_check_mode_changes_nothing(needs_json, project, server, tmp_path):
    live, port = server
    before = code_snapshot(live.pid)
    assert before == file_code(live.pid)
    library = mapped_code(live.pid, "libkvstore.so")
    assert library == file_code(live.pid, "libkvstore.so")
    # all, narrowed by program (katana ps --program) and exe: this test's server alone; the
    # library's PO (the fix), and kvd's
    tasks = "".join(
        patch_task(task, patch=str(project / f"patches/{name}-v0-v1.po"), target="all",
                   program="kvd", exe=str(project / "releases/v0/kvd"))
        for task, name in (("check", "libkvstore.so"), ("check_kvd", "kvd")))
    run, (_, changed, failed), saved = playbook(tmp_path, tasks, "--check")
    assert (changed, failed) == (2, 0), run.stdout  # apply would go ahead
    for task in ("check", "check_kvd"):
        assert [(r["pid"], r["result"]) for r in saved[task]["results"]] == [(live.pid, "ready")]
    assert mapped_code(live.pid, "libkvstore.so") == file_code(live.pid, "libkvstore.so") \
        == library
    assert code_snapshot(live.pid) == file_code(live.pid) == before
    assert ask(port, "SET a 1") == "OK" and ask(port, "GET ab") == "VALUE 1"
    assert "no katana patches applied" in katana("status", str(live.pid)).stdout


def test_reverted_brings_v0_back(needs_json, project, server, tmp_path):
    live, port = server
    po = str(project / "patches/libkvstore.so-v0-v1.po")  # the library's: the fix
    katana("apply", po, str(live.pid), check=True)
    # the exact lookup, with kvd's reply of v0 (kvd's own patch brings "ERR no such key")
    assert ask(port, "SET a 1") == "OK" and ask(port, "GET ab") == "NOT_FOUND"
    # an unsigned copy of the library's next patch is refused under require_signature, before
    # the process is touched (else the v0 -> v1 patch could not be reverted below: v2 builds on
    # it)
    unsigned = tmp_path / "libkvstore.so-v1-v2.po"
    shutil.copy(project / "patches/libkvstore.so-v1-v2.po", unsigned)
    tasks = (patch_task("unsigned", ignore_errors=True, patch=str(unsigned),
                        target=[str(live.pid)], require_signature=True)
             + patch_task("revert", patch=po, target=[str(live.pid)], state="reverted")
             + patch_task("again", patch=po, target=[str(live.pid)], state="reverted"))
    run, (_, changed, failed), saved = playbook(tmp_path, tasks)
    assert (changed, failed) == (1, 0), run.stdout  # the last task finds nothing to revert
    assert saved["unsigned"]["failed"] is True and "not signed" in saved["unsigned"]["msg"]
    assert [r["result"] for r in saved["revert"]["results"]] == ["reverted"]
    assert saved["again"]["changed"] is False
    assert ask(port, "GET ab") == "VALUE 1"
    assert "no katana patches applied" in katana("status", str(live.pid)).stdout


def test_a_po_for_another_build_fails_the_host(needs_json, project, server, tmp_path):
    live, port = server
    tasks = patch_task("wrong", patch=str(project / "patches/libkvstore.so-v1-v2.po"),
                       target=[str(live.pid)])
    run, (_, changed, failed), _ = playbook(tmp_path, tasks)
    assert run.returncode != 0 and (changed, failed) == (0, 1), run.stdout
    fatal = re.search(r"^fatal: \[localhost\]: FAILED! => (\{.*\})$", run.stdout, re.M)
    assert fatal, run.stdout
    result = json.loads(fatal.group(1))
    assert result["msg"].startswith("katana: ") and "build-id" in result["msg"], result["msg"]
    assert [(r["pid"], r["code"]) for r in result["results"]] == [(live.pid, 9)]
    assert live.alive() and ask(port, "SET a 1") == "OK" and ask(port, "GET ab") == "VALUE 1"


def test_the_collection_builds_and_documents_its_modules(tmp_path):
    built = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION),
                            "--output-path", str(tmp_path)], capture_output=True, text=True,
                           timeout=120, env=ansible_env(tmp_path))
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = tmp_path.glob("katana-hotpatch-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"MANIFEST.json", "plugins/modules/katana_patch.py", "plugins/modules/katana_facts.py",
            "plugins/action/katana_patch.py", "plugins/module_utils/katana.py"} <= names
    docs = subprocess.run([str(BIN / "ansible-doc"), "--json", "-t", "module",
                           "katana.hotpatch.katana_patch", "katana.hotpatch.katana_facts"],
                          capture_output=True, text=True, timeout=120,
                          env=ansible_env(tmp_path))
    assert docs.returncode == 0, docs.stderr
    found = json.loads(docs.stdout)
    patch = found["katana.hotpatch.katana_patch"]
    assert set(patch["doc"]["options"]) == {"patch", "src", "target", "program", "user", "exe",
                                            "state", "timeout", "require_signature", "katana"}
    assert patch["examples"] and patch["return"]["results"]
    assert "katana_processes" in str(found["katana.hotpatch.katana_facts"]["return"])


def test_the_rollout_of_docs_fleet_md_parses(tmp_path):
    doc = (REPO / "docs" / "fleet.md").read_text()
    (rollout,) = re.findall(r"```yaml\n(# rollout.yml.*?)```", doc, re.S)
    (tmp_path / "rollout.yml").write_text(rollout)
    (tmp_path / "hosts").write_text("[canary]\nc1\n[kvd]\nc1\nk2\nk3\n")
    env = ansible_env(tmp_path)
    checked = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts"),
                              "--syntax-check", "--list-tasks", str(tmp_path / "rollout.yml")],
                             capture_output=True, text=True, timeout=120, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts"),
                             "--list-hosts", str(tmp_path / "rollout.yml")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    canary, rest = listed.stdout.split("play #2")
    assert "c1" in canary and "k2" not in canary
    assert "k2" in rest and "k3" in rest and "c1" not in rest


def test_mistakes_fail_the_host_with_their_reason(needs_json, project, tmp_path):
    """Each mistake fails its task with words saying what is wrong, never a module traceback,
    nor "ok". Before: a missing katana said "Error executing command."; a directory as patch
    (with src) and an empty target were Python tracebacks; a PID that is no process, and a
    damaged PO, with state reverted, were ok (and with state applied, a gone PID was ok too:
    katana counted it "exited")."""
    po = str(project / "patches/kvd-v0-v1.po")
    gone = Live(["true"])
    gone.kill()  # reaped: its PID is no process
    damaged = tmp_path / "damaged.po"
    damaged.write_bytes(b"\x7fELF" + os.urandom(200))
    cases = {
        "no_katana": ({"patch": po, "katana": str(tmp_path / "nowhere" / "katana")},
                      "no such executable on the host"),
        "directory": ({"src": po, "patch": str(tmp_path)}, "is a directory"),
        "no_target": ({"patch": po, "target": []}, "not an empty list"),
        "gone_applied": ({"patch": po, "target": [str(gone.pid)]}, f"no process {gone.pid}"),
        "gone_reverted": ({"patch": po, "target": [str(gone.pid)], "state": "reverted"},
                          f"no process {gone.pid}"),
        "damaged_reverted": ({"patch": str(damaged), "state": "reverted"}, "damaged.po"),
    }
    tasks = "".join(patch_task(name, ignore_errors=True, **args)
                    for name, (args, _) in cases.items())
    # a katana of the test's choosing wins over the one every task is given
    tasks = tasks.replace(f'        katana: {json.dumps(cases["no_katana"][0]["katana"])}\n'
                          '        katana: "{{ katana }}"\n',
                          f'        katana: {json.dumps(cases["no_katana"][0]["katana"])}\n')
    run, (_, changed, _), saved = playbook(tmp_path, tasks)
    assert changed == 0 and f"ignored={len(cases)}" in run.stdout, run.stdout
    for name, (_, words) in cases.items():
        result = saved[name]
        assert result["failed"] is True and words in result["msg"], (name, result)
        assert "Traceback" not in json.dumps(result) and "MODULE FAILURE" not in result["msg"]


def test_a_process_found_by_ps_that_exits_before_katana_is_exited_not_failed(monkeypatch):
    """With target all and program (or state reverted), the module finds the PIDs with katana
    ps and names them to katana, which fails a PID that is no process (exit 8); one that
    exited in between is counted as katana's all counts it, exited, and fails no host."""
    monkeypatch.syspath_prepend(str(REPO / "ansible"))
    from ansible_collections.katana.hotpatch.plugins.modules import katana_patch

    gone, here = Live(["true"]), Live(["sleep", "60"])
    gone.kill()  # reaped: no such process any more
    try:
        results = [{"pid": gone.pid, "result": "failed", "code": 8, "message": "no process"},
                   {"pid": here.pid, "result": "failed", "code": 8, "message": "traced"},
                   {"pid": here.pid, "result": "failed", "code": 11, "message": "undone"}]
        katana_patch.exited_meanwhile(results)
        assert [r["result"] for r in results] == ["exited", "failed", "failed"]
    finally:
        here.kill()
