"""The example server, built and snapshotted by SCons, patched live while a client keeps talking.

kvd loads its store from libkvstore.so, which gets patches of its own: each release is two POs,
the library's (applied first) and kvd's. v0 -> v1 (the lookup fixed in the library; reply text
and a new helper in kvd) under load: no request fails, no key is lost, the fix appears. Then
v1 -> v2 stacked on the same server (the library's entry struct gains a field in the middle of a
1024-entry table; kvd's new command calls a function the library's patch adds), and v0 -> v2 in
one patch of each.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from exampletree import PATCHED, RELEASES, advance, copy_project, patches
from livekit import Live, katana

pytestmark = [pytest.mark.live, pytest.mark.scons]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the repository's example taken through releases v0, v1, v2 as demo.sh does (one
    tree, each change applied, then snapshotted), and the patches made."""
    root = copy_project(tmp_path_factory.mktemp("example"))
    scons = [sys.executable, "-m", "SCons", "-Q"]
    for version in RELEASES:
        if version != "v0":
            advance(root, version)
        subprocess.run([*scons, "release", f"VERSION={version}"], cwd=root, check=True,
                       capture_output=True)
    for a, b in (("v0", "v1"), ("v1", "v2")):
        subprocess.run([*scons, "patch", f"FROM={a}", f"TO={b}"], cwd=root, check=True,
                       capture_output=True)
    for name in PATCHED:
        katana("generate", "-o", str(root / f"patches/{name}-v0-v2.po"),
               str(root / "releases/v0"), str(root / "releases/v2"), name, check=True)
    return root


def apply_both(project: Path, pid: int, a: str, b: str) -> None:
    """The library's patch, then kvd's (which may call what the library's adds)."""
    for po in patches(project, a, b):
        katana("apply", str(po), str(pid), check=True)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rw")

    def ask(self, line: str) -> str:
        self.file.write(line + "\n")
        self.file.flush()
        return self.file.readline().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def server(project):
    live = Live([str(project / "releases/v0/kvd"), "0"])
    try:
        port = int(live.wait_for(r"kvd v0 listening on 127\.0\.0\.1:(\d+)").group(1))
        yield live, port
    finally:
        live.kill()


def _fill(client: Client, n: int = 50) -> None:
    # fixed-width keys: none is a prefix of another, so v0's prefix-match bug stays out of the way
    for i in range(n):
        assert client.ask(f"SET key{i:02d} value{i}") == "OK"
    assert client.ask("SET a 1") == "OK"


def test_v0_to_v1_under_load(project, server):
    live, port = server
    client = Client(port)
    _fill(client)
    assert client.ask("GET ab") == "VALUE 1"  # the v0 bug: prefix match
    failures: list[str] = []
    stop = threading.Event()
    done = []

    def load() -> None:
        other = Client(port)
        i = 0
        while not stop.is_set():
            reply = other.ask(f"GET key{i % 50:02d}")
            if reply != f"VALUE value{i % 50}":
                failures.append(reply)
            i += 1
        done.append(i)
        other.close()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        results = [katana("apply", str(po), str(live.pid))
                   for po in patches(project, "v0", "v1")]
    finally:
        stop.set()
        worker.join(timeout=30)
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "target stopped" in result.stdout
    assert failures == [] and done and done[0] > 0
    assert client.ask("GET ab") == "ERR no such key"
    assert client.ask("SET b\x01 x") == "ERR bad key"
    assert all(client.ask(f"GET key{i:02d}") == f"VALUE value{i}" for i in range(50))
    assert live.alive()
    client.close()


def test_stacked_v1_to_v2_transforms_the_table(project, server):
    live, port = server
    client = Client(port)
    _fill(client)
    apply_both(project, live.pid, "v0", "v1")
    # kvd's v1 -> v2 calls store_hits, which only the library's v1 -> v2 patch adds
    early = katana("apply", str(project / "patches/kvd-v1-v2.po"), str(live.pid))
    assert early.returncode == 11 and "store_hits" in early.stderr, early.stderr
    assert "apply that patch first" in early.stderr
    assert "libkvstore.so-v1-v2.po" not in katana("status", str(live.pid)).stdout
    for po in patches(project, "v1", "v2"):
        result = katana("apply", str(po), str(live.pid))
        assert result.returncode == 0, result.stderr
    assert all(client.ask(f"GET key{i:02d}") == f"VALUE value{i}" for i in range(50))
    assert client.ask("HITS key07") == "HITS 1"
    assert client.ask("GET key07") == "VALUE value7"
    assert client.ask("HITS key07") == "HITS 2"
    assert client.ask("SET fresh 9") == "OK" and client.ask("HITS fresh") == "HITS 0"
    status = katana("status", str(live.pid), check=True).stdout
    for name in PATCHED:  # per object, each at v2
        assert f"{name} v0 -> v1" in status and f"{name} v1 -> v2" in status
    assert status.count("running: v2") == 2
    for name in PATCHED:
        # a patch made for v0 no longer fits this process (which has it already)
        again = katana("apply", str(project / f"patches/{name}-v0-v1.po"), str(live.pid))
        assert again.returncode == 9 and "already has this patch" in again.stderr
        # nor one made for v0 that it never had: it runs that patch's TO build already
        other = katana("apply", str(project / f"patches/{name}-v0-v2.po"), str(live.pid))
        assert other.returncode == 9 and "build-id" in other.stderr
    client.close()


def test_v0_to_v2_in_one_patch(project, server):
    live, port = server
    client = Client(port)
    _fill(client)
    apply_both(project, live.pid, "v0", "v2")
    assert all(client.ask(f"GET key{i:02d}") == f"VALUE value{i}" for i in range(50))
    assert client.ask("GET ab") == "ERR no such key"
    assert client.ask("HITS key03") == "HITS 1"  # one GET since the patch
    client.close()


def test_revert_v0_to_v1(project, server):
    live, port = server
    client = Client(port)
    _fill(client)
    apply_both(project, live.pid, "v0", "v1")
    assert client.ask("GET ab") == "ERR no such key"
    # the library's patch, named, though kvd's is the newer: the v0 lookup is back, kvd keeps v1
    result = katana("revert", str(live.pid), str(project / "patches/libkvstore.so-v0-v1.po"))
    assert result.returncode == 0, result.stderr
    assert "reverted libkvstore.so v1 -> v0" in result.stdout
    assert client.ask("GET ab") == "VALUE 1"
    assert client.ask("SET b\x01 x") == "ERR bad key"
    result = katana("revert", str(live.pid))  # now kvd's
    assert result.returncode == 0, result.stderr
    assert client.ask("SET b\x01 x") == "OK"
    assert "no katana patches applied" in katana("status", str(live.pid)).stdout
    client.close()
