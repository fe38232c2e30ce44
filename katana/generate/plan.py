"""From two trees to a complete ``PatchObject``: the diff, the closure, the metadata."""

from __future__ import annotations

from katana import __version__
from katana.build.flags import ENTRY_ROOM
from katana.elf.buildid import read_build_id
from katana.elf.dynamic import read_dynamic
from katana.elf.ehframe import section_cfi
from katana.elf.executable import Executable, open_executable
from katana.elf.objfile import ObjSymbol, normalize_name
from katana.errors import BuildError, GenerateError, NoChangeError
from katana.generate.build import Closure
from katana.generate.compare import Fingerprinter
from katana.generate.diff import CHILD_SUFFIXES, Diff, ObjectPair, diff_trees
from katana.generate.flags import fix
from katana.generate.tree import Tree
from katana.generate.variables import added_variables, plan_variables
from katana.po.model import FunctionPatch, FunctionRef, Meta, PatchObject, PatchTarget

JMP_SIZE = 5  # jmp rel32, what apply writes over a replaced function's entry


def _is_child(name: str) -> bool:
    return any(s in normalize_name(name) for s in CHILD_SUFFIXES)


def _old_function(exe: Executable, pair: ObjectPair, old: ObjSymbol) -> tuple[int, bytes]:
    file = pair.old.file_name if (old.local and pair.old is not None) else None
    hit = exe.lookup(old.name, file)
    if hit is None:
        return 0, b""
    return hit.size, exe.read(hit.value, hit.size)


def _functions(closure: Closure, meta: Meta, exe: Executable) -> None:
    for pair in closure.diff.pairs:
        for index in sorted(pair.changed | pair.added):
            fn = pair.new.symbols[index]
            closure.included_funcs.add((pair.relpath, index))
            po_sym = closure.defined(pair, fn)
            partner = pair.partner.get(index)
            old_size, old_code = _old_function(exe, pair, partner) if partner else (0, b"")
            if partner is not None and old_code:
                ref = FunctionRef(partner.name, pair.old.file_name if partner.local else None,
                                  partner.local)
                meta.safety.append(ref)
                closure.safety_reasons.setdefault((ref.name, ref.file), []).append(
                    (pair.relpath, "its code differs"))
            if _is_child(fn.name):
                continue  # never an entry point: reached only through its parent
            status = "changed" if partner is not None and old_code else "added"
            if status == "changed":
                _check_room(exe, pair, partner)  # type: ignore[arg-type]
            meta.functions.append(FunctionPatch(
                fn.name, pair.relpath, status, po_sym, old_size, fn.size, fn.local,  # type: ignore
                pair.new.file_name if fn.local else None,
                partner.name if partner is not None and partner.name != fn.name else None,
                old_code))


def _cfi(closure: Closure) -> dict[str, str]:
    """The CFI of every code section the patch carries, by PO section index."""
    found = {}
    for (relpath, shndx), index in closure.section_index.items():
        if closure.sections[index].kind == "text":
            blob = section_cfi(closure.pairs[relpath].new, shndx)
            if blob:
                found[str(index)] = blob
    return found


def _refuse_main(closure: Closure, meta: Meta) -> None:
    """A patch whose safety set holds ``main`` waits for main to leave every stack, which it
    does only when the program ends: refuse it here rather than let every apply time out."""
    # only the global main is the program's entry point, on the stack for the whole run (a
    # static function of that name is an ordinary function)
    if not any(ref.name == "main" and not ref.local for ref in meta.safety):
        return
    reasons = closure.safety_reasons.get(("main", None)) or [("", "its code or data changed")]
    where = ", ".join(dict.fromkeys(obj for obj, _ in reasons if obj))
    what = "; ".join(dict.fromkeys(text for _, text in reasons))
    raise GenerateError(
        f"{where + ': ' if where else ''}main changed ({what}), and main never returns while the "
        "program runs: a patch that replaces it can never be applied",
        hint="move the change into a function main calls (the katana SCons tool keeps such "
             "callees out of line), or restart the program for this change")


def _check_room(exe: Executable, pair: ObjectPair, old: ObjSymbol) -> None:
    """A function to replace needs 5 bytes for a jump at its entry, or 2 there and 5 just
    before it (what -fpatchable-function-entry=5,5 leaves): apply would refuse it anyway."""
    hit = exe.lookup(old.name, pair.old.file_name if old.local and pair.old else None)
    if hit is None or exe.room(hit) >= JMP_SIZE:
        return
    if exe.room(hit) >= 2 and exe.gap_before(hit) >= JMP_SIZE:
        return
    raise BuildError(f"{old.name} ({pair.relpath}) is {hit.size} byte(s) long, with no room "
                     "around it for the jump that redirects it to its new version",
                     hint=fix(ENTRY_ROOM) + " (then rebuild both versions)")


def _warnings(diff: Diff, meta: Meta) -> None:
    meta.warnings.extend(diff.flags.warnings({
        str(diff.old.executable): open_executable(diff.old.executable).has_emitted_relocs,
        str(diff.new.executable): open_executable(diff.new.executable).has_emitted_relocs}))
    for rel in diff.removed:
        meta.warnings.append(f"{rel}: object removed in {diff.new.label}; its code stays in the "
                             "process, unused")
    for pair in diff.pairs:
        if pair.old is None:
            continue
        new_names = {normalize_name(f.name) for f in pair.new.functions()}
        for fn in pair.old.functions():
            if normalize_name(fn.name) not in new_names and not _is_child(fn.name):
                meta.warnings.append(f"{pair.relpath}: function {fn.name} removed in "
                                     f"{diff.new.label}; the running copy stays, unused by new "
                                     "code")


# Sections the program reads only when it starts or exits (or per thread, for TLS images): a
# change there would never reach a running process, so a patch cannot carry it.
_START_ONLY = (".init_array", ".fini_array", ".preinit_array", ".ctors", ".dtors", ".tdata",
               ".tbss")


def _start_only_changes(diff: Diff) -> list[str]:
    """Changed or new start-up sections: a change no patch can reach."""
    found = []
    for pair in diff.pairs:
        old = {s.name: s for s in pair.old.sections} if pair.old is not None else {}
        for sec in pair.new.sections:
            if not sec.name.startswith(_START_ONLY):
                continue
            before = old.get(sec.name)
            fp = Fingerprinter(pair.new)
            now = [(r.offset, r.type, fp.identity(sec, r)) for r in sec.relocs]
            if before is not None:
                fp_old = Fingerprinter(pair.old)  # type: ignore[arg-type]
                then = [(r.offset, r.type, fp_old.identity(before, r)) for r in before.relocs]
                if (before.data, then) == (sec.data, now):
                    continue
            found.append(f"{pair.relpath}: {sec.name}")
    return found


def _target(path) -> PatchTarget | None:
    """A shared library's PO says so (apply then looks for the library, not the program)."""
    info = read_dynamic(path)
    return PatchTarget("library", info.soname) if info.library else None


def build_patch(old: Tree, new: Tree, program: str) -> PatchObject:
    """Diff two trees of ``program`` and build the Patch Object that turns old into new."""
    if not set(old.objects) & set(new.objects):
        raise GenerateError(f"{old.root} and {new.root} have no object in common: they look like "
                            "builds of different programs",
                            hint="objects pair by their path below each tree")
    diff = diff_trees(old, new)
    unreachable = _start_only_changes(diff)
    if unreachable:
        raise GenerateError(
            f"{', '.join(unreachable)} changed: constructors, destructors and thread-local "
            "initial data run when the program (or a thread) starts, so no patch reaches a "
            "running process with them",
            hint="do that work from code the patch changes instead, or restart the program")
    exe = open_executable(old.executable)
    from_id, to_id = read_build_id(old.executable), read_build_id(new.executable)
    if not from_id or not to_id:
        lacking = [str(t.executable) for t, i in ((old, from_id), (new, to_id)) if not i]
        raise BuildError(f"{', '.join(lacking)} linked without a GNU build-id: nothing would "
                         "tie the patch to the build it was made from",
                         hint=fix("-Wl,--build-id=sha1"))
    if from_id == to_id:
        raise GenerateError(f"{old.executable} and {new.executable} are the same build "
                            f"(build-id {from_id})", hint="give the trees of two versions")
    meta = Meta(program, old.label, new.label, from_id, to_id, f"katana {__version__}",
                pie=exe.pie, target=_target(old.executable))
    closure = Closure(diff, exe, open_executable(new.executable))
    variables = plan_variables(closure, meta)
    _functions(closure, meta, exe)
    closure.run()
    meta.variables = variables + added_variables(closure, variables)
    closure.run()
    meta.safety = list({(f.name, f.file): f for f in meta.safety}.values())
    _refuse_main(closure, meta)
    meta.cfi = _cfi(closure)
    if any(v.status == "transformed" for v in meta.variables) and not exe.has_emitted_relocs:
        raise BuildError(f"{old.executable} was linked without --emit-relocs: the references to "
                         "the variables whose layout changes cannot be found",
                         hint=fix("-Wl,--emit-relocs"))
    _warnings(diff, meta)
    # A patch that only keeps live values (a changed initial value) is still written: applying
    # it changes no code, but records that the process now runs TO, so that the next release's
    # patch (made FROM it) applies, and its warning stays visible to `katana list`.
    if not meta.functions and not meta.variables:
        raise NoChangeError(f"no functional change between {diff.old.label} and "
                            f"{diff.new.label} ({len(diff.pairs)} object(s) differ only in "
                            "debug information or line numbers)")
    return PatchObject(meta, closure.sections, closure.symbols)
