"""Benchmark of katana's start-up: whole commands against ``python -c pass``, in one run.

Run by hand: ``.venv/bin/python bench/startup.py [--runs N]``. Each row is the median wall time
of N runs of a fresh command (the venv's ``katana`` console script, as a user runs it), and its
CPU time (user + system, which load from other work changes least), the rows interleaved run
by run so that load touches them all alike:

- ``python -c pass``: the interpreter alone (the baseline, x 1.00);
- ``import the apply path``: ``python -c`` importing what ``katana apply`` imports;
- ``katana status PID``: a process with one patch applied (read from the process, no stop);
- ``katana apply PO PID``: a fresh idle process of bench/stop.py's 1-thread program each run,
  1-function patch, the whole command (attach, safe point, commit, detach, report);
- the same, with every module compiled from source (no bytecode cache found, none written:
  PYTHONPYCACHEPREFIX at an empty directory and PYTHONDONTWRITEBYTECODE=1), as a checkout
  runs in an environment that sets PYTHONDONTWRITEBYTECODE.

Run as root for apply (ptrace); the programs are bench/stop.py's, cached under /tmp.

The commands run with PYTHONDONTWRITEBYTECODE removed from their environment, after one run
that writes the bytecode caches: an installed katana has its modules compiled (pip does it at
install time), and compiling them from source at every start costs more than all the rest
(measured here: ~13 ms for katana/target/process.py alone under load).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KATANA_ENV, ROOT, median, table  # noqa: E402
from stop import build  # noqa: E402

KATANA = str(Path(sys.executable).parent / "katana")
ENV = KATANA_ENV
NO_CACHE = {**KATANA_ENV, "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPYCACHEPREFIX": "/tmp/katana-bench-startup-nocache"}
APPLY_IMPORTS = ("import katana.cli, katana.config, katana.live.command, katana.live.apply, "
                 "katana.safety.safepoint")


def _timed(cmd: list[str], env: dict[str, str] = ENV) -> tuple[float, float]:
    """(wall ms, CPU ms: user + system) of one run of ``cmd``. The CPU time is what load from
    other work changes least: a command waiting for a CPU is not using one."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env)
    _pid, status, usage = os.wait4(p.pid, 0)
    elapsed = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}")
    return elapsed * 1e3, (usage.ru_utime + usage.ru_stime) * 1e3


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
    rows: dict[str, list[tuple[float, float]]] = {"python -c pass": [], "import the apply path": [],
                                    "katana status PID": [], "katana apply PO PID": [],
                                    "katana apply, compiled at start": []}
    try:
        # also writes the bytecode caches of everything apply and status import
        subprocess.run([KATANA, "-q", "apply", str(po), str(patched.pid)], check=True, cwd=ROOT,
                       env=ENV)
        subprocess.run([KATANA, "status", str(patched.pid)], check=True, cwd=ROOT, env=ENV,
                       stdout=subprocess.DEVNULL)
        for _ in range(args.runs):
            rows["python -c pass"].append(_timed([sys.executable, "-c", "pass"]))
            rows["import the apply path"].append(_timed([sys.executable, "-c", APPLY_IMPORTS]))
            rows["katana status PID"].append(_timed([KATANA, "status", str(patched.pid)]))
            for name, env in (("katana apply PO PID", ENV),
                              ("katana apply, compiled at start", NO_CACHE)):
                target = _start(exe)
                try:
                    rows[name].append(_timed([KATANA, "apply", str(po), str(target.pid)], env))
                finally:
                    target.kill()
                    target.wait()
    finally:
        patched.kill()
        patched.wait()
    wall = {name: median([w for w, _c in v]) for name, v in rows.items()}
    cpu = {name: median([c for _w, c in v]) for name, v in rows.items()}
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.runs} runs each, interleaved; load average {load}")
    print(table(["command", "wall ms", "min wall", "x pass", "CPU ms", "x pass CPU"],
                [[name, f"{wall[name]:.1f}", f"{min(w for w, _c in v):.1f}",
                  f"{wall[name] / wall['python -c pass']:.2f}", f"{cpu[name]:.1f}",
                  f"{cpu[name] / cpu['python -c pass']:.2f}"] for name, v in rows.items()]))


if __name__ == "__main__":
    main()
