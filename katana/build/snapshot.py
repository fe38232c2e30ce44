"""Release snapshots: the executables of one release, every object they are made of, a manifest.

A snapshot is what a patch is generated from, long after the build tree has moved on::

    releases/v0/manifest.json
    releases/v0/kvd            <- build/v0/kvd
    releases/v0/main.o         <- build/v0/main.o

Files keep their path relative to the release root, the deepest directory common to every program
and object of the build (``build/v0/``), so that ``store.o`` of one release pairs with ``store.o``
of the next. The manifest lists each program's objects in link order, its build-id and the hash of
every file. A snapshot is immutable: making it again from different bytes is refused unless forced,
because patches made from the old bytes would no longer match what the manifest says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from katana.elf.buildid import read_build_id
from katana.elf.dynamic import read_dynamic
from katana.errors import BuildError, FormatError

MANIFEST = "manifest.json"
FORMAT = 1
KINDS = ("program", "shared_library")

# name -> (executable, kind, objects in link order)
ProgramSpec = tuple[Path, str, list[Path]]

_HEX = re.compile(r"[0-9a-f]+$")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Snapshot:
    """A release snapshot on disk, its manifest validated."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Read and validate the snapshot at ``path`` (the directory holding manifest.json)."""
        root = Path(path).absolute()
        if not root.is_dir():
            raise BuildError(f"release {root.name} has no snapshot ({root} does not exist)",
                             hint=f"make it with: scons release VERSION={root.name}")
        try:
            text = (root / MANIFEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BuildError(f"{root} is not a release snapshot (it has no {MANIFEST})",
                             hint=f"make it with: scons release VERSION={root.name}") from None
        except OSError as e:
            raise BuildError(f"cannot read {root / MANIFEST}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise FormatError(f"{root / MANIFEST} is not text ({e.reason})") from e
        try:
            manifest = json.loads(text)
        except ValueError as e:
            raise FormatError(f"{root / MANIFEST} is not valid JSON ({e})") from e
        _validate(manifest, root / MANIFEST)
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
        """The programs (and shared libraries) of this release, as the manifest lists them."""
        return list(self.manifest["programs"])

    def executable(self, program: str) -> Path:
        """The snapshot's copy of ``program``'s executable (or shared library)."""
        return self.root / self._program(program)["path"]

    def objects(self, program: str) -> list[Path]:
        """The snapshot's copies of the objects ``program`` is linked from, in link order."""
        return [self.root / rel for rel in self._program(program)["objects"]]

    def build_id(self, program: str) -> str:
        """The GNU build-id of ``program`` (lowercase hex)."""
        return self._program(program)["build_id"]

    def kind(self, program: str) -> str:
        """"program" or "shared_library"."""
        return self._program(program)["kind"]

    def soname(self, program: str) -> str | None:
        """A shared library's DT_SONAME (None for a program, or a library linked without one;
        snapshots made before libraries were recorded have none either)."""
        return self._program(program).get("soname")

    def files(self) -> dict[str, str]:
        """Every file of the snapshot: path relative to the root -> SHA-256."""
        return dict(self.manifest["files"])

    def relpath(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the release root, in POSIX form: the name that pairs releases.

        A relative ``path`` is taken as already relative to the root. Raises ValueError for a
        path outside the snapshot.
        """
        p = Path(path)
        rel = Path(os.path.relpath(p, self.root)) if p.is_absolute() else p
        posix = PurePosixPath(os.path.normpath(rel).replace(os.sep, "/"))
        if posix.is_absolute() or ".." in posix.parts:
            raise ValueError(f"{path} is not inside the snapshot {self.root}")
        return str(posix)

    def verify(self) -> list[str]:
        """The files whose bytes no longer match the manifest (missing ones included)."""
        return [rel for rel, digest in self.manifest["files"].items()
                if not (self.root / rel).is_file() or sha256_file(self.root / rel) != digest]

    def _program(self, program: str) -> dict[str, Any]:
        try:
            return self.manifest["programs"][program]
        except KeyError:
            names = ", ".join(self.program_names()) or "none"
            raise BuildError(f"release {self.version} has no program '{program}' "
                             f"(it has: {names})") from None


def make_snapshot(dest: Path, version: str, programs: Mapping[str, ProgramSpec], compiler: str,
                  ccflags: list[str], linkflags: list[str], force: bool = False) -> Snapshot:
    """Copy ``programs`` (name -> (executable, kind, objects)) and a manifest into ``dest``.

    If ``dest`` already holds a snapshot of exactly these bytes, nothing is written. If it holds
    anything else, BuildError names what differs, unless ``force`` is true: then it is replaced.
    """
    dest = Path(dest).absolute()
    sources = _release_files(programs)
    manifest = _manifest(version, programs, sources, compiler, ccflags, linkflags)
    if _is_empty(dest):
        _write(dest, sources, manifest)
        return Snapshot.load(dest)
    problems = _compare(dest, manifest)
    if not problems:
        return Snapshot.load(dest)
    if not force:
        raise BuildError(f"release {version} already exists in {dest} and differs: "
                         + "; ".join(problems),
                         hint="a release is immutable: build the change as a new VERSION, or "
                              "add FORCE=1 to replace it (patches made from it become stale)")
    _write(dest, sources, manifest)
    return Snapshot.load(dest)


def _release_files(programs: Mapping[str, ProgramSpec]) -> dict[str, Path]:
    """Every file of the release: path relative to the release root -> where it is now."""
    if not programs:
        raise BuildError("nothing to snapshot: no program was built with the katana tool",
                         hint="build programs with env.Program() in an environment that loads "
                              "the katana tool")
    paths = []
    for name, (exe, kind, objects) in programs.items():
        if kind not in KINDS:
            raise BuildError(f"program {name}: unknown kind {kind!r} (expected one of {KINDS})")
        paths += [Path(exe).absolute(), *(Path(o).absolute() for o in objects)]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return {p.relative_to(root).as_posix(): p for p in paths}


def _manifest(version: str, programs: Mapping[str, ProgramSpec], sources: dict[str, Path],
              compiler: str, ccflags: list[str], linkflags: list[str]) -> dict[str, Any]:
    by_path = {path: rel for rel, path in sources.items()}
    files = {}
    for rel, path in sources.items():
        try:
            files[rel] = sha256_file(path)
        except OSError as e:
            raise BuildError(f"cannot read {path}: {e.strerror}",
                             hint="build the programs first") from e
    entries = {}
    for name, (exe, kind, objects) in programs.items():
        exe_rel = by_path[Path(exe).absolute()]
        build_id = read_build_id(exe)
        if build_id is None:
            raise BuildError(f"{exe} has no GNU build-id, so a patch could not be tied to it",
                             hint="link with -Wl,--build-id=sha1 (the katana tool adds it; "
                                  "`katana flags --ldflags` prints it)")
        entries[name] = {"path": exe_rel, "kind": kind, "build_id": build_id,
                         "sha256": files[exe_rel],
                         "objects": [by_path[Path(o).absolute()] for o in objects]}
        if kind == "shared_library":  # what the dynamic linker and `ldd` call it
            entries[name]["soname"] = read_dynamic(exe).soname
    return {"format": FORMAT, "version": version, "compiler": compiler,
            "ccflags": list(ccflags), "linkflags": list(linkflags),
            "programs": entries, "files": files}


def _is_empty(dest: Path) -> bool:
    # SCons creates a target's directory before running its action, so an empty one is new.
    return not dest.exists() or (dest.is_dir() and not any(dest.iterdir()))


def _compare(dest: Path, manifest: dict[str, Any]) -> list[str]:
    """What differs between the snapshot in ``dest`` and ``manifest``; [] if they are the same."""
    try:
        old = Snapshot.load(dest)
    except (BuildError, FormatError) as e:
        return [f"it is not a valid snapshot ({e})"]
    problems = []
    old_files, new_files = old.files(), manifest["files"]
    changed = sorted(r for r in new_files if r in old_files and old_files[r] != new_files[r])
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    for label, names in (("changed", changed), ("new", added), ("gone", removed)):
        if names:
            problems.append(f"{label}: {', '.join(names)}")
    for key in ("compiler", "ccflags", "linkflags", "programs"):
        if not problems and old.manifest.get(key) != manifest[key]:
            problems.append(f"its {key} differ")
    tampered = old.verify()
    if tampered:
        problems.append(f"modified after it was made: {', '.join(tampered)}")
    return problems


def _write(dest: Path, sources: dict[str, Path], manifest: dict[str, Any]) -> None:
    """Write the snapshot beside ``dest``, then swap it in: a crash leaves no half snapshot."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = dest.with_name(f".{dest.name}.new")
    stale = dest.with_name(f".{dest.name}.old")
    for leftover in (fresh, stale):
        if leftover.exists():
            shutil.rmtree(leftover)
    fresh.mkdir()
    for rel, src in sources.items():
        (fresh / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, fresh / rel)
        shutil.copymode(src, fresh / rel)
    # written last: a directory with a manifest is a complete snapshot
    (fresh / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if dest.exists():
        dest.rename(stale)
    fresh.rename(dest)
    if stale.exists():
        shutil.rmtree(stale)


def _validate(manifest: Any, where: Path) -> None:
    """Check the manifest's shape, so that readers never meet a KeyError or a path outside."""
    def check(ok: bool, what: str) -> None:
        if not ok:
            raise FormatError(f"{where}: {what}")

    check(isinstance(manifest, dict), "the manifest is not a JSON object")
    check(manifest.get("format") == FORMAT,
          f"unsupported manifest format {manifest.get('format')!r} (this katana reads {FORMAT})")
    for key in ("version", "compiler"):
        check(isinstance(manifest.get(key), str), f"'{key}' is missing or not a string")
    for key in ("ccflags", "linkflags"):
        value = manifest.get(key)
        check(isinstance(value, list) and all(isinstance(f, str) for f in value),
              f"'{key}' is missing or not a list of strings")
    files = manifest.get("files")
    check(isinstance(files, dict), "'files' is missing or not an object")
    for rel, digest in files.items():
        check(_safe_relpath(rel), f"file path {rel!r} is not a relative path inside the release")
        check(isinstance(digest, str) and len(digest) == 64 and bool(_HEX.match(digest)),
              f"file {rel}: sha256 is not 64 hex digits")
    programs = manifest.get("programs")
    check(isinstance(programs, dict) and bool(programs), "'programs' is missing or empty")
    for name, entry in programs.items():
        _validate_program(name, entry, files, check)


def _validate_program(name: str, entry: Any, files: dict[str, str], check: Any) -> None:
    check(isinstance(entry, dict), f"program {name}: not an object")
    check(entry.get("path") in files, f"program {name}: 'path' is not one of the files")
    check(entry.get("kind") in KINDS, f"program {name}: 'kind' is not one of {KINDS}")
    build_id = entry.get("build_id")
    check(isinstance(build_id, str) and bool(_HEX.match(build_id)),
          f"program {name}: 'build_id' is not hex")
    check(entry.get("sha256") == files.get(entry.get("path")),
          f"program {name}: 'sha256' disagrees with 'files'")
    objects = entry.get("objects")
    check(isinstance(objects, list) and all(o in files for o in objects),
          f"program {name}: 'objects' is not a list of the files")
    check(entry.get("soname") is None or isinstance(entry["soname"], str),
          f"program {name}: 'soname' is not a string")


def _safe_relpath(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel:
        return False
    posix = PurePosixPath(rel)
    return not posix.is_absolute() and ".." not in posix.parts and rel != MANIFEST
