"""``katana ps``: the processes of this host that carry katana patches, read from each process
itself (its records, record.py): no stop, no trace, nothing written.

Records are grouped by patched object (the program, or a library), so that each object shows
the build it behaves as now (its newest patch's TO) and the patches that brought it there.
``--program NAME`` adds that program's unpatched processes, with the build-id each runs.
"""

from __future__ import annotations

import os
import pwd
import sys
import time

from katana.elf.buildid import read_build_id
from katana.errors import KatanaError, TargetError
from katana.live.record import Record, by_object, read_records
from katana.live.targets import process_ids, process_uid, program_of
from katana.target import procfs


def _user(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _patch(r: Record) -> dict:
    a = r.audit
    return {"from": r.from_label, "to": r.to_label, "from_build_id": r.from_build_id,
            "to_build_id": r.to_build_id, "po_sha256": r.po_sha256, "applied_at": r.applied_at,
            "user": a.user if a else None, "uid": a.uid if a else None,
            "path": a.po_path if a else None, "signer": a.signer if a else None,
            "trusted": a.trusted if a else None,
            "functions": sorted(k.split("::", 1)[1] for k in r.functions)}


def objects(records: list[Record], exe_build_id: str | None) -> list[dict]:
    """One entry per patched object, in the order of its first patch."""
    out = []
    for recs in by_object(records).values():
        kind, name = recs[-1].kind, recs[-1].program
        own = exe_build_id if kind == "program" and exe_build_id else recs[0].from_build_id
        out.append({"object": name, "kind": kind, "build_id": own,
                    "effective": recs[-1].to_label, "effective_build_id": recs[-1].to_build_id,
                    "patches": [_patch(r) for r in recs]})
    return out


def _hidden(pid: int) -> bool:
    """Whether the process runs a program we may not see: another user's, for anyone but
    root (its /proc/PID/exe link refuses us), as opposed to a kernel thread (which has none)
    or a process that is gone."""
    try:
        os.readlink(f"/proc/{pid}/exe")
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def describe_process(pid: int) -> dict | None:
    """What ps says of one process; None when it is not a program we can read (a kernel
    thread, a process that exited meanwhile). KatanaError: it could not be read."""
    program = program_of(pid)
    if not program:
        if _hidden(pid):
            raise TargetError(f"cannot read /proc/{pid}/exe: permission denied")
        return None
    records = read_records(pid)
    try:
        build_id = read_build_id(f"/proc/{pid}/exe")
    except (KatanaError, OSError):
        build_id = None
    uid = process_uid(pid)
    return {"pid": pid, "program": program, "exe": procfs.exe_path(pid), "user": _user(uid),
            "uid": uid, "build_id": build_id, "patched": bool(records),
            "objects": objects(records, build_id)}


def list_processes(program: str | None = None) -> tuple[list[dict], int]:
    """(processes to show, how many could not be read)."""
    shown, unreadable = [], 0
    for pid in process_ids():
        try:
            found = describe_process(pid)
        except (KatanaError, OSError):
            # gone meanwhile is nothing to count; a live program we could not read is
            if procfs.pid_exists(pid) and (program_of(pid) or _hidden(pid)):
                unreadable += 1
            continue
        if found is None:
            continue
        if found["patched"] or (program is not None and found["program"] == program):
            shown.append(found)
    return shown, unreadable


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def text_lines(processes: list[dict]) -> list[str]:
    lines = []
    for p in processes:
        build = (p["build_id"] or "?")[:12]
        lines.append(f"{p['pid']:>7}  {p['program']}  user {p['user']}  build-id {build}"
                     + ("" if p["patched"] else "  (unpatched)"))
        for o in p["objects"]:
            steps = ", ".join(f"{x['from']} -> {x['to']} {_when(x['applied_at'])} by "
                              f"{x['user'] or 'unknown'}" for x in o["patches"])
            lines.append(f"         {o['object']}: runs {o['effective']} (build-id "
                         f"{o['effective_build_id'][:12]}): {steps}")
    return lines


def ps_command(program: str | None = None, report=None) -> int:
    processes, unreadable = list_processes(program)
    if report is not None:
        report.update(processes=processes, unreadable=unreadable)
    else:
        for line in text_lines(processes):
            print(line)
        if not processes:
            print("no process carries katana patches" + (
                f", and none runs {program}" if program else ""))
    if unreadable:
        why = ("katana status PID says why (a damaged record, another PID namespace)"
               if os.geteuid() == 0 else "run as root to see every process")
        print(f"katana: warning: {unreadable} process(es) could not be read: {why}",
              file=sys.stderr)
    return 0
