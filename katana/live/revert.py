"""``katana revert PID``: undo the most recent patch of a process.

Patches stack, so only the newest can go: an older one may be what the newer one's code calls.
The old code must be free to run again and the patch's code out of use, so the safe-point rule is
the patch's own functions (new code) plus everything it redirected.
"""

from __future__ import annotations

import dataclasses

from katana.errors import ApplyError, KatanaError
from katana.live.audit import audit_line, log_event, revert_audit
from katana.live.record import REVERTED_MAGIC, read_records
from katana.target import procfs
from katana.target.borrow import Borrower
from katana.target.inject import SYS_munmap
from katana.target.process import Process, check_interrupts, fault_point, signals_held


def revert_command(pid: int, config, verbosity: int = 1) -> int:
    with signals_held():
        return _revert_command(pid, config, verbosity)


def _revert_command(pid: int, config, verbosity: int) -> int:
    from katana.safety.safepoint import Range

    records = read_records(pid)
    if not records:
        raise ApplyError(f"process {pid} has no katana patch to revert")
    record = records[-1]
    if not record.revertible:
        raise ApplyError(f"the newest patch ({record.from_label} -> {record.to_label}) moved "
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
    if verbosity:
        print(f"{pid}: reverted {record.program} {record.to_label} -> {record.from_label}")
    return 0


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
        borrower = Borrower(proc)
        try:
            for lo, hi in record.extra_regions:
                borrower.syscall(SYS_munmap, lo, hi)
            if keep < size:
                borrower.syscall(SYS_munmap, base + keep, size - keep)
        finally:
            borrower.close()
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
