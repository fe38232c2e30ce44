"""An object tree of one version: the executable and the objects it is made of.

Either a release snapshot (``manifest.json`` lists each program's objects in link order) or any
directory of objects built with the katana flags, by SCons or by make (every ``.o`` below it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from katana.errors import GenerateError


@dataclass
class Tree:
    label: str
    root: Path
    executable: Path
    objects: dict[str, Path]  # path relative to root -> file, in link order where known


def _from_manifest(root: Path, program: str) -> Tree:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        programs = manifest["programs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenerateError(f"{root}/manifest.json is unreadable ({e})") from e
    if program not in programs:
        names = ", ".join(sorted(programs)) or "none"
        raise GenerateError(f"release {root.name} has no program '{program}' (it has: {names})")
    entry = programs[program]
    objects = {rel: root / rel for rel in entry["objects"]}
    return Tree(manifest.get("version", root.name), root, root / entry["path"], objects)


def _from_directory(root: Path, program: str) -> Tree:
    exe = root / program
    objects = {str(p.relative_to(root)): p for p in sorted(root.rglob("*.o"))}
    if not objects:
        raise GenerateError(f"{root}: no object files (.o) found below it",
                            hint="build with the katana SCons tool, or pass the build directory")
    return Tree(root.name, root, exe, objects)


def load_tree(root: Path | str, program: str) -> Tree:
    """The tree of ``program`` under ``root`` (a snapshot or a plain build directory)."""
    root = Path(root)
    if not root.is_dir():
        raise GenerateError(f"{root}: no such directory")
    tree = _from_manifest(root, program) if (root / "manifest.json").exists() else \
        _from_directory(root, program)
    if not tree.executable.is_file():
        raise GenerateError(f"{tree.executable}: executable not found",
                            hint="name the program as it is built (e.g. kvd), relative to the tree")
    return tree
