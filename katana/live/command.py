"""``katana apply`` as a command: one or many processes, status lines, a summary, exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from katana.elf.buildid import read_build_id
from katana.errors import KatanaError, MismatchError, SignatureError, TargetError, UsageError
from katana.live.apply import apply_patch
from katana.live.audit import log_event, refusal_line
from katana.live.trust import check_policy
from katana.po import load_po
from katana.target import procfs
from katana.target.process import raise_interrupt


def _say(verbosity: int, level: int, text: str) -> None:
    if verbosity >= level:
        print(text, flush=True)


def _all_pids(program: str, build_id: str) -> list[int]:
    """Every process we can see that runs the program: by the executable's name, or by the
    build-id (a renamed copy). Those of another build are kept, to be reported as skipped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            name = os.path.basename(os.readlink(f"/proc/{entry}/exe")).removesuffix(" (deleted)")
            if name == program or read_build_id(f"/proc/{entry}/exe") == build_id:
                found.append(int(entry))
        except (KatanaError, OSError):
            continue  # kernel threads, exited processes, other users' processes, non-ELF
    return sorted(found)


def _library_pids(names: set[str]) -> list[int]:
    """Every process we can see that maps a library of one of these file names (or
    sonames), whichever program it runs; apply skips those that map another build."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            text = procfs.maps_text(int(entry))
        except KatanaError:
            continue  # exited, or not ours to read
        if any(line.rsplit("/", 1)[-1] in names for line in text.splitlines() if "/" in line):
            found.append(int(entry))
    return sorted(found)


def _targets(patch: Path, pids: list[str]) -> list[int]:
    if pids == ["all"]:
        po = load_po(patch)
        if po.meta.kind == "library":  # every process that maps it, whatever it runs
            return _library_pids({Path(po.meta.program).name, po.meta.soname or ""} - {""})
        return _all_pids(po.meta.program, po.meta.from_build_id)
    try:
        return list(dict.fromkeys(int(p) for p in pids))  # each once, in the order given
    except ValueError:
        raise UsageError(f"not a process id: {' '.join(pids)}",
                         hint="give numbers, or 'all'") from None


def apply_command(patch: Path, pids: list[str], config, leave_stopped: bool = False,
                  verbosity: int = 1) -> int:
    """Apply ``patch`` to each target; print one line per process and a summary for several."""
    # once, before any process is even looked for: a refused PO is one error, not one per target
    try:
        trust = check_policy(patch, config)
    except SignatureError as e:
        log_event(refusal_line(patch, e.message), config)
        raise
    targets = _targets(patch, pids)
    if not targets:
        raise TargetError("no running process runs the patch's program (or maps its library)",
                          hint="check with ps, or give the process ids")
    if len(targets) == 1 and pids != ["all"]:  # one target: its error is the command's error
        result = apply_patch(patch, targets[0], config, leave_stopped,
                             _teller(targets[0], verbosity), trust, began=procfs.started_at())
        _report(result, verbosity)
        raise_interrupt(result.interrupted)
        return 0
    patched, skipped, failed, code = 0, 0, 0, 0
    for pid in targets:
        try:
            result = apply_patch(patch, pid, config, leave_stopped, _teller(pid, verbosity),
                                 trust)
        except MismatchError as e:  # another build, or already patched: not a failure
            skipped += 1
            print(f"katana: {pid}: skipped: {e.message}", file=sys.stderr)
            continue
        except KatanaError as e:
            failed += 1
            code = e.exit_code
            print(f"katana: {pid}: failed: {e.message}", file=sys.stderr)
            continue
        patched += 1
        _report(result, verbosity)
        if result.interrupted is not None:
            _say(verbosity, 0, f"katana: {patched} patched, {skipped} skipped, {failed} failed "
                 f"(of {len(targets)}; interrupted)")
            raise_interrupt(result.interrupted)
    _say(verbosity, 0, f"katana: {patched} patched, {skipped} skipped, {failed} failed "
         f"(of {len(targets)})")
    return code


def _teller(pid: int, verbosity: int):
    """Phase lines at the default verbosity, details with -v; -q silences both."""
    def say(level: int, text: str) -> None:
        _say(verbosity, level, f"{pid}: {text}" if not text.startswith(" ") else text)
    return say


def _report(result, verbosity: int) -> None:
    r = result.record
    _say(verbosity, 1, f"{result.pid}: applied {r.program} {r.from_label} -> {r.to_label}: "
         f"{len(r.functions)} function(s) at {r.region[0]:#x}; target stopped "
         f"{result.stopped_for * 1000:.1f} ms" + (
             f" in {result.stops} stops (longest {result.longest_stop * 1000:.1f} ms)"
             if result.stops > 1 else ""))
    for phase, seconds in result.timings.items():
        _say(verbosity, 2, f"  {phase:12} {seconds * 1000:8.1f} ms")
