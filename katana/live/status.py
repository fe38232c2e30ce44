"""``katana status PID``: the patches applied to a process, read from the process itself."""

from __future__ import annotations

import time

from katana.elf.buildid import read_build_id
from katana.errors import TargetError
from katana.live.record import REVERTED_MAGIC, Audit, Record, by_object, read_records


def _audit_json(audit: Audit | None) -> dict | None:
    if audit is None:  # applied by a katana that kept no audit
        return None
    return {"uid": audit.uid, "user": audit.user, "time": audit.time, "path": audit.po_path,
            "sha256": audit.po_sha256, "signer": audit.signer, "trusted": audit.trusted}


def _audit_text(audit: Audit | None) -> str:
    from katana.po.signature import short_id  # the signature code only for a signed patch

    if audit is None:
        return "applied by: unknown (a katana that kept no audit)"
    signer = "unsigned" if audit.signer == "unsigned" else \
        f"signed by key {short_id(audit.signer)} ({'trusted' if audit.trusted else 'not trusted'})"
    return (f"applied by {audit.user} (uid {audit.uid}) at {audit.time} from {audit.po_path} "
            f"(sha256 {audit.po_sha256[:16]}), {signer}")


def _reverted_text(r: Record) -> str:
    by = r.reverted
    who = f"by {by.user} (uid {by.uid}) at {by.time}" if by else "by an unknown user"
    return f"  reverted: {r.program} {r.from_label} -> {r.to_label} {who}"


def status_command(pid: int, report=None) -> int:
    """Print the patches of ``pid`` (or fill ``report``, for --json: docs/json.md)."""
    records = read_records(pid)
    reverted = sorted(read_records(pid, magic=REVERTED_MAGIC),
                      key=lambda r: r.reverted.time if r.reverted else "")
    try:
        exe_id = read_build_id(f"/proc/{pid}/exe")
    except OSError as e:
        raise TargetError(f"cannot read /proc/{pid}/exe: {e.strerror}") from e
    if report is not None:
        report.update(**{"pid": pid, "build_id": exe_id, "patches": [
            {"program": r.program, "kind": r.kind, "soname": r.soname,
             "from": r.from_label, "to": r.to_label,
             "from_build_id": r.from_build_id, "to_build_id": r.to_build_id,
             "po_sha256": r.po_sha256, "applied_at": r.applied_at, "region": list(r.region),
             "functions": sorted(r.functions), "revertible": r.revertible,
             "audit": _audit_json(r.audit)}
            for r in records], "reverted": [
            {"program": r.program, "from": r.from_label, "to": r.to_label,
             "po_sha256": r.po_sha256, "audit": _audit_json(r.audit),
             "reverted_by": _audit_json(r.reverted)}
            for r in reverted]})
        return 0
    print(f"process {pid}: executable build-id {exe_id}")
    for r in reverted:  # history first: what is applied now ends the report
        print(_reverted_text(r))
    if not records:
        print("  no katana patches applied")
        return 0
    # numbered in the order applied (revert takes the highest number first), listed per object
    numbers = {id(r): n for n, r in enumerate(records, 1)}
    for mine in sorted(by_object(records).values(), key=lambda o: o[0].kind != "program"):
        kind, name = mine[-1].kind, mine[-1].program
        soname = f", soname {mine[-1].soname}" if mine[-1].soname else ""
        print(f"  {kind} {name}{soname}:")
        for r in mine:
            _print_record(numbers[id(r)], r)
        print(f"    running: {mine[-1].to_label} (build-id {mine[-1].to_build_id})")
    return 0


def _print_record(n: int, r: Record) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.applied_at))
    names = ", ".join(k.split("::", 1)[1] for k in sorted(r.functions)) or "-"
    print(f"    {n}. {r.program} {r.from_label} -> {r.to_label}  applied {when}  "
          f"at {r.region[0]:#x}")
    print(f"       functions: {names}")
    print(f"       {_audit_text(r.audit)}")
    if not r.revertible:
        print("       (transforms data: cannot be reverted)")
