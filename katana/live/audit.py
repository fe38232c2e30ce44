"""The audit trail: who applied or reverted which patch, when, and who signed it.

Each apply keeps an ``Audit`` in the record inside the target (``katana status`` shows it), and
each apply and revert sends one line to the system log. The log is a witness, not a gate: a
system log that is not there (no /dev/log in a container) or that fails never fails the apply
or the revert it reports (docs/configuration.md, ``auditLog``).
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from katana.live.record import Audit, Record

# syslog(3) priorities (RFC 5424 numbers): security messages go to LOG_AUTHPRIV, which
# distributions keep in a file ordinary users cannot read (/var/log/secure, auth.log).
LOG_AUTHPRIV = 10 << 3
LOG_NOTICE = 5


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a container without a passwd entry for us
        return str(uid)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_audit(po_path: Path, po_sha256: str, signer: str | None, trusted: bool) -> Audit:
    """The audit of an apply starting now, by this process's real user."""
    uid = os.getuid()
    return Audit(uid, _user(uid), utc_now(), str(Path(po_path).absolute()), po_sha256,
                 signer or "unsigned", trusted)


def revert_audit(record: Record) -> Audit:
    """Who reverts, now; what is reverted, as the audit of its apply says ("unknown" if none)."""
    applied, uid = record.audit, os.getuid()
    return Audit(uid, _user(uid), utc_now(), applied.po_path if applied else "unknown",
                 record.po_sha256, applied.signer if applied else "unknown",
                 bool(applied and applied.trusted))


def value(text: object) -> str:
    word = str(text)
    # one line, split on spaces by whoever reads it: quote what would break either
    if word and all(c.isprintable() and c not in ' "=\\' for c in word):
        return word
    return json.dumps(word)


def audit_line(action: str, pid: int, record: Record, audit: Audit | None) -> str:
    """``apply pid=... program=... from=... to=... uid=... user=... time=... sha256=...
    signer=... trusted=... path=...``: key=value pairs, values with spaces quoted."""
    # from/to: what the process ran before and after (a revert goes from TO back to FROM)
    before, after = record.from_label, record.to_label
    if action == "revert":
        before, after = after, before
    fields: list[tuple[str, object]] = [
        ("pid", pid), ("program", record.program), ("from", before), ("to", after)]
    if audit is None:
        fields.append(("sha256", record.po_sha256))
    else:
        fields += [("uid", audit.uid), ("user", audit.user), ("time", audit.time),
                   ("sha256", audit.po_sha256), ("signer", audit.signer),
                   ("trusted", "yes" if audit.trusted else "no"), ("path", audit.po_path)]
    return action + "".join(f" {k}={value(v)}" for k, v in fields)


def refusal_line(po_path: Path, reason: str) -> str:
    """``refused uid=... user=... time=... path=... reason=...``: an apply the policy stopped."""
    uid = os.getuid()
    fields = [("uid", uid), ("user", _user(uid)), ("time", utc_now()),
              ("path", Path(po_path).absolute()), ("reason", reason)]
    return "refused" + "".join(f" {k}={value(v)}" for k, v in fields)


def _syslog(line: str) -> None:
    import syslog

    # glibc drops the message, silently, when /dev/log is missing: what a container wants
    syslog.openlog("katana", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_NOTICE, line)
    syslog.closelog()


def _datagram(path: Path, line: str) -> None:
    # what syslog(3) sends to /dev/log (RFC 3164 framing), so a test or a journald socket
    # (/run/systemd/journal/dev-log) reads the same bytes syslog would get
    stamp = time.strftime("%b %e %H:%M:%S")
    message = f"<{LOG_AUTHPRIV | LOG_NOTICE}>{stamp} katana[{os.getpid()}]: {line}"
    import socket  # only when the system log is written to

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), str(path))


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


def log_event(line: str, config) -> None:
    """Send one audit line where ``auditLog`` says; a failure is a warning, never an error."""
    target = getattr(config, "audit_log", "syslog")
    try:
        if target == "off":
            return
        if target == "syslog":
            _syslog(line)
            return
        path = Path(target).expanduser()
        if path.is_socket():
            _datagram(path, line)
        else:
            _append(path, line)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte the line should never hold
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"katana: warning: audit log {target}: {why}; not logged: {line}",
              file=sys.stderr)
