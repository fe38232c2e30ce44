"""The safe point: no thread, and no suspended coroutine, is in a function we replace.

Two passes, so that the stop stays short when nothing is near the patch:

1. A fast scan of each stopped thread's stack: every 8-byte word from RSP to the end of its
   mapping that could be a return address into a listed function (it points just after a
   ``call``: ``e8 rel32`` or ``ff /2``), and the RIP saved in signal frames (found by their
   return address into glibc's ``__restore_rt``). No candidate: the thread is clear.
2. Only for a thread with candidates: an unwind with the CFI of every mapped object
   (``unwind.py``). A candidate counts only if it is a live frame. A word the unwind walked past
   is stale (an uninitialised buffer still holding an old return address); where the unwind
   could not go on, the candidates beyond that point stay busy and ``-v`` says why.

Suspended ucontext coroutines and stacks the program declares are checked the same way
(``coroutines.py``). When every busy frame is one that can return and its return address slot is
known, ``wait_for_safe_point`` hooks that return (``hooks.py``) and stops the process again as
soon as the frame has returned, instead of polling at random instants.
"""

from __future__ import annotations

import bisect
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from katana.errors import BusyError, KatanaError, TargetError
from katana.safety.coroutines import declared_stacks, find_contexts, switch_returns
from katana.safety.hooks import ReturnHooks
from katana.safety.unwind import ProcessCfi, Unwinder, Walk, regs_of
from katana.target import inject, procfs
from katana.target.memory import Memory
from katana.target.process import Process, check_interrupts

MAX_SCAN = 64 << 20  # stop scanning a "stack" this far above RSP
# glibc's __restore_rt: mov $SYS_rt_sigreturn, %rax; syscall
RESTORER = bytes.fromhex("48c7c00f0000000f05")
# struct rt_sigframe { pretcode; struct ucontext uc; ... }: uc_flags, uc_link, uc_stack (24
# bytes), then struct sigcontext, whose 17th word (after r8-r15, rdi, rsi, rbp, rbx, rdx, rax,
# rcx, rsp) is rip; in 8-byte words from pretcode:
_SIGFRAME_RSP = (8 + 8 + 8 + 24 + 15 * 8) // 8
_SIGFRAME_RIP = _SIGFRAME_RSP + 1
_PREFIXES = {0x2E, 0x3E, 0x66}  # segment / notrack (CET) / operand size before ff /2

Say = Callable[[int, str], None]


def _quiet(level: int, text: str) -> None:
    pass


class Range(NamedTuple):
    """A function that must not be in use: [start, end) at runtime, and its name."""

    start: int
    end: int
    name: str


class Busy(NamedTuple):
    """A function found in use. ``where``: "rip", "stack", "signal" or "coroutine"."""

    tid: int  # 0 for a coroutine
    name: str
    where: str
    address: int
    stack: str = ""  # "thread 4242" or "coroutine stack at 0x..."
    slot: int | None = None  # the outermost busy frame: where its return address is stored
    returns_to: int | None = None  # ... and that return address
    never_returns: str = ""  # why this frame cannot return while the program runs
    unverified: str = ""  # why the unwind could not tell a live frame from a stale word


class _Word(NamedTuple):
    at: int | None  # where the word is (None: the thread's RIP)
    value: int
    name: str
    where: str


class _Index:
    def __init__(self, ranges: list[Range]) -> None:
        self.ranges = sorted(ranges, key=lambda r: r.start)
        self.starts = [r.start for r in self.ranges]
        self.low = min(self.starts, default=0)
        self.high = max((r.end for r in self.ranges), default=0)
        self.longest = max((r.end - r.start for r in self.ranges), default=0)
        self.byte, self.values = _selective_byte(self.low + 1, self.high)

    def find(self, addr: int) -> Range | None:
        # Ranges may overlap (aliases, a function and its part): look back as far as the
        # longest range could reach.
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0 and addr - self.starts[i] < self.longest:
            if addr < self.ranges[i].end:
                return self.ranges[i]
            i -= 1
        return None

    def words_in_span(self, data: bytes) -> list[int]:
        """Indices of the 8-byte words of ``data`` in (low, high], found without a Python loop
        over every word: every such word has one of a few values in one byte position (its
        most selective byte), so that byte of every word is sliced out (``data[j::8]``, in C)
        and searched (``bytes.find``, memchr); only those hits are compared in full."""
        column = data[self.byte::8]
        hits = []
        for value in self.values:
            i = column.find(value)
            while i >= 0:
                word = int.from_bytes(data[8 * i:8 * i + 8], "little")
                if self.low < word <= self.high:
                    hits.append(i)
                i = column.find(value, i + 1)
        if len(self.values) > 1:
            hits.sort()
        return hits


def _selective_byte(low: int, high: int) -> tuple[int, list[bytes]]:
    """The lowest byte position whose values over [low, high] are at most four (the fewer
    words of a stack share them, the fewer are compared), and those values."""
    if high < low:
        return 7, []
    for j in range(8):
        first, last = low >> (8 * j), high >> (8 * j)
        if last - first < 4:
            return j, [bytes([v & 0xFF]) for v in range(first, last + 1)]
    return 7, [b"\0"]  # unreachable: at j = 7 both are below 256


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


def _word(data: bytes, i: int) -> int:
    return int.from_bytes(data[8 * i:8 * i + 8], "little")


def follows_call(before: bytes) -> bool:
    """Whether ``before`` (the 8 bytes up to a return address) ends with a call instruction."""
    if len(before) >= 5 and before[-5] == 0xE8:
        return True
    return any(_indirect_call_length(before[-n:]) == n for n in range(2, min(len(before), 8) + 1))


class Checker:
    """What the safe-point check needs, read before the first stop: the CFI of every mapped
    object, glibc's signal return, the places the program switches coroutines from, and the
    program's declared stacks."""

    def __init__(self, pid: int, ranges: list[Range], say: Say = _quiet,
                 declared: tuple[int, int] | None = None, return_hooks: bool = True,
                 records: list | None = None, maps: list[procfs.Mapping] | None = None,
                 read: Callable[[int, int], bytes] | None = None) -> None:
        """``records``, ``maps``: the process's patch records and mappings, when the caller
        has read them already; ``read``: a reader of its memory to share (the Process's, so
        that one /proc/PID/mem serves both), else the checker opens its own."""
        from katana.live.record import read_records

        self.pid = pid
        self.index = _Index(ranges)
        self.say = say
        self._reader = Memory(pid) if read is None else None
        self.read = read or self._reader.read  # type: ignore[union-attr]
        maps = procfs.read_maps(pid) if maps is None else maps
        self.cfi = ProcessCfi(pid, self.read, maps)
        self._add_patch_cfi(read_records(pid, maps) if records is None else records)
        self.hooks = ReturnHooks(pid, self.read)
        self.hooks.enabled &= return_hooks
        # glibc's libc.so.6 holds the one __restore_rt that sigaction installs; library text
        # does not change while the program runs, so it is found before the stop (and once per
        # library file: inject's search keeps what it found)
        self.restorer = inject.search_code(self.read, pid, maps, RESTORER, library="libc.so")
        bias = procfs.load_bias(pid, maps)
        # the file the process runs, even if an upgrade deleted or replaced it on disk (the
        # cache is per inode: every process of one build still shares one reading)
        self.switch_returns = {r + bias for r in switch_returns(f"/proc/{pid}/exe")}
        self.declared = declared
        self._after_call: dict[int, bool] = {}

    def _add_patch_cfi(self, records: list) -> None:
        from katana.safety.cfi import CfiError, PatchCfi, fde_from_blob

        fdes, regions = [], []
        for record in records:
            regions.append((record.region[0], record.region[0] + record.region[1]))
            for section, blob in record.cfi:
                try:
                    fdes.append(fde_from_blob(blob, section))
                except (CfiError, ValueError, IndexError):
                    continue  # that code stays without CFI: unwinds through it stop there
        if regions:
            self.cfi.add_patches(regions, PatchCfi(fdes))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def unwinder(self) -> Unwinder:
        return Unwinder(self.cfi, self.read, self.hooks.original)

    # -- the check, at a stop ------------------------------------------------------------

    def find_busy(self, process: Process) -> list[Busy]:
        """Every function of the ranges in use, by a thread or a suspended coroutine."""
        if not self.index.ranges:
            return []
        maps = process.maps()
        self.cfi.refresh(maps)  # code mapped since (dlopen): its CFI is read now
        found: list[Busy] = []
        for tid in process.tids:
            found += self._thread(process, tid, maps)
        if self.switch_returns:
            found += self._contexts(maps)
        if self.declared:
            found += self._declared()
        return list(dict.fromkeys(found))

    def _thread(self, process: Process, tid: int, maps: list[procfs.Mapping]) -> list[Busy]:
        regs = process.get_regs(tid)
        words: list[_Word] = []
        hit = self.index.find(regs.rip)
        if hit is not None:
            words.append(_Word(None, regs.rip, hit.name, "rip"))
        words += self._scan(regs.rsp, maps)
        if not words:
            return []
        walk = self.unwinder().walk(regs_of(regs))
        return self._judge(walk, words, tid, f"thread {tid}", regs.rsp)

    def _contexts(self, maps: list[procfs.Mapping]) -> list[Busy]:
        contexts, partial = find_contexts(self.read, maps, self.switch_returns)
        found: list[Busy] = []
        if partial:
            found.append(Busy(0, "(unknown)", "coroutine", 0, "coroutine stacks",
                              unverified=f"could not search for coroutines: {partial}"))
        for ctx in contexts:
            label = f"coroutine stack at {ctx.sp:#x}"
            walk = self.unwinder().walk(ctx.regs, exact=False)
            words = self._scan(ctx.sp, maps, limit=1 << 20) if not walk.complete else []
            found += self._judge(walk, words, 0, label, ctx.sp, always=True)
        return found

    def _declared(self) -> list[Busy]:
        table, count = self.declared  # type: ignore[misc]
        found: list[Busy] = []
        try:
            stacks = declared_stacks(self.read, table, count)
        except TargetError as e:
            return [Busy(0, "(unknown)", "coroutine", 0, "declared stacks",
                         unverified=f"katana_stacks unreadable: {e.message}")]
        for sp, top in stacks:
            label = f"coroutine stack at {sp:#x}"
            for w in self._scan_range(sp, min(top, sp + (8 << 20))):
                if w.where == "signal-sp":
                    continue
                found.append(Busy(0, w.name, "coroutine", w.value, label,
                                  unverified="a declared stack is scanned word by word"))
        return found

    # -- the fast scan ---------------------------------------------------------------------

    def _scan(self, sp: int, maps: list[procfs.Mapping], limit: int = MAX_SCAN) -> list[_Word]:
        found: list[_Word] = []
        todo, seen = [sp], set()
        while todo:
            sp = todo.pop()
            m = procfs.mapping_at(maps, sp)
            if m is None or not m.readable or m in seen:
                continue
            seen.add(m)
            for w in self._scan_range(sp, min(m.end, (sp & ~7) + limit)):
                if w.where == "signal-sp":
                    todo.append(w.value)
                else:
                    found.append(w)
        return found

    def _scan_range(self, lo: int, hi: int) -> list[_Word]:
        start = lo & ~7
        try:
            data = self.read(start, hi - start)
        except TargetError:
            return []
        data = data[:len(data) & ~7]
        index, found = self.index, []
        for i in index.words_in_span(data):
            word = int.from_bytes(data[8 * i:8 * i + 8], "little")
            # word - 1: a call that ends its function (to a noreturn callee) returns to
            # the next function's first byte.
            r = index.find(word - 1)
            if r is not None and self._returns_from_call(word):
                found.append(_Word(start + 8 * i, word, r.name, "stack"))
        if self.restorer is None:
            return found
        # Searched by its low half: an 8-byte pattern ending in the zeros of a user address
        # makes bytes.find compare at every zero of the stack (most of it).
        low_half = self.restorer.to_bytes(8, "little")[:4]
        words = len(data) // 8
        at = data.find(low_half)
        while at >= 0:
            i = at // 8
            if at % 8 == 0 and i + _SIGFRAME_RIP < words and _word(data, i) == self.restorer:
                rip = _word(data, i + _SIGFRAME_RIP)
                r = index.find(rip)
                if r is not None:
                    found.append(_Word(start + 8 * (i + _SIGFRAME_RIP), rip, r.name, "signal"))
                # The interrupted code's stack: elsewhere when the handler ran on sigaltstack.
                found.append(_Word(None, _word(data, i + _SIGFRAME_RSP), "", "signal-sp"))
            at = data.find(low_half, at + 1)
        return found

    def _returns_from_call(self, address: int) -> bool:
        """Whether the bytes before ``address`` end with a call; code does not change while
        the check runs, so each address is decoded once for every thread and stop."""
        known = self._after_call.get(address)
        if known is None:
            try:
                known = follows_call(self.read(address - 8, 8))
            except TargetError:
                known = False  # the bytes before it are not mapped: nothing called from there
            self._after_call[address] = known
        return known

    # -- the verdict -----------------------------------------------------------------------

    def _judge(self, walk: Walk, words: list[_Word], tid: int, label: str, sp: int,
               always: bool = False) -> list[Busy]:
        """Busy frames of one stack: the live ones the unwind found, plus the candidates it
        could not vouch for. ``always``: a coroutine, whose frames are checked even when the
        fast scan found nothing (its RIP is a return address, not a word on the stack)."""
        out: list[Busy] = []
        live = []
        for i, f in enumerate(walk.frames):
            r = self.index.find(f.pc if f.exact else f.pc - 1)
            if r is not None:
                where = "coroutine" if tid == 0 else (
                    "rip" if i == 0 and f.exact else "signal" if f.exact else "stack")
                live.append((i, Busy(tid, r.name, where, f.pc, label)))
        unverified: list[_Word] = []
        if not walk.complete:
            top = walk.frames[-1].cfa if walk.frames else sp
            unverified = [w for w in words if w.at is None and not walk.frames
                          or w.at is not None and not sp <= w.at < top]
            self.say(2, f"{label}: unwind stopped after {len(walk.frames)} frame(s): "
                        f"{walk.stopped}; {len(unverified)} word(s) beyond it count as busy")
        elif words and not live:
            self.say(2, f"{label}: {len(words)} stale word(s) ignored (not live frames: "
                        f"unwound {len(walk.frames)} frames)")
        out += [Busy(tid, w.name, "coroutine" if tid == 0 else w.where, w.value, label,
                     unverified=walk.stopped) for w in unverified]
        if live and not unverified:
            i, outer = live[-1]
            frame = walk.frames[i]
            returns_to = walk.frames[i + 1].pc if i + 1 < len(walk.frames) else None
            outer = outer._replace(slot=frame.ra_slot, returns_to=returns_to,
                                   never_returns=self._never_returns(walk, i, outer, label))
            live[-1] = (i, outer)
        out += [b for _, b in live]
        return out

    def _never_returns(self, walk: Walk, i: int, busy: Busy, label: str) -> str:
        if busy.name == "main":
            return "main returns only when the program exits"
        if not walk.complete:
            return ""
        callers = walk.frames[i + 1:]
        libraries = [self.cfi.object_at(f.pc - 1) for f in callers]
        if callers and all(o is not None and ".so" in o.name for o in libraries):
            return f"{busy.name} is where {label} starts: it returns only when that ends"
        return ""


def describe_busy(busy: list[Busy]) -> str:
    """The busy functions, where each is in use, and why one can never be waited for."""
    parts = [f"{b.name} ({b.stack or f'thread {b.tid}'}, {b.where})" for b in busy[:3]]
    more = f" and {len(busy) - 3} more" if len(busy) > 3 else ""
    text = ", ".join(parts) + more
    never = next((b.never_returns for b in busy if b.never_returns), "")
    if never:
        text += f"; {never}, so this patch cannot be applied while it runs"
    return text


def busy_hint(busy: list[Busy]) -> str:
    """What to do about a busy refusal."""
    if any(b.never_returns for b in busy):
        return ("a change inside a loop that never returns can never be applied: move the "
                "change into a function the loop calls (the katana flags keep callees out of "
                "line), then make the patch again")
    if any(b.unverified for b in busy):
        return ("try again later, or allow more time (maxWaitForPatching); katana -v apply "
                "says where the unwind stopped")
    return "try again later, or allow more time (maxWaitForPatching)"


def wait_for_safe_point(
    process: Process, ranges: list[Range], timeout: float, interval: float = 0.05, *,
    checker: Checker | None = None, say: Say = _quiet, started: float | None = None,
    reserve: float = 0.0,
) -> None:
    """Stop the process at a moment when no range is in use, trying until ``timeout`` seconds.

    On return the process is stopped (attached) at a safe point. Otherwise it is let go, running
    as it was (every return hook removed), and BusyError names what stayed busy. ``started``
    (a time.monotonic() instant) is when the wait is counted from: the start of the apply, so
    that its preparation counts against maxWaitForPatching too. ``reserve``: seconds kept
    for undoing what was done before the wait (unmapping a staged region), so that giving up
    ends within the deadline too.
    """
    own = checker is None
    checker = checker or Checker(process.pid, ranges, say)
    waiter = _Waiter(process, checker, timeout, interval, say, started)
    waiter.reserve = reserve
    try:
        waiter.run()
    finally:
        if process.seized and not process.attached and checker.hooks.base:
            waiter.cleanup()
        if own:
            checker.close()


class _Waiter:
    def __init__(self, process: Process, checker: Checker, timeout: float, interval: float,
                 say: Say, started: float | None) -> None:
        self.process, self.checker, self.say = process, checker, say
        self.timeout, self.interval = timeout, interval
        self.started = time.monotonic() if started is None else started
        self.deadline = self.started + timeout
        self.tty = sys.stderr.isatty()
        self.reserve = 0.0

    def run(self) -> None:
        attempt = 0.0
        while True:
            began = time.monotonic()
            self.process.stop()
            try:
                busy = self.checker.find_busy(self.process)
                left = self.deadline - time.monotonic()
                # Give up now rather than start an attempt that would end past the deadline
                # (an attempt, and letting go after it, take about as long as the last one).
                give_up = busy and (left <= 0 or left < 2 * attempt + self.reserve)
                if not busy or give_up:
                    self.checker.hooks.disarm(self.process, self.say)
                else:
                    self._arm(busy)
            except BaseException:
                self._release_on_error()
                raise
            if not busy:
                self._end_progress()
                return
            self.process.resume()
            attempt = time.monotonic() - began
            if give_up:
                self._end_progress()
                self._let_go()
                error = BusyError(f"no safe point in process {self.process.pid} within "
                                  f"{self.timeout:g} s: {describe_busy(busy)} in use",
                                  hint=busy_hint(busy))
                error.busy = sorted({b.name for b in busy})  # for --json (docs/json.md)
                raise error
            if self._hookable(busy) and not self.checker.hooks.base:
                # The pages for the hooks are mapped while the process runs; the next stop
                # (at once) sets them.
                self.checker.hooks.map_running(self.process)
                if self.checker.hooks.base:
                    continue
            self._wait(busy)

    @staticmethod
    def _hookable(busy: list[Busy]) -> bool:
        return any(b.slot is not None and b.returns_to is not None and not b.never_returns
                   for b in busy)

    def _arm(self, busy: list[Busy]) -> None:
        slots = [(b.slot, b.returns_to) for b in busy
                 if b.slot is not None and b.returns_to is not None and not b.never_returns]
        if slots and self.checker.hooks.arm(self.process, slots):
            self.say(2, f"waiting for {', '.join(sorted({b.name for b in busy}))} to return: "
                        f"{len(self.checker.hooks.pending())} return hook(s) set")

    def _wait(self, busy: list[Busy]) -> None:
        """Until a hook fires, or the retry interval passes when something busy is not hooked
        (a stack we could not unwind, a frame that cannot return)."""
        hooks = self.checker.hooks
        pending = {h.slot for h in hooks.pending()}
        # Every busy stack has its outermost busy frame hooked: nothing changes until one
        # returns, so there is no point in stopping the process before that.
        stacks = {b.stack for b in busy}
        hooked = {b.stack for b in busy if b.slot in pending and not b.never_returns}
        until = self.deadline if stacks <= hooked else time.monotonic() + self.interval
        until = min(until, self.deadline)
        first = busy[0]
        who = first.stack or f"thread {first.tid}"
        while True:
            now = time.monotonic()
            self._progress(f"waiting for {first.name} to return in {who}: "
                           f"{now - self.started:.1f} s of {self.timeout:g} s")
            if now >= until or hooks.poll():
                return
            check_interrupts()  # SIGINT/SIGTERM are held while katana works: act on them here
            # seized: idle passes on the signals the process gets meanwhile
            self.process.idle(min(0.001 if hooks.pending() else self.interval,
                                  max(0.0, until - now)))

    def _progress(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r{self.process.pid}: {text}\033[K")
            sys.stderr.flush()

    def _end_progress(self) -> None:
        if self.tty and self.checker.hooks.hooks:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _release_on_error(self) -> None:
        try:
            self.checker.hooks.disarm(self.process, self.say)
        except (KatanaError, OSError):
            pass
        self.process.resume()
        self._let_go()

    def _let_go(self) -> None:
        """Running again after a last stop that took the hooks out: free their pages, detach
        (untraced, as if katana had never been there)."""
        try:
            self.checker.hooks.unmap_running(self.process)
        finally:
            self.process.detach()

    def cleanup(self) -> None:
        """Interrupted while the process ran (SIGINT, an error): stop it once more to take the
        hooks out, then let it go."""
        self._end_progress()
        try:
            self.process.stop()
        except KatanaError:
            return  # it exited: nothing left to clean
        try:
            self.checker.hooks.disarm(self.process, self.say)
        except (KatanaError, OSError):
            pass
        finally:
            self.process.resume()
        self._let_go()


# Kept for callers of the former module-level API.
def find_busy(process: Process, ranges: list[Range]) -> list[Busy]:
    checker = Checker(process.pid, ranges)
    try:
        return checker.find_busy(process)
    finally:
        checker.close()


