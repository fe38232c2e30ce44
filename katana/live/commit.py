"""The writes of ``katana apply``: staged while the target runs, switched on at a safe point.

Map the region, link the PO there and make its code executable (the target runs: no jump leads
there yet); then, stopped, move transformed variables, write the jumps and the record. Every
write is remembered with what it replaced, so that any failure undoes them all and the process
carries on exactly as before.
"""

from __future__ import annotations

import struct

from katana.elf.executable import Reference
from katana.elf.relocs import R_X86_64_32
from katana.errors import ApplyError, KatanaError
from katana.live.loader import link
from katana.live.plan import JMP_REL32, JMP_SIZE, SHORT_JMP_BACK, Plan, build_record, new_address
from katana.live.record import HEADER, Record, Site, read_records
from katana.live.transfer import StateTransfer
from katana.target import alloc, inject, procfs
from katana.target.borrow import Borrower
from katana.target.process import Process, fault_point


class Commit:
    """The writes of one apply, undone in reverse order if anything fails.

    ``stage()`` runs while the target runs (seized, not stopped): the region is mapped by a
    borrowed thread (``borrow.Borrower``), the code linked at its final address, written and
    made read-execute; nothing can reach it until the jumps exist. ``run()``, at the safe
    point, checks the bytes it overwrites, writes the jumps and the record, and nothing else
    (state transfer aside). ``undo()`` puts bytes back while stopped; ``free()`` unmaps the
    region once the target runs again.
    """

    def __init__(self, plan: Plan, proc: Process) -> None:
        self.plan = plan
        self.proc = proc
        self.base = 0
        self.sites: list[Site] = []
        self.extra: list[tuple[int, int]] = []
        self._writes: list[tuple[int, bytes, bytes]] = []  # address, expected now, new bytes
        self._record: bytes | None = None
        self._unplanned: list[tuple[int, bytes]] = []  # read at stage, checked when stopped
        self._recorded = False
        self._spans: list[tuple[int, int]] | None = None  # see _plan_spans
        self._checks: list[tuple[int, int, bytes, str]] = []
        self._jumps: list[tuple[int, int, bytes]] = []
        self._heap: tuple[int, int] | None = None  # room for moved pointees, mapped at stage
        self._heap_used = False

    def stage(self) -> None:
        """Everything that does not need the target stopped (the process seized)."""
        plan, proc = self.plan, self.proc
        assert plan.layout is not None
        maps = proc.maps()
        if [r.region for r in read_records(plan.pid, maps)] != \
                [r.region for r in plan.all_records]:
            # Seized, no other katana can change it from here on.
            raise ApplyError(f"another katana patched or reverted process {plan.pid} meanwhile",
                             hint="see katana status; run the command again if the patch "
                                  "still fits")
        borrower = Borrower(proc, maps)
        rx = inject.PROT_READ | inject.PROT_EXEC
        # The code's pages are made read-execute by the same borrowed thread, right after
        # the mmap (one borrowing); the code is then written through /proc/PID/mem, which a
        # tracer may do into a read-only private mapping. Nothing leads there yet.
        text = (plan.layout.text_start, plan.layout.text_size, rx) \
            if plan.layout.text_size else None
        try:
            obj = plan.obj
            # within rel32 reach of the object patched: the program, or a library
            near = None if obj is None else (*obj.extent, obj.low_2g)
            self.base = alloc.map_running(proc, borrower, plan.layout.size,
                                          inject.PROT_READ | inject.PROT_WRITE, maps, near,
                                          protect=text)
            if text and not alloc.protected(procfs.maps_text(plan.pid), self.base + text[0],
                                            text[1], rx):
                raise ApplyError(f"mprotect of the patch code in process {plan.pid} failed")
            self._resolve_libraries()
            image = link(plan.po, plan.layout, self.base, lambda i, _s: plan.externals[i],
                         self._tls_index)
            start = plan.layout.text_start
            proc.write(self.base + start, bytes(image[start:]))
            if plan.transfers:
                self._map_heap(borrower, near)
        finally:
            borrower.close()
        self._plan_writes()
        self._plan_spans(maps)  # the patched object's and earlier regions' mappings, as read here
        if not plan.transfers:
            self._record = self._encode_record()

    def _transfer_state(self) -> StateTransfer:
        st = StateTransfer(self.proc.read, self.plan.po.meta.types)
        for v, old, _refs in self.plan.transfers:
            st.seed(old, new_address(self.plan, self.base, v.symbol),  # type: ignore[arg-type]
                    v.type or "")
        return st

    def _map_heap(self, borrower: Borrower, near: tuple[int, int, bool] | None) -> None:
        """Map the room the pointees of transformed variables move to, while the process runs:
        at the safe point no system call is made in the target (an injected one would leave a
        thread with borrowed registers if katana died in it). The pointees are counted on the
        running process, so the data may grow before the stop: twice that, and some more."""
        try:
            st = self._transfer_state()
            st.discover()
            need = st.heap_size()
        except KatanaError:
            need = 0  # read while the program writes: the count at the stop decides
        size = -(-(2 * need + HEAP_SLACK) // procfs.PAGE_SIZE) * procfs.PAGE_SIZE
        heap = alloc.map_running(self.proc, borrower, size,
                                 inject.PROT_READ | inject.PROT_WRITE, None, near)
        self._heap = (heap, size)
        self.extra.append(self._heap)

    @property
    def spare_heap(self) -> bool:
        """The room mapped for pointees that none needed at the stop (see ``drop_spare``)."""
        return self._heap is not None and not self._heap_used

    def drop_spare(self) -> None:
        """Unmap the unused pointee room; the process runs (seized) meanwhile."""
        if not self.spare_heap:
            return
        assert self._heap is not None
        self.extra.remove(self._heap)
        try:
            alloc.unmap_running(self.proc, [self._heap])
        except KatanaError:
            pass  # the process died, or no thread could be borrowed: unreachable, it stays
        self._heap = None

    def _tls_index(self, index: int) -> tuple[int, int]:
        found = self.plan.library_tls.get(index)
        if found is None:
            name = self.plan.po.symbols[index].name
            raise ApplyError(f"the patch reaches {name} through __tls_get_addr, which katana "
                             "supports for a library's own thread-local variables only")
        return found

    def _plan_writes(self) -> None:
        by_name = {(f.old_name or f.name): f for f in self.plan.po.meta.functions}
        for r in self.plan.redirects:
            target = new_address(self.plan, self.base, by_name[r.name].symbol)
            jump = struct.pack("<Bi", JMP_REL32, target - (r.start + JMP_SIZE))
            # An earlier patch's copy has no expected bytes in the plan: read them now (the
            # process is seized, no other katana can change them before the stop).
            old = r.expected[:JMP_SIZE] or self.proc.read(r.start, JMP_SIZE)
            if not r.expected:
                self._unplanned.append((r.start, old))
            self._writes.append((r.start, old, jump))
            if r.before_entry:  # the long jump is in place: then send the entry to it
                self._writes.append((r.address, r.expected[JMP_SIZE:JMP_SIZE + 2],
                                     SHORT_JMP_BACK))

    def _encode_record(self) -> bytes:
        sites = self.sites + [Site(a, old, new) for a, old, new in self._writes]
        record = build_record(self.plan, self.base, sites)
        # the pointee room counts only if pointees moved there (else it goes after the commit)
        record.extra_regions = [r for r in self.extra if r != self._heap or self._heap_used]
        raw = record.encode()
        if len(raw) > self.plan.layout.text_start:  # type: ignore[union-attr]
            raise ApplyError("the patch record does not fit its reserved space")
        self.record = record
        return raw

    def _plan_spans(self, maps: list[procfs.Mapping] | None = None) -> None:
        """Before the stop: the spans of nearby places read and written as one (one read per
        cluster to check, one write to switch on), and where each check and jump falls."""
        checks = [(r.start, r.expected, r.name) for r in self.plan.redirects if r.expected]
        checks += [(address, old, f"the code at {address:#x}") for address, old in
                   self._unplanned]
        self._spans = _clusters([(a, len(e)) for a, e, _ in checks] +
                                [(a, len(n)) for a, _o, n in self._writes],
                                self.proc.cached_maps() if maps is None else maps)
        self._checks = [(_cluster_of(self._spans, a), a, e, name) for a, e, name in checks]
        self._jumps = [(_cluster_of(self._spans, a), a, new) for a, _o, new in self._writes]

    def run(self) -> Record:
        """At the safe point: check, redirect, record."""
        proc = self.proc
        if self._spans is None:
            self._plan_spans()
        spans = self._spans
        # One read per cluster of nearby places (the executable's text, an earlier region)
        # instead of one per function: the stop stays flat in patch size.
        live = {lo: bytearray(proc.read(lo, hi - lo)) for lo, hi in spans}
        for lo, address, expected, name in self._checks:
            if live[lo][address - lo:address - lo + len(expected)] != expected:
                raise ApplyError(f"{name} at {address:#x} is not what the patch expects "
                                 "(the process was modified by something else)")
        if self.plan.transfers:
            self._transfer()
            # references re-aimed in the executable's code: read the spans again
            live = {lo: bytearray(proc.read(lo, hi - lo)) for lo, hi in spans}
        raw = self._record if self._record is not None else self._encode_record()
        fault_point("stopped")
        # The record first: until a jump is written it counts for nothing (read_records skips
        # a record none of whose sites holds its new bytes), so a katana killed between the two
        # leaves a process that is wholly the old version. Then one write per cluster: the
        # bytes just read with the jumps spliced in, so a patch whose functions are all in the
        # executable is switched on by a single write, whatever its size.
        proc.write(self.base, raw)
        self._recorded = True
        fault_point("recorded")
        for lo, address, new in self._jumps:
            live[lo][address - lo:address - lo + len(new)] = new
        for lo, _hi in spans:
            proc.write(lo, bytes(live[lo]))
        self.sites += [Site(address, old, new) for address, old, new in self._writes]
        fault_point("committed")
        return self.record

    def _resolve_libraries(self) -> None:
        from katana.target.symbols import ProcessSymbols

        far = self.plan.far - self.plan.in_program  # the program's are resolved already
        if far:
            symbols = ProcessSymbols(self.proc)
            for i in far:
                self.plan.externals[i] = symbols.lookup_library(self.plan.po.symbols[i].name)

    def _transfer(self) -> None:
        """Move transformed variables (and what they point to) into their new layout, then
        re-aim every reference the running program has to their old storage."""
        if not self.plan.transfers:
            return
        st = self._transfer_state()
        st.discover()
        fault_point("transfer")
        if st.pointees:
            need, (heap, room) = st.heap_size(), self._heap or (0, 0)
            if need > room:
                raise ApplyError(f"the live data to move grew while the patch was staged "
                                 f"({need} bytes now, {room} mapped for it)",
                                 hint="run the command again")
            st.place(heap)
            self._heap_used = True
        for address, data in st.writes():
            self.proc.write(address, data)
        dead = [(r.address, r.address + r.size) for r in self.plan.redirects]
        for v, old, refs in self.plan.transfers:
            base = new_address(self.plan, self.base, v.symbol)  # type: ignore[arg-type]
            for ref in refs:
                address = ref.address
                if any(lo <= address < hi for lo, hi in dead):
                    continue  # in a replaced function: never runs again
                self._repoint(address, ref, self._moved_by(st, v.name, old, base, ref))

    @staticmethod
    def _moved_by(st: StateTransfer, name: str, old: int, base: int, ref: Reference) -> int:
        """How far a reference to a transformed variable must move. Unchanged code was compiled
        against the new layout as much as the old (its offsets are the same in both builds, or
        it would have changed): it moves with the variable. A pointer stored in data is a live
        value: it follows its field to wherever the transformation put it."""
        if ref.code:
            return base - old
        new = st.new_address(old + ref.offset)
        if new is None:
            raise ApplyError(f"a pointer at {ref.address:#x} refers to a part of {name} that the "
                             "new layout drops")
        return new - (old + ref.offset)

    def _repoint(self, address: int, ref: Reference, delta: int) -> None:
        raw = self.proc.read(address, ref.size)
        signed = ref.type != R_X86_64_32  # zero-extended; every other field is signed
        value = int.from_bytes(raw, "little", signed=signed) + delta
        try:
            new = value.to_bytes(ref.size, "little", signed=signed)
        except OverflowError:
            raise ApplyError(f"a reference at {address:#x} cannot reach the new storage") from None
        self.proc.write(address, new)
        self.sites.append(Site(address, raw, new))

    def undo(self) -> None:
        """Put back every overwritten byte, newest first (best effort; while stopped)."""
        for site in reversed(self.sites):
            try:
                self.proc.write(site.address, site.original)
            except KatanaError:
                pass  # keep undoing the rest; the caller reports the original failure
        self.sites = []
        if self._recorded:
            try:
                self.proc.write(self.base, bytes(HEADER.size))
            except KatanaError:
                pass  # no site holds its new bytes: the record counts for nothing anyway
            self._recorded = False

    def free(self) -> None:
        """Unmap the region (and any transfer heap) once no jump leads there any more; the
        process runs (seized) meanwhile."""
        regions = list(self.extra)
        if self.base and self.plan.layout is not None:
            regions.append((self.base, self.plan.layout.size))
        if not regions:
            return  # and no seize for nothing
        try:
            self.proc.seize()
            alloc.unmap_running(self.proc, regions)
        except KatanaError:
            pass  # the process died, or is stopped: an unreachable mapping stays behind
        self.base, self.extra = 0, []


HEAP_SLACK = 64 << 10  # pointee room mapped beyond twice what was counted at stage
CLUSTER_GAP = 64 << 10  # places closer than this are read and written as one span


def _clusters(places: list[tuple[int, int]], maps: list[procfs.Mapping]
              ) -> list[tuple[int, int]]:
    """[lo, hi) spans covering ``places`` (address, size), merging those less than
    CLUSTER_GAP apart inside one mapping (a span never crosses unmapped memory)."""
    spans: list[list[int]] = []
    for address, size in sorted(places):
        m = procfs.mapping_at(maps, address)
        if spans and m is not None and m.contains(spans[-1][0]) and \
                address + size <= m.end and address - spans[-1][1] < CLUSTER_GAP:
            spans[-1][1] = max(spans[-1][1], address + size)
        else:
            spans.append([address, address + size])
    return [(lo, hi) for lo, hi in spans]


def _cluster_of(clusters: list[tuple[int, int]], address: int) -> int:
    return next(lo for lo, hi in clusters if lo <= address < hi)
