"""Benchmark of ``katana apply``: the longest stall the target sees while a patch goes in.

Run by hand: ``/tmp/kvenv/bin/python bench/apply.py [--quick] [--runs N]``.

Builds (once, cached under /tmp/katana-bench-apply) a C program with 100 noinline functions a
worker thread calls in a loop, and versions of it where 1, 10 and 100 of those functions change;
generates their Patch Objects with ``katana generate``. The target measures its own stalls: a
monitor thread spins on clock_gettime(CLOCK_MONOTONIC) and keeps the longest gap between two
iterations; the main thread prints that gap every 50 ms (with the interval's CLOCK_MONOTONIC
bounds) and resets it. Python's time.monotonic_ns() reads the same clock, so the stall over the
window of the ``katana -vv apply`` command is the largest gap reported by the intervals that
overlap it. Each run starts a fresh v0 (so the patch applies to an unpatched process), measures
an idle window first (the noise floor: both target threads spin on a 2-core machine), applies,
and kills the target.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Live, build_version, median, table  # noqa: E402

CACHE = Path("/tmp/katana-bench-apply")
FUNCTIONS = 100
SIZES = (1, 10, 100)
INTERVAL_MS = 50

_PROLOGUE = r"""#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static _Atomic long long maxgap;
volatile int sink;
"""

_EPILOGUE = r"""
/* The stall as the target sees it: the longest gap between two iterations of a tight loop. */
static void *monitor(void *arg)
{
    (void)arg;
    long long last = now_ns();
    for (;;) {
        long long t = now_ns(), d = t - last;
        long long m = atomic_load(&maxgap);
        while (d > m && !atomic_compare_exchange_weak(&maxgap, &m, d))
            ;
        last = t;
    }
    return NULL;
}

int main(void)
{
    pthread_t w, m;
    pthread_create(&w, NULL, worker, NULL);
    pthread_create(&m, NULL, monitor, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        long long t0 = now_ns();
        struct timespec pause = {0, INTERVAL_MS * 1000000L};
        nanosleep(&pause, NULL);
        long long t1 = now_ns();
        long long g = atomic_exchange(&maxgap, 0);
        printf("gap t0=%lld t1=%lld maxgap_us=%lld\n", t0, t1, g / 1000);
        fflush(stdout);
    }
}
"""


def _source(changed: int) -> str:
    """The program where the first ``changed`` functions have a new body."""
    fns = "".join(f"int __attribute__((noinline)) fn_{i:03d}(int x) "
                  f"{{ return x * {5 if i < changed else 3} + {i}; }}\n"
                  for i in range(FUNCTIONS))
    calls = "".join(f"        s = fn_{i:03d}(s);\n" for i in range(FUNCTIONS))
    worker = (f"\nstatic void *worker(void *arg)\n{{\n    (void)arg;\n    int s = 0;\n"
              f"    for (;;) {{\n{calls}        sink = s;\n    }}\n    return NULL;\n}}\n")
    return (_PROLOGUE + f"#define INTERVAL_MS {INTERVAL_MS}\n" + fns + worker + _EPILOGUE)


def _katana(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "katana", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def build() -> dict[int, Path]:
    """Build v0 and the changed versions once; size -> Patch Object."""
    pos = {k: CACHE / f"patch{k}.po" for k in SIZES}
    if (CACHE / "done").exists():
        return pos
    shutil.rmtree(CACHE, ignore_errors=True)
    print(f"building under {CACHE} (once) ...", flush=True)
    for name, changed in [("v0", 0), *((f"v1_{k}", k) for k in SIZES)]:
        src = CACHE / "src" / name
        src.mkdir(parents=True)
        (src / "target.c").write_text(_source(changed))
        build_version(src, CACHE / name)
    for k in SIZES:
        done = _katana("generate", "-o", str(pos[k]), str(CACHE / "v0"), str(CACHE / f"v1_{k}"),
                       "prog")
        if done.returncode != 0:
            raise SystemExit(f"katana generate failed:\n{done.stdout}\n{done.stderr}")
    (CACHE / "done").write_text("ok\n")
    return pos


_GAP = re.compile(r"gap t0=(\d+) t1=(\d+) maxgap_us=(\d+)")
_PHASE = re.compile(r"^\s+(\S.*?)\s+([\d.]+) ms\s*$", re.M)
_STOPPED = re.compile(r"target stopped ([\d.]+) ms")


def _max_gap(live: Live, start_ns: int, end_ns: int) -> float:
    """Largest gap (ms) of the intervals overlapping [start_ns, end_ns]; waits until the target
    has reported an interval that begins after ``end_ns`` (so a stall that ended the window is
    counted)."""
    live.wait_for(r"gap t0=(\d+)", timeout=20)
    while True:
        m = live.wait_for(r"gap t0=(\d+)", timeout=20, after=live.last_index + 1)
        if int(m.group(1)) >= end_ns:
            break
    worst = 0
    for line in live.lines:
        g = _GAP.search(line)
        if g and int(g.group(2)) > start_ns and int(g.group(1)) < end_ns:
            worst = max(worst, int(g.group(3)))
    return worst / 1000


def one_run(po: Path) -> dict:
    """Start v0, measure an idle window, apply ``po``, measure the apply window, kill v0."""
    live = Live([str(CACHE / "v0" / "prog")])
    try:
        live.wait_for("^ready$", timeout=20)
        live.wait_for(r"^gap ", timeout=20)  # threads are running
        # The idle window (noise floor) ends when the target has reported past it.
        idle_start = time.monotonic_ns()
        idle = _max_gap(live, idle_start, idle_start + 500_000_000)
        start = time.monotonic_ns()
        done = _katana("-vv", "apply", str(po), str(live.pid))
        end = time.monotonic_ns()
        if done.returncode != 0:
            raise SystemExit(f"katana apply failed ({done.returncode}):\n{done.stdout}\n"
                             f"{done.stderr}")
        stall = _max_gap(live, start, end)
        output = done.stdout + done.stderr
        phases = {name.strip(): float(ms) for name, ms in _PHASE.findall(output)}
        stopped = _STOPPED.search(output)
        return {"stall": stall, "idle": idle, "wall": (end - start) / 1e6,
                "stopped": float(stopped.group(1)) if stopped else float("nan"), **phases}
    finally:
        live.kill()


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 runs per size (the minimum)")
    ap.add_argument("--runs", type=int, default=7, help="runs per size (default 7)")
    args = ap.parse_args()
    runs = 5 if args.quick else max(5, args.runs)
    pos = build()
    results = {k: [one_run(pos[k]) for _ in range(runs)] for k in SIZES}
    phase_names = ["prepare", "safe point", "commit"]
    base = {key: median([r[key] for r in results[1]])
            for key in ("stall", "stopped", "wall")}
    rows = []
    for k, rs in results.items():
        med = {key: median([r.get(key, float("nan")) for r in rs])
               for key in ("idle", "stall", "stopped", "wall", *phase_names)}
        rows.append([f"{k} fn", _fmt(med["idle"]), _fmt(med["stall"]),
                     _fmt(min(r["stall"] for r in rs)), _fmt(med["stopped"]),
                     *(_fmt(med[p]) for p in phase_names),
                     _fmt(median([r.get("safe point", 0) + r.get("commit", 0) for r in rs])),
                     f"{med['wall']:.0f}",
                     f"{med['stall'] / base['stall']:.2f}",
                     f"{med['stopped'] / base['stopped']:.2f}",
                     f"{med['wall'] / base['wall']:.2f}"])
    print(f"\n{runs} runs per size, medians, ms; ratios against the 1-function patch")
    print(table(["patch", "idle gap", "stall", "min stall", "stopped", *phase_names, "sp+commit",
                 "wall", "x stall", "x stopped", "x wall"], rows))
    extra = sorted({p for rs in results.values() for r in rs for p in r} -
                   {"stall", "idle", "wall", "stopped", *phase_names})
    if extra:
        print(f"(other phases katana reported: {', '.join(extra)})")


if __name__ == "__main__":
    main()
