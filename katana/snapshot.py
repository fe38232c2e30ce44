"""Release snapshots: the programs of one release and every object they are made of.

A snapshot lives in ``releases/<VERSION>/``: ``manifest.json`` plus a copy of each program and
object at its path relative to the release root, the deepest directory that holds all of them
(``build/v0/store.o`` is stored as ``store.o``). Relative paths are how the generator pairs the
objects of two versions, so they must not depend on the version's build directory.

A snapshot is immutable: a patch is only valid for the exact bytes of its FROM release, so making
the same release again with different bytes is an error unless forced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from katana.elf.buildid import read_build_id
from katana.errors import BuildError, FormatError

FORMAT = 1
MANIFEST = "manifest.json"
KINDS = ("program", "shared-library")

ProgramSpec = tuple[Path, str, list[Path]]  # (linked file, kind, objects in link order)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A release snapshot on disk, read from its validated ``manifest.json``."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Read the snapshot in directory ``path``; BuildError if absent, FormatError if damaged."""
        root = Path(path).absolute()
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BuildError(f"{root}: not a release snapshot (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{manifest_path}: unreadable manifest ({e})") from e
        _validate(manifest, manifest_path)
        return cls(root, manifest)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def compiler(self) -> str:
        return self.manifest["compiler"]

    @property
    def ccflags(self) -> list[str]:
        return list(self.manifest["ccflags"])

    @property
    def linkflags(self) -> list[str]:
        return list(self.manifest["linkflags"])

    def program_names(self) -> list[str]:
        """Names of the programs (and shared libraries) of this release, sorted."""
        return sorted(self.manifest["programs"])

    def has_program(self, program: str) -> bool:
        return program in self.manifest["programs"]

    def kind(self, program: str) -> str:
        """"program" or "shared-library"."""
        return self._program(program)["kind"]

    def executable(self, program: str) -> Path:
        """The snapshot's copy of the linked ``program``."""
        return self.root / self._program(program)["path"]

    def objects(self, program: str) -> list[Path]:
        """The snapshot's copies of the objects of ``program``, absolute, in link order."""
        return [self.root / rel for rel in self._program(program)["objects"]]

    def build_id(self, program: str) -> str:
        """The GNU build-id (hex) recorded for ``program``."""
        return self._program(program)["build_id"]

    def files(self) -> dict[str, str]:
        """Every stored file (path relative to the root) and its SHA-256."""
        return dict(self.manifest["files"])

    def relpath(self, path: str | os.PathLike[str]) -> str:
        """The path of a file of this snapshot relative to its root, as the manifest spells it."""
        try:
            return Path(path).absolute().relative_to(self.root).as_posix()
        except ValueError:
            raise BuildError(f"{path} is not inside the snapshot {self.root}") from None

    def verify(self) -> list[str]:
        """Stored files whose bytes no longer match the manifest (missing ones included)."""
        return [rel for rel, digest in sorted(self.manifest["files"].items())
                if not (self.root / rel).is_file() or file_sha256(self.root / rel) != digest]

    def _program(self, program: str) -> dict[str, Any]:
        try:
            return self.manifest["programs"][program]
        except KeyError:
            names = ", ".join(self.program_names()) or "none"
            raise BuildError(f"release {self.version} has no program '{program}' "
                             f"(it has: {names})") from None


def make_snapshot(dest: Path, version: str, programs: dict[str, ProgramSpec], compiler: str,
                  ccflags: list[str], linkflags: list[str], force: bool = False) -> Snapshot:
    """Write the snapshot of ``version`` to ``dest`` and return it.

    ``programs`` maps each program name to its linked file, kind and objects (link order). An
    existing snapshot with the same bytes is left alone; one that differs is an error unless
    ``force``, which replaces it.
    """
    dest = Path(dest).absolute()
    if not programs:
        raise BuildError(f"release {version}: no programs to snapshot",
                         hint="build programs in an environment with the katana tool")
    root, files = _collect(programs)
    manifest = _manifest(version, programs, root, files, compiler, ccflags, linkflags)
    if dest.is_dir() and any(dest.iterdir()):
        differ = _differences(dest, manifest)
        if not differ:
            return Snapshot.load(dest)
        if not force:
            raise BuildError(
                f"release {version} already exists in {dest} with other contents: "
                f"{', '.join(differ)} differ",
                hint="a release is immutable once made; pick a new VERSION, or replace it with "
                     "FORCE=1 (patches made from the old one will no longer match)")
    _write(dest, manifest, root)
    return Snapshot.load(dest)


def _collect(programs: dict[str, ProgramSpec]) -> tuple[Path, dict[str, Path]]:
    """The release root and every file to store, keyed by its path relative to the root."""
    paths = []
    for name, (linked, kind, objects) in programs.items():
        if kind not in KINDS:
            raise BuildError(f"{name}: unknown kind '{kind}' (expected one of {', '.join(KINDS)})")
        paths += [Path(linked).absolute(), *(Path(o).absolute() for o in objects)]
    for path in paths:
        if not path.is_file():
            raise BuildError(f"{path}: missing; build it before making the release")
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return root, {p.relative_to(root).as_posix(): p for p in paths}


def _manifest(version: str, programs: dict[str, ProgramSpec], root: Path, files: dict[str, Path],
              compiler: str, ccflags: list[str], linkflags: list[str]) -> dict[str, Any]:
    hashes = {rel: file_sha256(path) for rel, path in sorted(files.items())}
    entries = {}
    for name, (linked, kind, objects) in sorted(programs.items()):
        rel = Path(linked).absolute().relative_to(root).as_posix()
        build_id = read_build_id(linked)
        if build_id is None:
            raise BuildError(f"{linked}: has no GNU build-id, so a patch could not recognise it",
                             hint="link with -Wl,--build-id=sha1 (the katana tool adds it)")
        entries[name] = {
            "path": rel, "kind": kind, "build_id": build_id, "sha256": hashes[rel],
            "objects": [Path(o).absolute().relative_to(root).as_posix() for o in objects],
        }
    return {"format": FORMAT, "version": version, "compiler": compiler, "ccflags": list(ccflags),
            "linkflags": list(linkflags), "programs": entries, "files": hashes}


def _differences(dest: Path, manifest: dict[str, Any]) -> list[str]:
    """What differs between the snapshot in ``dest`` and ``manifest`` (empty: nothing)."""
    try:
        old = Snapshot.load(dest)
    except (BuildError, FormatError):
        return [MANIFEST]
    old_files, new_files = old.files(), manifest["files"]
    differ = sorted(rel for rel in old_files.keys() | new_files.keys()
                    if old_files.get(rel) != new_files.get(rel))
    differ += [rel for rel in old.verify() if rel not in differ]
    rest = {k: v for k, v in old.manifest.items() if k != "files"}
    if not differ and rest != {k: v for k, v in manifest.items() if k != "files"}:
        differ.append(MANIFEST)
    return differ


def _write(dest: Path, manifest: dict[str, Any], root: Path) -> None:
    # Build the snapshot beside its destination and rename it into place, so that an interrupted
    # release never leaves a half-written snapshot that a later patch would trust.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        executables = {entry["path"] for entry in manifest["programs"].values()}
        for rel in manifest["files"]:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, target)
            target.chmod(0o755 if rel in executables else 0o644)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST).write_text(text)
        tmp.chmod(0o755)
        _replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(new: Path, dest: Path) -> None:
    if not dest.exists():
        new.rename(dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    old.rmdir()
    dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _validate(manifest: Any, where: Path) -> None:
    """Check the manifest's shape, so that accessors never meet a KeyError or a TypeError."""
    def fail(what: str) -> None:
        raise FormatError(f"{where}: {what}", hint="make the release again (FORCE=1)")

    if not isinstance(manifest, dict):
        fail("not a JSON object")
    if manifest.get("format") != FORMAT:
        fail(f"unknown format {manifest.get('format')!r} (this Katana reads format {FORMAT})")
    for key, kind in (("version", str), ("compiler", str), ("ccflags", list),
                      ("linkflags", list), ("programs", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            fail(f"'{key}' is missing or not a {kind.__name__}")
    files = manifest["files"]
    if not all(isinstance(k, str) and isinstance(v, str) and _is_inside(k) for k, v in
               files.items()):
        fail("'files' must map relative paths inside the snapshot to SHA-256 strings")
    for name, entry in manifest["programs"].items():
        _validate_program(name, entry, files, fail)


def _validate_program(name: str, entry: Any, files: dict[str, str], fail: Any) -> None:
    if not isinstance(entry, dict):
        fail(f"program '{name}' is not a JSON object")
    for key, kind in (("path", str), ("kind", str), ("build_id", str), ("sha256", str),
                      ("objects", list)):
        if not isinstance(entry.get(key), kind):
            fail(f"program '{name}': '{key}' is missing or not a {kind.__name__}")
    for rel in [entry["path"], *entry["objects"]]:
        if not isinstance(rel, str) or rel not in files:
            fail(f"program '{name}': {rel!r} is not one of the snapshot's files")


def _is_inside(rel: str) -> bool:
    path = Path(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and rel != MANIFEST
