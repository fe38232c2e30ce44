"""Linked executables: symbols (locals told apart by object), bytes at an address, relocations.

A katana build links with ``--emit-relocs`` and keeps ``.symtab`` (read by ``katana.elf.symtab``,
shared with the apply engine): the emitted relocations say where the code refers to a variable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from katana.elf.headers import ET_DYN, PT_LOAD, PT_TLS, SHT_RELA, read_headers
from katana.elf.relocs import (
    PC_RELATIVE,
    R_X86_64_32,
    R_X86_64_32S,
    R_X86_64_64,
    R_X86_64_PC32,
    R_X86_64_PC64,
    R_X86_64_PLT32,
    field_size,
)
from katana.elf.symtab import ElfSymbol, ExecutableSymbols, executable_symbols
from katana.errors import FormatError


@dataclass(frozen=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int


class Executable:
    """Symbols, segments and contents of one linked ELF executable."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                headers = read_headers(f)
            self.pie = headers.e_type == ET_DYN
            self.segments = [Segment(p.p_vaddr, p.p_memsz, p.p_offset, p.p_filesz, p.p_flags)
                             for p in headers.segments if p.p_type == PT_LOAD]
            # x86-64 TLS variant II: the executable's block ends at the thread pointer, at
            # its size rounded up to its alignment (what the linker's TPOFF32 uses)
            self.tls_size = next((-(-p.p_memsz // max(p.p_align, 1)) * max(p.p_align, 1)
                                  for p in headers.segments if p.p_type == PT_TLS), 0)
            # --emit-relocs leaves .rela sections for code (.rela.text); without it only the
            # dynamic ones (.rela.dyn, .rela.plt) exist
            self.has_emitted_relocs = any(
                s.sh_type == SHT_RELA and s.name.startswith(".rela.text")
                for s in headers.sections)
        except (OSError, ValueError, struct.error, FormatError) as e:
            raise FormatError(f"{self.path}: not a readable ELF executable ({e})") from e
        self.symbols: ExecutableSymbols = executable_symbols(str(self.path))
        self._data: bytes | None = None

    def lookup(self, name: str, file: str | None = None) -> ElfSymbol | None:
        """A global by name (``file`` None), or a local by name and STT_FILE name; None if
        absent. Two locals of one name under one file name raise: guessing would patch the
        wrong function.

        A global with no global of that name in the executable may be the only local one: a
        hidden-visibility symbol is global in its object but the linker makes it local in a
        PIE (``-fvisibility=hidden`` is common in real projects)."""
        if file is not None:
            return self.symbols.find(name, file)
        return self.symbols.find_global(name) or self.symbols.find(name)

    def tp_offset(self, sym: ElfSymbol) -> int:
        """Offset from the thread pointer of a thread-local variable of the executable (the
        same in every thread: what R_X86_64_TPOFF32 fields hold)."""
        return sym.value - self.tls_size

    def function_at(self, address: int) -> ElfSymbol | None:
        """The function whose extent covers a link-time address."""
        return self.symbols.function_at(address)

    def room(self, function: ElfSymbol) -> int:
        """Bytes from a function's entry to the next function: its size plus the alignment
        padding after it, which is never executed and may hold the end of a jump."""
        nxt = self.symbols.next_function(function.value)
        return function.size if nxt is None else max(function.size, nxt - function.value)

    def gap_before(self, function: ElfSymbol) -> int:
        """Unused bytes just before a function's entry: alignment padding after the previous
        function, or the NOPs ``-fpatchable-function-entry=5,5`` puts there for a jump."""
        end = self.symbols.previous_function_end(function.value)
        return 0 if end is None else max(0, function.value - end)

    def read(self, vaddr: int, size: int) -> bytes:
        """Bytes of the file image at a link-time address (zeros past a segment's file size)."""
        if self._data is None:
            self._data = self.path.read_bytes()
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.memsz:
                start = vaddr - seg.vaddr
                chunk = self._data[seg.offset + start: seg.offset + min(start + size, seg.filesz)]
                return chunk + b"\0" * (size - len(chunk))
        raise FormatError(f"{self.path}: address {vaddr:#x} (+{size}) is not in a loaded segment")


# the relocations through which code or data can refer to a variable's address
_REFERENCES = {R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32, R_X86_64_32S,
               R_X86_64_PC64}


@dataclass(frozen=True)
class Reference:
    """A place in the executable's code or data that refers to an address (``--emit-relocs``)."""

    address: int  # link-time address of the relocated field
    type: int
    size: int  # field size in bytes
    offset: int  # where in [low, high) it points: a field of a struct, an element of an array
    code: bool  # in code (compiled against the layout of its version) or in data (a live value)


_MAX_TRAILING_IMMEDIATE = 4  # ``addl $imm32, x(%rip)``: the largest immediate after a disp32


def _pc_adjust(exe: Executable, site: int) -> int:
    """End of the instruction holding the field at ``site``, minus ``site``: what the CPU adds
    to a PC-relative displacement besides the field itself (4, or more when an immediate
    follows it). Decoding from the start of the enclosing function is the only sure way."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    fn = exe.function_at(site)
    if fn is None:
        return 4
    for address, size, _, _ in Cs(CS_ARCH_X86, CS_MODE_64).disasm_lite(
            exe.read(fn.value, fn.size), fn.value):
        if address <= site < address + size:
            return address + size - site
    return 4


def references_to(exe: Executable, low: int, high: int) -> list[Reference]:
    """Every relocated field of the executable whose target lies in [low, high) (link-time
    addresses), with the exact offset it designates there."""
    from elftools.elf.elffile import ELFFile  # only for patches that move data

    found = []
    with open(exe.path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_RELA" or sec["sh_info"] == 0:
                continue
            flags = elf.get_section(sec["sh_info"])["sh_flags"]
            if not flags & 0x2:  # SHF_ALLOC only
                continue
            code = bool(flags & 0x4)  # SHF_EXECINSTR
            for r in sec.iter_relocations():
                rtype = r["r_info_type"]
                if rtype not in _REFERENCES:
                    continue
                sym = symtab.get_symbol(r["r_info_sym"])
                target = sym["st_value"] + r["r_addend"]
                if rtype in PC_RELATIVE:
                    if not low - _MAX_TRAILING_IMMEDIATE - 4 <= target < high:
                        continue  # cheap filter before decoding the instruction
                    target += _pc_adjust(exe, r["r_offset"])
                if low <= target < high:
                    found.append(Reference(r["r_offset"], rtype, field_size(rtype),
                                           target - low, code))
    return found


@lru_cache(maxsize=16)
def _cached(path: str, mtime_ns: int, size: int) -> Executable:
    return Executable(Path(path))


def open_executable(path: Path | str) -> Executable:
    """An ``Executable``, cached by the file's identity (device, inode), modification time and
    size: ``/proc/PID/exe`` of every process of one build shares one."""
    st = Path(path).stat()
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _BY_IDENTITY:
        _BY_IDENTITY[key] = _cached(str(path), st.st_mtime_ns, st.st_size)
    return _BY_IDENTITY[key]


_BY_IDENTITY: dict[tuple[int, int, int, int], Executable] = {}
