"""``katana apply`` as a command: one or many processes, status lines, a summary, exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from katana.elf.buildid import read_build_id
from katana.engine.apply import apply_patch
from katana.errors import KatanaError, MismatchError, UsageError
from katana.po import load_po


def _say(verbosity: int, level: int, text: str) -> None:
    if verbosity >= level:
        print(text, flush=True)


def _all_pids(program_build_id: str) -> tuple[list[int], int]:
    """(processes whose executable has the build-id, processes skipped) among those we can see."""
    matched, skipped = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            found = read_build_id(f"/proc/{entry}/exe")
        except (KatanaError, OSError):
            continue  # kernel threads, other users' processes, non-ELF
        if found == program_build_id:
            matched.append(int(entry))
        elif found is not None:
            skipped += 1
    return sorted(matched), skipped


def _targets(patch: Path, pids: list[str]) -> list[int]:
    if pids == ["all"]:
        po = load_po(patch)
        found, _ = _all_pids(po.meta.from_build_id)
        return found
    try:
        return [int(p) for p in pids]
    except ValueError:
        raise UsageError(f"not a process id: {' '.join(pids)}",
                         hint="give numbers, or 'all'") from None


def apply_command(patch: Path, pids: list[str], config, leave_stopped: bool = False,
                  verbosity: int = 1) -> int:
    """Apply ``patch`` to each target; print one line per process and a summary for several."""
    targets = _targets(patch, pids)
    if not targets:
        _say(verbosity, 0, "katana: no running process matches the patch's FROM build")
        return 0
    patched, skipped, failed, code = 0, 0, 0, 0
    for pid in targets:
        try:
            result = apply_patch(patch, pid, config, leave_stopped)
        except MismatchError as e:
            skipped += 1
            code = code or e.exit_code
            print(f"katana: {pid}: skipped: {e.message}", file=sys.stderr)
            continue
        except KatanaError as e:
            if len(targets) == 1:
                raise
            failed += 1
            code = e.exit_code
            print(f"katana: {pid}: failed: {e.message}", file=sys.stderr)
            continue
        patched += 1
        r = result.record
        _say(verbosity, 1, f"{pid}: applied {r.program} {r.from_label} -> {r.to_label}: "
             f"{len(r.functions)} function(s) at {r.region[0]:#x}; target stopped "
             f"{result.stopped_for * 1000:.1f} ms" + (
                 f" in {result.stops} stops (longest {result.longest_stop * 1000:.1f} ms)"
                 if result.stops > 1 else ""))
        for phase, seconds in result.timings.items():
            _say(verbosity, 2, f"  {phase:12} {seconds * 1000:8.1f} ms")
    if len(targets) > 1:
        _say(verbosity, 0, f"katana: {patched} patched, {skipped} skipped, {failed} failed "
             f"(of {len(targets)})")
    if len(targets) == 1 and skipped:
        return code
    return 0 if not failed else code
