"""Shared helpers of the benchmarks: the katana build flags, parallel compiles, tables.

The benchmarks are run by hand, not by pytest; they print figures and assert nothing timed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from livekit import CFLAGS, LDFLAGS, Live, build_version  # noqa: E402

__all__ = ["CFLAGS", "LDFLAGS", "KATANA_ENV", "Live", "build_version", "compile_objects", "link",
           "median", "table"]

# The environment the benchmarks run katana in: with bytecode caches, as an installed katana
# has them (pip compiles at install time); compiling every module from source at each start
# (PYTHONDONTWRITEBYTECODE=1) would be measured as katana's start-up otherwise.
KATANA_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def compile_objects(out: Path, sources: list[str], jobs: int = 2) -> None:
    """Compile ``sources`` (names of .c files in ``out``) to .o with the katana flags, ``jobs``
    at a time; -ffile-prefix-map makes the objects independent of the directory they sit in."""
    def one(name: str) -> None:
        subprocess.run(["gcc", *CFLAGS, "-fPIE", f"-ffile-prefix-map={out}=.", "-c", name,
                        "-o", name[:-2] + ".o"], cwd=out, check=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, sources))


def link(out: Path, objects: list[str], program: str = "prog") -> Path:
    """Link ``objects`` (in this order) into ``out/program`` as a PIE."""
    subprocess.run(["gcc", *LDFLAGS, "-pie", *objects, "-o", program], cwd=out, check=True)
    return out / program


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table, columns right-aligned except the first."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
