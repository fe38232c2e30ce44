"""``katana apply``: load a Patch Object into a running process and switch it to the new code.

Phases: *verify* (PO readable, build-id of what runs equals the PO's FROM), *prepare* (resolve
what the patch uses, plan the layout and the redirects), *stage* (the target seized but
running: map the region through a borrowed thread, link and write the code, make it
executable), *stop* at a safe point (no thread in a function the patch replaces), *commit*
(check, transfer state, redirect, record) and *detach*. Any failure undoes every write and
unmaps the region, so the process carries on exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from katana.errors import ApplyError, KatanaError, TargetError
from katana.live.audit import audit_line, log_event, new_audit
from katana.live.commit import Commit
from katana.live.plan import Plan, prepare
from katana.live.record import Record
from katana.live.trust import Trust, check_policy
from katana.target import procfs
from katana.target.process import (
    Process,
    check_interrupts,
    fault_point,
    signals_held,
    take_interrupt,
)


@dataclass
class Result:
    pid: int
    record: Record
    stops: int  # how many times the target was stopped (safe-point attempts)
    stopped_for: float  # seconds the target was held stopped, over every attempt
    longest_stop: float
    timings: dict[str, float]
    interrupted: int | None = None  # a signal that arrived once the commit had begun


def _quiet(level: int, text: str) -> None:
    pass


def _describe_plan(plan: Plan) -> str:
    m = plan.po.meta
    changed = sum(f.status == "changed" for f in m.functions)
    moved = sum(v.status == "transformed" for v in m.variables)
    libs = f", {len(plan.far)} from libraries" if plan.far else ""
    where = f"library {m.program} at {plan.bias:#x}" if m.kind == "library" else m.program
    return (f"{where} {m.from_label} -> {m.to_label}, build-id {m.from_build_id[:12]} "
            f"matches: {changed} function(s) to replace, {len(m.functions) - changed} to add, "
            f"{moved} variable(s) to move; {len(plan.externals) + len(plan.far)} symbol(s) "
            f"resolved{libs}")


def apply_patch(po_path: Path, pid: int, config, leave_stopped: bool = False,
                say: Callable[[int, str], None] = _quiet, trust: Trust | None = None,
                began: float | None = None) -> Result:
    """Apply a PO to process ``pid``; on any failure the process is left as it was.

    ``say(level, text)`` hears of each phase (level 1) and of details (level 2). ``trust`` is
    what ``check_policy`` said of the file (checked here when not given). ``began``: a
    time.monotonic() instant maxWaitForPatching counts from (default: now)."""
    from katana.safety.safepoint import Range

    # maxWaitForPatching counts from here (the command's own start, when it patches one process)
    began = time.monotonic() if began is None else began
    # the signature policy comes before anything reads, attaches to or stops the process
    trust = trust or check_policy(po_path, config)
    audit = new_audit(po_path, trust.po_sha256, trust.signer, trust.trusted)
    with signals_held():
        plan, maps = _prepare(po_path, pid, audit)
        trust.confirm(po_path, plan.po_sha256)
        check_interrupts()
        say(1, _describe_plan(plan))
        ranges = [Range(lo, hi, name) for lo, hi, name in plan.safety]
        proc = Process(pid, check_writes=config.check_ptrace_writes)
        commit = Commit(plan, proc)
        try:
            record = _stage_stop_commit(plan, proc, commit, ranges, config, leave_stopped, say,
                                        began, maps)
        except KatanaError as e:
            if _exited(pid):  # it died under us: nothing "runs as before"
                raise TargetError(f"process {pid} exited while katana was applying the "
                                  "patch") from e
            raise
        except OSError as e:
            if _exited(pid):
                raise TargetError(f"process {pid} exited while katana was applying the "
                                  "patch") from e
            raise TargetError(f"process {pid}: {e.strerror or e}") from e
        # A signal that came during the commit waited for it; the caller reports the patch,
        # then acts on the signal.
        late = take_interrupt()
    if _exited(pid):
        raise TargetError(f"process {pid} exited while katana was applying the patch")
    log_event(audit_line("apply", pid, record, audit), config)
    return Result(pid, record, proc.stops, proc.stopped_seconds, proc.longest_stop,
                  plan.timings, late)


def _prepare(po_path: Path, pid: int, audit) -> tuple[Plan, list[procfs.Mapping]]:
    """``plan.prepare``, where a process that vanishes midway is a target error (its
    /proc/PID/exe and maps disappear under the readers), not a damaged file or a bug; and the
    maps it read, which the safe point's set-up reuses (one reading before the seize)."""
    try:
        maps = procfs.read_maps(pid)
        return prepare(po_path, pid, audit, maps), maps
    except TargetError:
        raise
    except (KatanaError, OSError) as e:
        if _exited(pid):
            raise TargetError(f"process {pid} exited while katana was preparing the patch") \
                from e
        if isinstance(e, OSError):
            raise TargetError(f"cannot read process {pid}: {e.strerror or e}") from e
        raise


def _exited(pid: int) -> bool:
    try:
        procfs.check_process(pid)
    except TargetError:
        return True
    return False


def _stage_stop_commit(plan: Plan, proc: Process, commit: Commit, ranges, config,
                       leave_stopped: bool, say, began: float, maps) -> Record:
    from katana.safety.safepoint import Checker, wait_for_safe_point

    started = time.monotonic()
    # what the safe point needs (the CFI of every mapped object, the coroutine switch points),
    # read before the stop
    checker = Checker(plan.pid, ranges, say, declared=plan.declared_stacks,
                      return_hooks=config.return_hooks, records=plan.all_records, maps=maps,
                      read=proc.memory.read)
    try:
        proc.seize()
        fault_point("seized")
        commit.stage()
        # read now, and the CFI of what was mapped meanwhile: the stop reuses both
        checker.cfi.refresh(proc.maps())
        plan.timings["stage"] = time.monotonic() - started
        check_interrupts()
        started = time.monotonic()
        wait_for_safe_point(proc, ranges, config.max_wait_for_patching,
                            config.safe_point_retry_interval, checker=checker, say=say,
                            started=began, reserve=1.5 * plan.timings["stage"])
        stopped_at = time.monotonic()
        check_interrupts()  # the last moment to give up: from here the commit completes
        plan.timings["safe point"] = stopped_at - started
        try:
            record = commit.run()
        except KatanaError as e:
            commit.undo()
            proc.resume()
            checker.hooks.unmap_running(proc)
            commit.free()
            if _exited(plan.pid):
                raise
            raise ApplyError(f"{e.message}; every change was undone, the process runs as "
                             "before", hint=e.hint) from e
        except BaseException:
            commit.undo()
            proc.resume()
            checker.hooks.unmap_running(proc)
            commit.free()
            raise
        if checker.hooks.base or commit.spare_heap:
            proc.resume()  # the patch is in: what it did not need goes while the process runs
            checker.hooks.unmap_running(proc)
            commit.drop_spare()
        proc.detach(leave_stopped=leave_stopped or config.leave_stopped)
        plan.timings["commit"] = time.monotonic() - stopped_at
    except BaseException:
        if proc.seized and proc.attached:
            proc.resume()
        if proc.seized:
            checker.hooks.unmap_running(proc)
        commit.free()
        raise
    finally:
        checker.close()
        if proc.seized:
            proc.detach()
    say(1, f"safe point: no thread inside the {len(ranges)} function(s) of the safety set "
           f"(after {proc.stops} stop(s))")
    say(1, f"loaded {plan.layout.size // 1024} KiB at {commit.base:#x}; "  # type: ignore
           f"{len(commit.sites)} place(s) in the {plan.po.meta.kind} rewritten")
    for site in commit.sites:
        say(2, f"  {site.address:#x}: {site.original.hex()} -> {site.new.hex()}")
    return record
