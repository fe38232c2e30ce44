"""The ``katana`` command: generate, view and apply Patch Objects, and manage applied patches.

The original Katana's one-letter forms are kept: ``katana -g [-o OUT] OLD NEW EXE``,
``katana -p [-s] PATCH PID``, ``katana -l PATCH`` and ``-c CONFIG``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import signal
import sys
import textwrap
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

from katana import __version__
from katana.errors import (
    BROKEN_PIPE_EXIT,
    INTERNAL_ERROR_EXIT,
    INTERRUPTED_EXIT,
    KatanaError,
    OutputError,
    Terminated,
    UsageError,
    exit_codes,
)

_ORIGINAL_FORMS = {"-g": "generate", "-p": "apply", "-l": "list"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a UsageError (exit code 2, one line), not sys.exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}", hint=f"see '{self.prog} --help'")


@functools.cache
def exit_code_table() -> str:
    """The exit codes, as --help and the man page print them (from katana.errors' classes);
    wrapped once, not once per subcommand: the parser is built at every start."""
    lines = ["exit codes:"]
    for code, meaning in exit_codes():
        lines += textwrap.wrap(meaning, 74, initial_indent=f"  {code:>3}  ",
                               subsequent_indent=" " * 7)
    return "\n".join(lines) + "\n"


_QUIET_HELP = ("no progress lines: print only errors, warnings and what the command is asked "
               "for (what list, status, ps, config and flags show; the summary of generate and "
               "of apply or check over several processes)")
_VERBOSE_HELP = ("say more: every place rewritten, timings by phase (-vv: debug); overrides the "
                 "configuration's verbosity")
_CONFIG_HELP = "configuration file read after /etc/katana, ~/.katana, ~/.config/katana, ./.katana"


def _common_options() -> argparse.ArgumentParser:
    """-c, -v and -q after the subcommand too, in dests of their own (merged by _merge_common):
    a subparser's defaults would otherwise overwrite what was given before the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options (also accepted before the command)")
    group.add_argument("-c", "--config", dest="sub_config", metavar="FILE", type=Path,
                       help=_CONFIG_HELP)
    group.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                       help=_VERBOSE_HELP)
    group.add_argument("-q", "--quiet", dest="sub_quiet", action="store_true", help=_QUIET_HELP)
    return common


@dataclass(frozen=True)
class _Command:
    name: str
    summary: str  # one line, for `katana --help`
    description: str
    examples: tuple[str, ...]


_SPECS = {spec.name: spec for spec in (
    _Command("generate", "make a Patch Object from two object trees (-g)",
             "Compare two builds of a program (or of a shared library the project builds) object "
             "by object and write a Patch Object (PO) that turns a process running the old "
             "build into one running the new. The trees "
             "are release snapshots (releases/<v>/) or build directories; objects built without "
             "the flags patching needs are refused ('katana flags' prints them).",
             ("katana generate -o kvd-v0-v1.po releases/v0 releases/v1 kvd",
              "katana -g build/v0 build/v1 prog        # writes build/v0/prog.po",
              "katana generate releases/v0 releases/v1 libkv.so   # a library's PO")),
    _Command("list", "show what a Patch Object does (-l)",
             "Print what a PO changes: functions replaced and added, variables added or "
             "transformed (field by field), the safety set, its signature, warnings.",
             ("katana list patches/kvd-v0-v1.po", "katana list --json patches/kvd-v0-v1.po")),
    _Command("apply", "apply a Patch Object to running processes (-p)",
             "Load a PO into running processes through ptrace, at a safe point (no thread "
             "inside a function it replaces), without restarting them. A library's PO patches "
             "the library a process maps, found by its build-id. Every check is made "
             "before the first write; any failure undoes every write.",
             ("katana apply patches/kvd-v0-v1.po 24719",
              "katana apply patches/kvd-v0-v1.po all   # every process of the PO's program",
              "katana apply patches/libkv.so-v0-v1.po all   # every process mapping libkv.so")),
    _Command("check", "check that a Patch Object would apply now, without applying it",
             "Make every verification apply makes, on each process, with no write: the "
             "signature policy, the build the process runs now (build-id, already applied, "
             "another program), every symbol the patch uses resolved in this process, and "
             "which functions of the safety set are in use right now (one stop of every "
             "thread, as long as one safe-point probe). Exit 0 exactly when apply would go "
             "ahead now. It cannot foresee whether a function in use returns within "
             "maxWaitForPatching (it reports it busy: exit 10), the mapping of the patch's "
             "memory, or a change to the process between the check and the apply.",
             ("katana check patches/kvd-v0-v1.po 24719",
              "katana check --json patches/kvd-v0-v1.po all --user svc")),
    _Command("ps", "list the processes of this host that carry katana patches",
             "List every process of this host that carries katana patches: its program, the "
             "build each patched object behaves as now, and each patch (when, by whom), read "
             "from the processes themselves (no stop). --program NAME adds that program's "
             "unpatched processes and the build-id each runs. Processes of other users are "
             "seen by root only.",
             ("katana ps", "katana ps --program kvd --json")),
    _Command("status", "list the patches applied to a process",
             "Print the patches applied to a process, per object (its program, each library "
             "patched), oldest first, and what each runs now, read from the process itself.",
             ("katana status 24719", "katana status --json 24719")),
    _Command("revert", "undo the most recent patch applied to a process",
             "Undo the newest patch of a process once none of its code is in use; with "
             "PATCH (a PO file or its sha256's first digits, as status shows), that patch, "
             "refused while later patches of the same object depend on it; with --all, every "
             "patch, newest first. A patch that moved data to a new layout cannot be "
             "reverted. With nothing to revert, exit 14.",
             ("katana revert 24719", "katana revert 24719 patches/kvd-v1-v2.po",
              "katana revert 24719 --all")),
    _Command("config", "print the effective configuration and where each value comes from",
             "Print every configuration key, its effective value and the file that set it "
             "(or 'default').", ("katana config", "katana -c ./ops.katana config --json")),
    _Command("keygen", "make an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub",
             "Make a key pair to sign Patch Objects with.", ("katana keygen ci",)),
    _Command("sign", "sign a Patch Object: writes PATCH.sig",
             "Sign a PO with a private key; the signature goes to PATCH.sig, next to it.",
             ("katana sign patches/kvd-v0-v1.po --key ci.key",)),
    _Command("verify", "check a Patch Object's signature against --key or the configured "
             "trustedKeys",
             "Check that a PO is signed, unchanged since, by a trusted key.",
             ("katana verify patches/kvd-v0-v1.po --key ci.pub",
              "katana verify patches/kvd-v0-v1.po      # against trustedKeys")),
    _Command("flags", "print the compiler and linker flags a patchable build needs "
             "(for make, CMake)",
             "Print the flags the katana SCons tool guarantees, for this compiler (GCC's "
             "version decides -flive-patching and -fpatchable-function-entry), for builds that "
             "do not use SCons. -ffile-prefix-map maps the directory katana runs in (or "
             "--prefix-map DIR) to '.', so that the objects of two builds do not depend on "
             "where the tree is: run it from the directory the compiler runs in.",
             ('make CFLAGS="-O2 $(katana flags --cflags)" LDFLAGS="$(katana flags --ldflags)"',
              "katana flags --cmake > katana.cmake     # include(katana.cmake) in CMakeLists.txt",
              "CC=clang katana flags")),
    _Command("completion", "print a bash completion script for katana",
             "Print a bash completion script, generated from this katana's own parser.",
             ('source <(katana completion bash)',
              "katana completion bash > ~/.local/share/bash-completion/completions/katana")),
    _Command("man", "print katana's manual page (roff)",
             "Print the manual page, generated from this katana's own parser.",
             ("katana man > katana.1 && man ./katana.1",)),
)}


def _epilog(spec: _Command) -> str:
    examples = "\n".join(f"  {line}" for line in spec.examples)
    return f"example{'s' if len(spec.examples) > 1 else ''}:\n{examples}\n\n{exit_code_table()}"


def _add_command(sub, name: str, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    spec = _SPECS[name]
    return sub.add_parser(name, help=spec.summary, description=spec.description,
                          epilog=_epilog(spec), parents=[common],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout, on "
                   "success and failure alike (docs/json.md, schema 1)")


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", metavar="USER", help="with 'all': only the processes of this user "
                   "(a name or a uid)")
    p.add_argument("--exe", type=Path, metavar="PATH", help="with 'all': only the processes "
                   "running this executable file")
    _json_option(p)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="katana", description="Hot patches as build artifacts: generate a Patch "
                "Object from two builds, look inside it, apply it to a running process. "
                "'katana COMMAND --help' explains each command.",
                epilog="example:\n  katana generate -o v0-v1.po build/v0 build/v1 prog && "
                       "katana apply v0-v1.po 24719\n\n" + exit_code_table(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"katana {__version__}")
    p.add_argument("-c", "--config", metavar="FILE", type=Path, help=_CONFIG_HELP)
    p.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help=_QUIET_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common_options()

    g = _add_command(sub, "generate", common)
    g.add_argument("-o", "--output", type=Path, metavar="OUT", help="where to write the PO "
                   "(default: OLD_DIR/EXE.po; for release snapshots, the project's "
                   "patches/EXE-FROM-TO.po, never the snapshot)")
    g.add_argument("--from-label", metavar="LABEL", help="name of the old version in the PO, "
                   "shown by list and status (default: a snapshot's version, else OLD_DIR's name)")
    g.add_argument("--to-label", metavar="LABEL", help="name of the new version (default: a "
                   "snapshot's version, else NEW_DIR's name)")
    g.add_argument("old_dir", type=Path, metavar="OLD_DIR", help="the tree of the build "
                   "that runs now (a snapshot or a build directory)")
    g.add_argument("new_dir", type=Path, metavar="NEW_DIR", help="the tree of the build to "
                   "patch to, with the same layout")
    g.add_argument("program", metavar="EXE", help="the program (or shared library, "
                   "libkv.so), relative to the trees")
    _json_option(g)

    ls = _add_command(sub, "list", common)
    ls.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    ls.add_argument("--disasm", action="store_true", help="old and new code side by side")
    _json_option(ls)

    a = _add_command(sub, "apply", common)
    a.add_argument("-s", "--stopped", action="store_true",
                   help="leave the target stopped (SIGSTOP) after detaching, for a debugger")
    a.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    a.add_argument("pids", nargs="+", metavar="PID", help="process ids, or 'all' for every "
                   "process running the patch's program")
    _target_options(a)

    ck = _add_command(sub, "check", common)
    ck.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    ck.add_argument("pids", nargs="+", metavar="PID", help="process ids, or 'all' for every "
                    "process running the patch's program")
    _target_options(ck)

    ps = _add_command(sub, "ps", common)
    ps.add_argument("--program", metavar="NAME", help="also list this program's unpatched "
                    "processes (NAME: the executable's file name)")
    _json_option(ps)

    st = _add_command(sub, "status", common)
    st.add_argument("pid", type=int, metavar="PID", help="the process id")
    _json_option(st)

    r = _add_command(sub, "revert", common)
    r.add_argument("pid", type=int, metavar="PID", help="the process id")
    r.add_argument("patch", nargs="?", metavar="PATCH", help="the patch to revert: its PO "
                   "file, or the first digits (4 or more) of its sha256 (default: the newest)")
    r.add_argument("--all", dest="every", action="store_true", help="revert every patch of "
                   "the process, newest first")
    _json_option(r)

    _json_option(_add_command(sub, "config", common))

    k = _add_command(sub, "keygen", common)
    k.add_argument("name", type=Path, metavar="NAME", help="path of the pair without suffix: "
                   "writes NAME.key and NAME.pub")

    sg = _add_command(sub, "sign", common)
    sg.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    sg.add_argument("--key", type=Path, required=True, metavar="NAME.key",
                    help="the private key (from katana keygen)")

    v = _add_command(sub, "verify", common)
    v.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    v.add_argument("--key", type=Path, action="append", metavar="NAME.pub",
                   help="a public key to accept (instead of trustedKeys); may be repeated")

    f = _add_command(sub, "flags", common)
    which = f.add_mutually_exclusive_group()
    which.add_argument("--cflags", action="store_true", help="only the compile flags")
    which.add_argument("--ldflags", action="store_true", help="only the link flags")
    which.add_argument("--cmake", action="store_true", help="CMake lines that append both, "
                       "for include() (the prefix maps name CMAKE_SOURCE_DIR and "
                       "CMAKE_BINARY_DIR unless --prefix-map is given)")
    f.add_argument("--cc", metavar="CC", help="the compiler to ask (default: $CC, else cc)")
    f.add_argument("--prefix-map", metavar="DIR", help="the directory the compiler runs in, "
                   "mapped to '.' in the objects (default: the current directory)")
    f.add_argument("--inline-callees", action="store_true", help="let GCC inline small and "
                   "once-called functions (the SCons tool's KATANA_OUTLINE_CALLEES=False)")

    c = _add_command(sub, "completion", common)
    c.add_argument("shell", choices=["bash"], metavar="SHELL", help="only 'bash'")

    _add_command(sub, "man", common)
    return p


def _translate_original(argv: list[str]) -> list[str]:
    """``katana [-c F] -p -s PATCH PID`` -> ``katana [-c F] apply -s PATCH PID``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in _ORIGINAL_FORMS:
            out[i] = _ORIGINAL_FORMS[arg]
            return out
        if arg in ("-c", "--config"):
            continue
        if not arg.startswith("-") and (i == 0 or out[i - 1] not in ("-c", "--config")):
            return out
    return out


def _cmd_config(args: argparse.Namespace, config) -> int:
    if args.report is not None:
        args.report.update(file=str(args.config) if args.config else None, settings={
            key: {"value": list(value) if isinstance(value, tuple) else value, "source": source}
            for key, value, source in config.items()})
        return 0
    for key, value, source in config.items():
        print(f"{key:28} {json.dumps(value):12} {source}")
    return 0


def _cmd_generate(args: argparse.Namespace, config) -> int:
    from katana.generate.api import default_output, generate_patch

    output = args.output or default_output(args.old_dir, args.new_dir, args.program,
                                           args.from_label, args.to_label)
    if args.report is not None:
        args.report.update(written=[])
    summary = generate_patch(args.old_dir, args.new_dir, args.program, output,
                             args.from_label, args.to_label)
    if args.report is not None:
        m = summary.po.meta
        args.report.update(written=[{
            "path": str(summary.output), "object": m.program,
            "kind": getattr(m, "kind", "program"), "from": m.from_label, "to": m.to_label,
            "from_build_id": m.from_build_id, "to_build_id": m.to_build_id,
            "functions": [{"name": f.name, "status": f.status} for f in m.functions],
            "variables": [{"name": v.name, "status": v.status} for v in m.variables],
            "warnings": list(m.warnings)}])
        for warning in m.warnings:
            print(f"katana: warning: {warning}", file=sys.stderr)
        return 0
    for line in summary.lines():
        print(line)
    return 0


def _list_config(args: argparse.Namespace, config):
    """The configuration for ``list``'s trust line; a broken file only hides the trust."""
    from katana.config import load_config

    if args.config is not None:  # main read it already
        return config
    try:
        return load_config()
    except KatanaError as e:
        print(f"katana: warning: trust not shown: {e.message}", file=sys.stderr)
        return None


def _cmd_list(args: argparse.Namespace, config) -> int:
    from katana.errors import KeyFileError
    from katana.live.trust import describe, describe_text
    from katana.po import load_po
    from katana.view import render_json, render_text

    po = load_po(args.patch)
    config = _list_config(args, config)
    try:
        signature = describe(args.patch, config, extra_keys=None if config else {})
    except KeyFileError as e:  # a broken trustedKeys entry hides the trust, not the listing
        print(f"katana: warning: trust not shown: {e.message}", file=sys.stderr)
        signature = describe(args.patch, config, extra_keys={})
    if args.report is not None:
        args.report.update(**render_json(po, signature=signature))
    else:
        print(render_text(po, disasm=args.disasm, signature=describe_text(signature)), end="")
    return 0


def _cmd_keygen(args: argparse.Namespace, config) -> int:
    from katana.po.signature import generate_key_pair, short_id

    private, public, full_id = generate_key_pair(args.name)
    print(f"key {short_id(full_id)}: {private} (private, mode 0600: keep it secret), "
          f"{public} (public: list it in trustedKeys)")
    return 0


def _cmd_sign(args: argparse.Namespace, config) -> int:
    from katana.errors import FormatError
    from katana.po import read_po
    from katana.po.signature import short_id, sign_bytes, write_signature

    try:
        data = args.patch.read_bytes()
    except OSError as e:
        raise FormatError(f"cannot read {args.patch}: {e.strerror}") from None
    read_po(data, str(args.patch))  # never vouch for a file katana would refuse to apply
    signature = sign_bytes(data, args.key)
    path = write_signature(args.patch, signature)
    print(f"{args.patch}: signed by key {short_id(signature.key_id)}: {path}")
    return 0


def _cmd_verify(args: argparse.Namespace, config) -> int:
    from katana.errors import SignatureError
    from katana.live.trust import describe
    from katana.po.signature import key_id, load_public_key, short_id, sig_path

    keys = None if args.key is None else {key_id(load_public_key(k)): k for k in args.key}
    info = describe(args.patch, config, extra_keys=keys)
    whose = "the --key given" if keys is not None else "trustedKeys"
    if not info["signed"]:
        raise SignatureError(f"{args.patch} is not signed (no {sig_path(args.patch).name})")
    if info["error"]:
        raise SignatureError(str(info["error"]))
    short = short_id(str(info["key_id"]))
    if not info["valid"]:
        raise SignatureError(f"{args.patch} changed after it was signed by key {short}: BAD "
                             "signature")
    if not info["trusted"]:
        raise SignatureError(f"{args.patch}: good signature by key {short}, but that key is "
                             f"not in {whose}")
    print(f"{args.patch}: good signature by key {short} ({info['trusted_key']})")
    return 0


def _outrank_target() -> None:
    """Run ahead of the target while we work on it (root only: CAP_SYS_NICE).

    The scheduler shares a CPU between threads, not processes: a target with 64 busy threads
    leaves katana 1/65 of a core, and every millisecond katana loses is one the target's
    threads spend stopped, or one past maxWaitForPatching (measured: 5 s became 23 s).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -15)
    except OSError:
        pass  # not root: the ordinary priority


def _cmd_apply(args: argparse.Namespace, config) -> int:
    from katana.live.command import apply_command
    from katana.live.targets import selection

    return apply_command(args.patch, args.pids, config, leave_stopped=args.stopped,
                         verbosity=_verbosity(args, config), report=args.report,
                         chosen=selection(args.user, args.exe))


def _cmd_check(args: argparse.Namespace, config) -> int:
    from katana.live.check import check_command
    from katana.live.targets import selection

    return check_command(args.patch, args.pids, config, verbosity=_verbosity(args, config),
                         report=args.report, chosen=selection(args.user, args.exe))


def _cmd_ps(args: argparse.Namespace, config) -> int:
    from katana.live.ps import ps_command

    return ps_command(args.program, report=args.report)


def _cmd_status(args: argparse.Namespace, config) -> int:
    from katana.live.status import status_command

    return status_command(args.pid, report=args.report)


def _cmd_revert(args: argparse.Namespace, config) -> int:
    from katana.live.revert import revert_command

    if args.every and args.patch:
        raise UsageError("give a PATCH or --all, not both", hint="see 'katana revert --help'")
    return revert_command(args.pid, config, verbosity=_verbosity(args, config),
                          patch=args.patch, every=args.every, report=args.report)


def _cmd_flags(args: argparse.Namespace, config) -> int:
    import shlex

    from katana.build import flags as buildflags

    cc = args.cc or os.environ.get("CC") or "cc"
    compiler = buildflags.probe_compiler(shlex.split(cc), os.environ)
    if compiler.gcc_major is None:
        print(f"katana: warning: {cc} is not GCC (or was not found): no -flive-patching, no "
              "-fpatchable-function-entry; patches may find no room or miss IPA effects",
              file=sys.stderr)
    outline = not args.inline_callees
    ldflags = list(buildflags.LINK_FLAGS)
    if args.cmake and args.prefix_map is None:
        lines = buildflags.cmake_lines(compiler, buildflags.cmake_compile_flags(compiler, outline),
                                       ldflags)
        print("\n".join(lines))
        return 0
    try:
        top = os.path.abspath(args.prefix_map or os.getcwd())
    except FileNotFoundError:  # the shell's directory was removed under it
        raise UsageError("the current directory no longer exists",
                         hint="cd to the build's directory, or give --prefix-map DIR") from None
    if buildflags.unsafe_directory(top):
        raise UsageError(f"{top} holds a space, quote, backslash, $ or backquote, which the "
                         "shell would split or expand in $(katana flags)",
                         hint="build from a path without them (a symlink will do) and give it "
                              "with --prefix-map")
    cflags = buildflags.compile_flags(top, compiler, outline)
    if args.cmake:
        print("\n".join(buildflags.cmake_lines(compiler, cflags, ldflags)))
    elif args.cflags:
        print(" ".join(cflags))
    elif args.ldflags:
        print(" ".join(ldflags))
    else:
        print(f"CFLAGS={shlex.quote(' '.join(cflags))}")
        print(f"LDFLAGS={shlex.quote(' '.join(ldflags))}")
    return 0


def _cmd_completion(args: argparse.Namespace, config) -> int:
    from katana.clidoc import bash_completion

    print(bash_completion(_parser()), end="")
    return 0


def _cmd_man(args: argparse.Namespace, config) -> int:
    from katana.clidoc import man_page

    print(man_page(_parser()), end="")
    return 0


_CONFIGURED = {"config", "apply", "check", "revert", "verify"}
_COMMANDS = {"config": _cmd_config, "generate": _cmd_generate, "list": _cmd_list,
             "apply": _cmd_apply, "check": _cmd_check, "ps": _cmd_ps,
             "status": _cmd_status, "revert": _cmd_revert,
             "keygen": _cmd_keygen, "sign": _cmd_sign, "verify": _cmd_verify,
             "flags": _cmd_flags, "completion": _cmd_completion, "man": _cmd_man}


def _merge_common(args: argparse.Namespace) -> None:
    """Fold -c/-v/-q given after the subcommand into those given before it."""
    args.config = getattr(args, "sub_config", None) or args.config
    args.verbose += getattr(args, "sub_verbose", 0)
    args.quiet = args.quiet or getattr(args, "sub_quiet", False)
    if args.quiet and args.verbose:
        raise UsageError("-q and -v contradict each other", hint="give one of them")


def _verbosity(args: argparse.Namespace, config) -> int:
    """-q: 0; -v: 2 (-vv: 3); neither: the configuration's ``verbosity`` (default 1)."""
    if args.quiet:
        return 0
    return 1 + args.verbose if args.verbose else config.verbosity


def _stdout_closed() -> bool:
    """Whether nobody reads our stdout any more (a pipe whose reader exited, as with | head)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        # Linux reports POLLERR on the write end of a pipe that has no reader left
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit and would print "Exception ignored ... BrokenPipeError":
    # point the descriptor at /dev/null so that the last flush has somewhere to go.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _wants_trace(argv: list[str]) -> bool:
    # read from argv, not from the parsed arguments: a bug may be in the parsing itself
    return any(a == "--verbose" or (len(a) > 1 and a.strip("v") == "-") for a in argv)


def _run(argv: list[str], state: dict) -> int:
    from katana.jsonout import Report, guess_command

    try:
        args = _parser().parse_args(argv)
    except UsageError:
        if "--json" in argv:  # the caller still gets its one object
            state["report"] = Report(guess_command(argv, _COMMANDS))
        raise
    if args.command is None:
        _parser().print_help()
        return 2
    args.report = Report(args.command) if getattr(args, "json", False) else None
    state["report"] = args.report
    _merge_common(args)
    if args.command in ("apply", "check", "revert"):
        _outrank_target()  # before the imports: they are most of katana's CPU time
    from katana.config import Config, load_config

    # Only the commands that touch a process read the configuration: a broken ./.katana
    # must not stop anyone from looking at a PO or making one (-c is read whenever given).
    config = Config()
    if args.command in _CONFIGURED or args.config is not None:
        config = load_config(args.config)
        for warning in config.warnings:
            print(f"katana: warning: {warning}", file=sys.stderr)
    code = _COMMANDS[args.command](args, config)
    if args.report is not None:
        args.report.emit(code)
        state["report"] = None  # printed: an error from here on is not the command's
    sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
    return code


class _Output:
    """Standard output, whose write errors (ENOSPC on a full disk, EIO) are an OutputError
    (exit 74), not a bug in katana; a closed pipe stays BrokenPipeError (141, quiet)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            _quiet_stdout()  # what is still buffered goes nowhere, at exit too
            raise OutputError(f"cannot write to standard output: {e.strerror or e}",
                              hint="what the command did stands (katana status shows a "
                                   "process's patches); only its output is lost") from None

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _open_standard_streams() -> None:
    """A descriptor 0, 1 or 2 closed by the caller (``katana ps >&-``) is /dev/null: Python
    left sys.stdout None (an AttributeError at the first print), and the next file katana
    opened would take the descriptor and receive its output."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False))


def _on_terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
    main_thread = threading.current_thread() is threading.main_thread()
    handlers, mask = {}, None
    try:
        if main_thread:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                handlers[sig] = signal.signal(sig, _on_terminate)
            mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # held by __main__.run
        return _main(argv)
    except (KeyboardInterrupt, Terminated) as e:  # landed outside the command's own handling
        print("katana: interrupted" if isinstance(e, KeyboardInterrupt) else
              f"katana: terminated by {e}", file=sys.stderr)
        return INTERRUPTED_EXIT if isinstance(e, KeyboardInterrupt) else 128 + e.signum
    finally:
        # As the caller had them: the console script (__main__.run) holds the signals again,
        # so that one arriving now cannot turn a finished command into a death by signal; a
        # program calling main() in-process keeps its own mask and handlers (its children
        # inherit the mask).
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None = None) -> int:
    _open_standard_streams()
    stdout, sys.stdout = sys.stdout, _Output(sys.stdout)
    try:
        return _guarded_main(argv)
    finally:
        sys.stdout = stdout


def _guarded_main(argv: list[str] | None = None) -> int:
    argv = _translate_original(sys.argv[1:] if argv is None else argv)
    state: dict = {}
    try:
        return _run(argv, state)
    except BrokenPipeError:
        if not _stdout_closed():
            return _failed(state, _internal_error(argv))
        _quiet_stdout()
        return BROKEN_PIPE_EXIT
    except (KatanaError, KeyboardInterrupt, Terminated, Exception) as e:
        e = _interruption(e) or e
        return _failed(state, _refused(e, argv), e)


def _interruption(e: BaseException) -> BaseException | None:
    """The SIGINT or SIGTERM behind ``e``, if one is: a signal handler raises where the main
    thread happens to be, and Python 3.11 turns what a class body's ``__set_name__`` raises
    into a RuntimeError (a dataclass of a module imported lazily, at that instant), which would
    otherwise be reported as a bug (exit 70) instead of the interruption it is."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _refused(e: BaseException, argv: list[str]) -> int:
    """Say why the command failed, on stderr; its exit code."""
    if isinstance(e, KatanaError):  # a handled refusal: one line (and a hint), never a trace
        print(f"katana: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"katana: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        print("katana: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    if isinstance(e, Terminated):
        print(f"katana: terminated by {e}", file=sys.stderr)
        return 128 + e.signum
    return _internal_error(argv)  # a bug in katana, never a user's mistake: keep the trace


def _failed(state: dict, code: int, error: BaseException | None = None) -> int:
    """Under --json, the one object is printed on failure too (docs/json.md)."""
    report = state.get("report")
    if report is not None:
        try:
            report.emit(code, error)
        except (OSError, ValueError, KatanaError):
            pass  # stdout is gone (OutputError): the exit code alone tells
    return code


def _internal_error(argv: list[str]) -> int:
    e = sys.exc_info()[1]
    print(f"katana: internal error: {type(e).__name__}: {e}", file=sys.stderr)
    print("katana: this is a bug in katana; run again with -v and report the trace",
          file=sys.stderr)
    if _wants_trace(argv):
        traceback.print_exc()
    return INTERNAL_ERROR_EXIT
