"""An object tree of one version: the executable and the objects it is made of.

Either a release snapshot (``manifest.json`` lists each program's objects in link order, and the
hash of every file, checked here) or any directory of objects built with the katana flags, by
SCons or by make (every ``.o`` below it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from katana.build.snapshot import MANIFEST, Snapshot
from katana.errors import BuildError, GenerateError, UsageError

_ELF_MAGIC = b"\x7fELF"
_ET_EXEC, _ET_DYN = 2, 3


@dataclass
class Tree:
    label: str
    root: Path
    executable: Path
    objects: dict[str, Path]  # path relative to root -> file, in link order where known


def _from_snapshot(root: Path, program: str) -> Tree:
    snapshot = Snapshot.load(root)
    damaged = snapshot.verify()
    if damaged:
        raise BuildError(f"release {snapshot.version} is damaged: {', '.join(damaged[:5])} "
                         "missing or changed since it was made",
                         hint=f"make it again: scons release VERSION={snapshot.version} FORCE=1")
    objects = {snapshot.relpath(p): p for p in snapshot.objects(program)}
    return Tree(snapshot.version, root, snapshot.executable(program), objects)


def _from_directory(root: Path, program: str) -> Tree:
    # the order of Path's own comparison (by parts), without its cost: a tree may hold
    # thousands of objects, and every generation lists them all
    base = root.absolute()
    prefix = len(str(base).rstrip("/")) + 1
    objects = {str(p)[prefix:]: p for p in sorted(base.rglob("*.o"), key=lambda p: p.parts)}
    if not objects:
        raise GenerateError(f"{root}: no object files (.o) found below it",
                            hint="build with the katana SCons tool, or pass the build directory")
    return Tree(root.name, root, root / program, objects)


def _check_executable(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            header = f.read(18)
    except FileNotFoundError:
        raise GenerateError(f"{path}: executable not found",
                            hint="name the program as it is built (e.g. kvd), relative to "
                                 "the trees") from None
    except OSError as e:
        raise GenerateError(f"cannot read {path}: {e.strerror}") from None
    if header[:4] != _ELF_MAGIC:
        raise GenerateError(f"{path} is not an ELF executable")
    if int.from_bytes(header[16:18], "little") not in (_ET_EXEC, _ET_DYN):
        raise GenerateError(f"{path} is an object file, not a linked executable",
                            hint="name the program the objects are linked into")


def load_tree(root: Path | str, program: str) -> Tree:
    """The tree of ``program`` under ``root`` (a snapshot or a plain build directory)."""
    root = Path(root)
    if Path(program).is_absolute() or ".." in Path(program).parts:
        raise UsageError(f"EXE must be a path inside the trees, not {program}",
                         hint="e.g. katana generate OLD_DIR NEW_DIR kvd")
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise GenerateError(f"{root} {what}",
                            hint="give the directories of the two builds (or releases)")
    tree = _from_snapshot(root, program) if (root / MANIFEST).exists() else \
        _from_directory(root, program)
    _check_executable(tree.executable)
    return tree
