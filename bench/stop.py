"""Benchmark of the stop: how long the target's threads are held, from the kernel's scheduler
events, for katana and for a C floor in the same run.

Run by hand (root, perf): ``.venv/bin/python bench/stop.py [--runs N] [--threads 3,66]``.

A C program whose worker threads call 100 noinline functions ``fn_000``..``fn_099`` (then sleep
1 ms) is built with the katana flags under /tmp/katana-bench-stop, with versions where the first
1, 10 and 100 functions change, and their POs. Each run starts a fresh v0 and, while
``perf record -a -e sched:sched_switch -k CLOCK_MONOTONIC`` runs, applies ``bench/floor``
(PTRACE_SEIZE + PTRACE_INTERRUPT every thread, one /proc/PID/mem write, detach) and then
``katana apply``. A thread is held from the switch that takes it off the CPU in state ``t``
(a ptrace stop) until it next runs; the figure is the union of those intervals over all the
target's threads inside each command's window (katana's start-up, which never stops the target,
does not count). katana's own figure ("target stopped") is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KATANA_ENV, ROOT, build_version, median, table  # noqa: E402

CACHE = Path("/tmp/katana-bench-stop")
FUNCTIONS = 100
SIZES = (1, 10, 100)
KATANA = [sys.executable, "-m", "katana"]


def _source(threads: int, changed: int) -> str:
    fns = "\n".join(
        f"__attribute__((noinline)) long fn_{i:03d}(long x) {{ return x * {i + 1} + "
        f"{7 if i < changed else 3}; }}" for i in range(FUNCTIONS))
    table_ = ", ".join(f"fn_{i:03d}" for i in range(FUNCTIONS))
    return f"""#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile long sink;
{fns}
static long (*const fns[])(long) = {{{table_}}};
static void *worker(void *arg) {{
    for (long x = (long)arg;; x++) {{
        for (int i = 0; i < {FUNCTIONS}; i++) sink += fns[i](x);
        usleep(1000);
    }}
    return 0;
}}
int main(void) {{
    pthread_t t;
    for (long i = 0; i < {threads - 1}; i++) pthread_create(&t, 0, worker, (void *)i);
    printf("ready\\n"); fflush(stdout);
    for (;;) pause();
}}
"""


def build(threads: int) -> dict[int, Path]:
    """v0 and one PO per size; cached."""
    root = CACHE / f"t{threads}"
    pos = {}
    for changed in (0, *SIZES):
        src = root / "src" / f"c{changed}"
        if not (root / f"c{changed}" / "prog").exists():
            src.mkdir(parents=True, exist_ok=True)
            (src / "prog.c").write_text(_source(threads, changed))
            build_version(src, root / f"c{changed}")
    for changed in SIZES:
        po = root / f"c{changed}.po"
        if not po.exists():
            subprocess.run([*KATANA, "generate", "-o", str(po), str(root / "c0"),
                            str(root / f"c{changed}"), "prog"], check=True, cwd=ROOT,
                           capture_output=True)
        pos[changed] = po
    pos[0] = root / "c0" / "prog"
    return pos


def floor_binary() -> Path:
    out = CACHE / "floor"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(out), str(ROOT / "bench" / "floor.c")],
                       check=True)
    return out


_SWITCH = re.compile(r"^\s*(\d+)\s+([\d.]+):.*prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) "
                     r"==> next_comm=.* next_pid=(\d+)")


def held(perf_data: Path, tids: set[int], window: tuple[float, float]) -> float:
    """Seconds during which at least one of ``tids`` was held in a ptrace stop in ``window``."""
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "tid,time,trace"],
                         capture_output=True, text=True).stdout
    since: dict[int, float] = {}
    spans = []
    for line in out.splitlines():
        m = _SWITCH.match(line)
        if not m:
            continue
        t, prev, state, nxt = float(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
        if prev in tids and state.startswith("t"):
            since[prev] = t
        if nxt in tids and nxt in since:
            spans.append((since.pop(nxt), t))
    lo, hi = window
    # Only the stops a command began are its own: a thread the floor program stopped that then
    # goes back to sleep is next switched in when its sleep ends, tens of ms later, which
    # counted that sleep against katana, the next command (seen: one span from 0.3 ms before
    # katana's start, 76 ms long, in about half the runs)
    spans = sorted((a, min(b, hi)) for a, b in spans if lo <= a < hi)
    total, end = 0.0, lo
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def one_run(exe: Path, po: Path, floor: Path) -> tuple[float, float, float, float]:
    """(floor held, katana held, katana's own "target stopped", wall of katana) in ms."""
    target = subprocess.Popen([str(exe)], stdout=subprocess.PIPE)
    data = CACHE / "perf.data"
    try:
        assert target.stdout.readline() == b"ready\n"
        tids = {int(t) for t in os.listdir(f"/proc/{target.pid}/task")}
        data.unlink(missing_ok=True)
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "sched:sched_switch",
                                 "-k", "CLOCK_MONOTONIC", "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not data.exists() or data.stat().st_size < 4096:
            time.sleep(0.01)  # perf writes its header once it records
        time.sleep(0.2)
        fn = _address(target.pid, exe)
        t0 = time.monotonic()
        subprocess.run([str(floor), str(target.pid), hex(fn), "5"], check=True,
                       capture_output=True)
        t1 = time.monotonic()
        r = subprocess.run([*KATANA, "apply", str(po), str(target.pid)], cwd=ROOT,
                           capture_output=True, text=True, env=KATANA_ENV)
        t2 = time.monotonic()
        time.sleep(0.05)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
        stopped = re.search(r"target stopped ([\d.]+) ms", r.stdout)
        if r.returncode != 0 or not stopped:
            raise RuntimeError(r.stderr)
        return (held(data, tids, (t0, t1)) * 1e3, held(data, tids, (t1, t2)) * 1e3,
                float(stopped.group(1)), (t2 - t1) * 1e3)
    finally:
        target.kill()
        target.wait()


def _address(pid: int, exe: Path) -> int:
    from katana.elf.symtab import executable_symbols
    from katana.target import procfs

    return executable_symbols(str(exe)).find("fn_000").value + procfs.load_bias(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", default="3,66")
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("bench/stop.py needs perf (and root)")
    floor = floor_binary()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        built = build(threads)
        for size in SIZES:
            runs = [one_run(built[0], built[size], floor) for _ in range(args.runs)]
            f, k, s, w = (median([r[i] for r in runs]) for i in range(4))
            rows.append([f"{threads} threads, {size} fn", f"{f:.2f}", f"{k:.2f}", f"{s:.2f}",
                         f"{k / f:.1f}" if f else "-", f"{w:.0f}"])
    print(table(["case", "floor held", "katana held", "katana says", "x floor", "wall ms"],
                rows))


if __name__ == "__main__":
    main()
