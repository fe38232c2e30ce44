"""The safe point's tools, each against a judge of its own: the CFI reader against pyelftools'
decoded tables, the unwinder against the frames a real program is known to have, the return
hook trampoline against capstone, and the declared-stacks table on a live program whose
coroutine switches by hand-written assembly."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.elf.elffile import ELFFile
from livekit import Live, build_scenario, code_snapshot, function_addresses, katana, load_bias

from katana.safety.cfi import row_at
from katana.safety.hooks import CODE_SIZE, trampoline
from katana.safety.safepoint import Checker, Range
from katana.safety.unwind import ProcessCfi, regs_of
from katana.target import procfs
from katana.target.process import Process

pytestmark = pytest.mark.live
PIE = pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])


def _built(name, root, pie=True, wait=1, cflags=()):
    """The scenario's v0 and v1 built, the PO between them, and a config with that wait."""
    exes = build_scenario(name, root, pie=pie, cflags=cflags)
    po = root / "p.po"
    katana("generate", "-o", str(po), str(exes["v0"].parent), str(exes["v1"].parent), "prog",
           check=True)
    config = root / "k.conf"
    config.write_text(f"{{maxWaitForPatching: {wait}}}")
    return exes, po, config


def _reader(pid):
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)

    def read(addr, size):
        return os.pread(fd, size, addr)
    return read, fd


@pytest.fixture(scope="module")
def sleeper(tmp_path_factory):
    """body_change v0: main calls compute() and sleeps in usleep() between calls."""
    exes = build_scenario("body_change", tmp_path_factory.mktemp("sleeper"), versions=("v0",))
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"^tick 2 ", timeout=20)
        yield live, exes["v0"]
    finally:
        live.kill()


def _objects(pid):
    """(path, runtime start of its first mapping) of the program and of libc."""
    maps = procfs.read_maps(pid)
    exe = os.readlink(f"/proc/{pid}/exe")
    libc = next(m.path for m in maps if os.path.basename(m.path).startswith("libc.so"))
    return [(path, min(m.start for m in maps if m.path == path and m.offset == 0))
            for path in (exe, libc)]


def test_cfi_rows_match_pyelftools(sleeper):
    """Every row of every FDE of the program, and of 300 of libc's, read from the process's
    memory, gives the CFA rule and return address rule pyelftools decodes from the file."""
    live, _ = sleeper
    read, fd = _reader(live.pid)
    try:
        cfi = ProcessCfi(live.pid, read)
        compared = 0
        for path, start in _objects(live.pid):
            obj = cfi.object_at(next(o.start for o in cfi.objects if o.name ==
                                     os.path.basename(path)))
            with open(path, "rb") as f:
                elf = ELFFile(f)
                first = min(s["p_vaddr"] for s in elf.iter_segments()
                            if s["p_type"] == "PT_LOAD")
                bias = start - (first & ~0xFFF)
                dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
                entries = [e for e in dwarf.EH_CFI_entries()
                           if hasattr(e, "header") and "initial_location" in e.header]
                for entry in entries[:300]:
                    decoded = entry.get_decoded()
                    pc0 = entry.header["initial_location"] + bias
                    fde = obj.cfi.find(read, obj.bias, pc0)
                    assert fde is not None and fde.start == pc0
                    for row in decoded.table:
                        mine = row_at(fde, row["pc"] + bias)
                        theirs = row["cfa"]
                        if theirs.expr is not None:
                            assert mine.cfa[0] == "expr"
                        else:
                            assert mine.cfa == ("reg", theirs.reg, theirs.offset), hex(row["pc"])
                        ra = row.get(16)
                        if ra is not None and ra.type == "OFFSET":
                            assert mine.regs[16] == ("off", ra.arg)
                        compared += 1
        assert compared > 500
    finally:
        os.close(fd)


def test_walk_of_a_sleeping_thread_reaches_main(sleeper):
    """Stopped in usleep's system call, the unwind goes through libc's nanosleep wrappers,
    main and libc's start code, and ends where _start says the stack ends."""
    live, exe = sleeper
    main = function_addresses(exe)["main"] + load_bias(live.pid, exe)
    checker = Checker(live.pid, [])
    proc = Process(live.pid)
    try:
        proc.stop()
        walk = checker.unwinder().walk(regs_of(proc.get_regs(live.pid)))
    finally:
        proc.resume()
        checker.close()
    assert walk.complete, walk.stopped
    pcs = [f.pc for f in walk.frames]
    assert any(main <= pc < main + 0x200 for pc in pcs[1:]), [hex(p) for p in pcs]
    assert all(f.ra_slot is not None for f in walk.frames[:-1])


def test_trampoline_code():
    """The return hook saves seven registers, raises its flag, waits on the gate with a
    timeout, restores the registers and jumps to the saved return address: nothing else."""
    at, data, index = 0x7F0000001000 + CODE_SIZE, 0x7F0000002000, 1
    code = trampoline(at, data, index)
    ins = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, at))
    assert sum(i.size for i in ins) == len(code) <= CODE_SIZE
    text = [f"{i.mnemonic} {i.op_str}" for i in ins]
    saved = data + 64 + 64 * index
    targets = [i.address + i.size + struct.unpack("<i", code[i.address - at + i.size - 4:
                                                             i.address - at + i.size])[0]
               for i in ins[:7]]
    assert targets == [saved + 8 * k for k in range(7)]
    assert text[7].startswith("mov byte ptr [rip")
    assert "syscall" in text[13] and text[8] == "mov eax, 0xca"
    assert text[-1].startswith("jmp qword ptr [rip")
    assert [t.split()[1].rstrip(",") for t in text[14:21]] == \
        ["rax", "rdx", "rdi", "rsi", "r10", "rcx", "r11"]


@PIE
def test_declared_stack_is_checked(tmp_path, pie):
    """A coroutine suspended inside step() on a stack only the program knows of: declared
    through katana_stacks, apply is refused naming it; not declared, katana cannot see it."""
    exes, po, config = _built("declared_stack", tmp_path, pie, wait=1)
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"^tick 3 rounds 1$", timeout=20)
        before = code_snapshot(live.pid)
        result = katana("-c", str(config), "apply", str(po), str(live.pid))
        assert result.returncode == 10, result.stderr
        assert re.search(r"step \(coroutine stack at 0x[0-9a-f]+", result.stderr), result.stderr
        mark = live.mark()
        live.wait_for(r"^tick \d+ rounds 1$", after=mark, timeout=20)
        assert code_snapshot(live.pid) == before
    finally:
        live.kill()


def test_undeclared_stack_is_not_seen(tmp_path):
    """The same program without the declaration: the documented limit (nothing tells katana
    of the stack), shown so that the declaration is known to be what makes the difference."""
    root = tmp_path
    exes = build_scenario("declared_stack", root, cflags=("-DDECLARE=0",))
    po = root / "p.po"
    katana("generate", "-o", str(po), str(exes["v0"].parent), str(exes["v1"].parent), "prog",
           check=True)
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"^tick 3 rounds 1$", timeout=20)
        result = katana("apply", str(po), str(live.pid))
        assert result.returncode == 0, result.stderr
    finally:
        live.kill()


def test_checker_reads_cfi_before_the_stop(sleeper):
    """The CFI index is read when the checker is made (before any stop) and shared by build-id:
    a second checker of the same process reads no table again."""
    live, exe = sleeper
    first = Checker(live.pid, [Range(1, 2, "x")])
    second = Checker(live.pid, [Range(1, 2, "x")])
    try:
        a = {o.name: o.cfi for o in first.cfi.objects if o.cfi}
        b = {o.name: o.cfi for o in second.cfi.objects if o.cfi}
        assert Path(exe).name in a and any(n.startswith("libc.so") for n in a)
        assert all(a[n] is b[n] for n in a)
    finally:
        first.close()
        second.close()


def _maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return [line.split()[0] for line in f]


@PIE
def test_sigaltstack_frame_is_followed(tmp_path, pie):
    """A thread whose signal handler waits on the alternate signal stack, work() interrupted
    below it on the ordinary stack: refused, naming work() as found through the signal frame;
    the return hook set on work()'s frame is taken out again (no mapping of ours is left)."""
    exes, po, config = _built("sigaltstack_busy", tmp_path, pie, wait=1)
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"^tick \d+ signalled 1$", timeout=20)
        before, maps = code_snapshot(live.pid), _maps(live.pid)
        result = katana("-c", str(config), "apply", str(po), str(live.pid))
        assert result.returncode == 10, result.stderr
        assert re.search(r"work \(thread \d+, signal\)", result.stderr), result.stderr
        mark = live.mark()
        live.wait_for(r"^tick \d+ signalled 1$", after=mark, timeout=20)
        assert code_snapshot(live.pid) == before
        assert _maps(live.pid) == maps
    finally:
        live.kill()


@PIE
def test_revert_waits_for_patched_code_to_return(tmp_path, pie):
    """The patch's code carries its CFI into the record: a revert while the patched work()
    sleeps inside it unwinds through it, hooks its return and reverts on that return."""
    exes = build_scenario("slow_return", tmp_path, pie=pie)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(exes["v0"].parent), str(exes["v1"].parent), "prog",
           check=True)
    from katana.po import load_po
    loaded = load_po(po)
    work = next(f for f in loaded.meta.functions if f.name == "work")
    section = loaded.symbols[work.symbol].section
    assert str(section) in loaded.meta.cfi
    from katana.safety.cfi import fde_from_blob
    fde = fde_from_blob(loaded.meta.cfi[str(section)], 0x1000)
    assert fde.end - fde.start == work.new_size
    config = tmp_path / "k.conf"
    config.write_text("{maxWaitForPatching: 5}")
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"^tick 1 result 100001$", timeout=20)
        katana("-c", str(config), "apply", str(po), str(live.pid), check=True)
        live.wait_for(r"^tick \d+ result 2\d{5}$", timeout=20)
        result = katana("-c", str(config), "-v", "revert", str(live.pid))
        assert result.returncode == 0, result.stderr
        mark = live.mark()
        live.wait_for(r"^tick \d+ result 1\d{5}$", after=mark, timeout=20)
    finally:
        live.kill()


def test_return_hooks_can_be_turned_off(tmp_path):
    """flags.returnHooks: false (for a program that unwinds its own stack) does what it says:
    no hook is set, so a function that sleeps 0.4 s per call is only ever checked at random
    instants, finds it busy every time, and the apply is refused."""
    exes, po, config = _built("slow_return", tmp_path, True, wait=2)
    config.write_text("{maxWaitForPatching: 2, flags: {returnHooks: false}}")
    live = Live([str(exes["v0"])])
    try:
        live.wait_for(r"^tick 1 result 100001$", timeout=20)
        result = katana("-c", str(config), "-v", "apply", str(po), str(live.pid))
        assert result.returncode == 10, result.stderr
        assert "return hook" not in result.stderr
        mark = live.mark()
        live.wait_for(r"^tick \d+ result 1\d{5}$", after=mark, timeout=20)
    finally:
        live.kill()
