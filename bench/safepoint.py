"""Benchmark of the safe point: what an unwind costs the stop, and how soon a busy function's
return is caught.

Run by hand: ``.venv/bin/python bench/safepoint.py [--runs N]``.

Programs are the live test scenarios (tests/scenarios), built once under
/tmp/katana-bench-safepoint with the flags of tests/livekit.py:

- ``body_change``: no word on any stack points into the patch: the fast scan alone decides
  (the baseline of the "stopped" ratios);
- ``stale_word``: a stale return address into the patched function lies in a blocked thread's
  buffer: that thread's stack is unwound with the CFI at the stop;
- ``coroutine_idle``: the program uses ucontext coroutines: writable memory is searched for
  saved contexts and each is unwound;
- ``slow_return``: the patched function sleeps 0.4 s per call; the time to the safe point with
  return hooks, against ``flags.returnHooks: false`` (checks at random instants every
  ``safePointRetryInterval``) in the same invocation.

"stopped" is katana's own figure (the target held, summed over every stop); "safe point" the
phase from the end of preparation to the safe point (``katana -vv`` timings).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Live, build_version, median, table  # noqa: E402

CACHE = Path("/tmp/katana-bench-safepoint")
SCENARIOS = ROOT / "tests" / "scenarios"
_STOPPED = re.compile(r"target stopped ([\d.]+) ms")
_PHASE = re.compile(r"^\s+(prepare|safe point|commit)\s+([\d.]+) ms", re.M)
CASES = [  # (label, scenario, ready line, config)
    ("nothing to unwind", "body_change", r"^tick 3 ", "{}"),
    ("stale word unwound", "stale_word", r"^tick 3 ", "{}"),
    ("coroutines searched", "coroutine_idle", r"^tick 3 ", "{}"),
    ("slow return, hooks", "slow_return", r"^tick 2 |call 2 ", "{maxWaitForPatching: 30}"),
    ("slow return, polling", "slow_return", r"^tick 2 |call 2 ",
     "{maxWaitForPatching: 10, flags: {returnHooks: false}}"),
]


def build(name: str) -> Path:
    out = CACHE / name
    if not (out / "p.po").exists():
        for v in ("v0", "v1"):
            build_version(SCENARIOS / name / v, out / v)
        subprocess.run([sys.executable, "-m", "katana", "generate", "-o", str(out / "p.po"),
                        str(out / "v0"), str(out / "v1"), "prog"], check=True,
                       capture_output=True)
    return out


def one_run(out: Path, ready: str, config: str) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
        conf.write(config)
        conf.flush()
        live = Live([str(out / "v0" / "prog")])
        try:
            live.wait_for(ready, timeout=30)
            done = subprocess.run([sys.executable, "-m", "katana", "-c", conf.name, "-vv",
                                   "apply", str(out / "p.po"), str(live.pid)],
                                  capture_output=True, text=True, timeout=120)
        finally:
            live.kill()
    text = done.stdout + done.stderr
    if done.returncode == 10:  # no safe point came: report how long it tried
        return {"stopped": float("nan"), "safe point": float("inf")}
    if done.returncode != 0:
        raise SystemExit(f"katana apply failed ({done.returncode}):\n{done.stderr}")
    result = {name: float(ms) for name, ms in _PHASE.findall(text)}
    result["stopped"] = float(_STOPPED.search(text).group(1))  # type: ignore[union-attr]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per case (at least 5)")
    runs = max(5, ap.parse_args().runs)
    results = {}
    for label, scenario, ready, config in CASES:
        out = build(scenario)
        results[label] = [one_run(out, ready, config) for _ in range(runs)]
    med = {label: {k: median([r[k] for r in rs]) for k in ("stopped", "safe point")}
           for label, rs in results.items()}
    base_stop = med["nothing to unwind"]["stopped"]
    base_wait = med["slow return, polling"]["safe point"]
    def ratio(label: str, m: dict[str, float]) -> str:
        if not label.startswith("slow") or m is med["slow return, polling"]:
            return ""
        return "polling: none" if base_wait == float("inf") else \
            f"{m['safe point'] / base_wait:.2f}"

    rows = [[label, f"{m['stopped']:.1f}", f"{m['stopped'] / base_stop:.2f}",
             "refused (10 s)" if m["safe point"] == float("inf") else f"{m['safe point']:.0f}",
             ratio(label, m)] for label, m in med.items()]
    print(f"\n{runs} runs per case, medians, ms; stopped ratio against 'nothing to unwind', "
          "safe point ratio against polling")
    print(table(["case", "stopped", "x", "safe point", "x polling"], rows))


if __name__ == "__main__":
    main()
