"""Where patch code and data go: a fresh mapping within rel32 reach of the executable.

Patch code calls and jumps into the executable with rel32 displacements, and the executable's
functions are redirected to it with a 5-byte ``jmp rel32``, so every byte of the region must be
within +-2 GiB of every byte of the executable. For a non-PIE (ET_EXEC) executable, relocations of
type R_X86_64_32/R_X86_64_32S may hold the address of new data, so the region must also lie below
2 GiB. The region is mapped by an mmap injected into the target with MAP_FIXED_NOREPLACE, so an
address that turned out to be taken fails with EEXIST instead of clobbering a mapping.
"""

from __future__ import annotations

import errno

from katana.errors import ApplyError
from katana.target import inject, procfs
from katana.target.borrow import Borrower
from katana.target.process import Process
from katana.target.procfs import PAGE_SIZE, Mapping

REACH = 2**31  # the span of a signed 32-bit displacement
LOW_2G = 0x8000_0000  # below it, an address fits R_X86_64_32 and R_X86_64_32S alike
# brk grows the [heap] upward: keep this much free above it so malloc's heap can still grow.
HEAP_RESERVE = 256 << 20
GUARD = PAGE_SIZE  # a free page between the region and its neighbours
MAX_ATTEMPTS = 16


def _page_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _page_down(value: int) -> int:
    return value & ~(PAGE_SIZE - 1)


def exe_extent(maps: list[Mapping], exe_maps: list[Mapping]) -> tuple[int, int]:
    """[low, high) of the executable's image, its anonymous .bss tail included."""
    low = min(m.start for m in exe_maps)
    high = max(m.end for m in exe_maps)
    for m in maps:  # in address order: the bss beyond the file's pages follows the last mapping
        if m.start == high and m.path == "":
            high = m.end
    return low, high


def _mmap_min_addr() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            return max(int(f.read()), PAGE_SIZE)
    except (OSError, ValueError):
        return 0x10000


def _free_gaps(blocked: list[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """The parts of [low, high) that no blocked interval covers."""
    gaps, cursor = [], low
    for start, end in sorted(blocked):
        if start > cursor:
            gaps.append((cursor, min(start, high)))
        cursor = max(cursor, end)
        if cursor >= high:
            break
    if cursor < high:
        gaps.append((cursor, high))
    return [(a, b) for a, b in gaps if b > a]


def candidates(
    maps: list[Mapping],
    extent: tuple[int, int],
    size: int,
    *,
    below_2g: bool,
    heap: tuple[int, int] | None = None,
    min_addr: int = PAGE_SIZE,
) -> list[int]:
    """Page-aligned addresses for a region of ``size`` bytes, nearest to the executable first.

    ``extent`` is the executable's [low, high); ``heap`` is the brk heap's [start, end), which
    gets HEAP_RESERVE more room above it.
    """
    size = _page_up(size)
    exe_low, exe_high = extent
    low = max(exe_high - REACH + PAGE_SIZE, min_addr)
    high = exe_low + REACH - PAGE_SIZE
    if below_2g:
        high = min(high, LOW_2G)
    blocked = [(m.start - GUARD, m.end + GUARD) for m in maps]
    if heap is not None:
        blocked.append((heap[0] - GUARD, heap[1] + HEAP_RESERVE))
    found = []
    for a, b in _free_gaps(blocked, _page_up(low), _page_down(high)):
        if b - a < size:
            continue
        # Hug the executable: the top of a gap below it, the bottom of a gap above it.
        found.append(_page_down(b - size) if b <= exe_low else _page_up(a))
    return sorted(found, key=lambda addr: max(exe_low - (addr + size), addr - exe_high))


def _heap(pid: int, maps: list[Mapping]) -> tuple[int, int]:
    start = procfs.start_brk(pid)
    end = max((m.end for m in maps if m.path == "[heap]"), default=start)
    return start, max(start, end)


def region_candidates(process: Process, size: int, maps: list[Mapping] | None = None,
                      near: tuple[int, int, bool] | None = None) -> list[int]:
    """Where a region of ``size`` bytes may go, nearest to the executable first (``near``:
    to another object's image [low, high) instead, and whether it must stay below 2 GiB)."""
    maps = process.maps() if maps is None else maps
    if near is None:
        exe_maps = procfs.exe_mappings(process.pid, maps)
        if not exe_maps:
            raise ApplyError(f"the executable of process {process.pid} is not mapped")
        near = (*exe_extent(maps, exe_maps), not procfs.is_pie(process.pid))
    return candidates(maps, near[:2], _page_up(size), below_2g=near[2],
                      heap=_heap(process.pid, maps), min_addr=_mmap_min_addr())


def map_running(process: Process, borrower: Borrower, size: int, prot: int,
                maps: list[Mapping] | None = None,
                near: tuple[int, int, bool] | None = None,
                protect: tuple[int, int, int] | None = None) -> int:
    """Map ``size`` bytes in rel32 reach of the executable (or of the object ``near``
    describes, see ``region_candidates``) while the process runs, through a borrowed thread
    (``borrow.Borrower``); the address. The result is read from the maps: the stub gives the
    thread its registers back, the system call's return value included.

    ``protect`` (offset, length, prot): an mprotect of that part, made by the same borrowed
    thread right after the mmap (one borrowing, not two), only if the mmap succeeded. The
    caller checks that it took (``protected``): code is written into it afterwards through
    /proc/PID/mem, which a tracer may do in a read-only private mapping."""
    size = _page_up(size)
    flags = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS | inject.MAP_FIXED_NOREPLACE
    for addr in region_candidates(process, size, maps, near)[:MAX_ATTEMPTS]:
        then = (inject.SYS_mprotect, addr + protect[0], protect[1], protect[2]) \
            if protect else ()

        def done(addr: int = addr) -> bool:
            text = procfs.maps_text(process.pid)
            return _mapped(text, addr, size) and (
                protect is None or protected(text, addr + protect[0], protect[1], protect[2]))

        borrower.syscall(inject.SYS_mmap, addr, size, prot, flags, -1, 0, effect=done,
                         then=then)
        if _mapped(procfs.maps_text(process.pid), addr, size):
            return addr
        # taken since we read the maps (EEXIST): try the next candidate
    raise ApplyError(
        f"no room for {size} bytes within +-2 GiB of the "
        f"{'executable' if near is None else 'object patched'} in process {process.pid}",
        hint="the address space near it is full; a smaller patch may fit",
    )


def unmap_running(process: Process, regions: list[tuple[int, int]]) -> None:
    """Unmap each (start, size) through one borrowed thread while the process runs (seized):
    katana's own regions once nothing leads there any more. KatanaError when it could not."""
    if not regions:
        return
    borrower = Borrower(process)
    try:
        for lo, size in regions:
            borrower.syscall(inject.SYS_munmap, lo, size)
    finally:
        borrower.close()


def _mapped(text: str, addr: int, size: int) -> bool:
    """Whether anonymous mappings cover [addr, addr + size) from ``addr`` on, without a gap
    (an mprotect of a part splits the region into two or three)."""
    cursor = addr
    while cursor < addr + size:
        m = procfs.mapping_starting_at(text, cursor)
        if m is None or m.path:
            return False
        cursor = m.end
    return True


_PERMS = {inject.PROT_READ: "r--", inject.PROT_READ | inject.PROT_EXEC: "r-x",
          inject.PROT_READ | inject.PROT_WRITE: "rw-"}


def protected(text: str, addr: int, length: int, prot: int) -> bool:
    """Whether /proc/PID/maps ``text`` shows [addr, addr + length) mapped with ``prot``."""
    m = procfs.mapping_starting_at(text, addr)
    return m is not None and m.end >= addr + length and m.perms[:3] == _PERMS.get(prot)


def map_near(
    process: Process,
    size: int,
    prot: int = inject.PROT_READ | inject.PROT_WRITE | inject.PROT_EXEC,
    *,
    tid: int | None = None,
) -> int:
    """Map ``size`` bytes (rounded up to pages) in rel32 reach of the executable; its address.

    The region is anonymous and private, zero-filled. The default protection is read-write-
    execute; callers that lay out code and data apart may mprotect parts of it afterwards.
    Free it with ``inject.munmap``.
    """
    maps = process.maps()
    exe_maps = procfs.exe_mappings(process.pid, maps)
    if not exe_maps:
        raise ApplyError(f"the executable of process {process.pid} is not mapped")
    extent = exe_extent(maps, exe_maps)
    pie = procfs.is_pie(process.pid)
    size = _page_up(size)
    tried = candidates(
        maps, extent, size, below_2g=not pie, heap=_heap(process.pid, maps),
        min_addr=_mmap_min_addr(),
    )
    flags = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS | inject.MAP_FIXED_NOREPLACE
    for addr in tried[:MAX_ATTEMPTS]:
        try:
            got = inject.mmap(process, addr, size, prot, flags, tid=tid)
        except inject.SyscallError as e:
            if e.errno == errno.EEXIST:
                continue  # taken since we read the maps: try the next candidate
            raise
        if got == addr:
            return got
        # Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the address as a hint.
        inject.munmap(process, got, size, tid=tid)
    where = "below 2 GiB and " if not pie else ""
    raise ApplyError(
        f"no room for {size} bytes {where}within +-2 GiB of the executable "
        f"[{extent[0]:#x}, {extent[1]:#x}) in process {process.pid}",
        hint="the address space near the executable is full; a smaller patch may fit",
    )
