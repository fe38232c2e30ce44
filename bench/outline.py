"""What the SCons tool's patchability flags cost at run time, on the example server's own code.

The tool adds ``-flive-patching=inline-clone`` (GCC >= 9) and, by default,
``-fno-inline-functions-called-once -fno-inline-small-functions`` (``KATANA_OUTLINE_CALLEES``) so
that a change to a helper never lands inside a loop that is always on the stack. This measures
what that costs: kvd's request path (protocol parsing, store lookups, stats), driven by a small C
driver that calls ``protocol_handle`` in a loop with no network, with the store in libkvstore.so
(``-fPIC``, called through the PLT) as the example builds it, built five ways:

    baseline   -O2 -g -ffunction-sections -fdata-sections
    live       baseline + -flive-patching=inline-clone
    once       live + -fno-inline-functions-called-once
    small      live + -fno-inline-small-functions
    katana     live + both + -fpatchable-function-entry=5,5 (the tool's default)

Prints the median wall time of several runs of each and the ratio to the baseline, all measured
in this invocation, and, where valgrind is installed, the instructions executed (callgrind):
those do not depend on what else the machine is doing, so small differences are real.
Run: python bench/outline.py [--runs N] [--requests N]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path

from _common import ROOT, median, table

BASE = ["-O2", "-g", "-ffunction-sections", "-fdata-sections"]
VARIANTS = {
    "baseline": BASE,
    "live": [*BASE, "-flive-patching=inline-clone"],
    "once": [*BASE, "-flive-patching=inline-clone", "-fno-inline-functions-called-once"],
    "small": [*BASE, "-flive-patching=inline-clone", "-fno-inline-small-functions"],
    "katana": [*BASE, "-flive-patching=inline-clone", "-fpatchable-function-entry=5,5",
               "-fno-inline-functions-called-once", "-fno-inline-small-functions"],
}
DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "protocol.h"

/* A mix like a cache's: mostly GETs over a working set, some SETs and misses. */
int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    char line[REQUEST_MAX], reply[REPLY_MAX];
    unsigned long sum = 0;
    for (long i = 0; i < n; i++) {
        long k = (i * 7919) % 600;
        if (i % 10 == 0)
            snprintf(line, sizeof line, "SET key%03ld value%ld", k, i);
        else if (i % 10 == 1)
            snprintf(line, sizeof line, "GET absent%ld", k);
        else
            snprintf(line, sizeof line, "GET key%03ld", k);
        sum += protocol_handle(line, reply, sizeof reply);
    }
    printf("%lu\n", sum);
    return 0;
}
"""


def build(variant: str, out: Path) -> Path:
    src = ROOT / "example_project" / "src"  # the tree at v0
    out.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.[ch]"):
        if f.name not in ("main.c", "client.c", "net.c"):
            shutil.copy(f, out / f.name)
    (out / "driver.c").write_text(DRIVER)
    # the store is a library the server loads, as example_project/SConscript builds it
    subprocess.run(["gcc", *VARIANTS[variant], "-fPIC", "-shared", "-Wl,-soname,libkvstore.so",
                    "store.c", "-o", "libkvstore.so"], cwd=out, check=True)
    sources = sorted(p.name for p in out.glob("*.c") if p.name != "store.c")
    subprocess.run(["gcc", *VARIANTS[variant], *sources, "-o", "driver", "-L.", "-lkvstore",
                    "-Wl,-rpath,$ORIGIN"], cwd=out, check=True)
    return out / "driver"


def run_once(program: Path, requests: int) -> float:
    started = time.perf_counter()
    subprocess.run([str(program), str(requests)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def instructions(program: Path, requests: int) -> int | None:
    """Instructions executed (callgrind's Ir total), or None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    result = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                             str(program), str(requests)], capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    return int(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path("/tmp/katana-bench-outline")
    programs = {v: build(v, work / v) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.runs):  # interleaved, so that machine noise hits every variant alike
        for variant, program in programs.items():
            times[variant].append(run_once(program, args.requests))
    counted = {v: instructions(p, args.requests // 10) for v, p in programs.items()}
    base, base_ir = median(times["baseline"]), counted["baseline"]
    rows = []
    for variant in VARIANTS:
        m, ir = median(times[variant]), counted[variant]
        rows.append([variant, f"{m * 1000:.1f}", f"{args.requests / m / 1e6:.2f}",
                     f"{m / base:.3f}", "-" if ir is None else f"{ir / 1e6:.1f}",
                     "-" if ir is None or not base_ir else f"{ir / base_ir:.4f}"])
    print(f"kvd request path, {args.requests:,} requests, median of {args.runs} runs; "
          f"instructions for {args.requests // 10:,} requests")
    print(table(["flags", "ms", "M req/s", "x baseline", "M instr", "x baseline"], rows))


if __name__ == "__main__":
    main()
