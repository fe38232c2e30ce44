"""The compiler and linker flags hot patching needs, and the ones that defeat it.

Pure functions on flag lists, so that the rules can be read and tested without SCons; the SCons
tool (``katana.scons_tool``) applies them. Each rule says why it exists:

- ``-g``: the generator pairs globals and transforms their layout from DWARF types.
- ``-ffunction-sections`` / ``-fdata-sections``: one section per function and per variable, so
  a diff can take exactly the functions that changed.
- ``-Wl,--emit-relocs``: the executable keeps its relocations, which say where every reference
  to a global is, so a global whose type grows can be moved and every reference re-pointed.
- ``-Wl,--build-id=sha1``: the identity that ties a patch to the build it was made from.
- ``-flive-patching=inline-clone`` (GCC >= 9): otherwise IPA passes (constant propagation,
  pure/const discovery, ...) let callers depend on a callee's body, and patching the callee
  silently changes nothing.
- ``-ffile-prefix-map=<top>=.``: objects do not depend on where the tree is checked out.
- ``-fno-inline-functions-called-once -fno-inline-small-functions`` (GCC, optional): at -O2 GCC
  inlines small and once-called helpers into their callers; when the caller is a loop that never
  returns (``main``'s event loop), a change to the helper becomes a change to the loop, which is
  always on the stack, so the patch can never be applied.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REQUIRED_LINKFLAGS = ("-Wl,--emit-relocs", "-Wl,--build-id=sha1")
OUTLINE_FLAGS = ("-fno-inline-functions-called-once", "-fno-inline-small-functions")

# Debug options that already give full (level 2 or more) DWARF: with one of them, -g is not added.
_FULL_DEBUG = re.compile(r"-g(gdb)?[23]?$|-gdwarf(-\d+)?$")
_LTO = re.compile(r"-flto(=.*)?$")

# flag (or pattern) -> why it defeats patching and what to do instead
_REFUSED_COMPILE = (
    (re.compile(r"-g(gdb)?0$"), "it removes the debug information the patch generator reads; "
     "drop it (katana adds -g)"),
    (re.compile(r"-gsplit-dwarf$"), "it moves the DWARF types out of the objects into .dwo files; "
     "drop it"),
    (_LTO, "link-time optimization rewrites code across objects, so objects no longer describe "
     "the executable; drop it (and any -flto=... in LINKFLAGS)"),
    (re.compile(r"-fno-function-sections$"), "a patch replaces whole sections, one per function; "
     "drop it (katana adds -ffunction-sections)"),
    (re.compile(r"-fno-data-sections$"), "a patch adds and moves whole sections, one per variable; "
     "drop it (katana adds -fdata-sections)"),
)
_REFUSED_LINK = (
    (re.compile(r"-s$"), "it strips the symbol table the patch is resolved against; drop it "
     "(strip a copy for shipping, keep the snapshot unstripped)"),
    (_LTO, "link-time optimization rewrites code across objects, so objects no longer describe "
     "the executable; drop it"),
)
# options given to the linker itself (after -Wl, or -Xlinker)
_REFUSED_LINKER = (
    (re.compile(r"(-s|--strip-all)$"), "it strips the symbol table the patch is resolved against; "
     "drop it (strip a copy for shipping, keep the snapshot unstripped)"),
    (re.compile(r"--build-id=none$"), "the build-id ties a patch to the build it was made from; "
     "drop it (katana adds --build-id=sha1)"),
)


@dataclass(frozen=True)
class Compiler:
    """What ``$CC`` is: its family ("gcc", "clang" or "unknown"), major version and banner."""

    family: str
    major: int
    banner: str

    def supports_live_patching(self) -> bool:
        """GCC's -flive-patching exists since GCC 9; clang has no such option."""
        return self.family == "gcc" and self.major >= 9

    def supports_prefix_map(self) -> bool:
        """-ffile-prefix-map exists since GCC 8 and clang 10."""
        return (self.family == "gcc" and self.major >= 8) or (
            self.family == "clang" and self.major >= 10)


_compilers: dict[tuple[str, str], Compiler] = {}


def probe_compiler(cc: str, env: Mapping[str, str] | None = None) -> Compiler:
    """Ask ``cc`` what it is (once per compiler and PATH; the answer is cached)."""
    key = (cc, (env or {}).get("PATH", ""))
    if key not in _compilers:
        _compilers[key] = _probe(cc, env)
    return _compilers[key]


def _run(argv: list[str], env: Mapping[str, str] | None) -> str:
    try:
        done = subprocess.run(argv, env=dict(env) if env else None, capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _probe(cc: str, env: Mapping[str, str] | None) -> Compiler:
    if not cc:
        return Compiler("unknown", 0, "")
    text = _run([cc, "--version"], env)
    banner = text.splitlines()[0].strip() if text.strip() else ""
    if "clang" in text:
        # clang's -dumpversion answered "4.2.1" for years (GCC compatibility); read the banner
        found = re.search(r"clang version (\d+)", text)
        return Compiler("clang", int(found.group(1)) if found else 0, banner)
    if "Free Software Foundation" in text or re.search(r"\bgcc\b|\bGCC\b", text):
        found = re.match(r"\d+", _run([cc, "-dumpversion"], env).strip())
        return Compiler("gcc", int(found.group(0)) if found else 0, banner)
    return Compiler("unknown", 0, banner)


def linker_options(flags: Iterable[str]) -> list[str]:
    """The options a flag list passes to the linker itself: ``-Wl,a,b`` and ``-Xlinker a``."""
    return [option for option, _ in _linker_options(list(flags))]


def _linker_options(flags: list[str]) -> list[tuple[str, str]]:
    # (option, the flag as the user wrote it)
    out: list[tuple[str, str]] = []
    for i, flag in enumerate(flags):
        if flag.startswith("-Wl,"):
            out.extend((part, flag) for part in flag[4:].split(",") if part)
        elif flag == "-Xlinker" and i + 1 < len(flags):
            out.append((flags[i + 1], f"-Xlinker {flags[i + 1]}"))
    return out


def required_compile_flags(given: Iterable[str], compiler: Compiler, topdir: str,
                           outline_callees: bool) -> list[str]:
    """The compile flags katana adds to ``given`` (the user's own), each at most once."""
    given = list(given)
    wanted: list[str] = []
    if not any(_FULL_DEBUG.match(f) for f in given):
        wanted.append("-g")
    wanted += ["-ffunction-sections", "-fdata-sections"]
    if compiler.supports_live_patching() and not any(
            f.startswith("-flive-patching") for f in given):
        wanted.append("-flive-patching=inline-clone")
    if compiler.supports_prefix_map():
        wanted.append(f"-ffile-prefix-map={topdir}=.")
    if outline_callees and compiler.family == "gcc":
        # the user's explicit -finline-... wins over our default
        wanted += [f for f in OUTLINE_FLAGS if "-f" + f[len("-fno-"):] not in given]
    return [f for f in wanted if f not in given]


def required_link_flags(given: Iterable[str]) -> list[str]:
    """The link flags katana adds to ``given`` (the user's own), each at most once."""
    given = list(given)
    passed = linker_options(given)
    wanted = []
    if "--emit-relocs" not in passed and "-q" not in passed:
        wanted.append(REQUIRED_LINKFLAGS[0])
    # any explicit style (md5, uuid, 0x...) is the user's choice; none is refused elsewhere
    if not any(o == "--build-id" or o.startswith("--build-id=") for o in passed):
        wanted.append(REQUIRED_LINKFLAGS[1])
    return [f for f in wanted if f not in given]


def refused_compile_flag(flags: Iterable[str]) -> tuple[str, str] | None:
    """The first compile flag that defeats patching, with the reason and fix; None if none."""
    return _first_refused(flags, _REFUSED_COMPILE)


def refused_link_flag(flags: Iterable[str]) -> tuple[str, str] | None:
    """The first link flag that defeats patching, with the reason and fix; None if none."""
    flags = list(flags)
    found = _first_refused(flags, _REFUSED_LINK)
    if found:
        return found
    for option, flag in _linker_options(flags):
        for pattern, why in _REFUSED_LINKER:
            if pattern.match(option):
                return flag, why
    return None


def _first_refused(flags: Iterable[str], rules: tuple) -> tuple[str, str] | None:
    for flag in flags:
        for pattern, why in rules:
            if pattern.match(flag):
                return flag, why
    return None
