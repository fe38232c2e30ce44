"""What ``katana apply`` decides before the target is stopped.

Verify (the PO reads cleanly, the process runs its FROM build and does not have it yet), resolve
what the patch uses (earlier patches, the executable, the loaded libraries), and plan the layout,
the jumps, the safety ranges, the references to transformed variables and the record. Nothing
here stops or writes the target, so none of it adds to the time the target is held.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from katana.elf.executable import Executable, Reference, open_executable, references_to
from katana.elf.relocs import (
    R_X86_64_64,
    R_X86_64_DTPOFF32,
    R_X86_64_NONE,
    R_X86_64_PC32,
    R_X86_64_PLT32,
    TLS_INDEX,
    field_size,
)
from katana.elf.symtab import STT_FUNC, STT_OBJECT, STT_TLS
from katana.errors import AlreadyAppliedError, ApplyError, MismatchError
from katana.live.loader import Layout, plan_layout
from katana.live.objects import PatchedObject, find_object, library_with_build
from katana.live.record import Audit, Record, Site, key, read_records
from katana.po.model import PatchObject, Symbol, VariablePatch
from katana.po.reader import read_po, read_po_bytes
from katana.target import procfs

JMP_REL32 = 0xE9
JMP_SIZE = 5
# A function too short for `jmp rel32` (the last one of .text, a 1-byte `ret`) takes a 2-byte
# `jmp -7` at its entry to a `jmp rel32` written in the unused bytes just before it.
SHORT_JMP_BACK = b"\xeb\xf9"
SITE_JSON = 96  # bytes a site (an overwritten place) adds to the record, at most


@dataclass
class Redirect:
    name: str
    address: int  # entry of a function that the patch supersedes
    expected: bytes  # what must be there now, from ``start`` (verified while stopped)
    size: int = 0  # of the superseded function: its code never runs again once redirected
    before_entry: bool = False  # the long jump goes just before the entry (see SHORT_JMP_BACK)

    @property
    def start(self) -> int:
        return self.address - JMP_SIZE if self.before_entry else self.address


@dataclass
class Plan:
    """Everything decided before the target is stopped."""

    pid: int
    po: PatchObject
    po_sha256: str
    records: list[Record]  # the patched object's own, oldest first: they stack
    exe: Executable  # the patched object: the program's executable, or a library
    bias: int
    obj: PatchedObject | None = None
    all_records: list[Record] = field(default_factory=list)  # every object's, oldest first
    externals: dict[int, int] = field(default_factory=dict)  # PO symbol -> address
    far: set[int] = field(default_factory=set)  # externals that need an absolute stub
    layout: Layout | None = None
    redirects: list[Redirect] = field(default_factory=list)
    safety: list[tuple[int, int, str]] = field(default_factory=list)
    transfers: list[tuple[VariablePatch, int, list[Reference]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # (katana_stacks, katana_nstacks): where the program declares its coroutine stacks
    declared_stacks: tuple[int, int] | None = None
    audit: Audit | None = None  # who applies it, kept in the record
    # a library's thread-local variables the patch uses (PO symbol -> (module id, offset in
    # its block) where reached through __tls_get_addr): resolved afresh by every patch
    library_tls: dict[int, tuple[int, int] | None] = field(default_factory=dict)
    in_program: set[int] = field(default_factory=set)  # far symbols a library's patch calls


_PO_CACHE: dict[tuple[str, int, int], tuple[PatchObject, str]] = {}


def _load(po_path: Path) -> tuple[PatchObject, str]:
    """The PO and its sha256, read once for every process ``katana apply ... all`` patches."""
    st = Path(po_path).stat()
    k = (str(po_path), st.st_mtime_ns, st.st_size)
    if k not in _PO_CACHE:
        # one read: the bytes loaded are the bytes hashed, which the signature policy checked
        data = read_po_bytes(po_path)
        _PO_CACHE[k] = read_po(data, str(po_path)), hashlib.sha256(data).hexdigest()
    return _PO_CACHE[k]


def verify(po_path: Path, pid: int, maps: list[procfs.Mapping] | None = None
           ) -> tuple[PatchObject, str, list[Record], PatchedObject]:
    """The PO and the process belong together: the object it is for (the program, or a library
    the process maps) runs the PO's FROM build now. ``maps``: the process's, if at hand."""
    po, sha = _load(po_path)
    procfs.check_process(pid)
    records = read_records(pid, maps)
    obj = find_object(pid, po.meta, records)
    # what counts is the build the object runs now, so that v0 -> v1, v1 -> v2, v2 -> v1 can
    # be followed by v1 -> v2 again
    if po.meta.from_build_id != obj.effective_build_id:
        _refuse(po, sha, pid, obj)
    return po, sha, records, obj


def _refuse(po: PatchObject, sha: str, pid: int, obj: PatchedObject) -> None:
    m, running, mine = po.meta, obj.effective_build_id, obj.records
    had = next((r for r in reversed(mine) if r.po_sha256 == sha), None)
    if had is not None or running == m.to_build_id:
        now = f", build-id {running[:12]}" if running == m.to_build_id else \
            f", and runs {obj.describe()} now"
        what = "already has this patch" if had is not None else \
            "already runs the build this patch leads to"
        error = AlreadyAppliedError if running == m.to_build_id else MismatchError
        raise error(f"process {pid} {what} ({m.program} {m.from_label} -> {m.to_label})"
                    f"{now}", hint="katana status shows what a process has applied")
    if obj.kind == "program":
        program = mine[-1].program if mine else Path(procfs.exe_path(pid)).name
        if Path(program).name != Path(m.program).name and \
                library_with_build(pid, m.from_build_id) is None:
            raise MismatchError(f"process {pid} runs another program ({program}, build-id "
                                f"{running}); the patch is for {m.program}",
                                hint=f"katana ps --program {Path(m.program).name} lists its "
                                     "processes")
    what = "its library" if obj.kind == "library" else "process"
    raise MismatchError(
        f"{what} {obj.name} in process {pid} runs build-id {running} ({obj.describe()}), "
        f"but the patch is for {m.program} {m.from_label}, build-id {m.from_build_id}",
        hint=_mismatch_hint(pid, po, obj))


def _mismatch_hint(pid: int, po: PatchObject, obj: PatchedObject) -> str:
    if obj.kind == "program":
        lib = library_with_build(pid, po.meta.from_build_id)
        if lib is not None:  # made by a katana that did not record that it is a library's
            return (f"the patch is for the library {lib.library.path} that this process maps, "
                    "but does not say so: make it again with this katana (katana generate "
                    "OLD NEW LIBRARY)")
    return (f"make the patch from the release {obj.name} runs in this process (katana status "
            "shows it, per object)")


def _lookup_existing(plan: Plan, name: str, file: str | None, entry: bool = False) -> int | None:
    """Address of a function or variable of the running program, newest version first; with
    ``entry``, the executable's own entry of a function first (what function pointers hold)."""
    sym = plan.exe.lookup(name, file) if entry else None
    if sym is not None:
        return sym.value + plan.bias
    k = key(name, file)
    for record in reversed(plan.records):
        if k in record.symbols:
            return record.symbols[k]
    sym = plan.exe.lookup(name, file)
    if sym is None:
        return None
    if sym.type == STT_OBJECT and file is None and plan.obj is not None:
        bound = plan.obj.bound_variable(plan.pid, name)
        if bound is not None:
            return bound
    if sym.type != STT_TLS:
        return sym.value + plan.bias
    # a thread-local variable has no one address: the code reaches it from the thread pointer
    if plan.obj is not None and plan.obj.kind == "library":
        return plan.obj.tp_offset(plan.pid, sym.value, name)
    return plan.exe.tp_offset(sym)


def _resolve_externals(plan: Plan) -> list[tuple[int, Symbol]]:
    """Resolve symbols of the program; return those left for the shared libraries."""
    from katana.target.symbols import ProcessSymbols

    libs = []
    for i, sym in enumerate(plan.po.symbols):
        if sym.section is not None:
            continue
        tls = _library_tls(plan, i, sym)
        if tls is not None:
            plan.externals[i] = tls
            continue
        address = _lookup_existing(plan, sym.name, sym.file if sym.local else None, sym.entry)
        if address is not None:
            plan.externals[i] = address
        elif sym.local:
            raise ApplyError(f"the patch refers to {sym.name} of {sym.file}, which the running "
                             "program does not have", hint="was the PO made for this program?")
        else:
            libs.append((i, sym))
    if libs:
        symbols = ProcessSymbols(plan.pid)
        for i, sym in libs:
            exported = _exported(symbols, sym.name)
            if exported is None and _in_program(plan, symbols, i, sym):
                continue
            if exported is None:
                raise ApplyError(f"the patch uses {sym.name}, found neither in the program "
                                 "nor in any library it has loaded")
            if not exported.function and _pc_relative_uses(plan.po, i):
                raise ApplyError(
                    f"the patch reads {sym.name}, a library variable the program never used: "
                    "it lies beyond the 32-bit reach of the patch's code",
                    hint="use it in the program first, or reach it through a function")
            plan.far.add(i)
    return libs


def _in_program(plan: Plan, symbols, index: int, sym: Symbol) -> bool:
    """A library's patch that calls the program (a plugin calling its host's API): the
    function is reached through an absolute-jump stub, as a library's is from a program."""
    if plan.obj is None or plan.obj.kind != "library":
        return False
    found = symbols.executable.find_global(sym.name)
    if found is None or found.type != STT_FUNC:
        if found is not None and _pc_relative_uses(plan.po, index):
            raise ApplyError(f"the patch of {plan.obj.name} reads {sym.name}, a variable of the "
                             "program, beyond the 32-bit reach of the patch's code",
                             hint="reach it through a function of the program")
        return False
    plan.externals[index] = found.value + symbols.bias
    plan.far.add(index)
    plan.in_program.add(index)
    return True


def _library_tls(plan: Plan, index: int, sym: Symbol) -> int | None:
    """For a library's patch, what the loader needs of one of its thread-local variables:
    its offset from the thread pointer for initial-exec code (a GOTTPOFF slot), its tls_index
    for code that calls __tls_get_addr (TLSGD, TLSLD, DTPOFF32). None: not one of them."""
    if plan.obj is None or plan.obj.kind != "library":
        return None
    found = plan.exe.lookup(sym.name, sym.file if sym.local else None)
    if found is None or found.type != STT_TLS:
        return None
    types = {r.type for sec in plan.po.sections for r in sec.relocs if r.symbol == index}
    plan.library_tls[index] = None
    if types & (TLS_INDEX | {R_X86_64_DTPOFF32}):
        plan.library_tls[index] = plan.obj.tls_index(plan.pid, found.value, sym.name)
    if types - TLS_INDEX - {R_X86_64_DTPOFF32}:
        return plan.obj.tp_offset(plan.pid, found.value, sym.name)
    return 0  # reached through __tls_get_addr only: it has no one address


def _exported(symbols, name: str):
    """The first loaded library's definition of ``name``, or None (an IFUNC is resolved only
    at commit: that needs the process stopped)."""
    from katana.target.dynsym import library_symbols

    for lib in symbols.libraries():
        found = library_symbols(lib.path).find(name)
        if found is not None:
            return found
    return None


def _pc_relative_uses(po: PatchObject, index: int) -> bool:
    return any(r.symbol == index and r.type in (R_X86_64_PC32, R_X86_64_PLT32)
               for sec in po.sections for r in sec.relocs)


def _plan_redirects(plan: Plan) -> None:
    sites = {s.address: s for r in plan.records for s in r.sites}
    for f in plan.po.meta.functions:
        if f.status != "changed":
            continue
        name, file = f.old_name or f.name, f.file if f.local else None
        exe_sym = plan.exe.lookup(name, file)
        if exe_sym is not None:
            plan.redirects.append(_exe_redirect(plan, name, exe_sym, sites))
        for record in plan.records:  # earlier patches' copies jump on to the newest
            if key(name, file) in record.functions:
                address, size = record.functions[key(name, file)]
                current = sites[address].new[:JMP_SIZE] if address in sites else b""
                plan.redirects.append(Redirect(name, address, current, size))


def _exe_redirect(plan: Plan, name: str, sym, sites: dict[int, Site]) -> Redirect:
    before = plan.exe.room(sym) < JMP_SIZE
    if before and (plan.exe.room(sym) < len(SHORT_JMP_BACK) or
                   plan.exe.gap_before(sym) < JMP_SIZE):
        raise ApplyError(f"{name} is {sym.size} bytes long with no room around it for a jump",
                         hint="build with the katana SCons tool: its "
                              "-fpatchable-function-entry=5,5 leaves room before every function")
    address = sym.value + plan.bias
    start, length = (address - JMP_SIZE, JMP_SIZE + len(SHORT_JMP_BACK)) if before else \
        (address, max(sym.size, JMP_SIZE))
    # Not yet redirected: it must still hold what the executable file has there. (The PO's
    # old_code is the FROM build's bytes, which for a stacked patch is another executable:
    # its call displacements differ from the running one's.)
    if start in sites:
        expected = sites[start].new + (sites[address].new if before else b"")
    else:
        expected = plan.exe.read(start - plan.bias, length)
    return Redirect(name, address, expected, sym.size, before)


def _plan_safety(plan: Plan) -> None:
    for ref in plan.po.meta.safety:
        file = ref.file if ref.local else None
        sym = plan.exe.lookup(ref.name, file)
        if sym is not None:
            plan.safety.append((sym.value + plan.bias, sym.value + plan.bias + sym.size,
                                ref.name))
        for record in plan.records:
            hit = record.functions.get(key(ref.name, file))
            if hit is not None:
                plan.safety.append((hit[0], hit[0] + hit[1], ref.name))


def _plan_transfers(plan: Plan) -> None:
    """Where each transformed variable lives now, and every reference the program has to it."""
    for v in plan.po.meta.variables:
        if v.status != "transformed":
            continue
        name, file = v.old_name or v.name, v.file if v.local else None
        old = _lookup_existing(plan, name, file)
        if old is None:
            raise ApplyError(f"variable {name} is not in the running program")
        in_exe = plan.exe.lookup(name, file)
        if plan.obj is not None and plan.obj.kind == "library" and in_exe is not None and \
                in_exe.value + plan.bias != old:
            raise ApplyError(
                f"variable {name} of {plan.obj.name} lives in the program (its copy "
                "relocation), whose references to it a library's patch cannot re-aim: its "
                "layout cannot change this way",
                hint="keep the variable's type, or reach it only through functions of the "
                     "library (then the program has no copy)")
        refs = [dataclasses.replace(r, address=r.address + plan.bias) for r in
                references_to(plan.exe, old - plan.bias, old - plan.bias + v.old_size)] \
            if in_exe is not None and in_exe.value + plan.bias == old else []
        if in_exe is not None and in_exe.value + plan.bias == old and plan.obj is not None:
            refs += plan.obj.got_slots(plan.pid, old, v.old_size)
        for record in plan.records:  # earlier patches' code refers to it too
            refs += [Reference(*site) for site in record.refs.get(key(name, file), [])]
        plan.transfers.append((v, old, refs))


def _plan_declared_stacks(plan: Plan) -> None:
    # the program declares them, whichever object the patch is for
    exe, bias = plan.exe, plan.bias
    if plan.obj is not None and plan.obj.kind != "program":
        exe = open_executable(f"/proc/{plan.pid}/exe")
        bias = procfs.load_bias(plan.pid) if exe.pie else 0
    table, count = exe.lookup("katana_stacks"), exe.lookup("katana_nstacks")
    if table is not None and count is not None:
        plan.declared_stacks = (table.value + bias, count.value + bias)


def prepare(po_path: Path, pid: int, audit: Audit | None = None,
            maps: list[procfs.Mapping] | None = None) -> Plan:
    """Verify and plan; nothing is stopped or written yet. ``maps``: the process's mappings,
    read once by the caller for what comes before the seize."""
    started = time.monotonic()
    po, sha, records, obj = verify(po_path, pid, maps)
    exe = open_executable(obj.path)
    bias = obj.bias if exe.pie else 0
    # before the record is sized
    plan = Plan(pid, po, sha, obj.records, exe, bias, obj, records, audit=audit)
    _resolve_externals(plan)
    _plan_redirects(plan)
    _plan_safety(plan)
    _plan_transfers(plan)
    _plan_declared_stacks(plan)
    plan.layout = plan_layout(po, _record_reserve(plan), plan.far)
    plan.timings["prepare"] = time.monotonic() - started
    return plan


def new_address(plan: Plan, base: int, index: int) -> int:
    sym = plan.po.symbols[index]
    assert plan.layout is not None and sym.section is not None
    return base + plan.layout.offsets[sym.section] + sym.value


def build_record(plan: Plan, base: int, sites: list[Site]) -> Record:
    m = plan.po.meta
    assert plan.layout is not None
    rec = Record(m.program, m.from_label, m.to_label, m.from_build_id, m.to_build_id,
                 plan.po_sha256, (base, plan.layout.size), time.time(), kind=m.kind,
                 soname=m.soname)
    for f in m.functions:
        rec.functions[key(f.name, f.file if f.local else None)] = [
            new_address(plan, base, f.symbol), f.new_size]
    for i, sym in enumerate(plan.po.symbols):
        if sym.kind in ("func", "object") and sym.section is not None:
            rec.symbols[key(sym.name, sym.file if sym.local else None)] = \
                new_address(plan, base, i)
        elif sym.section is None and i in plan.externals and i not in plan.far \
                and not sym.entry and i not in plan.library_tls:
            # library symbols are looked up afresh by the next patch (they need a stub)
            name = sym.new_name or sym.name
            rec.symbols[key(name, sym.file if sym.local else None)] = plan.externals[i]
    rec.sites = sites
    rec.audit = plan.audit
    rec.refs = _data_references(plan, base)
    rec.variables = [{"name": v.name, "status": v.status} for v in m.variables]
    rec.revertible = not any(v.status == "transformed" for v in m.variables)
    rec.cfi = [[base + plan.layout.offsets[int(k)], blob] for k, blob in sorted(m.cfi.items())]
    return rec


def _record_reserve(plan: Plan) -> int:
    """Room for the record: its size with every address at its longest, plus the sites (jumps
    and re-aimed references) that only the commit knows the bytes of."""
    plan.layout = plan_layout(plan.po, 0, plan.far)
    provisional = build_record(plan, 2**47 - 1, [])
    sites = 2 * len(plan.redirects) + sum(len(refs) for _v, _o, refs in plan.transfers)
    return len(provisional.encode()) + sites * SITE_JSON + 1024


def _data_references(plan: Plan, base: int) -> dict[str, list[list]]:
    """Where the patch's code and data refer to variables (by the TO name), so that a later
    patch that transforms one of them can re-aim these references too."""
    assert plan.layout is not None
    refs: dict[str, list[list]] = {}
    for i, sec in enumerate(plan.po.sections):
        for r in sec.relocs:
            sym = plan.po.symbols[r.symbol]
            if sym.kind != "object" or r.type == R_X86_64_NONE:
                continue
            k = key(sym.new_name or sym.name, sym.file if sym.local else None)
            if r.symbol in plan.layout.got_offset:  # through a GOT slot: the slot holds it
                site = [base + plan.layout.got_offset[r.symbol], R_X86_64_64, 8, 0, True]
            else:
                site = [base + plan.layout.offsets[i] + r.offset, r.type, field_size(r.type),
                        max(r.addend, 0), sec.kind == "text"]
            refs.setdefault(k, []).append(site)
    return refs


