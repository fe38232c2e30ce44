"""Memory of a traced process: /proc/PID/mem first, PTRACE_PEEKDATA/POKEDATA as the fallback.

One pwrite to /proc/PID/mem writes a page in microseconds and, for a tracer, goes past page
protections (the kernel uses FOLL_FORCE), so read-only text can be patched. Kernels can be built or
booted to forbid that (proc_mem.force_override): then PTRACE_POKEDATA, a word at a time and about
400 times slower, still works.
"""

from __future__ import annotations

import os

from katana.errors import ApplyError, TargetError
from katana.target import ptrace as pt


class Memory:
    """Reads and writes the memory of process ``pid`` while it is traced.

    ``check_writes`` reads back every write and raises ApplyError on a difference (config
    ``flags.checkPtraceWrites``); ``use_proc_mem=False`` forces PTRACE_POKEDATA for writes.
    """

    def __init__(self, pid: int, *, check_writes: bool = False, use_proc_mem: bool = True) -> None:
        self.pid = pid
        self.check_writes = check_writes
        self.use_proc_mem = use_proc_mem
        self._fd: int | None = None
        self._tried = False  # to open /proc/PID/mem since the last close
        self._tid = pid

    def open(self, tid: int) -> None:
        """Start access; ``tid``, a stopped thread we trace, serves PEEKDATA/POKEDATA."""
        self._tid = tid
        if self._fd is None:
            self._open()  # again: the kernel may allow a tracer what it refused before

    def _open(self) -> None:
        self._tried = True
        try:
            self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
        except OSError:
            self._fd = None  # everything goes through PTRACE_PEEKDATA/POKEDATA

    def close(self) -> None:
        """End access (on detach: the kernel checks ptrace access when the file is opened)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tried = False

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes at ``addr``; TargetError when they are not all mapped. Usable
        before the process is traced too (the safe point's set-up reads the CFI then): the
        file is opened on first use."""
        if self._fd is None and not self._tried:
            self._open()
        if self._fd is not None:
            try:
                data = os.pread(self._fd, size, addr)
                if len(data) == size:
                    return data
            except (OSError, OverflowError):
                pass
        try:
            return self._peek_read(addr, size)
        except OSError as e:
            raise TargetError(
                f"cannot read {size} bytes at {addr:#x} in process {self.pid}: {e.strerror}"
            ) from None

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr``, even into read-only text; ApplyError on failure."""
        if not (self.use_proc_mem and self._pwrite(addr, data)):
            try:
                self._poke_write(addr, data)
            except OSError as e:
                raise ApplyError(
                    f"cannot write {len(data)} bytes at {addr:#x} in process {self.pid}: "
                    f"{e.strerror}"
                ) from None
        if self.check_writes and self.read(addr, len(data)) != data:
            raise ApplyError(
                f"write of {len(data)} bytes at {addr:#x} in process {self.pid} did not stick",
                hint="the kernel may forbid writing this memory; report this with your kernel "
                "version",
            )

    def _pwrite(self, addr: int, data: bytes) -> bool:
        if self._fd is None:
            return False
        try:
            return os.pwrite(self._fd, data, addr) == len(data)
        except (OSError, OverflowError):
            return False

    def _peek_read(self, addr: int, size: int) -> bytes:
        start = addr & ~7
        words = b"".join(
            pt.peek(self._tid, a).to_bytes(8, "little") for a in range(start, addr + size, 8)
        )
        return words[addr - start : addr - start + size]

    def _poke_write(self, addr: int, data: bytes) -> None:
        # Whole aligned words never cross a page, so the tail's read-modify-write cannot touch
        # an unmapped page.
        end = addr + len(data)
        for word_addr in range(addr & ~7, end, 8):
            lo, hi = max(addr, word_addr), min(end, word_addr + 8)
            chunk = data[lo - addr : hi - addr]
            if len(chunk) < 8:
                old = pt.peek(self._tid, word_addr).to_bytes(8, "little")
                chunk = old[: lo - word_addr] + chunk + old[hi - word_addr :]
            pt.poke(self._tid, word_addr, int.from_bytes(chunk, "little"))
