"""Signed patches, the trust policy and the audit trail (issue 11).

Key files, signatures and records are tested on their own; the policy live, on a real program:
a refused PO leaves the process's code as it was, an accepted one changes what it prints, and
each apply and revert leaves an audit line (on a datagram socket the test binds, as /dev/log
would get it) and an audit in the record that ``status --json`` shows.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from livekit import Live, build_scenario, code_snapshot, katana

from katana.live.record import HEADER, MAGIC, Audit, Record
from katana.po.signature import generate_key_pair, sig_path

# -- key files ---------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keygen_modes_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the worst umask: the key must still be the owner's alone
    try:
        private, public, key = generate_key_pair(tmp_path / "ops")
    finally:
        os.umask(old)
    assert _mode(private) == 0o600 and _mode(public) == 0o644
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert len(key) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops.key", "ops.pub"]  # no temp left


def test_keygen_never_replaces_a_key(tmp_path):
    katana("keygen", str(tmp_path / "ops"), check=True)
    before = (tmp_path / "ops.key").read_bytes()
    again = katana("keygen", str(tmp_path / "ops"))
    assert again.returncode == 13 and "exists already" in again.stderr
    assert (tmp_path / "ops.key").read_bytes() == before
    out = katana("keygen", str(tmp_path / "ci"), check=True).stdout
    assert "ci.key (private, mode 0600" in out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    trees = build_scenario("body_change", tmp)
    po = tmp / "v0-v1.po"
    katana("generate", "-o", str(po), str(trees["v0"].parent), str(trees["v1"].parent), "prog",
           check=True)
    for name in ("ops", "other"):
        katana("keygen", str(tmp / name), check=True)
    return trees, po, tmp


def _copy(po: Path, where: Path, name: str = "p.po") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    copy = where / name
    copy.write_bytes(po.read_bytes())
    return copy


def _sign(po: Path, key: Path) -> None:
    katana("sign", str(po), "--key", str(key), check=True)


def test_sign_and_verify(built, tmp_path):
    _trees, po, keys = built
    po = _copy(po, tmp_path)
    unsigned = katana("verify", str(po), "--key", str(keys / "ops.pub"))
    assert unsigned.returncode == 12 and "is not signed" in unsigned.stderr
    _sign(po, keys / "ops.key")
    sig = json.loads(sig_path(po).read_text())
    assert sig["algorithm"] == "ed25519" and len(sig["key_id"]) == 64
    good = katana("verify", str(po), "--key", str(keys / "ops.pub"))
    assert good.returncode == 0 and f"good signature by key {sig['key_id'][:16]}" in good.stdout
    other = katana("verify", str(po), "--key", str(keys / "other.pub"))
    assert other.returncode == 12 and "not in the --key given" in other.stderr
    data = bytearray(po.read_bytes())
    data[len(data) // 2] ^= 1
    po.write_bytes(bytes(data))
    bad = katana("verify", str(po), "--key", str(keys / "ops.pub"))
    assert bad.returncode == 12 and "changed after it was signed" in bad.stderr


def test_unprotected_missing_or_garbled_keys_are_one_line_errors(built, tmp_path):
    _trees, po, keys = built
    po = _copy(po, tmp_path)
    leaky = tmp_path / "leaky.key"
    leaky.write_bytes((keys / "ops.key").read_bytes())
    leaky.chmod(0o644)
    garbled = tmp_path / "garbled.key"
    garbled.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n")
    garbled.chmod(0o600)
    for key, expected in [(leaky, "accessible by others (mode 0644)"),
                          (tmp_path / "missing.key", "does not exist"),
                          (garbled, "not an unencrypted PEM private key"),
                          (keys / "ops.pub", "not an unencrypted PEM private key")]:
        result = katana("sign", str(po), "--key", str(key))
        assert result.returncode == 13, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert not sig_path(po).exists()
    bad_pub = katana("verify", str(po), "--key", str(keys / "ops.key"))
    assert bad_pub.returncode == 13 and "give NAME.pub" in bad_pub.stderr
    assert "Traceback" not in bad_pub.stderr


def test_sign_refuses_a_damaged_po(tmp_path, built):
    _trees, _po, keys = built
    junk = tmp_path / "junk.po"
    junk.write_bytes(b"\x7fELF nonsense")
    result = katana("sign", str(junk), "--key", str(keys / "ops.key"))
    assert result.returncode == 7 and not sig_path(junk).exists()


def test_list_shows_the_signer(built, tmp_path):
    _trees, po, keys = built
    po = _copy(po, tmp_path)
    assert "signature   unsigned" in katana("list", str(po), check=True).stdout
    _sign(po, keys / "ops.key")
    conf = tmp_path / "k.conf"
    conf.write_text(f"{{trustedKeys: [{keys / 'ops.pub'}]}}")
    text = katana("-c", str(conf), "list", str(po), check=True).stdout
    assert "valid, trusted (" in text and "ops.pub" in text
    other = tmp_path / "other.conf"
    other.write_text(f"{{trustedKeys: [{keys / 'other.pub'}]}}")
    assert "valid, not trusted" in katana("-c", str(other), "list", str(po), check=True).stdout
    data = json.loads(katana("-c", str(conf), "list", "--json", str(po), check=True).stdout)
    assert data["signature"]["trusted"] is True and data["signature"]["valid"] is True


def test_trusted_keys_that_are_missing_or_writable_by_others(built, tmp_path):
    _trees, po, keys = built
    po = _copy(po, tmp_path)
    _sign(po, keys / "ops.key")
    conf = tmp_path / "k.conf"
    conf.write_text("{trustedKeys: [nowhere.pub]}")
    missing = katana("-c", str(conf), "verify", str(po))
    assert missing.returncode == 13 and "Traceback" not in missing.stderr
    assert f"trustedKeys (set in {conf}): public key {tmp_path / 'nowhere.pub'} does not " \
        "exist" in missing.stderr
    writable = tmp_path / "ops.pub"
    writable.write_bytes((keys / "ops.pub").read_bytes())
    writable.chmod(0o666)
    conf.write_text("{trustedKeys: [ops.pub]}")
    result = katana("-c", str(conf), "verify", str(po))
    assert result.returncode == 0 and "good signature" in result.stdout
    assert f"warning: trusted key {writable} is writable by others (mode 0666)" in result.stderr


def test_help_lists_the_new_exit_codes():
    out = katana("--help", check=True).stdout
    # the table is generated from katana.errors' classes (cli.exit_code_table)
    assert "12  a Patch Object was refused on trust" in out
    assert "13  a signing or trusted key file" in out
    for command in ("keygen", "sign", "verify"):
        assert command in out


# -- the record --------------------------------------------------------------------------------

def _record(audit: Audit | None) -> Record:
    return Record("prog", "v0", "v1", "aa", "bb", "cc" * 32, (0x1000, 4096), 1.5, audit=audit)


def _decode(raw: bytes) -> Record | None:
    return Record.decode(raw[:HEADER.size], lambda off, n: raw[off:off + n])


def test_the_audit_rides_after_the_record_where_older_katanas_do_not_look():
    audit = Audit(0, "root", "2026-01-01T00:00:00.000Z", "/p.po", "cc" * 32, "unsigned", False)
    raw = _record(audit).encode()
    assert _decode(raw) == _record(audit)
    magic, length, audit_length = HEADER.unpack_from(raw)
    assert magic == MAGIC and audit_length > 0
    # an older katana reads `length` bytes of JSON and builds its Record from them alone
    old_body = json.loads(raw[HEADER.size:HEADER.size + length])
    assert "audit" not in old_body and old_body["program"] == "prog"
    # a record an older katana wrote (reserved field 0) reads back with no audit
    old = _record(None).encode()
    assert HEADER.unpack_from(old)[2] == 0 and _decode(old).audit is None


def test_a_library_record_names_its_object_where_older_katanas_do_not_look():
    lib = Record("libkv.so", "v0", "v1", "aa", "bb", "cc" * 32, (0x1000, 4096), 1.5,
                 kind="library", soname="libkv.so.1")
    raw = lib.encode()
    assert _decode(raw) == lib
    _magic, length, _audit_length = HEADER.unpack_from(raw)
    old_body = json.loads(raw[HEADER.size:HEADER.size + length])
    assert "kind" not in old_body and "soname" not in old_body  # an older katana's Record(**)
    # a program's record, written by this katana or an older one, reads as a program's
    assert _decode(_record(None).encode()).kind == "program"
    assert HEADER.unpack_from(_record(None).encode())[2] == 0


# -- the policy, live --------------------------------------------------------------------------

pytestmark_live = pytest.mark.live


class AuditSocket:
    """A Unix datagram socket bound where auditLog points: what syslog would receive."""

    def __init__(self) -> None:
        # short path: sun_path holds 108 bytes, pytest's tmp_path may be longer
        self.dir = tempfile.mkdtemp(prefix="ka-")
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5)

    def lines(self) -> list[str]:
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                found.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            pass
        return found

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def audit_socket():
    s = AuditSocket()
    yield s
    s.close()


def _conf(tmp_path: Path, audit: AuditSocket | None = None, **keys: object) -> Path:
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in keys.items())
    if audit is not None:
        body += f", auditLog: {json.dumps(audit.path)}"
    conf = tmp_path / "katana.conf"
    conf.write_text("{" + body.lstrip(", ") + "}\n")
    return conf


def _results(live: Live, after: int, count: int = 3) -> list[tuple[int, int]]:
    found = []
    while len(found) < count:
        m = live.wait_for(r"tick (\d+) result (\d+)", after=after)
        after = live.last_index + 1
        if int(m.group(1)) % 7:
            found.append((int(m.group(1)), int(m.group(2))))
    return found


def _runs_v0(live: Live) -> bool:
    return all(result == tick * 2 for tick, result in _results(live, live.mark()))


def _runs_v1(live: Live) -> bool:
    return all(result == tick * 1000 for tick, result in _results(live, live.mark()))


def _refused(built, tmp_path, conf: Path, po: Path, expected: str) -> None:
    trees, _po, _keys = built
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick \d+")
        before = code_snapshot(live.pid)
        result = katana("-c", str(conf), "apply", str(po), str(live.pid))
        assert result.returncode == 12, result.stdout + result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""  # no phase line: nothing was even looked at
        assert code_snapshot(live.pid) == before and _runs_v0(live)
        assert "no katana patches applied" in katana("status", str(live.pid)).stdout
        # the policy comes before the process is looked for: `all`, or a pid that does not
        # exist, get the same refusal, not "no such process"
        for target in ("all", "999999999"):
            again = katana("-c", str(conf), "apply", str(po), target)
            assert again.returncode == 12 and expected in again.stderr
    finally:
        live.kill()


@pytestmark_live
def test_unsigned_refused_under_require_signature(built, tmp_path, audit_socket):
    _trees, po, keys = built
    conf = _conf(tmp_path, audit_socket, requireSignature=True,
                 trustedKeys=[str(keys / "ops.pub")])
    _refused(built, tmp_path, conf, po, "is not signed (no v0-v1.po.sig) and requireSignature")
    refusals = audit_socket.lines()
    assert refusals and all(" katana[" in r and "]: refused uid=" in r for r in refusals)
    assert refusals[0].startswith("<85>")  # LOG_AUTHPRIV | LOG_NOTICE, as syslog(3) frames it


@pytestmark_live
@pytest.mark.parametrize("require", [True, False])
def test_one_byte_changed_after_signing_refused(built, tmp_path, require):
    _trees, po, keys = built
    po = _copy(po, tmp_path / "po")
    _sign(po, keys / "ops.key")
    data = bytearray(po.read_bytes())
    data[-1] ^= 0x80  # a byte of the section header table: the PO may still read well
    po.write_bytes(bytes(data))
    # requireSignature off with trustedKeys: a signature that does not match is still refused
    conf = _conf(tmp_path, requireSignature=require, trustedKeys=[str(keys / "ops.pub")])
    _refused(built, tmp_path, conf, po, "changed after it was signed by key")


@pytestmark_live
def test_signed_by_an_untrusted_key_refused(built, tmp_path):
    _trees, po, keys = built
    po = _copy(po, tmp_path / "po")
    _sign(po, keys / "other.key")
    other_id = json.loads(sig_path(po).read_text())["key_id"][:16]
    conf = _conf(tmp_path, requireSignature=True, trustedKeys=[str(keys / "ops.pub")])
    _refused(built, tmp_path, conf, po, f"is signed by key {other_id}, which is not trusted")


@pytestmark_live
def test_trusted_key_applied_and_audited(built, tmp_path, audit_socket):
    trees, po, keys = built
    po = _copy(po, tmp_path / "po")
    _sign(po, keys / "ops.key")
    key_id = json.loads(sig_path(po).read_text())["key_id"]
    # a relative trustedKeys entry is relative to the file that lists it
    (tmp_path / "ops.pub").write_bytes((keys / "ops.pub").read_bytes())
    conf = _conf(tmp_path, audit_socket, requireSignature=True, trustedKeys=["ops.pub"])
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick \d+")
        katana("-c", str(conf), "apply", str(po), str(live.pid), check=True)
        assert _runs_v1(live)
        status = json.loads(katana("status", "--json", str(live.pid), check=True).stdout)
        audit = status["patches"][0]["audit"]
        sha = status["patches"][0]["po_sha256"]
        assert audit["uid"] == os.getuid() and audit["user"] and audit["time"].endswith("Z")
        assert audit["sha256"] == sha and audit["path"] == str(po)
        assert audit["signer"] == key_id and audit["trusted"] is True
        text = katana("status", str(live.pid), check=True).stdout
        assert f"signed by key {key_id[:16]} (trusted)" in text and f"from {po}" in text
        (line,) = audit_socket.lines()
        body = line.split("]: ", 1)[1]
        assert body.startswith(f"apply pid={live.pid} program=prog from=v0 to=v1 ")
        for field in (f"uid={os.getuid()}", f"user={audit['user']}", f"time={audit['time']}",
                      f"sha256={sha}", f"signer={key_id}", "trusted=yes", f"path={po}"):
            assert field in body.split(), field
        # a revert needs no signature, and is audited too
        katana("-c", str(conf), "revert", str(live.pid), check=True)
        assert _runs_v0(live)
        (line,) = audit_socket.lines()
        assert f"]: revert pid={live.pid} program=prog from=v1 to=v0 " in line
        assert f"sha256={sha}" in line and f"signer={key_id}" in line
        # ... and in the process: the record stays behind, marked reverted, saying by whom
        status = json.loads(katana("status", "--json", str(live.pid), check=True).stdout)
        assert status["patches"] == []
        (gone,) = status["reverted"]
        assert gone["audit"] == audit and gone["po_sha256"] == sha
        assert gone["reverted_by"]["uid"] == os.getuid()
        assert gone["reverted_by"]["time"] > audit["time"]
        text = katana("status", str(live.pid), check=True).stdout
        assert "reverted: prog v0 -> v1 by " in text and "no katana patches applied" in text
        # applying it again is allowed: a reverted patch is not an applied one
        katana("-c", str(conf), "apply", str(po), str(live.pid), check=True)
        assert _runs_v1(live)
    finally:
        live.kill()


@pytestmark_live
def test_require_signature_off_applies_unsigned(built, tmp_path):
    trees, po, _keys = built
    log = tmp_path / "audit.log"
    conf = tmp_path / "k.conf"
    conf.write_text(f"{{requireSignature: false, auditLog: {log}}}")
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick \d+")
        katana("-c", str(conf), "apply", str(po), str(live.pid), check=True)
        assert _runs_v1(live)
        audit = json.loads(katana("status", "--json", str(live.pid)).stdout)["patches"][0]["audit"]
        assert audit["signer"] == "unsigned" and audit["trusted"] is False
        assert "signer=unsigned trusted=no" in log.read_text()
    finally:
        live.kill()


@pytestmark_live
def test_no_system_log_never_fails_an_apply(built, tmp_path):
    trees, po, _keys = built
    conf = tmp_path / "k.conf"
    # a socket path nobody listens on: the apply goes on, with a warning
    conf.write_text(f"{{auditLog: {tmp_path / 'nothing' / 'log'}}}")
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick \d+")
        result = katana("-c", str(conf), "apply", str(po), str(live.pid))
        assert result.returncode == 0 and "warning: audit log" in result.stderr
        assert _runs_v1(live)
    finally:
        live.kill()


# -- scons patch SIGN_KEY= ---------------------------------------------------------------------

@pytest.mark.scons
def test_scons_patch_signs_what_it_writes(tmp_path):
    from test_scons_tool import make_project, ok, scons

    project = make_project(tmp_path / "project")
    for version in ("v0", "v1"):
        ok(scons(project, "release", f"VERSION={version}"))
    katana("keygen", str(tmp_path / "ci"), check=True)
    leaky = tmp_path / "leaky.key"
    leaky.write_bytes((tmp_path / "ci.key").read_bytes())
    leaky.chmod(0o644)
    refused = scons(project, "patch", "FROM=v0", "TO=v1", f"SIGN_KEY={leaky}")
    assert refused.returncode == 2 and "SIGN_KEY: private key" in refused.stderr
    assert "Traceback" not in refused.stderr and not (project / "patches").exists()

    out = ok(scons(project, "patch", "FROM=v0", "TO=v1", f"SIGN_KEY={tmp_path / 'ci.key'}"))
    po = project / "patches" / "app-v0-v1.po"
    assert "signed by key" in out.stdout and sig_path(po).is_file()
    katana("verify", str(po), "--key", str(tmp_path / "ci.pub"), check=True)
    # without SIGN_KEY the PO is made again, and the old signature goes with the old PO
    ok(scons(project, "patch", "FROM=v0", "TO=v1"))
    assert po.is_file() and not sig_path(po).exists()
    ok(scons(project, "patch", "FROM=v0", "TO=v1", f"SIGN_KEY={tmp_path / 'ci.key'}"))
    assert sig_path(po).is_file()
    ok(scons(project, "-c", "patch", "FROM=v0", "TO=v1", f"SIGN_KEY={tmp_path / 'ci.key'}"))
    assert not po.exists() and not sig_path(po).exists()
