"""The operator's commands, live: check (and that it agrees with apply), ps, apply all with
--user/--exe and a process that exits meanwhile, revert PATCH/--all, rolling forward after a
reverse patch, and the --json contract (docs/json.md) on success and failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import SCENARIOS, Live, build_scenario, build_version, code_snapshot, katana

pytestmark = pytest.mark.live


def _po(trees: dict, a: str, b: str, out: Path, program: str = "prog") -> Path:
    po = out / f"{program}-{a}-{b}.po"
    katana("generate", "-o", str(po), str(trees[a].parent), str(trees[b].parent), program,
           check=True)
    return po


def _json(*args: str) -> tuple[int, dict]:
    """Run katana --json: exactly one JSON object on stdout, whatever the exit code."""
    result = katana(*args)
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["exit_code"] == result.returncode, doc
    assert (doc["error"] is None) == (result.returncode == 0), doc
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, doc


def _tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:")[1].split()[0])


def _result(live: Live, after: int | None = None) -> tuple[int, int]:
    m = live.wait_for(r"tick (\d+) result (-?\d+)", after=live.mark() if after is None else after)
    while int(m.group(1)) % 7 == 0:  # multiples of 7 answer 7 in body_change's versions
        m = live.wait_for(r"tick (\d+) result (-?\d+)", after=live.last_index + 1)
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    body = build_scenario("body_change", tmp / "body")
    missing = build_scenario("missing_symbol", tmp / "ms")  # v1 links -lm (link-libs)
    busy = build_scenario("busy_forever", tmp / "busy")
    return {"tmp": tmp, "body": body, "forward": _po(body, "v0", "v1", tmp / "body"),
            "backward": _po(body, "v1", "v0", tmp / "body"),
            "missing": missing, "missing_po": _po(missing, "v0", "v1", tmp / "ms"),
            "busy": busy, "busy_po": _po(busy, "v0", "v1", tmp / "busy")}


def _agree(po: Path, pid: int, code: int, words: str, *conf: str) -> dict:
    """check and apply give the same exit code and reason; check leaves the process as it was
    (the same code, untraced)."""
    before = code_snapshot(pid)
    checked, doc = _json(*conf, "check", "--json", str(po), str(pid))
    assert checked == code and words in _reason(doc), doc
    assert code_snapshot(pid) == before and _tracer(pid) == 0
    applied, adoc = _json(*conf, "apply", "--json", str(po), str(pid))
    assert applied == code and words in _reason(adoc), adoc
    if doc["results"]:
        assert doc["results"][0]["result"] == adoc["results"][0]["result"]
        assert doc["results"][0].get("busy") == adoc["results"][0].get("busy")
    return doc


def _reason(doc: dict) -> str:
    """Why a process was refused: its result, or the command's error when the PO was refused
    before any process was looked at (the signature policy)."""
    if doc["results"]:
        assert doc["results"][0]["code"] == doc["exit_code"]
        return doc["results"][0]["message"]
    return doc["error"]["message"]


def test_check_and_apply_agree(built, tmp_path):
    body, tmp = built["body"], built["tmp"]
    strict = tmp_path / "strict.conf"
    strict.write_text("{requireSignature: true, maxWaitForPatching: 1, auditLog: off}\n")
    live = Live([str(body["v0"])])
    try:
        live.wait_for(r"tick 2 ")
        # another build of the same program (the PO is made from missing_symbol's v0)
        _agree(built["missing_po"], live.pid, 9, "but the patch is for prog v0")
        doc = _agree(built["backward"], live.pid, 9, "already runs the build this")  # v1 -> v0
        assert doc["results"][0]["result"] == "unchanged"
        _agree(built["forward"], live.pid, 12, "is not signed", "-c", str(strict))
        _, v0 = _result(live)
        assert v0 % 2 == 0 and v0 < 1000  # still v0 after every refusal
        ok, doc = _json("check", "--json", str(built["forward"]), str(live.pid))
        assert ok == 0 and doc["results"][0]["result"] == "ready", doc
        assert doc["results"][0]["busy"] == [] and doc["from"] == "v0" and doc["to"] == "v1"
        assert doc["summary"] == {"ready": 1, "unchanged": 0, "skipped": 0, "failed": 0,
                                  "exited": 0, "total": 1}
        katana("apply", str(built["forward"]), str(live.pid), check=True)
        tick, value = _result(live)
        assert value == tick * 1000
        doc = _agree(built["forward"], live.pid, 9, "already has this patch")
        assert doc["results"][0]["result"] == "unchanged"
    finally:
        live.kill()
    for key, code, words in (("missing", 11, "cbrt"), ("busy", 10, "serve")):
        live = Live([str(built[key]["v0"])])
        try:
            live.wait_for(r"tick 2 ")
            conf = tmp / "wait1.conf"
            conf.write_text("{maxWaitForPatching: 1, auditLog: off}\n")
            doc = _agree(built[f"{key}_po"], live.pid, code, words, "-c", str(conf))
            if key == "busy":
                assert doc["results"][0]["busy"] == ["serve"], doc
                assert doc["error"]["kind"] == "busy"
            live.wait_for(r"tick \d+ (result|serving v0)", after=live.mark())
        finally:
            live.kill()


def test_ps_lists_patched_processes_and_with_program_the_others(built, tmp_path):
    name = "katana_ps12"  # a program name of its own: other tests' processes stay out
    trees = {v: build_version(SCENARIOS / "body_change" / v, tmp_path / v, program=name)
             for v in ("v0", "v1")}
    po = _po(trees, "v0", "v1", tmp_path, name)
    lives = [Live([str(trees["v0"])]) for _ in range(2)]
    try:
        for live in lives:
            live.wait_for(r"tick 2 ")
        katana("apply", str(po), str(lives[0].pid), check=True)
        _, doc = _json("ps", "--json")
        # by the file they run: another run of this test has processes of that name too
        mine = {p["pid"]: p for p in doc["processes"] if p["exe"] == str(trees["v0"])}
        assert list(mine) == [lives[0].pid], mine  # the unpatched one is not listed
        patched = mine[lives[0].pid]
        assert patched["patched"] and patched["exe"] == str(trees["v0"])
        assert patched["user"] == "root" or patched["uid"] == os.getuid()
        (obj,) = patched["objects"]
        assert obj["object"] == name and obj["kind"] == "program" and obj["effective"] == "v1"
        assert obj["effective_build_id"] != patched["build_id"] == obj["build_id"]
        assert [(x["from"], x["to"]) for x in obj["patches"]] == [("v0", "v1")]
        assert obj["patches"][0]["signer"] == "unsigned"
        _, doc = _json("ps", "--json", "--program", name)
        mine = {p["pid"]: p for p in doc["processes"] if p["exe"] == str(trees["v0"])}
        assert sorted(mine) == sorted(live.pid for live in lives)
        other = mine[lives[1].pid]
        assert not other["patched"] and other["objects"] == [] and other["build_id"]
        text = katana("ps", "--program", name, check=True).stdout
        assert f"{name}: runs v1" in text and "(unpatched)" in text
        assert str(lives[1].pid) in text
    finally:
        for live in lives:
            live.kill()


def test_all_counts_a_process_that_exits_meanwhile(tmp_path):
    """`apply all --exe`: three processes; the second is killed once katana has listed them
    and patched the first. Deterministic: katana waits to write the first one's audit line into
    a FIFO nobody reads yet (auditLog), and the test kills the second meanwhile."""
    name = "katana_exits12"
    trees = {v: build_version(SCENARIOS / "body_change" / v, tmp_path / v, program=name)
             for v in ("v0", "v1")}
    po = _po(trees, "v0", "v1", tmp_path, name)
    copy = tmp_path / "copy" / name  # the same build at another path: --exe leaves it out
    copy.parent.mkdir()
    copy.write_bytes(trees["v0"].read_bytes())
    copy.chmod(0o755)
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    conf = tmp_path / "k.conf"
    conf.write_text(f"{{auditLog: {json.dumps(str(fifo))}}}\n")
    lives = sorted((Live([str(trees["v0"])]) for _ in range(3)), key=lambda x: x.pid)
    outside = Live([str(copy)])
    reader, proc = None, None
    try:
        for live in lives + [outside]:
            live.wait_for(r"tick 2 ")
        nobody = katana("apply", str(po), "all", "--user", "nobody")
        assert nobody.returncode == 8 and "no running process of uid" in nobody.stderr
        proc = subprocess.Popen([sys.executable, "-m", "katana", "-c", str(conf), "apply",
                                 "--json", str(po), "all", "--exe", str(trees["v0"]),
                                 "--user", str(os.getuid())],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first, victim, last = lives
        # patched (v1 answers tick * 1000): katana now waits to write its audit line
        m = first.wait_for(r"tick (\d+) result (\d+)000$", timeout=60)
        assert m.group(1) == m.group(2)
        victim.kill()
        reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # from here katana never blocks
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        doc = json.loads(out)
        results = {r["pid"]: r["result"] for r in doc["results"]}
        assert results == {first.pid: "applied", victim.pid: "exited", last.pid: "applied"}
        assert doc["summary"] == {"applied": 2, "unchanged": 0, "skipped": 0, "failed": 0,
                                  "exited": 1, "total": 3}
        tick, value = _result(last)
        assert value == tick * 1000
        tick, value = _result(outside)
        assert value == tick * 2  # another file: left alone
        logged = os.read(reader, 65536).decode()
        assert f"apply pid={first.pid}" in logged and f"apply pid={last.pid}" in logged
        # check all, once they run v1: nothing to do (not a failure), the copy left out
        code, doc = _json("check", "--json", str(po), "all", "--exe", str(trees["v0"]))
        assert code == 0 and {r["pid"]: r["result"] for r in doc["results"]} == \
            {first.pid: "unchanged", last.pid: "unchanged"}
        code, doc = _json("check", "--json", str(po), "all", "--exe", str(copy))
        assert code == 0 and [r["result"] for r in doc["results"]] == ["ready"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader is not None:
            os.close(reader)
        for live in lives + [outside]:
            live.kill()


def test_revert_a_given_patch_all_of_them_and_roll_forward_again(tmp_path):
    trees = build_scenario("stacked", tmp_path, versions=("v0", "v1", "v2"))
    v01, v12, v21 = (_po(trees, a, b, tmp_path) for a, b in (("v0", "v1"), ("v1", "v2"),
                                                            ("v2", "v1")))
    other = build_version(SCENARIOS / "body_change" / "v0", tmp_path / "other",
                          program="katana_other12")
    live, stranger = Live([str(trees["v0"])]), Live([str(other)])

    def result() -> str:
        """The version the process runs now, from what it prints."""
        tick, value = _result(live)
        return {2 * tick: "v0", 3 * tick: "v1", 4 * tick + 1000: "v2"}[value]

    try:
        live.wait_for(r"tick 2 ")
        stranger.wait_for(r"tick 2 ")
        refused = katana("apply", str(v01), str(stranger.pid))
        assert refused.returncode == 9 and "another program" in refused.stderr
        assert "make the patch from the release" not in refused.stderr
        for po in (v01, v12, v21, v12):  # v1 -> v2 again, after going back to v1
            katana("apply", str(po), str(live.pid), check=True)
        assert result() == "v2"
        status = katana("status", str(live.pid), check=True).stdout
        assert "4. prog v1 -> v2" in status and "running: v2" in status
        again = katana("apply", str(v12), str(live.pid))
        assert again.returncode == 9 and "already has this patch" in again.stderr
        # the first patch is under three later ones of the same program: refused, with why
        code, doc = _json("revert", "--json", str(live.pid), str(v01))
        assert code == 11 and "later patches depend on it" in doc["error"]["message"]
        assert result() == "v2"
        sha = json.loads(katana("status", "--json", str(live.pid), check=True).stdout)
        newest = sha["patches"][-1]["po_sha256"]
        katana("revert", str(live.pid), newest[:8], check=True)  # by its sha256 prefix
        assert result() == "v1"
        code, doc = _json("revert", "--json", str(live.pid), "--all")
        assert code == 0 and doc["summary"]["reverted"] == 3
        assert [(r["from"], r["to"]) for r in doc["results"]] == \
            [("v2", "v1"), ("v1", "v2"), ("v0", "v1")]
        assert result() == "v0"
        code, doc = _json("revert", "--json", str(live.pid))
        assert code == 14 and doc["error"]["kind"] == "nothing-to-revert"
        assert doc["results"][0]["result"] == "unchanged"
        nothing = katana("-v", "revert", str(live.pid), "--all")
        assert nothing.returncode == 14 and "Traceback" not in nothing.stderr
        assert live.alive() and stranger.alive()
    finally:
        live.kill()
        stranger.kill()


def test_json_is_printed_on_failure_too(tmp_path):
    for args, code, kind in ((["list", "--json", str(tmp_path / "none.po")], 7, "format"),
                             (["status", "--json", "999999"], 8, "target"),
                             (["ps", "--json", "--bogus"], 2, "usage"),
                             (["check", "--json", str(tmp_path / "none.po"), "1"], 7, "format")):
        got, doc = _json(*args)
        assert got == code and doc["error"]["kind"] == kind, doc
        assert doc["command"] == args[0]
    conf = tmp_path / "k.conf"
    conf.write_text("{maxWaitForPatching: 7}\n")
    _, doc = _json("-c", str(conf), "config", "--json")
    assert doc["file"] == str(conf)
    assert doc["settings"]["maxWaitForPatching"] == {"value": 7, "source": str(conf)}
    assert doc["settings"]["verbosity"]["source"] == "default"


def test_generate_json_says_what_was_written(built, tmp_path):
    body = built["body"]
    out = tmp_path / "g.po"
    _, doc = _json("generate", "--json", "-o", str(out), str(body["v0"].parent),
                   str(body["v1"].parent), "prog")
    (written,) = doc["written"]
    assert written["path"] == str(out) and written["object"] == "prog"
    assert {"name": "compute", "status": "changed"} in written["functions"]
    code, doc = _json("generate", "--json", "-o", str(out), str(body["v0"].parent),
                      str(body["v0"].parent), "prog")
    assert code == 5 and doc["error"]["kind"] == "generate"


def test_library_and_program_objects_in_check_ps_and_revert(tmp_path):
    """A process with a library patch and then a program patch: ps shows both objects, each
    with the build it runs; the library's patch, older but of another object, can be reverted
    by itself (no later patch depends on it), the program keeps its patch."""
    from livekit import build_library_version

    built = {v: build_library_version(SCENARIOS / "library" / v, tmp_path / v)["prog"]
             for v in ("v0", "v1")}
    lib, prog = (_po(built, "v0", "v1", tmp_path, name) for name in ("libkv.so", "prog"))
    live = Live([str(built["v0"])])

    def value() -> tuple[int, str]:
        m = live.wait_for(r"tick (\d+) value (\d+) .* tag (v\d)", after=live.mark() + 1)
        return int(m.group(2)) // int(m.group(1)), m.group(3)

    try:
        live.wait_for(r"tick 2 ")
        code, doc = _json("check", "--json", str(lib), str(live.pid))
        assert code == 0 and doc["kind"] == "library" and doc["object"] == "libkv.so", doc
        katana("apply", str(lib), str(live.pid), check=True)
        katana("apply", str(prog), str(live.pid), check=True)
        assert value() == (3, "v1")
        _, doc = _json("ps", "--json")
        (mine,) = [p for p in doc["processes"] if p["pid"] == live.pid]
        assert [(o["kind"], o["object"], o["effective"]) for o in mine["objects"]] == \
            [("library", "libkv.so", "v1"), ("program", "prog", "v1")]
        code, doc = _json("revert", "--json", str(live.pid), str(lib))
        assert code == 0 and [r["object"] for r in doc["results"]] == ["libkv.so"], doc
        assert value() == (2, "v1")  # v0's library, v1's program
        status = json.loads(katana("status", "--json", str(live.pid), check=True).stdout)
        assert [p["program"] for p in status["patches"]] == ["prog"]
    finally:
        live.kill()
