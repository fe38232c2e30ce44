"""The operator's commands at their edges, live: a stopped process, PIDs that are no process
(gone, a kernel thread, a thread id), a signal that lands while katana imports, and --json on
each of them (docs/json.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from livekit import Live, build_scenario, code_snapshot, katana

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edges")
    trees = build_scenario("body_change", tmp)
    po = tmp / "v0-v1.po"
    katana("generate", "-o", str(po), str(trees["v0"].parent), str(trees["v1"].parent), "prog",
           check=True)
    return trees, po


def _json(*args: str) -> tuple[int, dict]:
    """katana --json: one JSON object on stdout whatever the exit code, and never a trace."""
    result = katana(*args)
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["exit_code"] == result.returncode, doc
    assert (doc["error"] is None) == (result.returncode == 0), doc
    assert "Traceback" not in result.stderr and result.returncode != 70, result.stderr
    return result.returncode, doc


def _status(pid: int) -> tuple[str, int]:
    """(State letter, TracerPid) of a process."""
    text = Path(f"/proc/{pid}/status").read_text()
    return text.split("State:")[1].split()[0], int(text.split("TracerPid:")[1].split()[0])


def _wait_state(pid: int, letter: str, timeout: float = 10) -> None:
    """Until the kernel reports the process in that state (a signal is delivered, not sent)."""
    deadline = time.monotonic() + timeout
    while _status(pid)[0] != letter:
        assert time.monotonic() < deadline, f"process {pid} never reached state {letter}"
        time.sleep(0.01)


def _value(live: Live) -> tuple[int, int]:
    """(tick, result) of a line printed from now on, past multiples of 7 (7 in every version)."""
    m = live.wait_for(r"tick (\d+) result (\d+)", after=live.mark())
    while int(m.group(1)) % 7 == 0:
        m = live.wait_for(r"tick (\d+) result (\d+)", after=live.last_index + 1)
    return int(m.group(1)), int(m.group(2))


def _refused_while_stopped(live: Live, *command: str) -> dict:
    """``command`` on the stopped process: refused (exit 8, saying so), the process still
    stopped, untraced, its code as it was."""
    before = code_snapshot(live.pid)
    code, doc = _json(*command)
    assert code == 8 and "is stopped" in doc["error"]["message"], doc
    assert doc["results"][-1]["result"] == "failed", doc
    assert _status(live.pid) == ("T", 0) and code_snapshot(live.pid) == before
    return doc


def test_a_stopped_process_is_refused_and_survives(built):
    """Before: check said ready, and apply and revert, unable to finish the system call they
    ran through a stopped thread, left it to die of SIGSEGV once continued."""
    trees, po = built
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick 2 ")
        os.kill(live.pid, signal.SIGSTOP)
        _wait_state(live.pid, "T")
        _refused_while_stopped(live, "check", "--json", str(po), str(live.pid))
        _refused_while_stopped(live, "apply", "--json", str(po), str(live.pid))
        os.kill(live.pid, signal.SIGCONT)
        tick, value = _value(live)
        assert value == tick * 2  # v0, alive
        katana("apply", str(po), str(live.pid), check=True)
        os.kill(live.pid, signal.SIGSTOP)
        _wait_state(live.pid, "T")
        _refused_while_stopped(live, "revert", "--json", str(live.pid))
        os.kill(live.pid, signal.SIGCONT)
        tick, value = _value(live)
        assert value == tick * 1000 and live.alive()  # still v1, the patch still in
        assert "1. prog v0 -> v1" in katana("status", str(live.pid), check=True).stdout
    finally:
        live.kill()


def _kernel_thread() -> int | None:
    """A kernel thread's PID (PF_KTHREAD in /proc/PID/stat), if this host shows one."""
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        try:
            flags = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[6])
        except (OSError, ValueError, IndexError):
            continue
        if flags & 0x00200000:
            return int(entry)
    return None


def test_pids_that_are_no_process_fail_and_are_never_counted_as_exited(built):
    """Before: a PID that did not exist, a kernel thread or a thread id given in a list was
    'exited' (not a failure): apply and check exited 0 with nothing done to it."""
    trees, po = built
    live = Live([str(trees["v0"])])
    zombie = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick 2 ")
        zombie.wait_for(r"tick 2 ")
        os.kill(zombie.pid, signal.SIGKILL)  # not waited for: a zombie
        _wait_state(zombie.pid, "Z")
        gone = Live([str(trees["v0"])])  # its pid is no process once it is reaped
        gone.kill()
        wrong = [gone.pid, zombie.pid] + ([k] if (k := _kernel_thread()) else [])
        for command in ("check", "apply"):
            code, doc = _json(command, "--json", str(po), *map(str, wrong), str(live.pid))
            results = {r["pid"]: (r["result"], r["code"]) for r in doc["results"]}
            assert all(results[pid] == ("failed", 8) for pid in wrong), results
            assert code == 8 and doc["summary"]["failed"] == len(wrong), doc
            assert doc["summary"]["exited"] == 0
            assert results[live.pid][0] == ("ready" if command == "check" else "applied")
        # one wrong PID: its own words are the command's error
        code, doc = _json("check", "--json", str(po), str(gone.pid))
        assert code == 8 and doc["error"]["message"] == f"no process {gone.pid}", doc
        assert doc["results"][0]["result"] == "failed"
    finally:
        live.kill()
        zombie.kill()


class _SignalOnSetName:
    """A descriptor whose __set_name__ meets a signal, as a dataclass field of a module katana
    imports lazily does when the signal lands at that instant."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __set_name__(self, owner: type, name: str) -> None:
        os.kill(os.getpid(), self.signum)  # katana's handler raises right here


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "terminated by SIGTERM"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_a_lazy_import_is_an_interruption_not_a_bug(monkeypatch, capsys, signum,
                                                                    code, words):
    """Before: exit 70, 'internal error: RuntimeError: Error calling __set_name__ ...' (seen with
    SIGTERM sent to katana check at random instants): the signal, wrapped by Python 3.11; and
    --json said "KeyboardInterrupt: " for SIGINT."""
    from katana import cli

    def command(args, config) -> int:
        type("Record", (), {"cfi": _SignalOnSetName(signum)})
        return 0

    monkeypatch.setitem(cli._COMMANDS, "config", command)
    assert cli.main(["config", "--json"]) == code
    out, err = capsys.readouterr()
    assert words in err and "internal error" not in err, err
    doc = json.loads(out)
    assert doc["exit_code"] == code and doc["error"]["kind"] == "interrupted", doc
    assert doc["error"]["message"] == words


_FAKE_RECORD = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
/* An anonymous mapping that begins as a katana record does, its length given on the command
 * line: past the page (the kernel answers EIO), or a body that is no JSON. */
int main(int argc, char **argv)
{
    unsigned char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t length = (uint32_t)strtoul(argv[1], 0, 0), audit = 0;
    memcpy(p, "KATANA\0\1", 8);
    memcpy(p + 8, &length, 4);
    memcpy(p + 12, &audit, 4);
    strcpy((char *)p + 16, "{not json");
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
"""


def test_a_record_that_cannot_be_read_is_refused_not_a_bug(built, tmp_path):
    """Before: status, check and revert of a process whose record runs past its mapping were
    exit 70 (OSError: EIO), and ps skipped it as if it had exited."""
    _, po = built
    (tmp_path / "fake.c").write_text(_FAKE_RECORD)
    subprocess.run(["gcc", "-O1", "-o", "fake", "fake.c"], cwd=tmp_path, check=True)
    lives = [Live([str(tmp_path / "fake"), length]) for length in ("0xffffffff", "20")]
    try:
        for live in lives:
            live.wait_for("ready")
        past, damaged = (live.pid for live in lives)
        for command in (("status", "--json", str(past)), ("revert", "--json", str(past)),
                        ("revert", "--json", str(past), "--all"),
                        ("check", "--json", str(po), str(past))):
            code, doc = _json(*command)
            message = doc["error"]["message"]
            assert code == 8 and ("cannot read" in message or "damaged" in message), \
                (command, doc)
        code, doc = _json("check", "--json", str(po), "all", "--exe", str(tmp_path / "fake"))
        assert code == 8 and {r["pid"]: r["result"] for r in doc["results"]} == \
            {past: "failed", damaged: "failed"}, doc
        result = katana("ps", "--json")
        assert result.returncode == 0 and json.loads(result.stdout)["unreadable"] >= 2
        assert "could not be read" in result.stderr
        assert all(live.alive() and _status(live.pid)[1] == 0 for live in lives)
    finally:
        for live in lives:
            live.kill()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="runs katana ps as another user: needs root and setpriv")
def test_ps_by_another_user_counts_what_it_cannot_read(built):
    """Before: for anyone but root, other users' processes were taken for kernel threads (their
    /proc/PID/exe refuses to be read) and the warning that counts them never came."""
    trees, _ = built
    live = Live([str(trees["v0"])])  # root's
    try:
        live.wait_for(r"tick 2 ")
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 sys.executable, "-m", "katana", "ps", "--json"],
                                capture_output=True, text=True, timeout=120, cwd="/",
                                env={**os.environ, "HOME": "/"})
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["unreadable"] >= 1 and live.pid not in [p["pid"] for p in doc["processes"]]
        assert "could not be read: run as root" in result.stderr, result.stderr
        assert _status(live.pid)[1] == 0  # read, never traced
    finally:
        live.kill()


def test_a_refused_revert_names_the_patch_it_refused(tmp_path):
    """docs/json.md: revert's results describe the patch that was, or would have been,
    reverted. Before: the failed result had no from, to, object or po_sha256."""
    trees = build_scenario("stacked", tmp_path, versions=("v0", "v1", "v2"))
    pos = []
    for a, b in (("v0", "v1"), ("v1", "v2")):
        pos.append(tmp_path / f"{a}-{b}.po")
        katana("generate", "-o", str(pos[-1]), str(trees[a].parent), str(trees[b].parent),
               "prog", check=True)
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick 2 ")
        for po in pos:
            katana("apply", str(po), str(live.pid), check=True)
        code, doc = _json("revert", "--json", str(live.pid), str(pos[0]))
        assert code == 11 and "later patches depend on it" in doc["error"]["message"], doc
        (refused,) = doc["results"]
        assert refused["result"] == "failed" and (refused["from"], refused["to"]) == ("v0", "v1")
        assert refused["object"] == "prog" and refused["kind"] == "program"
        assert refused["po_sha256"] == doc_sha(live.pid, 0)
        code, doc = _json("revert", "--json", str(live.pid), "--all")
        assert code == 0 and [(r["from"], r["to"]) for r in doc["results"]] == \
            [("v1", "v2"), ("v0", "v1")]
    finally:
        live.kill()


def doc_sha(pid: int, n: int) -> str:
    """The sha256 of the n-th patch of a process, from katana status --json."""
    return json.loads(katana("status", "--json", str(pid), check=True).stdout)["patches"][n][
        "po_sha256"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", [("config", "--json"), ("config",), ("ps", "--json")])
def test_an_output_that_cannot_be_written_is_exit_74_not_a_bug(command):
    """Before: exit 70, 'internal error: OSError: [Errno 28] No space left on device'."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "katana", *command], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 74, result.stderr
    assert "cannot write to standard output: No space left on device" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_a_closed_standard_output_is_no_traceback():
    """Before: `katana ps --json >&-` was an AttributeError trace (sys.stdout is None), exit 1."""
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "katana",
                             "ps", "--json"], stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_a_process_whose_executable_was_deleted_is_checked_and_patched(built, tmp_path):
    """A package upgrade removes the file a process runs. Before: check was exit 70
    (FileNotFoundError: the safe-point probe read the executable by its path); it reads
    /proc/PID/exe now, so check and apply work on what the process runs."""
    trees, po = built
    exe = tmp_path / "upgraded"
    shutil.copy(trees["v0"], exe)
    live = Live([str(exe)])
    try:
        live.wait_for(r"tick 2 ")
        exe.unlink()
        code, doc = _json("check", "--json", str(po), str(live.pid))
        assert code == 0 and doc["results"][0]["result"] == "ready", doc
        code, doc = _json("apply", "--json", str(po), str(live.pid))
        assert code == 0 and doc["results"][0]["result"] == "applied", doc
        tick, value = _value(live)
        assert value == tick * 1000, (tick, value)
        assert _status(live.pid)[1] == 0  # running, untraced
    finally:
        live.kill()
