"""Fingerprints: what makes a function (or a data object) the same in two versions.

A function is the same when its bytes are equal (relocated fields are zero in a ``.o``) and its
ordered relocations are equal in type, offset and *target identity*. The identity of a target is
what it means, not where the assembler put it: a string is its text (its offset inside
``.rodata.str1.1`` moves whenever any other string of the object changes), read-only data is its
content (in a plain ``.rodata``, the referenced piece's own: up to the next referenced offset), a
function or a writable variable is its name (clone and static-local counters dropped).
"""

from __future__ import annotations

from bisect import bisect_right
from functools import cached_property

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from katana.elf.objfile import ObjectFile, ObjReloc, ObjSection, normalize_name, static_local_base
from katana.elf.relocs import PC_RELATIVE

_cs = Cs(CS_ARCH_X86, CS_MODE_64)

Identity = tuple


def _cstring(data: bytes, offset: int) -> bytes:
    end = data.find(b"\0", offset)
    return data[offset:] if end < 0 else data[offset:end]


class SectionView:
    """One section of an object, with the decoding the comparison needs."""

    def __init__(self, obj: ObjectFile, section: ObjSection) -> None:
        self.obj = obj
        self.section = section

    @cached_property
    def _insn_ends(self) -> dict[int, int]:
        """Relocated field offset -> end of the instruction that holds it (text sections only);
        decoded once per section, and only for sections whose PC-relative targets are asked."""
        fields = sorted(r.offset for r in self.section.relocs if r.type in PC_RELATIVE)
        ends: dict[int, int] = {}
        at = 0
        for start, size, _, _ in _cs.disasm_lite(self.section.data, 0):
            end = start + size
            while at < len(fields) and fields[at] < end:
                if fields[at] >= start:
                    ends[fields[at]] = end
                at += 1
            if at == len(fields):
                break
        return ends

    def pc_adjust(self, reloc: ObjReloc) -> int:
        """How far the CPU's reference point lies past the relocated field.

        For a PC-relative field the target is ``S + A + (end of instruction - field)``: usually 4,
        more when an immediate follows the displacement (``cmpb $0, x(%rip)``), so the addend alone
        does not say which byte is meant (psABI 4.4; hence the decoding).
        """
        if reloc.type not in PC_RELATIVE:
            return 0
        if self.section.is_text:
            end = self._insn_ends.get(reloc.offset)
            if end is not None:
                return end - reloc.offset
        return 4


class Fingerprinter:
    """Computes identities of relocation targets within one object."""

    def __init__(self, obj: ObjectFile) -> None:
        self.obj = obj
        self._views: dict[int, SectionView] = {}
        self._boundaries: dict[int, list[int]] = {}  # plain rodata section -> sorted offsets

    def view(self, shndx: int) -> SectionView:
        if shndx not in self._views:
            self._views[shndx] = SectionView(self.obj, self.obj.sections[shndx])
        return self._views[shndx]

    def target(self, source: ObjSection, reloc: ObjReloc) -> tuple[int, int] | None:
        """(section index, offset) a relocation designates, or None for an undefined symbol."""
        sym = self.obj.symbols[reloc.sym]
        if not sym.defined:
            return None
        adjust = self.view(source.index).pc_adjust(reloc) if source.is_text else 0
        return sym.shndx, sym.value + reloc.addend + adjust

    def identity(self, source: ObjSection, reloc: ObjReloc, depth: int = 0) -> Identity:
        sym = self.obj.symbols[reloc.sym]
        if not sym.defined:
            return ("extern", normalize_name(sym.name), reloc.addend)
        shndx, off = self.target(source, reloc)  # type: ignore[misc]
        sec = self.obj.sections[shndx]
        if sec.kind in ("text", "data", "bss"):
            named = self.obj.designated(sym, shndx, off)
            if named is None:
                return ("anon", sec.name, off)
            name = normalize_name(named.name)
            if named.local and named.type in ("STT_OBJECT", "STT_TLS"):
                name = static_local_base(name)
            return ("sym", name, off - named.value)
        return ("ro", self.rodata_identity(sec, off, depth))

    def rodata_identity(self, sec: ObjSection, off: int, depth: int = 0) -> Identity:
        """Read-only data means its content: a string, a constant, a table and what it points to."""
        if sec.is_strings:
            return ("str", _cstring(sec.data, off))
        named = self.obj.symbol_at(sec.index, off)
        if named is not None and named.size:
            start, end = named.value, named.value + named.size
        elif sec.flags & 0x10 and sec.entsize:  # SHF_MERGE constants: one entry
            start, end = off, off + sec.entsize
        else:  # plain .rodata (-fno-merge-constants): the piece that starts here, not the section
            start, end = off, self.piece_end(sec, off)
            piece = sec.data[start:end]
            nul = piece.find(b"\0")
            if nul >= 0 and not piece[nul:].strip(b"\0") and \
                    not any(start <= r.offset < end for r in sec.relocs):
                # a string and its alignment padding: the padding depends on where the string
                # landed, so only the text counts
                return ("str", piece[:nul])
        relocs: tuple = ()
        if depth < 4:
            relocs = tuple((r.offset - start, r.type, self.identity(sec, r, depth + 1))
                           for r in sec.relocs if start <= r.offset < end)
        return ("data", sec.data[start:end], off - start, relocs)

    def piece_end(self, sec: ObjSection, off: int) -> int:
        """Where the piece of plain read-only data that starts at ``off`` ends: at the next offset
        of the section that something references or a symbol starts at, or the section's end.
        (kpatch's create-diff-object cuts .rodata the same way for section+addend references.)"""
        if sec.index not in self._boundaries:
            marks = {s.value for s in self.obj.symbols_in(sec.index)}
            for source in self.obj.sections:
                if not source.is_alloc:  # debug information is no reference the code makes
                    continue
                for r in source.relocs:
                    if self.obj.symbols[r.sym].shndx == sec.index and \
                            self.obj.symbols[r.sym].defined:
                        marks.add(self.target(source, r)[1])  # type: ignore[index]
            self._boundaries[sec.index] = sorted(marks)
        marks = self._boundaries[sec.index]
        at = bisect_right(marks, off)
        return min(marks[at], sec.size) if at < len(marks) else sec.size

    def function_fingerprint(self, shndx: int, start: int, size: int) -> Identity:
        sec = self.obj.sections[shndx]
        relocs = tuple((r.offset - start, r.type, self.identity(sec, r))
                       for r in sec.relocs if start <= r.offset < start + size)
        return (sec.data[start:start + size], relocs)

    def data_fingerprint(self, shndx: int, start: int, size: int) -> Identity:
        """Initial value of a writable variable (bytes plus what its pointers designate)."""
        sec = self.obj.sections[shndx]
        data = sec.data[start:start + size] if sec.kind != "bss" else b"\0" * size
        relocs = tuple((r.offset - start, r.type, self.identity(sec, r))
                       for r in sec.relocs if start <= r.offset < start + size)
        return (data, relocs)
