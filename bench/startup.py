"""Benchmark of katana's start-up: whole commands against ``python -c pass``, in one run.

Run by hand: ``.venv/bin/python bench/startup.py [--runs N]``. Each row is the median wall time
of N runs of a fresh command (the venv's ``katana`` console script, as a user runs it), the rows
interleaved run by run so that load from other work touches them all alike:

- ``python -c pass``: the interpreter alone (the baseline, x 1.00);
- ``import the apply path``: ``python -c`` importing what ``katana apply`` imports;
- ``katana status PID``: a process with one patch applied (read from the process, no stop);
- ``katana apply PO PID``: a fresh idle process of bench/stop.py's 1-thread program each run,
  1-function patch, the whole command (attach, safe point, commit, detach, report).

Run as root for apply (ptrace); the programs are bench/stop.py's, cached under /tmp.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, median, table  # noqa: E402
from stop import build  # noqa: E402

KATANA = str(Path(sys.executable).parent / "katana")
APPLY_IMPORTS = ("import katana.cli, katana.config, katana.live.command, katana.live.apply, "
                 "katana.safety.safepoint")


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.decode()}")
    return elapsed * 1e3


def _start(exe: Path) -> subprocess.Popen:
    p = subprocess.Popen([str(exe)], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    built = build(1)
    exe, po = built[0], built[1]
    patched = _start(exe)
    rows: dict[str, list[float]] = {"python -c pass": [], "import the apply path": [],
                                    "katana status PID": [], "katana apply PO PID": []}
    try:
        subprocess.run([KATANA, "-q", "apply", str(po), str(patched.pid)], check=True, cwd=ROOT)
        for _ in range(args.runs):
            rows["python -c pass"].append(_timed([sys.executable, "-c", "pass"]))
            rows["import the apply path"].append(_timed([sys.executable, "-c", APPLY_IMPORTS]))
            rows["katana status PID"].append(_timed([KATANA, "status", str(patched.pid)]))
            target = _start(exe)
            try:
                rows["katana apply PO PID"].append(
                    _timed([KATANA, "apply", str(po), str(target.pid)]))
            finally:
                target.kill()
                target.wait()
    finally:
        patched.kill()
        patched.wait()
    base = median(rows["python -c pass"])
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.runs} runs each, interleaved; load average {load}")
    print(table(["command", "median ms", "min ms", "x python -c pass"],
                [[name, f"{median(v):.1f}", f"{min(v):.1f}", f"{median(v) / base:.2f}"]
                 for name, v in rows.items()]))


if __name__ == "__main__":
    main()
