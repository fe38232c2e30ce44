"""``katana apply`` as a command: one or many processes, status lines, a summary, exit codes,
and the ``--json`` report (docs/json.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from katana.errors import SignatureError, TargetError
from katana.live.apply import Result, apply_patch
from katana.live.audit import log_event, refusal_line
from katana.live.results import Outcome, Tally, alive_at_start, attempt, tell
from katana.live.targets import (
    EVERY,
    Selection,
    all_pids,
    check_filters,
    given_pids,
    library_pids,
    refuse_stopped,
)
from katana.live.trust import check_policy
from katana.po import load_po
from katana.target import procfs
from katana.target.process import raise_interrupt

COUNTED = ("applied", "unchanged", "skipped", "failed", "exited")  # docs/json.md
SHOWN = ("applied", "skipped", "failed")  # always in the summary line, as before --json


def say_to(verbosity: int, as_json: bool):
    """Where progress goes: stdout, or stderr under --json (stdout holds the one object)."""
    stream = sys.stderr if as_json else sys.stdout

    def say(level: int, text: str) -> None:
        if verbosity >= level:
            print(text, file=stream, flush=True)
    return say


def patch_fields(patch: Path, sha256: str | None = None) -> dict:
    """What --json says of the PO itself (its program, labels, build-ids)."""
    m = load_po(patch).meta
    return {"patch": str(patch), "po_sha256": sha256, "object": m.program,
            "kind": m.kind, "from": m.from_label, "to": m.to_label,
            "from_build_id": m.from_build_id, "to_build_id": m.to_build_id}


def find_targets(patch: Path, pids: list[str], chosen: Selection) -> list[int]:
    check_filters(pids, chosen)
    if pids != ["all"]:
        return given_pids(pids)
    m = load_po(patch).meta
    if m.kind == "library":  # every process that maps it, whatever program it runs
        targets = library_pids({Path(m.program).name, m.soname or ""} - {""}, chosen)
    else:
        targets = all_pids(m.program, m.from_build_id, chosen)
    if not targets:
        which = f" {chosen.describe()}" if chosen.describe() else ""
        what = f"maps the patch's library ({m.program})" if m.kind == "library" else \
            f"runs the patch's program ({m.program})"
        raise TargetError(f"no running process{which} {what}",
                          hint="check with katana ps, or give the process ids")
    return targets


def apply_command(patch: Path, pids: list[str], config, leave_stopped: bool = False,
                  verbosity: int = 1, report=None, chosen: Selection = EVERY) -> int:
    """Apply ``patch`` to each target; print one line per process and a summary for several."""
    as_json = report is not None
    say = say_to(verbosity, as_json)
    tally = Tally()
    if report is not None:
        report.update(patch=str(patch), results=tally.to_json())
    # once, before any process is even looked for: a refused PO is one error, not one per target
    try:
        trust = check_policy(patch, config)
    except SignatureError as e:
        log_event(refusal_line(patch, e.message), config)
        raise
    if report is not None:
        report.update(**patch_fields(patch, trust.po_sha256))
    targets = find_targets(patch, pids, chosen)
    single = len(targets) == 1 and pids != ["all"]
    alive = alive_at_start(targets, pids == ["all"])
    try:
        for pid in targets:
            def work(pid: int = pid) -> Outcome:
                began = procfs.started_at() if single else None
                refuse_stopped(pid)  # before the engine borrows one of its threads
                result = apply_patch(patch, pid, config, leave_stopped, _teller(pid, say),
                                     trust, began=began)
                _report(result, say)
                return _applied(result)
            outcome = tally.add(attempt(pid, work, pid in alive))
            if not single:
                tell(outcome)
            interrupted = outcome.extra.pop("_interrupted", None)
            if interrupted is not None:
                if not single:
                    say(0, f"katana: {tally.line(SHOWN, len(targets))}; interrupted")
                raise_interrupt(interrupted)
    finally:
        tally.report_to(report, COUNTED, single)
    return tally.finish(single, SHOWN, say)


def _applied(result: Result) -> Outcome:
    r = result.record
    extra = {"stopped_ms": round(result.stopped_for * 1000, 3),
             "functions": sorted(k.split("::", 1)[1] for k in r.functions), "busy": []}
    if result.interrupted is not None:
        extra["_interrupted"] = result.interrupted
    return Outcome(result.pid, "applied", 0,
                   f"applied {r.program} {r.from_label} -> {r.to_label}", extra)


def _teller(pid: int, say):
    """Phase lines at the default verbosity, details with -v; -q silences both."""
    def tell_phase(level: int, text: str) -> None:
        say(level, f"{pid}: {text}" if not text.startswith(" ") else text)
    return tell_phase


def _report(result: Result, say) -> None:
    r = result.record
    say(1, f"{result.pid}: applied {r.program} {r.from_label} -> {r.to_label}: "
        f"{len(r.functions)} function(s) at {r.region[0]:#x}; target stopped "
        f"{result.stopped_for * 1000:.1f} ms" + (
            f" in {result.stops} stops (longest {result.longest_stop * 1000:.1f} ms)"
            if result.stops > 1 else ""))
    for phase, seconds in result.timings.items():
        say(2, f"  {phase:12} {seconds * 1000:8.1f} ms")
