"""``katana apply``: load a Patch Object into a running process and switch it to the new code.

Phases: *verify* (PO readable, build-id of what runs equals the PO's FROM), *prepare* (resolve
what the patch uses, plan the layout and the redirects: all before the target is stopped),
*stop* at a safe point (no thread in a function the patch replaces), *commit* (map, load, link,
transfer state, redirect, record), *resume*. Any failure during commit undoes every write and
unmaps the region, so the process carries on exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from katana.engine import procfs
from katana.engine.commit import Commit
from katana.engine.plan import Plan, prepare
from katana.engine.process import Process, signals_held
from katana.engine.record import Record
from katana.errors import ApplyError, KatanaError, TargetError


@dataclass
class Result:
    pid: int
    record: Record
    stops: int  # how many times the target was stopped (safe-point attempts)
    stopped_for: float  # seconds the target was held stopped, over every attempt
    longest_stop: float
    timings: dict[str, float]


def _quiet(level: int, text: str) -> None:
    pass


def _describe_plan(plan: Plan) -> str:
    m = plan.po.meta
    changed = sum(f.status == "changed" for f in m.functions)
    moved = sum(v.status == "transformed" for v in m.variables)
    libs = f", {len(plan.far)} from libraries" if plan.far else ""
    return (f"{m.program} {m.from_label} -> {m.to_label}, build-id {m.from_build_id[:12]} "
            f"matches: {changed} function(s) to replace, {len(m.functions) - changed} to add, "
            f"{moved} variable(s) to move; {len(plan.externals) + len(plan.far)} symbol(s) "
            f"resolved{libs}")


def apply_patch(po_path: Path, pid: int, config, leave_stopped: bool = False,
                say: Callable[[int, str], None] = _quiet) -> Result:
    """Apply a PO to process ``pid``; on any failure the process is left as it was.

    ``say(level, text)`` hears of each phase (level 1) and of details (level 2)."""
    from katana.engine.safepoint import Range

    plan = prepare(po_path, pid)
    say(1, _describe_plan(plan))
    ranges = [Range(lo, hi, name) for lo, hi, name in plan.safety]
    proc = Process(pid, check_writes=config.check_ptrace_writes)
    commit = Commit(plan, proc)
    started = time.monotonic()
    with signals_held():
        record = _stop_and_commit(plan, proc, commit, ranges, config, leave_stopped, say,
                                  started)
    if not procfs.pid_exists(pid) or _exited(pid):
        raise TargetError(f"process {pid} exited while katana was applying the patch")
    return Result(pid, record, proc.stops, proc.stopped_seconds, proc.longest_stop,
                  plan.timings)


def _exited(pid: int) -> bool:
    try:
        procfs.check_process(pid)
    except TargetError:
        return True
    return False


def _stop_and_commit(plan: Plan, proc: Process, commit: Commit, ranges, config,
                     leave_stopped: bool, say, started: float) -> Record:
    from katana.engine.safepoint import wait_for_safe_point

    try:
        wait_for_safe_point(proc, ranges, config.max_wait_for_patching,
                            config.safe_point_retry_interval)
        stopped_at = time.monotonic()
        plan.timings["safe point"] = stopped_at - started
        say(1, f"safe point: no thread inside the {len(ranges)} function(s) of the safety set "
               f"(after {proc.stops} stop(s))")
        try:
            record = commit.run()
        except KatanaError as e:
            commit.undo()
            if _exited(plan.pid):  # it died under us: nothing "runs as before"
                raise TargetError(f"process {plan.pid} exited while katana was applying the "
                                  "patch") from e
            raise ApplyError(f"{e.message}; every change was undone, the process runs as "
                             "before", hint=e.hint) from e
        except BaseException:
            commit.undo()
            raise
        plan.timings["commit"] = time.monotonic() - stopped_at
        say(1, f"loaded {plan.layout.size // 1024} KiB at {commit.base:#x}; "  # type: ignore
               f"{len(commit.sites)} place(s) in the program rewritten")
        for site in commit.sites:
            say(2, f"  {site.address:#x}: {site.original.hex()} -> {site.new.hex()}")
    finally:
        if proc.seized:
            proc.detach(leave_stopped=leave_stopped or config.leave_stopped)
    return record
