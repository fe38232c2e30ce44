"""The object of a process a patch is for: its program, or a shared library it maps.

Programs and libraries go down one code path: apply reads the object's ``.symtab`` and adds its
load bias, places the patch within rel32 reach of its image, and stacks the patch on the
object's own records. A library is found by its build-id among the files the process maps
(linked or dlopen'ed, from whatever path), read through /proc/PID/map_files when it may be
read there (the very file mapped, even if the path now names another), else through its path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from katana.elf.buildid import read_build_id
from katana.elf.dynamic import (
    R_X86_64_64,
    R_X86_64_DTPMOD64,
    R_X86_64_GLOB_DAT,
    R_X86_64_RELATIVE,
    R_X86_64_TPOFF64,
    dynamic_relocs,
    read_dynamic,
)
from katana.elf.executable import Reference
from katana.errors import ApplyError, KatanaError, MismatchError, TargetError
from katana.live.record import Record, by_object
from katana.po.model import Meta
from katana.target import procfs
from katana.target.alloc import exe_extent


@dataclass
class PatchedObject:
    kind: str  # "program" | "library"
    name: str  # as the PO names it: the program, or the library's file name (libkv.so)
    path: str  # a file to read its symbols from
    bias: int  # added to its link-time addresses
    build_id: str  # of the file mapped (not what patches made of it)
    extent: tuple[int, int]  # [low, high) of its image in the process, .bss included
    soname: str | None = None
    records: list[Record] = field(default_factory=list)  # its patches, oldest first
    _tls: tuple[int | None, int | None] | None = field(default=None, repr=False)

    @property
    def effective_build_id(self) -> str:
        """The build the object behaves as: its newest patch's TO, else its own."""
        return self.records[-1].to_build_id if self.records else self.build_id

    @property
    def low_2g(self) -> bool:
        """Whether new data must lie below 2 GiB: a non-PIE program's code may hold its
        addresses in 32-bit absolute fields; a library's code is position independent."""
        return self.kind == "program" and self.bias == 0 and _is_exec(self.path)

    def describe(self) -> str:
        if self.records:
            return f"{self.name} {self.records[-1].to_label} (patched)"
        return f"{self.name} at {self.path}"

    def bound_variable(self, pid: int, name: str) -> int | None:
        """Where the library's own exported variable ``name`` lives in the process: what the
        dynamic linker bound the library's GOT slot to. That is the program's copy when the
        program refers to the variable (a copy relocation), and the library's code uses that
        one. None: a program, or no slot."""
        if self.kind != "library":
            return None
        for r in dynamic_relocs(self.path):
            if r.type == R_X86_64_GLOB_DAT and r.symbol == name:
                return _read_word(pid, r.offset + self.bias) - r.addend
        return None

    def got_slots(self, pid: int, low: int, size: int) -> list[Reference]:
        """The library's code reaches its own default-visibility variables through its GOT
        (they could be interposed), and its data holds their addresses through dynamic
        relocations: the slots of .rela.dyn that now hold an address in [low, low + size),
        for state transfer to re-aim. A slot that holds another address (the program's copy
        of the variable) is left alone."""
        if self.kind != "library":
            return []
        found = []
        for r in dynamic_relocs(self.path):
            if r.type not in (R_X86_64_GLOB_DAT, R_X86_64_64, R_X86_64_RELATIVE):
                continue
            target = (r.addend if r.type == R_X86_64_RELATIVE else r.value + r.addend) + \
                self.bias
            if not (r.value or r.type == R_X86_64_RELATIVE) or not low <= target < low + size:
                continue
            if _read_word(pid, r.offset + self.bias) == target:
                found.append(Reference(r.offset + self.bias, R_X86_64_64, 8, target - low,
                                       False))
        return found

    def tls_block(self, pid: int) -> tuple[int | None, int | None]:
        """(module id, offset of the block from the thread pointer) of the library's
        thread-local block, each None when the library's own relocations do not tell it.

        The dynamic linker fills the library's GOT: an R_X86_64_TPOFF64 slot (initial-exec
        code) with ``S + A - l_tls_offset``, an R_X86_64_DTPMOD64 slot (code that calls
        __tls_get_addr) with the module id (glibc, elf_machine_rela). One slot of each read in
        the process tells where the block is, without knowing ``struct link_map``; the
        offset holds in every thread, since a block at a fixed offset (static TLS) is laid out
        so in each."""
        if self._tls is None:
            module = tp = None
            with open(f"/proc/{pid}/mem", "rb") as mem:
                for r in dynamic_relocs(self.path):
                    if r.type not in (R_X86_64_TPOFF64, R_X86_64_DTPMOD64) or \
                            (r.symbol and not r.value):
                        continue  # another module's variable
                    mem.seek(r.offset + self.bias)
                    live = int.from_bytes(mem.read(8), "little", signed=True)
                    if r.type == R_X86_64_TPOFF64 and tp is None:
                        tp = live - (r.value + r.addend)
                    elif r.type == R_X86_64_DTPMOD64 and module is None:
                        module = live
            self._tls = (module, tp)
        return self._tls

    def tp_offset(self, pid: int, tls_value: int, name: str) -> int:
        """Offset from the thread pointer of the library's thread-local variable at
        ``tls_value`` (its st_value: an offset in the library's TLS block)."""
        tp = self.tls_block(pid)[1]
        if tp is not None:
            return tp + tls_value
        raise ApplyError(
            f"the patch reaches the thread-local variable {name} of {self.name} with the "
            "initial-exec model, but the library's own code never does (it calls "
            "__tls_get_addr), so its block may have no fixed place",
            hint="reach it in the new code as the old code does: declare it "
                 "__attribute__((tls_model(\"initial-exec\"))) in both releases, or in neither")

    def tls_index(self, pid: int, tls_value: int, name: str) -> tuple[int, int]:
        """(module id, offset in the block) of the library's thread-local variable, what
        __tls_get_addr takes."""
        module = self.tls_block(pid)[0]
        if module is not None:
            return module, tls_value
        raise ApplyError(
            f"the patch reaches the thread-local variable {name} of {self.name} through "
            "__tls_get_addr, but the library's own code never does (it uses initial-exec), "
            "so its module id is not known",
            hint="reach it in the new code as the old code does: declare it "
                 "__attribute__((tls_model(\"initial-exec\"))) in both releases, or in neither")


def _read_word(pid: int, address: int) -> int:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return int.from_bytes(mem.read(8), "little")


def _is_exec(path: str) -> bool:
    return procfs.elf_load_info(path)[0] == procfs.ET_EXEC


def base_name(name: str) -> str:
    return Path(name).name


def object_records(records: list[Record], kind: str, name: str) -> list[Record]:
    """The records of one object of the process, oldest first (``record.object_key``)."""
    return by_object(records).get(("program", "") if kind == "program" else
                                  (kind, base_name(name)), [])


def program_object(pid: int, meta: Meta, records: list[Record],
                   maps: list[procfs.Mapping] | None = None) -> PatchedObject:
    maps = procfs.read_maps(pid) if maps is None else maps
    exe_maps = procfs.exe_mappings(pid, maps)
    if not exe_maps:
        raise TargetError(f"the executable of process {pid} is not mapped")
    path = f"/proc/{pid}/exe"
    return PatchedObject("program", meta.program, path, procfs.load_bias(pid, maps),
                         read_build_id(path) or "", exe_extent(maps, exe_maps),
                         records=object_records(records, "program", meta.program))


@dataclass(frozen=True)
class MappedLibrary:
    library: procfs.Library
    file: str  # where to read it: /proc/PID/map_files/..., or its path
    build_id: str | None
    soname: str | None


def mapped_libraries(pid: int, maps: list[procfs.Mapping] | None = None) -> list[MappedLibrary]:
    """Every shared library the process maps, with its build-id and soname; also one whose
    file was deleted or replaced since it was loaded (an upgrade in place), when
    /proc/PID/map_files still reaches it."""
    maps = procfs.read_maps(pid) if maps is None else maps
    exe = set(procfs.exe_mappings(pid, maps))
    groups: dict[tuple[str, int], list[procfs.Mapping]] = {}
    for m in maps:
        if m.path.startswith("/") and m not in exe:
            groups.setdefault((m.dev, m.inode), []).append(m)
    found = []
    for group in groups.values():
        if not any(m.executable for m in group):
            continue  # a data file the program maps (locale archive, database)
        path = group[0].path.removesuffix(" (deleted)")
        try:
            file = _mapped_file(pid, group, path)
            e_type, low = procfs.elf_load_info(file)
            base = min((m.start for m in group if m.offset == 0), default=group[0].start)
            lib = procfs.Library(path, base, base - low if e_type == procfs.ET_DYN else 0,
                                 tuple(group))
            found.append(MappedLibrary(lib, file, read_build_id(file),
                                       read_dynamic(file).soname))
        except (KatanaError, OSError):
            continue  # unreadable, or not ELF: it cannot be the library a patch is for
    return sorted(found, key=lambda m: m.library.base)


def _mapped_file(pid: int, group: list[procfs.Mapping], path: str) -> str:
    first = min((m for m in group if m.offset == 0), key=lambda m: m.start, default=group[0])
    mapped = f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"
    if os.access(mapped, os.R_OK):
        return mapped
    # a library seen through another mount namespace (a container) is under /proc/PID/root
    return next((p for p in (path, f"/proc/{pid}/root{path}") if os.path.isfile(p)), path)


def _names(mapped: MappedLibrary) -> set[str]:
    return {base_name(mapped.library.path), mapped.soname or ""} - {""}


def library_object(pid: int, meta: Meta, records: list[Record],
                   maps: list[procfs.Mapping] | None = None) -> PatchedObject:
    """The library ``meta`` is for, as mapped in ``pid``; MismatchError naming the build
    expected and the one mapped, if any."""
    maps = procfs.read_maps(pid) if maps is None else maps
    mine = object_records(records, "library", meta.program)
    # a patched library still maps its own file: its first patch's FROM
    wanted = mine[0].from_build_id if mine else meta.from_build_id
    libraries = mapped_libraries(pid, maps)
    hit = next((m for m in libraries if m.build_id == wanted), None)
    names = {base_name(meta.program), meta.soname or ""} - {""}
    if hit is None:
        others = [m for m in libraries if _names(m) & names]
        seen = "; it maps " + ", ".join(f"{m.library.path} build-id {m.build_id}"
                                        for m in others) if others else \
            f"; it maps no library named {' or '.join(sorted(names))}"
        raise MismatchError(
            f"process {pid} does not map the library this patch is for: {meta.program} "
            f"{meta.from_label}, build-id {meta.from_build_id}{seen}",
            hint=f"apply it to processes that load that build of {meta.program} (katana apply "
                 "PO all finds them); for another build, make the patch from the release it "
                 "was built from")
    lib = hit.library
    own = [m for m in maps if m in lib.mappings]
    return PatchedObject("library", meta.program, hit.file, lib.bias, hit.build_id or "",
                         exe_extent(maps, own), hit.soname, mine)


def find_object(pid: int, meta: Meta, records: list[Record],
                maps: list[procfs.Mapping] | None = None) -> PatchedObject:
    """The object of process ``pid`` that the patch ``meta`` describes is for."""
    if meta.kind == "library":
        return library_object(pid, meta, records, maps)
    return program_object(pid, meta, records, maps)


def library_with_build(pid: int, build_id: str) -> MappedLibrary | None:
    """The library of that build the process maps, if any (a program PO made by a katana that
    did not record that its object is a library)."""
    return next((m for m in mapped_libraries(pid) if m.build_id == build_id), None)
