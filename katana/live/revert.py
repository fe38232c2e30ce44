"""``katana revert PID [PATCH | --all]``: undo the most recent patch of a process (or a given
one, or all of them, newest first).

Patches stack, so only the newest of an object can go: a later patch of the same object was
made from the build the earlier one left, and may call its code.
The old code must be free to run again and the patch's code out of use, so the safe-point rule is
the patch's own functions (new code) plus everything it redirected.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from katana.errors import ApplyError, KatanaError, NothingToRevertError, UsageError
from katana.live.audit import audit_line, log_event, revert_audit
from katana.live.record import REVERTED_MAGIC, Record, object_key, read_records
from katana.live.results import Outcome, Tally
from katana.live.targets import refuse_stopped
from katana.target import alloc, procfs
from katana.target.process import Process, check_interrupts, fault_point, signals_held

COUNTED = ("reverted", "unchanged", "failed")  # docs/json.md


def revert_command(pid: int, config, verbosity: int = 1, patch: str | None = None,
                   every: bool = False, report=None) -> int:
    """Revert the newest patch of ``pid``; with ``patch`` (a PO path or a sha256 prefix), that
    one; with ``every``, all of them, newest first. Prints one line per patch reverted."""
    from katana.live.command import say_to

    say = say_to(verbosity, report is not None)
    tally = Tally()
    if report is not None:
        report.update(pid=pid, results=[])
    record = None  # the patch being reverted, which a refusal names too (docs/json.md)
    try:
        with signals_held():
            while True:
                record = None  # until chosen: a refusal before names no patch
                record, records = _choose(pid, patch, first=not tally.outcomes)
                if record is None:  # --all, and none left
                    break
                _refuse_dependents(pid, record, records)
                refuse_stopped(pid)  # the unmapping borrows one of its threads
                _revert_record(pid, record, records, config)
                done = f"reverted {record.program} {record.to_label} -> {record.from_label}"
                tally.add(Outcome(pid, "reverted", 0, done, _labels(record)))
                say(1, f"{pid}: {done}")
                if not every:
                    break
                check_interrupts()
    except KatanaError as e:
        nothing = isinstance(e, NothingToRevertError)
        tally.add(Outcome(pid, "unchanged" if nothing else "failed", e.exit_code, e.message,
                          _labels(record) if record is not None else {}))
        if len(tally.outcomes) > 1 and not nothing:
            e.message += f" ({len(tally.outcomes) - 1} newer patch(es) were reverted before)"
        raise
    finally:
        tally.report_to(report, COUNTED, single=True)
    return 0


def _labels(record: Record) -> dict:
    return {"object": record.program, "kind": record.kind,
            "from": record.from_label, "to": record.to_label, "po_sha256": record.po_sha256}


def _choose(pid: int, patch: str | None, first: bool) -> tuple[Record | None, list[Record]]:
    """The record to revert now, and every live record of the process."""
    records = read_records(pid)
    if not records:
        if not first:
            return None, records
        raise NothingToRevertError(f"process {pid} has no katana patch to revert",
                                   hint="katana status shows what a process has applied")
    if patch is None:
        return records[-1], records
    sha = _sha_of(patch)
    matches = [r for r in records if r.po_sha256.startswith(sha)]
    if not matches:
        raise NothingToRevertError(f"process {pid} has no live patch {patch} (sha256 "
                                   f"{sha[:16]}) to revert",
                                   hint="katana status shows what a process has applied")
    if len({r.po_sha256 for r in matches}) > 1:
        raise UsageError(f"{patch} is the beginning of the sha256 of more than one patch of "
                         f"process {pid}", hint="give more digits (katana status --json)")
    return matches[-1], records


def _refuse_dependents(pid: int, record: Record, records: list[Record]) -> None:
    """ApplyError while later patches of the process need ``record``."""
    later = records[records.index(record) + 1:]
    depending = [r for r in later if _depends(r, record)]
    if depending:
        names = ", ".join(f"{r.from_label} -> {r.to_label}" for r in depending)
        raise ApplyError(f"cannot revert {record.program} {record.from_label} -> "
                         f"{record.to_label} of process {pid}: later patches depend on it "
                         f"({names}: made from the build it left, or calling its code)",
                         hint=f"revert those first (katana revert {pid}, newest first), or "
                              f"all of them: katana revert {pid} --all")


def _sha_of(patch: str) -> str:
    """A PO file's sha256, or the sha256 prefix given."""
    path = Path(patch)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    text = patch.lower()
    if len(text) >= 4 and all(c in "0123456789abcdef" for c in text):
        return text
    raise UsageError(f"{patch} is neither a Patch Object nor a sha256 prefix (4 hex digits "
                     "or more)", hint="katana status PID lists each patch's sha256")


def _depends(later: Record, record: Record) -> bool:
    """Whether ``later`` needs ``record``: a patch of the same object (made from the build
    ``record`` left), or one whose code was linked against ``record``'s region."""
    if object_key(later) == object_key(record):
        return True
    lo, size = record.region
    addresses = list(later.symbols.values()) + [s.address for s in later.sites]
    return any(lo <= a < lo + size for a in addresses)


def _revert_record(pid: int, record: Record, records: list[Record], config) -> None:
    from katana.safety.safepoint import Range

    if not record.revertible:
        raise ApplyError(f"the patch {record.from_label} -> {record.to_label} moved "
                         "data to a new layout and cannot be reverted",
                         hint="apply a patch that goes back instead (made FROM the newer release)")
    base, size = record.region
    # every function of the patch by name; the region as a whole catches the rest (cold parts)
    ranges = [Range(base, base + size, f"{record.to_label} patch code")]
    ranges += [Range(lo, lo + n, k.split("::", 1)[1]) for k, (lo, n) in record.functions.items()]
    proc = Process(pid, check_writes=config.check_ptrace_writes)
    by = revert_audit(record)
    _revert(proc, record, records, ranges, config, by)
    log_event(audit_line("revert", pid, record, by), config)


def _tombstone(record, by) -> tuple[bytes, int]:
    """The record marked reverted and by whom (the in-process half of the audit: status lists
    reverted patches), and how many bytes of the region it keeps (whole pages)."""
    base, size = record.region
    full = dataclasses.replace(record, reverted=by).encode(REVERTED_MAGIC)
    keep = min(size, -(-len(full) // procfs.PAGE_SIZE) * procfs.PAGE_SIZE)
    # no longer than `full`: the region's size only loses digits
    return dataclasses.replace(record, reverted=by, region=(base, keep)).encode(
        REVERTED_MAGIC), keep


def _revert(proc: Process, record, records, ranges, config, by) -> None:
    from katana.safety.safepoint import Checker, wait_for_safe_point

    base, size = record.region
    checker = Checker(proc.pid, ranges, return_hooks=config.return_hooks, records=records)
    try:
        wait_for_safe_point(proc, ranges, config.max_wait_for_patching,
                            config.safe_point_retry_interval, checker=checker)
        check_interrupts()  # the last moment to give up: from here the revert completes
        fault_point("revert-stopped")
        if [r.region for r in read_records(proc.pid)] != [r.region for r in records]:
            raise ApplyError(f"another katana patched or reverted process {proc.pid} meanwhile; "
                             "nothing was reverted", hint="see katana status, then try again")
        for site in record.sites:
            if proc.read(site.address, len(site.new)) != site.new:
                raise ApplyError(f"the code at {site.address:#x} changed since the patch was "
                                 "applied; refusing to revert")
        tomb, keep = _tombstone(record, by)
        written = []
        try:
            for site in reversed(record.sites):
                proc.write(site.address, site.original)
                written.append(site)
            # The record goes with the jumps, in the same stop (rewritten as reverted): a
            # katana killed after this leaves an unreachable mapping, never a record of a
            # patch that is not there.
            proc.write(base, tomb)
        except KatanaError as e:
            for site in written:
                proc.write(site.address, site.new)
            raise ApplyError(f"revert failed ({e.message}); the patch stays applied") from e
        fault_point("reverted")
        # No jump leads into the region and no thread is inside it (the safe point): let the
        # process run, then unmap through a borrowed thread (all but the record's pages).
        proc.resume()
        checker.hooks.unmap_running(proc)
        alloc.unmap_running(proc, [*record.extra_regions] +
                            ([(base + keep, size - keep)] if keep < size else []))
    except BaseException:
        if proc.seized and checker.hooks.base:
            if proc.attached:
                proc.resume()
            checker.hooks.unmap_running(proc)
        raise
    finally:
        checker.close()
        if proc.seized:
            proc.detach()
