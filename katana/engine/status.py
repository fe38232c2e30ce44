"""``katana status PID``: the patches applied to a process, read from the process itself."""

from __future__ import annotations

import json
import time

from katana.elf.buildid import read_build_id
from katana.engine.record import read_records
from katana.errors import TargetError


def status_command(pid: int, as_json: bool = False) -> int:
    records = read_records(pid)
    try:
        exe_id = read_build_id(f"/proc/{pid}/exe")
    except OSError as e:
        raise TargetError(f"cannot read /proc/{pid}/exe: {e.strerror}") from e
    if as_json:
        print(json.dumps({"pid": pid, "build_id": exe_id, "patches": [
            {"program": r.program, "from": r.from_label, "to": r.to_label,
             "from_build_id": r.from_build_id, "to_build_id": r.to_build_id,
             "po_sha256": r.po_sha256, "applied_at": r.applied_at, "region": list(r.region),
             "functions": sorted(r.functions), "revertible": r.revertible}
            for r in records]}, indent=2))
        return 0
    print(f"process {pid}: executable build-id {exe_id}")
    if not records:
        print("  no katana patches applied")
        return 0
    for n, r in enumerate(records, 1):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.applied_at))
        names = ", ".join(k.split("::", 1)[1] for k in sorted(r.functions)) or "-"
        print(f"  {n}. {r.program} {r.from_label} -> {r.to_label}  applied {when}  "
              f"at {r.region[0]:#x}")
        print(f"     functions: {names}")
        if not r.revertible:
            print("     (transforms data: cannot be reverted)")
    current = records[-1].to_label
    print(f"  running: {current} (build-id {records[-1].to_build_id})")
    return 0
