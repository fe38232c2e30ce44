"""Stacks no thread is running on: suspended ucontext coroutines and stacks a program declares.

glibc's ``getcontext``/``swapcontext`` save the caller's registers into a ``ucontext_t``: in
``uc_mcontext.gregs`` the return address after the call (REG_RIP) and the stack pointer after
it (REG_RSP), and ``uc_mcontext.fpregs`` pointing at the ``__fpregs_mem`` of the same structure.
A suspended coroutine is such a structure somewhere in writable memory (heap, data, a stack),
and its stack is wherever the program put it. So:

- before the stop, the places the program calls ``swapcontext``/``getcontext`` from are read from
  the executable's relocations (a katana build links with ``--emit-relocs``): every saved
  REG_RIP of the program's contexts is one of those return addresses;
- at the stop, writable memory is searched for those values (``bytes.find``, C speed), each hit
  checked for the ``fpregs`` self-pointer, and each context found is unwound like a thread.

A program with context switching of its own (hand-written assembly, boost.context) declares its
suspended stacks instead, in two globals katana looks up in the executable's symbols::

    struct katana_stack { void *sp, *top; };   /* a suspended stack: [sp, top) */
    struct katana_stack *katana_stacks;        /* an array of them */
    unsigned long katana_nstacks;              /* how many */

Those are scanned word by word (there are no saved registers to unwind from).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

from katana.elf.headers import SHT_RELA, read_headers, read_section
from katana.target import procfs

# struct ucontext_t (x86-64 glibc <sys/ucontext.h>): uc_flags, uc_link, uc_stack (24 bytes),
# then mcontext_t { gregset_t gregs[23]; fpregset_t fpregs; ... }, uc_sigmask (128 bytes),
# struct _libc_fpstate __fpregs_mem.
GREGS = 40
REG_RSP, REG_RIP = 15, 16
FPREGS = GREGS + 23 * 8
FPREGS_MEM = GREGS + 23 * 8 + 8 + 8 * 8 + 128
# gregs index -> DWARF register number (psABI figure 3.36)
_GREG_DWARF = {0: 8, 1: 9, 2: 10, 3: 11, 4: 12, 5: 13, 6: 14, 7: 15, 8: 5, 9: 4, 10: 6,
               11: 3, 12: 1, 13: 0, 14: 2, 15: 7, 16: 16}
SWITCHES = ("swapcontext", "getcontext")
SCAN_LIMIT = 1 << 30  # bytes of writable memory searched at most; beyond: conservative
DECLARED_LIMIT = 8 << 20

SHF_EXECINSTR = 0x4
_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
_CALL_RELOCS = {2, 4, 9, 41, 42}  # PC32, PLT32, GOTPCREL, GOTPCRELX, REX_GOTPCRELX


class Context(NamedTuple):
    address: int
    regs: dict[int, int]  # DWARF register -> value; 16 is the saved return address

    @property
    def sp(self) -> int:
        return self.regs[7]


# (device, inode, mtime, size) of an executable -> its switch returns: every process of one
# build (``katana apply PO all``) shares one reading.
_RETURNS: dict[tuple[int, int, int, int], frozenset[int]] = {}


def switch_returns(exe_path: str) -> frozenset[int]:
    """Link-time return addresses of every call to swapcontext/getcontext in the executable;
    a program whose string table names neither is done with after reading its headers."""
    st = os.stat(exe_path)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _RETURNS:
        _RETURNS[key] = frozenset(_read_switch_returns(exe_path))
    return _RETURNS[key]


def _read_switch_returns(exe_path: str) -> set[int]:
    with open(exe_path, "rb") as f:
        headers = read_headers(f)
        symtab = headers.section(".symtab")
        if symtab is None:
            return set()
        names = read_section(f, headers.sections[symtab.sh_link])
        if not any(name.encode() in names for name in SWITCHES):
            return set()
        wanted = set()  # symbol indices of the switch functions
        for n, (name_off, *_rest) in enumerate(_SYM.iter_unpack(read_section(f, symtab))):
            name = names[name_off:names.index(b"\0", name_off)].split(b"@")[0]
            if name.decode(errors="replace") in SWITCHES:
                wanted.add(n)
        found: set[int] = set()
        symtab_index = headers.sections.index(symtab)
        for sec in headers.sections:
            if sec.sh_type != SHT_RELA or sec.sh_link != symtab_index or \
                    sec.sh_info >= len(headers.sections) or \
                    not headers.sections[sec.sh_info].sh_flags & SHF_EXECINSTR:
                continue
            for r_offset, r_info, _ in struct.iter_unpack("<QQq", read_section(f, sec)):
                if r_info >> 32 in wanted and r_info & 0xFFFFFFFF in _CALL_RELOCS:
                    found.add(r_offset + 4)  # the rel32 field ends the call instruction
    return found


def _writable(maps: list[procfs.Mapping]) -> Iterator[procfs.Mapping]:
    for m in maps:
        if m.readable and m.writable and m.perms[3] == "p" and m.path != "[vvar]":
            yield m


def find_contexts(read, maps: list[procfs.Mapping], returns: set[int]) -> tuple[list[Context], str]:
    """Every saved glibc context in writable memory whose REG_RIP is one of ``returns`` (at
    runtime); and a reason when not all memory could be searched."""
    contexts: list[Context] = []
    patterns = [struct.pack("<Q", r) for r in sorted(returns)]
    budget = SCAN_LIMIT
    for m in _writable(maps):
        if m.size > budget:
            return contexts, f"more than {SCAN_LIMIT >> 20} MiB of writable memory"
        budget -= m.size
        try:
            data = read(m.start, m.size)
        except Exception:  # noqa: BLE001 - a mapping that vanished or cannot be read: skip
            continue
        for pattern in patterns:
            at = data.find(pattern)
            while at >= 0:
                context = _context(data, m.start, at - GREGS - REG_RIP * 8)
                if context is not None:
                    contexts.append(context)
                at = data.find(pattern, at + 1)
    return contexts, ""


def _context(data: bytes, start: int, offset: int) -> Context | None:
    if offset < 0 or offset % 8 or offset + FPREGS + 8 > len(data):
        return None
    fpregs, = struct.unpack_from("<Q", data, offset + FPREGS)
    if fpregs != start + offset + FPREGS_MEM:
        return None  # not a context getcontext/swapcontext saved
    gregs = struct.unpack_from("<17Q", data, offset + GREGS)
    return Context(start + offset, {_GREG_DWARF[i]: v for i, v in enumerate(gregs)})


def declared_stacks(read, table: int, count: int) -> list[tuple[int, int]]:
    """[(sp, top)] from the program's ``katana_stacks``/``katana_nstacks`` at their addresses."""
    pointer, = struct.unpack("<Q", read(table, 8))
    n, = struct.unpack("<Q", read(count, 8))
    if not pointer or not n:
        return []
    n = min(n, 4096)
    raw = read(pointer, 16 * n)
    return [(sp, top) for sp, top in struct.iter_unpack("<QQ", raw) if sp and top > sp]
