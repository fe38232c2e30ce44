"""The generator's entry point, used by ``katana generate`` and by the SCons tool's ``patch``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from katana.errors import GenerateError
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
        out = [f"{self.output}: {m.program} {m.from_label} -> {m.to_label}"]
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


def generate_patch(old_dir: str | Path, new_dir: str | Path, program: str,
                   output: str | Path) -> Summary:
    """Diff the trees of ``program`` in ``old_dir`` and ``new_dir``; write the PO to ``output``."""
    from katana.po import write_po

    try:
        po = build_patch(load_tree(old_dir, program), load_tree(new_dir, program), program)
    except OSError as e:  # an unreadable object or executable in one of the trees
        raise GenerateError(f"cannot read {e.filename or 'a file of the trees'}: "
                            f"{e.strerror or e}") from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_po(po, output)
    return Summary(output, po)
