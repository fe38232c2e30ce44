"""Benchmark of ``katana apply PO all``: many processes of one build in one command.

Run by hand: ``.venv/bin/python bench/apply_all.py [--processes 100] [--separate 10]`` after
``bench/stop.py`` is importable (it builds a 1-thread, idle version of its program and a
1-function patch). Starts N copies
of v0, times one ``katana -q apply PO all``, then times ``--separate`` single-process
``katana apply`` commands on fresh copies and scales them to N (each pays the interpreter's
start-up and imports).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KATANA_ENV, ROOT, table  # noqa: E402
from stop import KATANA, build  # noqa: E402


def _start(exe: Path, n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline() == b"ready\n"
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=100)
    ap.add_argument("--separate", type=int, default=10)
    args = ap.parse_args()
    built = build(1)  # idle processes: the main thread in pause(), as in the issue
    exe, po = built[0], built[1]
    procs = _start(exe, args.processes)
    try:
        t0 = time.monotonic()
        r = subprocess.run([*KATANA, "-q", "apply", str(po), "all"], cwd=ROOT,
                           capture_output=True, text=True, env=KATANA_ENV)
        together = time.monotonic() - t0
        summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr
    finally:
        _stop(procs)
    procs = _start(exe, args.separate)
    try:
        t0 = time.monotonic()
        for p in procs:
            subprocess.run([*KATANA, "-q", "apply", str(po), str(p.pid)], cwd=ROOT, check=True,
                           capture_output=True, env=KATANA_ENV)
        separate = (time.monotonic() - t0) / args.separate
    finally:
        _stop(procs)
    n = args.processes
    print(summary)
    print(table(["how", "processes", "total s", "ms per process"], [
        ["katana apply PO all", str(n), f"{together:.2f}", f"{together / n * 1e3:.1f}"],
        [f"separate commands (x{args.separate}, scaled)", str(n), f"{separate * n:.1f}",
         f"{separate * 1e3:.0f}"],
    ]))


if __name__ == "__main__":
    main()
