"""A plain make project (a Makefile, no SCons), walked as docs/make-and-cmake.md walks it: v0 and
v1 built with `make CFLAGS="-O2 $(katana flags --cflags)" LDFLAGS="$(katana flags --ldflags)"`
into build/v0 and build/v1 from the one src/, `katana generate` on the two build directories, the
running v0 patched live to behave as v1, `katana status`, `katana revert`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import Live

from katana.elf.buildid import read_build_id

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")]
BIN = Path(sys.executable).parent  # where the console script `katana` is installed

# the Makefile of docs/make-and-cmake.md, as it is printed there
MAKEFILE = """\
BUILD ?= build
$(BUILD)/prog: $(BUILD)/main.o $(BUILD)/calc.o
\t$(CC) $(LDFLAGS) $^ -o $@
$(BUILD)/%.o: src/%.c src/calc.h
\t@mkdir -p $(BUILD)
\t$(CC) $(CFLAGS) -c $< -o $@
"""
MAIN_C = """\
#include <stdio.h>
#include <unistd.h>
#include "calc.h"

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int tick = 1;; tick++) {
        printf("tick %d result %d\\n", tick, compute(tick));
        usleep(20000);
    }
}
"""
CALC_C = {"v0": "int compute(int x)\n{\n    return x + 1000;\n}\n",
          "v1": "int compute(int x)\n{\n    return x + 2000;\n}\n"}
OFFSET = {"v0": 1000, "v1": 2000}


def make_version(project: Path, version: str, build: str | None = None) -> Path:
    """Check out ``version`` in place (one source path for every version) and build it into
    build/<version>, with the very command line the docs give."""
    (project / "src" / "calc.c").write_text(CALC_C[version])
    build = build or f"build/{version}"
    command = (f'make BUILD={build} CFLAGS="-O2 $(katana flags --cflags)" '
               f'LDFLAGS="$(katana flags --ldflags)"')
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", command], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return project / build / "prog"


def katana_in(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "katana", *args], cwd=project,
                          capture_output=True, text=True, timeout=120)


def runs(live: Live, version: str) -> None:
    """The process computes as ``version`` does, from the next line it prints on."""
    after = live.mark()
    tick = int(live.wait_for(r"tick (\d+) result", after=after).group(1))
    match = live.wait_for(rf"tick {tick + 1} result (\d+)", after=after)
    assert int(match.group(1)) == tick + 1 + OFFSET[version], live.lines[-3:]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "calc"
    (project / "src").mkdir(parents=True)
    (project / "Makefile").write_text(MAKEFILE)
    (project / "src" / "main.c").write_text(MAIN_C)
    (project / "src" / "calc.h").write_text("int compute(int x);\n")
    return project


def test_the_docs_makefile_is_the_one_tested():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "make-and-cmake.md").read_text()
    assert "```make\n" + MAKEFILE + "```" in doc


def test_a_make_project_is_patched_live_and_reverted(project: Path):
    v0 = make_version(project, "v0")
    make_version(project, "v1")
    made = katana_in(project, "generate", "-o", "calc-v0-v1.po", "build/v0", "build/v1", "prog")
    assert made.returncode == 0, made.stderr
    listing = katana_in(project, "list", "calc-v0-v1.po").stdout
    assert "v0 -> v1" in listing and "compute" in listing  # labels: the directories' names
    live = Live([str(v0)])
    try:
        live.wait_for(r"tick 3 result 1003")
        applied = katana_in(project, "apply", "calc-v0-v1.po", str(live.pid))
        assert applied.returncode == 0, applied.stderr
        runs(live, "v1")
        status = katana_in(project, "status", str(live.pid)).stdout
        assert "prog v0 -> v1" in status and "running: v1" in status
        reverted = katana_in(project, "revert", str(live.pid))
        assert reverted.returncode == 0, reverted.stderr
        runs(live, "v0")
    finally:
        live.kill()


def test_a_lost_build_directory_is_rebuilt_from_its_sources(project: Path):
    # what the docs promise a make user: the flags make the build reproducible, so v0 rebuilt
    # elsewhere (same sources, compiler and flags) is the build that runs, and patches fit it
    first = make_version(project, "v0")
    again = make_version(project, "v0", build="rebuilt/v0")
    assert read_build_id(first) == read_build_id(again)
    assert first.read_bytes() == again.read_bytes()
