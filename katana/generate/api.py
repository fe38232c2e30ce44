"""The generator's entry point, used by ``katana generate`` and by the SCons tool's ``patch``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from katana.build.snapshot import MANIFEST, Snapshot
from katana.errors import GenerateError, KatanaError
from katana.generate.plan import build_patch
from katana.generate.tree import load_tree
from katana.po.model import PatchObject


@dataclass
class Summary:
    output: Path
    po: PatchObject

    def lines(self) -> list[str]:
        m = self.po.meta
        changed = [f.name for f in m.functions if f.status == "changed"]
        added = [f.name for f in m.functions if f.status == "added"]
        what = " (shared library)" if m.kind == "library" else ""
        out = [f"wrote {self.output}: {m.program}{what} {m.from_label} -> {m.to_label}"]
        out.append(f"  functions: {len(changed)} changed{_names(changed)}, "
                   f"{len(added)} added{_names(added)}")
        for status in ("added", "transformed", "kept"):
            names = [v.name for v in m.variables if v.status == status]
            if names:
                out.append(f"  variables {status}: {', '.join(names)}")
        out.extend(f"  warning: {w}" for w in m.warnings)
        return out


def _names(names: list[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f" ({shown})"


def default_output(old_dir: str | Path, new_dir: str | Path, program: str,
                   from_label: str | None = None, to_label: str | None = None) -> Path:
    """Where ``katana generate`` writes without ``-o``: ``OLD_DIR/EXE.po``, as the original
    Katana documents, except that a release snapshot is never written into (it is immutable:
    its manifest lists every file it holds). Then the project's ``patches/`` takes the PO,
    named as ``scons patch`` names it: the snapshot lives in ``<project>/releases/<version>``."""
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    snapshots = [d for d in (old_dir, new_dir) if (d / MANIFEST).exists()]
    if not snapshots:
        return old_dir / f"{program}.po"
    old = from_label or _version(old_dir) or old_dir.name
    new = to_label or _version(new_dir) or new_dir.name
    name = Path(program).name
    return snapshots[0].resolve().parent.parent / "patches" / f"{name}-{old}-{new}.po"


def _version(tree: Path) -> str | None:
    if not (tree / MANIFEST).exists():
        return None
    try:
        return Snapshot.load(tree).version
    except KatanaError:
        return None  # load_tree says what is wrong with it


def generate_patch(old_dir: str | Path, new_dir: str | Path, program: str,
                   output: str | Path, from_label: str | None = None,
                   to_label: str | None = None) -> Summary:
    """Diff the trees of ``program`` in ``old_dir`` and ``new_dir``; write the PO to ``output``.
    ``from_label`` and ``to_label`` name the versions in the PO (default: a snapshot's version,
    a build directory's name)."""
    from katana.po import write_po

    try:
        old, new = load_tree(old_dir, program), load_tree(new_dir, program)
        old.label, new.label = from_label or old.label, to_label or new.label
        po = build_patch(old, new, program)
    except OSError as e:  # an unreadable object or executable in one of the trees
        raise GenerateError(f"cannot read {e.filename or 'a file of the trees'}: "
                            f"{e.strerror or e}") from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_po(po, output)
    return Summary(output, po)
