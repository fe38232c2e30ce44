"""Benchmark of ``katana generate``: a large tree (1,000 objects, 10 changed), and one large object.

Run by hand: ``/tmp/kvenv/bin/python bench/generate.py [--quick] [--runs N]``.

Builds (once, cached under /tmp/katana-bench-generate) a synthetic C program of N objects in
three versions: v0, v1 with 10 objects changed (one function body each) and a baseline with 1
object changed; and a program of one object of 200 functions, each with its own string, where
one function body changes (generation must grow with the change, not with the object). Each
measured run is a fresh interpreter that times
``katana.generate.api.generate_patch(old, new, "prog", out)``, reports its peak RSS
(getrusage ru_maxrss) and counts the ObjectFile instances the diff creates: objects whose bytes
are equal must be skipped before parsing, so the count is about twice the number of changed
objects, not twice the tree. A "bytes only" row times reading and comparing every pair of
objects, the floor any generator pays.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compile_objects, link, median, table  # noqa: E402

CACHE = Path("/tmp/katana-bench-generate")


def _source(i: int, changed: bool) -> str:
    # A global, a static helper and two exported functions; a change alters one body only.
    k = 0x1000 + i if changed else i
    return (f"int g_{i:04d} = {i};\n"
            f"static int __attribute__((noinline)) h_{i:04d}(int x) "
            f"{{ return x * 3 + g_{i:04d}; }}\n"
            f"int f_{i:04d}_b(int x) {{ return h_{i:04d}(x) ^ {k}; }}\n"
            f"int f_{i:04d}(int x) {{ g_{i:04d} += x; return f_{i:04d}_b(x) + 1; }}\n")


def _main_source(n: int) -> str:
    decls = "".join(f"int f_{i:04d}(int);\n" for i in range(n))
    calls = "".join(f"    s += f_{i:04d}(s & 7);\n" for i in range(n))
    return (f'#include <stdio.h>\n{decls}int main(void)\n{{\n    int s = 0;\n{calls}'
            f'    printf("%d\\n", s);\n    return 0;\n}}\n')


def _objects(n: int) -> list[str]:
    return ["main.o", *(f"obj_{i:04d}.o" for i in range(n))]


def _build_base(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.c").write_text(_main_source(n))
    for i in range(n):
        (root / f"obj_{i:04d}.c").write_text(_source(i, False))
    compile_objects(root, ["main.c", *(f"obj_{i:04d}.c" for i in range(n))])
    link(root, _objects(n))


def _build_changed(base: Path, root: Path, n: int, changes: int) -> None:
    # Copy v0 and recompile only the changed sources: the other objects stay byte-identical,
    # as they do in an incremental build.
    shutil.copytree(base, root)
    names = []
    for j in range(changes):
        i = j * n // changes
        (root / f"obj_{i:04d}.c").write_text(_source(i, True))
        names.append(f"obj_{i:04d}.c")
    compile_objects(root, names)
    link(root, _objects(n))


def _big_source(functions: int, changed: bool) -> str:
    # One object of many small functions, each with its own string (plain .rodata.str1.1) and a
    # call to the next: the diff has the whole object to read for one changed function.
    out = ["#include <stdio.h>\n"]
    for i in range(functions):
        k = 0x5000 + i if changed and i == functions // 2 else i
        nxt = f"b_{i + 1:04d}(x) + " if i + 1 < functions else ""
        out.append(f"int b_{i + 1:04d}(int);\n" if i + 1 < functions else "")
        out.append(f"int __attribute__((noinline)) b_{i:04d}(int x) "
                   f"{{ if (x < 0) puts(\"b_{i:04d} negative\"); "
                   f"return {nxt}(x ^ {k}); }}\n")
    out.append('int main(void) { printf("%d\\n", b_0000(1)); return 0; }\n')
    return "".join(out)


def build_big(functions: int) -> dict[str, Path]:
    """v0 and one (1 function changed) of a program of one object of ``functions`` functions."""
    top = CACHE / f"big{functions}"
    trees = {"v0": top / "v0", "one": top / "one"}
    if (top / "done").exists():
        return trees
    shutil.rmtree(top, ignore_errors=True)
    for name, changed in (("v0", False), ("one", True)):
        trees[name].mkdir(parents=True)
        (trees[name] / "big.c").write_text(_big_source(functions, changed))
        compile_objects(trees[name], ["big.c"])
        link(trees[name], ["big.o"])
    (top / "done").write_text("ok\n")
    return trees


def build_trees(n: int) -> dict[str, Path]:
    """v0, v1 (10 changed) and one (1 changed) trees of ``n`` objects, cached under /tmp."""
    top = CACHE / f"n{n}"
    trees = {"v0": top / "v0", "one": top / "one", "v1": top / "v1"}
    if (top / "done").exists():
        return trees
    shutil.rmtree(top, ignore_errors=True)
    started = time.monotonic()
    print(f"building {n} objects x 3 versions under {top} (once) ...", flush=True)
    _build_base(trees["v0"], n)
    _build_changed(trees["v0"], trees["one"], n, 1)
    _build_changed(trees["v0"], trees["v1"], n, min(10, n))
    (top / "done").write_text("ok\n")
    print(f"built in {time.monotonic() - started:.1f} s", flush=True)
    return trees


# -- the measured child -------------------------------------------------------------------------

def _child_generate(old: str, new: str, out: str) -> dict:
    import katana.generate.diff as diff
    from katana.generate.api import generate_patch

    real = diff.ObjectFile
    created = [0]

    def counting(*args, **kwargs):
        created[0] += 1
        return real(*args, **kwargs)

    diff.ObjectFile = counting
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    summary = generate_patch(old, new, "prog", out)
    seconds = time.perf_counter() - t0
    changed = [f.name for f in summary.po.meta.functions if f.status == "changed"]
    return {"seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_before_kb": rss_before, "objectfiles": created[0], "changed": len(changed)}


def _child_compare(old: str, new: str) -> dict:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    differ = 0
    for p in sorted(Path(new).rglob("*.o")):
        if p.read_bytes() != (Path(old) / p.relative_to(new)).read_bytes():
            differ += 1
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_before_kb": rss_before, "objectfiles": 0, "changed": differ}


def _run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 objects instead of 1,000")
    ap.add_argument("--objects", type=int, help="number of objects (default 1000)")
    ap.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    ap.add_argument("--functions", type=int, default=200,
                    help="functions of the one-object case (default 200)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, *rest = args.child
        result = _child_generate(*rest) if mode == "generate" else _child_compare(*rest)
        print(json.dumps(result))
        return
    n = args.objects or (200 if args.quick else 1000)
    trees = build_trees(n)
    big = build_big(args.functions)
    out = CACHE / "out"
    cases = [("bytes only, 10 differ", ("compare", str(trees["v0"]), str(trees["v1"]))),
             ("generate, 1 changed", ("generate", str(trees["v0"]), str(trees["one"]),
                                      str(out / "one.po"))),
             ("generate, 10 changed", ("generate", str(trees["v0"]), str(trees["v1"]),
                                       str(out / "v1.po"))),
             (f"1 of {args.functions} functions, 1 object", (
                 "generate", str(big["v0"]), str(big["one"]), str(out / "big.po")))]
    results: dict[str, list[dict]] = {name: [] for name, _ in cases}
    for _ in range(args.runs):  # interleaved: a burst of load elsewhere hits every case alike
        for name, child_args in cases:
            results[name].append(_run_child(*child_args))
    base = median([r["seconds"] for r in results["generate, 1 changed"]])
    floor = median([r["seconds"] for r in results["bytes only, 10 differ"]])
    rows = []
    for name, runs in results.items():
        t = median([r["seconds"] for r in runs])
        rss = median([r["maxrss_kb"] for r in runs]) / 1024
        grow = median([r["maxrss_kb"] - r["rss_before_kb"] for r in runs]) / 1024
        rows.append([name, f"{t * 1000:.0f}", f"{t / base:.2f}", f"{t / floor:.1f}",
                     f"{rss:.0f}", f"{grow:.0f}", str(runs[0]["objectfiles"]),
                     str(runs[0]["changed"])])
    print(f"\n{n} objects (+ main.o), {args.runs} runs each, medians; each run a fresh "
          f"interpreter")
    print(table(["case", "ms", "x 1-changed", "x bytes", "peak RSS MB", "RSS growth MB",
                 "ObjectFiles", "changed"], rows))


if __name__ == "__main__":
    main()
