"""The compiler and linker flags hot patching needs, and the ones that defeat it.

Plain functions on flag lists, so that the rules read (and test) without SCons; the SCons tool
(``katana.build.scons_tool``) applies them to construction environments.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEBUG_INFO = "-g"  # the generator pairs globals and diffs their layout from DWARF types
SECTIONS = ["-ffunction-sections", "-fdata-sections"]  # one section per function, per variable
# GCC >= 9: restrict IPA to inlining and cloning, whose effects show in the callers' bytes or
# symbol names; other IPA passes (constant propagation, pure/const discovery, ...) let callers
# depend on a callee's body, and patching the callee would silently change nothing.
LIVE_PATCHING = "-flive-patching=inline-clone"
# GCC -O2 inlines small and once-called static functions into their callers. When the caller is a
# loop that never returns (main's event loop), a change to the helper becomes a change to the
# loop, which is always on the stack, so the patch could never find a safe point.
OUTLINE_CALLEES = ["-fno-inline-functions-called-once", "-fno-inline-small-functions"]
# Five unused bytes before every function entry (never executed: code size only). A function
# too short to hold a 5-byte jump at its entry (a 1-byte `ret`, the last one of .text, which has
# no alignment padding after it) can then take a 2-byte jump back to a full jump there.
ENTRY_ROOM = "-fpatchable-function-entry=5,5"
# --emit-relocs keeps the relocations in the executable, so apply can find every reference to a
# variable whose layout changes; the build-id ties a patch to the exact build it was made from.
LINK_FLAGS = ["-Wl,--emit-relocs", "-Wl,--build-id=sha1"]

# (pattern of a whole argument, what it breaks, what to do), linker options spelt "-Wl,<option>"
_REFUSED = [
    (r"-g[01]|-ggdb[01]|-gline-tables-only",
     "drops the DWARF types that patch generation compares", "remove it (the tool adds -g)"),
    (r"-gsplit-dwarf", "moves the DWARF types out of the objects into .dwo files", "remove it"),
    (r"-flto(=.*)?", "leaves code generation to the linker, so the objects do not hold the code "
     "that runs", "remove it: a patchable build cannot use link-time optimisation"),
    (r"-fno-function-sections", "puts all functions in one .text section, so one changed "
     "function cannot be cut out", "remove it (the tool adds -ffunction-sections)"),
    (r"-fno-data-sections", "puts all variables in one section, so one changed variable cannot "
     "be cut out", "remove it (the tool adds -fdata-sections)"),
    (r"-s|-Wl,(-s|--strip-all)", "strips the symbol table that patching finds functions by",
     "remove it"),
    (r"-Wl,(-x|--discard-all)", "drops local symbols, so static functions cannot be found",
     "remove it"),
    (r"-Wl,--build-id=none", "removes the build-id that ties a patch to its build",
     "remove it (the tool adds -Wl,--build-id=sha1)"),
]


def linker_split(words: Sequence[str]) -> list[str]:
    """``words`` with each linker option on its own: ``-Wl,a,b`` and ``-Xlinker a`` -> ``-Wl,a``."""
    args: list[str] = []
    pending_xlinker = False
    for word in words:
        if pending_xlinker:
            args.append("-Wl," + word)
            pending_xlinker = False
        elif word == "-Xlinker":
            pending_xlinker = True
        elif word.startswith("-Wl,"):
            args += ["-Wl," + part for part in word[4:].split(",") if part]
        else:
            args.append(word)
    return args


def satisfies(arg: str, flag: str) -> bool:
    """Whether ``arg``, given by the user, already does what the tool's ``flag`` does."""
    if flag == DEBUG_INFO:
        return re.fullmatch(r"-g(gdb)?[23]?|-gdwarf(-\d)?", arg) is not None
    if flag.startswith("-flive-patching="):
        return arg.startswith("-flive-patching=")  # inline-only-static is stricter still
    if flag.startswith("-Wl,--build-id"):
        return re.fullmatch(r"-Wl,--build-id(=(?!none$).*)?", arg) is not None
    return arg == flag


def refusal(arg: str) -> tuple[str, str] | None:
    """(what it breaks, what to do) if ``arg`` defeats patching, else None."""
    for pattern, why, fix in _REFUSED:
        if re.fullmatch(pattern, arg):
            return why, fix
    return None


def compile_flags(top: str, compiler: Compiler, outline_callees: bool) -> list[str]:
    """The compile flags a patchable build needs, in the order the tool adds them."""
    # objects must not depend on where the tree is checked out, or every object would differ
    flags = [DEBUG_INFO, *SECTIONS, f"-ffile-prefix-map={top}=."]
    if (compiler.gcc_major or 0) >= 9:
        flags.append(LIVE_PATCHING)
    if (compiler.gcc_major or 0) >= 8:
        flags.append(ENTRY_ROOM)
    if outline_callees:
        flags += OUTLINE_CALLEES
    return flags


def portable(flags: Sequence[str], top: str) -> list[str]:
    """``flags`` with the top directory spelt '#', so that they do not depend on the checkout."""
    return [flag.replace(top, "#") for flag in flags]


@dataclass(frozen=True)
class Compiler:
    banner: str  # first line of --version, recorded in release manifests
    gcc_major: int | None  # None: not GCC (clang answers -dumpversion too, and lacks -flive-...)


_compilers: dict[tuple[tuple[str, ...], str], Compiler] = {}


def probe_compiler(argv: Sequence[str], env: Mapping[str, str]) -> Compiler:
    """Ask the compiler ``argv`` what it is, once per compiler and PATH."""
    key = (tuple(argv), env.get("PATH", ""))
    if key not in _compilers:
        _compilers[key] = _probe(list(argv), dict(env)) if argv else Compiler("", None)
    return _compilers[key]


def _probe(argv: list[str], env: dict[str, str]) -> Compiler:
    try:
        version = subprocess.run([*argv, "--version"], capture_output=True, text=True,
                                 env=env, timeout=60, check=False).stdout
        dump = subprocess.run([*argv, "-dumpversion"], capture_output=True, text=True,
                              env=env, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return Compiler("", None)
    banner = version.splitlines()[0].strip() if version.strip() else ""
    major = re.match(r"\d+", dump.strip())
    if "clang" in version.lower() or "Free Software Foundation" not in version or not major:
        return Compiler(banner, None)
    return Compiler(banner, int(major.group()))


# -- for builds without SCons (``katana flags``) -------------------------------------------------

# A make recipe passes $(CFLAGS) to the shell unquoted, and `$(katana flags)` is split on
# whitespace: a prefix-map directory with these characters would arrive as several words.
_UNSAFE_IN_WORD = re.compile(r"[\s'\"\\$`]")


def unsafe_directory(top: str) -> bool:
    """Whether ``top`` cannot be spelt inside one unquoted compiler argument."""
    return _UNSAFE_IN_WORD.search(top) is not None


def cmake_lines(compiler: Compiler, cflags: Sequence[str], ldflags: Sequence[str]) -> list[str]:
    """CMake commands that append the flags, for ``include()`` or pasting into a CMakeLists.txt."""
    what = compiler.banner or "a compiler that is not GCC"
    compile_words = " ".join(cflags)
    link_words = " ".join(ldflags)
    return [
        f"# katana flags for {what}; generated by `katana flags --cmake`",
        # string(APPEND) keeps what the project or the cache set before, and -O levels with it
        f'string(APPEND CMAKE_C_FLAGS " {compile_words}")',
        f'string(APPEND CMAKE_CXX_FLAGS " {compile_words}")',
        f'string(APPEND CMAKE_EXE_LINKER_FLAGS " {link_words}")',
        f'string(APPEND CMAKE_SHARED_LINKER_FLAGS " {link_words}")',
    ]


# CMake builds out of the source tree: sources under CMAKE_SOURCE_DIR and the build directory
# (DW_AT_comp_dir) both name the checkout. GCC tries the last -ffile-prefix-map first, so the
# build directory, often inside the source tree, is given last and wins for its own files.
CMAKE_PREFIX_MAPS = ["-ffile-prefix-map=${CMAKE_SOURCE_DIR}=.",
                     "-ffile-prefix-map=${CMAKE_BINARY_DIR}=."]


def cmake_compile_flags(compiler: Compiler, outline_callees: bool) -> list[str]:
    """``compile_flags`` with the prefix maps spelt as CMake variables."""
    flags = compile_flags("\0", compiler, outline_callees)
    at = flags.index("-ffile-prefix-map=\0=.")
    return flags[:at] + CMAKE_PREFIX_MAPS + flags[at + 1:]
