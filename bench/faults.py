"""The long fault-injection run: tests/test_faults.py's faults, many more times, as a table.

Run by hand: ``.venv/bin/python bench/faults.py [--tries N]`` (default 50 per row, a few
minutes). Each row is one kind of fault; a try counts as harmed when the target afterwards is
dead, stopped, traced, neither wholly v0 nor wholly v1, or not answering, or when katana ended
with a traceback, an internal error or an exit code other than the documented ones.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_faults as tf  # noqa: E402
from _common import table  # noqa: E402


def _try(setup: tf.Setup, sig: int, point: str | None, rng: random.Random,
         revert: bool) -> tuple[bool, int]:
    target = tf.Target(setup.exe)
    try:
        if revert:
            tf.katana("apply", str(setup.po), str(target.pid), check=True)
        command = ["revert", str(target.pid)] if revert else \
            ["apply", str(setup.po), str(target.pid)]
        k = tf._run(command, point)
        if point:
            tf._wait_stopped(k)
        elif rng.random() < 0.5:
            tf._wait_traced(target, k)
            time.sleep(rng.uniform(0.0, 0.003))
        else:
            time.sleep(rng.uniform(0.0, 0.3))
        tf._send(k, sig)
        try:
            tf._finish(k, sig)
            version = tf.assert_whole(target, setup)
        except AssertionError:
            return True, -1
        return False, version
    finally:
        target.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=50)
    args = ap.parse_args()
    import tempfile

    setup = tf.make_setup(Path(tempfile.mkdtemp(prefix="katana-bench-faults-")))
    rng = random.Random(9)
    rows = []
    kinds = [(s, p, r) for r in (False, True)
             for s in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
             for p in (None, "aimed")]
    for sig, point, revert in kinds:
        harmed, versions = 0, {0: 0, 1: 0}
        points = tf.REVERT_POINTS if revert else tf.APPLY_POINTS
        for i in range(args.tries):
            aim = points[i % len(points)] if point else None
            bad, version = _try(setup, sig, aim, rng, revert)
            harmed += bad
            if version in versions:
                versions[version] += 1
        rows.append([f"{'revert' if revert else 'apply'}: {signal.Signals(sig).name} "
                     f"{'aimed' if point else 'random'}", str(args.tries), str(harmed),
                     str(versions[0]), str(versions[1])])
    print(table(["fault", "tries", "target harmed", "then v0", "then v1"], rows))


if __name__ == "__main__":
    main()
