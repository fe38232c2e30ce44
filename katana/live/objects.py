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
from katana.elf.dynamic import R_X86_64_TPOFF64, read_dynamic
from katana.errors import ApplyError, KatanaError, MismatchError
from katana.live.record import Record
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

    def tp_offset(self, pid: int, tls_value: int, name: str) -> int:
        """Offset from the thread pointer of the library's thread-local variable at
        ``tls_value`` (its st_value: an offset in the library's TLS block), the same in every
        thread. The dynamic linker put the library's block at a fixed offset when the library
        uses initial-exec accesses (DF_STATIC_TLS): the R_X86_64_TPOFF64 slots of its GOT hold
        ``S + A - l_tls_offset`` (glibc, elf_machine_rela), so one slot read tells the offset."""
        for r in read_dynamic(self.path).relocs:
            if r.type != R_X86_64_TPOFF64:
                continue
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(r.offset + self.bias)
                live = int.from_bytes(mem.read(8), "little", signed=True)
            return live - (r.value + r.addend) + tls_value
        raise ApplyError(
            f"the patch reaches the thread-local variable {name} of {self.name}, which reaches "
            "none of its thread-local variables with the initial-exec model, so where its "
            "block lies is not known (katana does not patch __tls_get_addr accesses)",
            hint="declare the library's thread-local variables "
                 "__attribute__((tls_model(\"initial-exec\"))) (or build it with "
                 "-ftls-model=initial-exec)")


def _is_exec(path: str) -> bool:
    return procfs.elf_load_info(path)[0] == procfs.ET_EXEC


def base_name(name: str) -> str:
    return Path(name).name


def object_records(records: list[Record], kind: str, name: str) -> list[Record]:
    """The records of one object of the process, oldest first."""
    return [r for r in records if r.kind == kind and base_name(r.program) == base_name(name)]


def program_object(pid: int, meta: Meta, records: list[Record],
                   maps: list[procfs.Mapping] | None = None) -> PatchedObject:
    maps = procfs.read_maps(pid) if maps is None else maps
    exe_maps = procfs.exe_mappings(pid, maps)
    if not exe_maps:
        raise ApplyError(f"the executable of process {pid} is not mapped")
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
    """Every shared library the process maps, with its build-id and soname."""
    found = []
    for lib in procfs.libraries(pid, maps):
        file = _mapped_file(pid, lib)
        try:
            found.append(MappedLibrary(lib, file, read_build_id(file),
                                       read_dynamic(file).soname))
        except (KatanaError, OSError):
            continue  # unreadable: it cannot be the library a patch is for
    return found


def _mapped_file(pid: int, lib: procfs.Library) -> str:
    first = min((m for m in lib.mappings if m.offset == 0), key=lambda m: m.start,
                default=lib.mappings[0])
    path = f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"
    return path if os.access(path, os.R_OK) else lib.path


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
