"""The example server's one source tree at each release, as the demo makes it.

example_project/src holds v0; example_project/changes/<a>-<b>.diff takes it from one release to
the next. Tests apply the diffs with patch(1), as demo.sh does, so a diff that no longer applies
fails them.

kvd loads its store (store.c) from a library the SConscript builds, libkvstore.so: `scons patch`
writes a PO for each (PATCHED), applied in that order, the library's first (kvd's v1 -> v2 calls
store_hits, which the library's v1 -> v2 adds).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "example_project"
RELEASES = ("v0", "v1", "v2")
PATCHED = ("libkvstore.so", "kvd")  # the objects each release changes, in the order to apply


def patches(project: Path, before: str, after: str) -> list[Path]:
    """The POs that take a process of ``project`` from ``before`` to ``after``, in the order to
    apply them: patches/libkvstore.so-<before>-<after>.po, then kvd's."""
    return [project / "patches" / f"{name}-{before}-{after}.po" for name in PATCHED]


def diff_to(version: str) -> Path:
    """The change that takes the tree from the release before ``version`` to ``version``."""
    before = RELEASES[RELEASES.index(version) - 1]
    return EXAMPLE / "changes" / f"{before}-{version}.diff"


def advance(project: Path, version: str) -> None:
    """Apply the change to ``version`` to the copy of the repository's example at ``project``
    (a directory holding example_project/), as demo.sh does."""
    with diff_to(version).open("rb") as diff:
        subprocess.run(["patch", "-p1", "--quiet", "--forward"], stdin=diff, cwd=project,
                       check=True)


def checkout(version: str, dest: Path) -> Path:
    """Write the sources of ``version`` into ``dest`` (flat: dest/store.c, ...)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(EXAMPLE / "src", dest)
    for step in RELEASES[1:RELEASES.index(version) + 1]:
        with diff_to(step).open("rb") as diff:
            # -p3: the diffs name a/example_project/src/<file>
            subprocess.run(["patch", "-p3", "--quiet", "--forward"], stdin=diff, cwd=dest,
                           check=True)
    return dest


def copy_project(dest: Path) -> Path:
    """A copy of what the repository's SConstruct builds: SConstruct, site_scons, example_project
    (its tree at v0)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("SConstruct", "site_scons", "example_project"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest
