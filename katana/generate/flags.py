"""Check, from what the files show, that a build has every flag the katana SCons tool guarantees.

A plain build directory (make, CMake, a script) may lack some. What each missing flag breaks
decides what happens: a patch that would be wrong, or that no apply could use, is refused
(``BuildError``, exit 4); one that works but costs more, or stops working for a later kind of
change, is made with a warning (stored in the PO, shown by ``katana list``). Every message names
the flag and how to add it with make, CMake and SCons.

The evidence: DW_AT_producer lists the compile flags GCC records (``-g``, ``-O2``,
``-ffunction-sections``, ``-flive-patching=...``, ``-fpatchable-function-entry=...``); GCC leaves
the prefix-map flags out of it, but DW_AT_comp_dir is ``.`` with ``-ffile-prefix-map=DIR=.`` and
absolute without; the sections show ``-ffunction-sections``; the executable's ``.rela.text``
shows ``--emit-relocs`` and its notes the build-id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from katana.build.flags import ENTRY_ROOM, LIVE_PATCHING, SECTIONS, refusal
from katana.elf.objfile import ObjectFile
from katana.elf.producer import CompileUnit, compile_unit
from katana.errors import BuildError

_TOOL = "SCons: load the katana tool after 'default' (tools=['default', 'katana']), which adds it"


PREFIX_MAP = "-ffile-prefix-map"
# the top of the tree, as each build system spells it
_PREFIX_MAP_SPELT = (f"{PREFIX_MAP}=$(CURDIR)=.", f"{PREFIX_MAP}=${{CMAKE_SOURCE_DIR}}=.")


def fix(flag: str) -> str:
    """How to add ``flag`` with make, CMake and SCons."""
    if flag.startswith("-Wl,"):
        return f"make: add {flag} to LDFLAGS; CMake: add_link_options({flag}); {_TOOL}"
    make, cmake = _PREFIX_MAP_SPELT if flag == PREFIX_MAP else (flag, flag)
    return f"make: add {make} to CFLAGS; CMake: add_compile_options({cmake}); {_TOOL}"


def _optimised(flags: list[str]) -> bool:
    levels = [f for f in flags if re.fullmatch(r"-O.*", f)]
    return bool(levels) and levels[-1] not in ("-O0", "-Og")


@dataclass
class FlagCheck:
    """Evidence gathered object by object: refusals raise at once, warnings are kept."""

    missing: dict[str, list[str]] = field(default_factory=dict)  # flag -> objects

    def _note(self, flag: str, obj: ObjectFile) -> None:
        objects = self.missing.setdefault(flag, [])
        if obj.relpath not in objects:  # the old and the new build of one object: once
            objects.append(obj.relpath)

    def check_object(self, obj: ObjectFile) -> CompileUnit | None:
        """Refuse an object whose diff could not be trusted; note what only costs."""
        names = {s.name for s in obj.sections}
        if ".debug_info" not in names:
            raise BuildError(f"{obj.path} was built without -g: the types of its variables are "
                             "unknown, so a changed layout could not be seen", hint=fix("-g"))
        text = next((s for s in obj.sections if s.name == ".text"), None)
        cu = compile_unit(obj)
        if cu is not None and not cu.flags:
            cu = None  # -gno-record-gcc-switches: the producer names the compiler only
        flags = cu.flags if cu is not None else []
        # the sections tell when two functions share .text; the producer, also when the object
        # has one function (the next version may have two)
        if (text is not None and len(obj.symbols_in(text.index)) > 1) or \
                (cu is not None and cu.gcc_major is not None and SECTIONS[0] not in flags):
            raise BuildError(f"{obj.path} was built without -ffunction-sections: its functions "
                             "share one section and cannot be cut out one by one",
                             hint=fix(SECTIONS[0]))
        if cu is None:
            return None
        for flag in flags:  # what the tool refuses, recorded by GCC (-g1, -flto, ...)
            refused = refusal(flag)
            if refused is not None:
                raise BuildError(f"{obj.path} was built with {flag}, which {refused[0]}",
                                 hint=f"{refused[1]}, and rebuild both versions")
        if (cu.gcc_major or 0) >= 9 and _optimised(flags) and \
                not any(f.startswith("-flive-patching=") for f in flags):
            raise BuildError(
                f"{obj.path} was built without {LIVE_PATCHING}: GCC's interprocedural passes let "
                "callers depend on their callees' bodies (constants propagated, side effects "
                "assumed away), so patching a callee could silently change nothing",
                hint=fix(LIVE_PATCHING))
        if SECTIONS[1] not in flags:
            self._note(SECTIONS[1], obj)
        if (cu.gcc_major or 0) >= 8 and \
                not any(f.startswith("-fpatchable-function-entry=") for f in flags):
            self._note(ENTRY_ROOM, obj)
        if cu.comp_dir.startswith("/"):
            self._note(PREFIX_MAP, obj)
        return cu

    def check_pair(self, old: ObjectFile, new: ObjectFile, cu_old: CompileUnit | None,
                   cu_new: CompileUnit | None) -> None:
        """Two builds of one object made in different directories without -ffile-prefix-map:
        every ``__FILE__`` and ``assert`` differs, so functions that did not change would be
        patched (``main`` among them, often)."""
        if cu_old is not None and cu_new is not None and cu_old.comp_dir != cu_new.comp_dir \
                and cu_new.comp_dir.startswith("/"):
            raise BuildError(
                f"{new.relpath} was built in {cu_old.comp_dir} for one version and in "
                f"{cu_new.comp_dir} for the other, without -ffile-prefix-map: the objects "
                "depend on where the tree lives (__FILE__, assert messages), so functions that "
                "did not change would be patched",
                hint=fix(PREFIX_MAP) + " (then rebuild both versions)")

    def warnings(self, emitted_relocs: dict[str, bool]) -> list[str]:
        """One warning per missing flag, naming the objects (and executables) concerned."""
        out = []
        why = {
            SECTIONS[1]: "variables share sections, so a patch that adds a variable copies "
                         "every variable of its section",
            ENTRY_ROOM: "a changed function shorter than 5 bytes has no room for a jump, and "
                        "apply refuses it",
            PREFIX_MAP: "objects depend on where the tree lives: build every version "
                                 "in the same directory, or a release made elsewhere compares "
                                 "every object and patches what uses __FILE__",
        }
        for flag, objects in self.missing.items():
            shown = ", ".join(objects[:4]) + (", ..." if len(objects) > 4 else "")
            out.append(f"built without {flag} ({shown}): {why[flag]}; {fix(flag)}")
        lacking = [exe for exe, has in emitted_relocs.items() if not has]
        if lacking:
            out.append(f"{', '.join(lacking)} linked without -Wl,--emit-relocs: a later patch "
                       "that changes a variable's layout cannot find the references to it and "
                       f"will be refused; {fix('-Wl,--emit-relocs')}")
        return out
