"""``katana check PATCH PID...|all``: every verification ``apply`` makes, and nothing it writes.

Per process, in apply's order: the signature policy (once), the PO against the build the process
runs now (build-id, already applied, another program), every symbol the patch uses resolved in
*this* process (plan.prepare), the bytes each jump will overwrite still those the plan expects,
and one safe-point probe: every thread stopped once, for as long as the check of their stacks
takes, to see which functions of the safety set are in use right now. No staging, no mapping, no
return hooks, no write.

What it cannot foresee (docs/json.md, README): whether a function in use returns within
``maxWaitForPatching`` (check reports it busy; apply would wait for it), the mmap of the patch
region near the executable (address space, seccomp, memory limits), an IFUNC resolved only at
the commit, and anything that changes the process between the check and the apply.
"""

from __future__ import annotations

from pathlib import Path

from katana.errors import ApplyError, BusyError, TargetError
from katana.live.command import find_targets, patch_fields, say_to
from katana.live.plan import Plan, prepare
from katana.live.results import Outcome, Tally, alive_at_start, attempt, tell
from katana.live.targets import EVERY, Selection, refuse_stopped
from katana.live.trust import Trust, check_policy
from katana.target.process import Process, check_interrupts, signals_held

COUNTED = ("ready", "unchanged", "skipped", "failed", "exited")  # docs/json.md
SHOWN = ("ready", "skipped", "failed")


def check_command(patch: Path, pids: list[str], config, verbosity: int = 1, report=None,
                  chosen: Selection = EVERY) -> int:
    """Check ``patch`` against each target; exit 0 exactly when apply would go ahead now."""
    say = say_to(verbosity, report is not None)
    tally = Tally()
    if report is not None:
        report.update(patch=str(patch), results=[])
    trust = check_policy(patch, config)  # SignatureError: refused before any process, as apply
    if report is not None:
        report.update(**patch_fields(patch, trust.po_sha256))
    targets = find_targets(patch, pids, chosen)
    single = len(targets) == 1 and pids != ["all"]
    alive = alive_at_start(targets, pids == ["all"])
    try:
        for pid in targets:
            outcome = tally.add(attempt(pid, lambda pid=pid: check_one(patch, pid, config, trust),
                                        pid in alive))
            if outcome.result == "ready":
                say(1, f"{pid}: ready: {outcome.message}")
            elif not single:
                tell(outcome)
    finally:
        tally.report_to(report, COUNTED, single)
    return tally.finish(single, SHOWN, say)


def check_one(patch: Path, pid: int, config, trust: Trust) -> Outcome:
    refuse_stopped(pid)  # as apply does: a stopped process cannot be patched
    try:
        plan = prepare(patch, pid)
    except OSError as e:  # as apply says it (apply._prepare): memory /proc would not give
        raise TargetError(f"cannot read process {pid}: {e.strerror or e}") from e
    trust.confirm(patch, plan.po_sha256)
    _check_sites(plan)
    busy, stopped = _probe(plan, config)
    names = sorted({b.name for b in busy})
    extra = {"stopped_ms": round(stopped * 1000, 3),
             "functions": sorted(f.name for f in plan.po.meta.functions), "busy": names}
    if busy:
        from katana.safety.safepoint import busy_hint, describe_busy

        never = any(b.never_returns for b in busy)
        tail = "" if never else (f"; apply would wait up to {config.max_wait_for_patching:g} s "
                                 "for it to return")
        error = BusyError(f"process {pid}: {describe_busy(busy)} in use right now{tail}",
                          hint=busy_hint(busy))
        return Outcome(pid, "failed", error.exit_code, error.message, extra, error)
    m = plan.po.meta
    resolved = len(plan.externals) + len(plan.far)
    return Outcome(pid, "ready", 0,
                   f"apply would go ahead now: {m.program} {m.from_label} -> {m.to_label}, "
                   f"build-id {m.from_build_id[:12]} matches, {resolved} symbol(s) resolved, "
                   f"none of the {len(plan.safety)} function(s) of the safety set in use "
                   f"(stopped {stopped * 1000:.1f} ms)", extra)


def _check_sites(plan: Plan) -> None:
    """Each place a jump goes still holds what the plan expects (apply checks it stopped)."""
    from katana.target.memory import Memory

    memory = Memory(plan.pid)
    try:
        for r in plan.redirects:
            if r.expected and memory.read(r.start, len(r.expected)) != r.expected:
                raise ApplyError(f"{r.name} at {r.start:#x} is not what the patch expects "
                                 "(the process was modified by something else)")
    finally:
        memory.close()


def _probe(plan: Plan, config) -> tuple[list, float]:
    """One stop of every thread, to look at their stacks; the process let go at once."""
    from katana.safety.safepoint import Checker, Range

    if not plan.safety:
        return [], 0.0  # nothing to find in use: no stop at all
    ranges = [Range(lo, hi, name) for lo, hi, name in plan.safety]
    try:
        checker = Checker(plan.pid, ranges, declared=plan.declared_stacks, return_hooks=False,
                          records=plan.records)
    except OSError as e:  # before any stop: the process went away, or a file it maps did
        raise TargetError(f"process {plan.pid}: cannot read {e.filename or 'a file it maps'}: "
                          f"{e.strerror or e}", hint="apply is refused too; is the process "
                          "still running?") from e
    proc = Process(plan.pid)
    try:
        with signals_held():
            try:
                proc.stop()
                busy = checker.find_busy(proc)
            finally:
                proc.detach()
        check_interrupts()
    finally:
        checker.close()
    return busy, proc.stopped_seconds

