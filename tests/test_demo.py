"""./demo.sh, the README's first command, run from a copy of the repository's files it uses: the
story it tells is checked line by line (the v0 bug, the fix after the two patches, the library's
and kvd's, the revert of the library's, the data kept across v2's layout change, the unsigned PO
refused, status per object and ps, the refused revert of the patch that moved data)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exampletree import REPO, copy_project

pytestmark = [pytest.mark.live, pytest.mark.scons]


def test_the_demo_tells_the_whole_story(tmp_path: Path):
    copy_project(tmp_path)
    shutil.copy(REPO / "demo.sh", tmp_path / "demo.sh")
    env = {**os.environ, "KATANA_DEMO_VENV": str(Path(sys.executable).parent.parent)}
    # its own session: whatever it started goes with it, even if it hangs
    demo = subprocess.Popen(["bash", str(tmp_path / "demo.sh")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = demo.communicate(timeout=240)
        server_gone = _gone(demo.pid)
    finally:
        try:  # the demo and its server, whatever state they are in
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        demo.wait()
    assert server_gone, "demo.sh left its server running"
    assert demo.returncode == 0, out
    steps = re.findall(r"^(GET ab|GET color|GET a|HITS color|SET  2)\s+-> (.*)$", out, re.M)
    assert steps == [
        ("GET ab", "VALUE 1"),                                        # the v0 bug
        ("GET ab", "ERR no such key"), ("GET color", "VALUE blue"),   # v1, the data kept
        ("SET  2", "ERR bad key"),
        ("GET ab", "VALUE 1"), ("GET ab", "ERR no such key"),         # reverted, applied again
        ("GET color", "VALUE blue"), ("GET a", "VALUE 1"), ("HITS color", "HITS 1"),  # v2
    ], out
    # v1: two patches, the library's (the fix) and kvd's, each checked, the library's first
    assert "patch patches/libkvstore.so-v0-v1.po" in out and "patch patches/kvd-v0-v1.po" in out
    assert out.count("ready: apply would go ahead now") == 2
    assert out.index("applied libkvstore.so v0 -> v1") < out.index("applied kvd v0 -> v1")
    assert "reverted libkvstore.so v1 -> v0" in out
    assert "unsigned.po is not signed" in out and "(exit status 12)" in out
    assert out.index("applied libkvstore.so v1 -> v2") < out.index("applied kvd v1 -> v2")
    assert "signed by key" in out and "(trusted)" in out
    # status per object: the program and the library both run v2
    assert "program kvd:" in out and "library libkvstore.so" in out
    assert out.count("running: v2") == 2
    pid = re.search(r"applying them to the running server \(pid (\d+)\)", out).group(1)
    assert re.search(rf"^\s+{pid}\s+kvd\s", out, re.M)  # katana ps lists it
    assert re.search(r"^\s+libkvstore.so: runs v2", out, re.M)
    # the library's v1 -> v2 patch moved the table: its revert is refused
    assert f"katana revert {pid} patches/libkvstore.so-v1-v2.po" in out
    assert "cannot be reverted" in out and "(exit status 11)" in out
    assert "gcc " not in out  # the compiler lines are left to VERBOSE=1


def _gone(pgid: int, timeout: float = 10.0) -> bool:
    """Whether every process of the demo's group has exited (its server stops on SIGTERM)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)  # polling for an exit the kernel does not announce to non-parents
    return False
