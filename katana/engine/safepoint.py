"""The safe point: no thread is executing, or will return into, a function we replace.

Each stopped thread is checked at its instruction pointer and along its stack. The stack check is
a conservative scan, not an unwinder: code built with -O2 keeps no frame pointers, and we do not
read .eh_frame, so we cannot walk frames. Instead every 8-byte word from RSP to the end of the stack
mapping that could be a return address into a listed function counts: it must point just after a
``call`` instruction (the bytes before it decode as ``e8 rel32`` or an ``ff /2`` indirect call),
which filters out function pointers and most stale data. A stale word that survives the filter only
makes us wait longer; a real return address is never missed.

A thread interrupted by a signal whose handler is still running has the interrupted RIP in the
signal frame (struct rt_sigframe), not after a call: frames found by their return address into
glibc's ``__restore_rt`` are checked for that saved RIP too.
"""

from __future__ import annotations

import bisect
import time
from array import array
from dataclasses import dataclass

from katana.engine import inject, procfs
from katana.engine.process import Process
from katana.errors import BusyError, TargetError

MAX_SCAN = 64 << 20  # stop scanning a "stack" this far above RSP (coroutine stacks in the heap)
# glibc's __restore_rt: mov $SYS_rt_sigreturn, %rax; syscall
RESTORER = bytes.fromhex("48c7c00f0000000f05")
# struct rt_sigframe { pretcode; struct ucontext uc; ... }: uc_flags, uc_link, uc_stack (24
# bytes), then struct sigcontext, whose 17th word (after r8-r15, rdi, rsi, rbp, rbx, rdx, rax,
# rcx, rsp) is rip; in 8-byte words from pretcode:
_SIGFRAME_RSP = (8 + 8 + 8 + 24 + 15 * 8) // 8
_SIGFRAME_RIP = _SIGFRAME_RSP + 1
_PREFIXES = {0x2E, 0x3E, 0x66}  # segment / notrack (CET) / operand size before ff /2


@dataclass(frozen=True)
class Range:
    """A function that must not be in use: [start, end) at runtime, and its name."""

    start: int
    end: int
    name: str


@dataclass(frozen=True)
class Busy:
    """A thread found using a function. ``where``: "rip", "stack" or "signal"."""

    tid: int
    name: str
    where: str
    address: int


class _Index:
    def __init__(self, ranges: list[Range]) -> None:
        self.ranges = sorted(ranges, key=lambda r: r.start)
        self.starts = [r.start for r in self.ranges]
        self.low = min(self.starts, default=0)
        self.high = max((r.end for r in self.ranges), default=0)
        self.longest = max((r.end - r.start for r in self.ranges), default=0)

    def find(self, addr: int) -> Range | None:
        # Ranges may overlap (aliases, a function and its part): look back as far as the
        # longest range could reach.
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0 and addr - self.starts[i] < self.longest:
            if addr < self.ranges[i].end:
                return self.ranges[i]
            i -= 1
        return None


def _indirect_call_length(code: bytes) -> int:
    """Length of an ``ff /2`` call (call *r/m64) at the start of ``code``, else 0."""
    i = 0
    while i < len(code) and code[i] in _PREFIXES:
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:  # REX
        i += 1
    if i + 1 >= len(code) or code[i] != 0xFF or (code[i + 1] >> 3) & 7 != 2:
        return 0
    modrm = code[i + 1]
    mod, rm = modrm >> 6, modrm & 7
    length = i + 2
    if mod == 3:
        return length
    if rm == 4:  # a SIB byte follows
        if length >= len(code):
            return 0
        if mod == 0 and code[length] & 7 == 5:
            length += 4  # SIB with no base: disp32
        length += 1
    if mod == 0 and rm == 5:
        length += 4  # RIP-relative: ff 15 disp32
    return length + {0: 0, 1: 1, 2: 4}[mod]


def follows_call(before: bytes) -> bool:
    """Whether ``before`` (the 8 bytes up to a return address) ends with a call instruction."""
    if len(before) >= 5 and before[-5] == 0xE8:
        return True
    return any(_indirect_call_length(before[-n:]) == n for n in range(2, min(len(before), 8) + 1))


def find_busy(process: Process, ranges: list[Range]) -> list[Busy]:
    """Every (thread, function) that is in use, in a stopped process."""
    index = _Index(ranges)
    if not index.ranges:
        return []
    maps = process.maps()
    restorer = _restorer(process)
    found: list[Busy] = []
    for tid in process.tids:
        regs = process.get_regs(tid)
        hit = index.find(regs.rip)
        if hit is not None:
            found.append(Busy(tid, hit.name, "rip", regs.rip))
        found += _scan_stacks(process, tid, regs.rsp, maps, index, restorer)
    return list(dict.fromkeys(found))


def _restorer(process: Process) -> int | None:
    if "restorer" not in process.memo:
        # glibc's libc.so.6 holds the one __restore_rt that sigaction installs.
        process.memo["restorer"] = inject.find_code(process, RESTORER, library="libc.so")
    return process.memo["restorer"]  # type: ignore[return-value]


def _scan_stacks(
    process: Process, tid: int, rsp: int, maps: list[procfs.Mapping], index: _Index,
    restorer: int | None,
) -> list[Busy]:
    found: list[Busy] = []
    todo, seen = [rsp], set()
    while todo:
        sp = todo.pop()
        m = procfs.mapping_at(maps, sp)
        if m is None or not m.readable or m in seen:
            continue
        seen.add(m)
        start = sp & ~7
        words = array("Q", process.read(start, min(m.end, start + MAX_SCAN) - start))
        for i, word in enumerate(words):
            if index.low < word <= index.high:
                # word - 1: a call that ends its function (to a noreturn callee) returns to
                # the next function's first byte.
                hit = index.find(word - 1)
                if hit is not None and _returns_from_call(process, word):
                    found.append(Busy(tid, hit.name, "stack", word))
            elif word == restorer and i + _SIGFRAME_RIP < len(words):
                hit = index.find(words[i + _SIGFRAME_RIP])
                if hit is not None:
                    found.append(Busy(tid, hit.name, "signal", words[i + _SIGFRAME_RIP]))
                # The interrupted code's stack: elsewhere when the handler ran on sigaltstack.
                todo.append(words[i + _SIGFRAME_RSP])
    return found


def _returns_from_call(process: Process, address: int) -> bool:
    try:
        return follows_call(process.read(address - 8, 8))
    except TargetError:
        return False  # the bytes before it are not mapped: nothing called from there


def _describe(busy: list[Busy]) -> str:
    parts = [f"{b.name} (thread {b.tid}, {b.where})" for b in busy[:3]]
    more = f" and {len(busy) - 3} more" if len(busy) > 3 else ""
    return ", ".join(parts) + more


def wait_for_safe_point(
    process: Process, ranges: list[Range], timeout: float, interval: float = 0.05
) -> None:
    """Stop the process at a moment when no range is in use, trying until ``timeout`` seconds.

    On return the process is stopped (attached) at a safe point. Otherwise it is let go, running
    as it was, and BusyError names the functions and threads that stayed busy.
    """
    deadline = time.monotonic() + timeout
    while True:
        process.stop()
        try:
            busy = find_busy(process, ranges)
        except BaseException:
            process.detach()
            raise
        if not busy:
            return
        process.resume()
        left = deadline - time.monotonic()
        if left <= 0:
            process.detach()
            raise BusyError(
                f"no safe point in process {process.pid} within {timeout:g} s: "
                f"{_describe(busy)} in use",
                hint="try again later, or allow more time (maxWaitForPatching)",
            )
        process.idle(min(interval, left))  # seized: pass on the signals it gets meanwhile
