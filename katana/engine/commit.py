"""The writes of ``katana apply``, done while the target is stopped at a safe point.

Map the region, link the PO there, move transformed variables, write the jumps, write the
record. Every write is remembered with what it replaced, so that any failure undoes them all
and the process carries on exactly as before.
"""

from __future__ import annotations

import struct

from katana.elf.executable import Reference
from katana.elf.relocs import R_X86_64_32
from katana.engine import alloc, inject
from katana.engine.loader import link
from katana.engine.plan import JMP_REL32, JMP_SIZE, SHORT_JMP_BACK, Plan, build_record, new_address
from katana.engine.process import Process
from katana.engine.record import Record, Site, read_records
from katana.engine.transfer import StateTransfer
from katana.errors import ApplyError, KatanaError


class Commit:
    """The writes of one apply, undone in reverse order if anything fails."""

    def __init__(self, plan: Plan, proc: Process) -> None:
        self.plan = plan
        self.proc = proc
        self.base = 0
        self.sites: list[Site] = []
        self.extra: list[tuple[int, int]] = []

    def run(self) -> Record:
        plan, proc = self.plan, self.proc
        assert plan.layout is not None
        if [r.region for r in read_records(plan.pid)] != [r.region for r in plan.records]:
            raise ApplyError(f"another katana patched or reverted process {plan.pid} meanwhile",
                             hint="see katana status; run the command again if the patch "
                                  "still fits")
        for r in plan.redirects:
            live = proc.read(r.start, len(r.expected)) if r.expected else b""
            if live != r.expected:
                raise ApplyError(f"{r.name} at {r.address:#x} is not what the patch expects "
                                 "(the process was modified by something else)")
        self.base = alloc.map_near(proc, plan.layout.size,
                                   inject.PROT_READ | inject.PROT_WRITE)
        self._resolve_libraries()
        image = link(plan.po, plan.layout, self.base, lambda i, _s: plan.externals[i])
        start = plan.layout.text_start
        proc.write(self.base + start, bytes(image[start:]))
        inject.mprotect(proc, self.base + start, plan.layout.text_size,
                        inject.PROT_READ | inject.PROT_EXEC)
        self._transfer()
        self._redirect()
        record = build_record(plan, self.base, self.sites)
        record.extra_regions = list(self.extra)
        raw = record.encode()
        if len(raw) > start:
            raise ApplyError("the patch record does not fit its reserved space")
        proc.write(self.base, raw)
        return record

    def _resolve_libraries(self) -> None:
        from katana.engine.symbols import ProcessSymbols

        if self.plan.far:
            symbols = ProcessSymbols(self.proc)
            for i in self.plan.far:
                self.plan.externals[i] = symbols.lookup_library(self.plan.po.symbols[i].name)

    def _transfer(self) -> None:
        """Move transformed variables (and what they point to) into their new layout, then
        re-aim every reference the running program has to their old storage."""
        if not self.plan.transfers:
            return
        st = StateTransfer(self.proc.read, self.plan.po.meta.types)
        for v, old, _refs in self.plan.transfers:
            st.seed(old, new_address(self.plan, self.base, v.symbol),  # type: ignore[arg-type]
                    v.type or "")
        st.discover()
        if st.pointees:
            size = (st.heap_size() + 4095) & ~4095
            heap = alloc.map_near(self.proc, size, inject.PROT_READ | inject.PROT_WRITE)
            self.extra.append((heap, size))
            st.place(heap)
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

    def _redirect(self) -> None:
        by_name = {(f.old_name or f.name): f for f in self.plan.po.meta.functions}
        for r in self.plan.redirects:
            target = new_address(self.plan, self.base, by_name[r.name].symbol)
            self._write(r.start, struct.pack("<Bi", JMP_REL32, target - (r.start + JMP_SIZE)))
            if r.before_entry:  # the long jump is in place: now send the entry to it
                self._write(r.address, SHORT_JMP_BACK)

    def _write(self, address: int, data: bytes) -> None:
        original = self.proc.read(address, len(data))
        self.proc.write(address, data)
        self.sites.append(Site(address, original, data))

    def undo(self) -> None:
        """Put back every overwritten byte and free the region (best effort, newest first)."""
        for site in reversed(self.sites):
            try:
                self.proc.write(site.address, site.original)
            except KatanaError:
                pass  # keep undoing the rest; the caller reports the original failure
        for lo, size in self.extra:
            try:
                inject.munmap(self.proc, lo, size)
            except KatanaError:
                pass
        if self.base and self.plan.layout is not None:
            try:
                inject.munmap(self.proc, self.base, self.plan.layout.size)
            except KatanaError:
                pass


