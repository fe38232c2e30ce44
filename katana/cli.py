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
               "for (what list, status, config and flags show; the summary of generate and of "
               "'apply ... all')")
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
             "Compare two builds of a program object by object and write a Patch Object (PO) "
             "that turns a process running the old build into one running the new. The trees "
             "are release snapshots (releases/<v>/) or build directories; objects built without "
             "the flags patching needs are refused ('katana flags' prints them).",
             ("katana generate -o kvd-v0-v1.po releases/v0 releases/v1 kvd",
              "katana -g build/v0 build/v1 prog        # writes build/v0/prog.po")),
    _Command("list", "show what a Patch Object does (-l)",
             "Print what a PO changes: functions replaced and added, variables added or "
             "transformed (field by field), the safety set, its signature, warnings.",
             ("katana list patches/kvd-v0-v1.po", "katana list --json patches/kvd-v0-v1.po")),
    _Command("apply", "apply a Patch Object to running processes (-p)",
             "Load a PO into running processes through ptrace, at a safe point (no thread "
             "inside a function it replaces), without restarting them. Every check is made "
             "before the first write; any failure undoes every write.",
             ("katana apply patches/kvd-v0-v1.po 24719",
              "katana apply patches/kvd-v0-v1.po all   # every process of the PO's program")),
    _Command("status", "list the patches applied to a process",
             "Print the patches applied to a process, oldest first, and what it runs now, read "
             "from the process itself.", ("katana status 24719", "katana status --json 24719")),
    _Command("revert", "undo the most recent patch applied to a process",
             "Undo the newest patch of a process once none of its code is in use. A patch "
             "that moved data to a new layout cannot be reverted.", ("katana revert 24719",)),
    _Command("config", "print the effective configuration and where each value comes from",
             "Print every configuration key, its effective value and the file that set it "
             "(or 'default').", ("katana config", "katana -c ./ops.katana config")),
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
    g.add_argument("program", metavar="EXE", help="the program, relative to the trees")

    ls = _add_command(sub, "list", common)
    ls.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    ls.add_argument("--disasm", action="store_true", help="old and new code side by side")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    a = _add_command(sub, "apply", common)
    a.add_argument("-s", "--stopped", action="store_true",
                   help="leave the target stopped (SIGSTOP) after detaching, for a debugger")
    a.add_argument("patch", type=Path, metavar="PATCH", help="the Patch Object (.po)")
    a.add_argument("pids", nargs="+", metavar="PID", help="process ids, or 'all' for every "
                   "process running the patch's program")

    st = _add_command(sub, "status", common)
    st.add_argument("pid", type=int, metavar="PID", help="the process id")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    r = _add_command(sub, "revert", common)
    r.add_argument("pid", type=int, metavar="PID", help="the process id")

    _add_command(sub, "config", common)

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
    for key, value, source in config.items():
        print(f"{key:28} {json.dumps(value):12} {source}")
    return 0


def _cmd_generate(args: argparse.Namespace, config) -> int:
    from katana.generate.api import default_output, generate_patch

    output = args.output or default_output(args.old_dir, args.new_dir, args.program,
                                           args.from_label, args.to_label)
    summary = generate_patch(args.old_dir, args.new_dir, args.program, output,
                             args.from_label, args.to_label)
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
    if args.json:
        print(json.dumps(render_json(po, signature=signature), indent=2))
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

    return apply_command(args.patch, args.pids, config, leave_stopped=args.stopped,
                         verbosity=_verbosity(args, config))


def _cmd_status(args: argparse.Namespace, config) -> int:
    from katana.live.status import status_command

    return status_command(args.pid, as_json=args.json)


def _cmd_revert(args: argparse.Namespace, config) -> int:
    from katana.live.revert import revert_command

    return revert_command(args.pid, config, verbosity=_verbosity(args, config))


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


_CONFIGURED = {"config", "apply", "revert", "verify"}
_COMMANDS = {"config": _cmd_config, "generate": _cmd_generate, "list": _cmd_list,
             "apply": _cmd_apply, "status": _cmd_status, "revert": _cmd_revert,
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


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    _merge_common(args)
    if args.command in ("apply", "revert"):
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
    sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
    return code


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
    argv = _translate_original(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except KatanaError as e:  # a handled refusal: one line (and a hint), never a trace
        print(f"katana: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"katana: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("katana: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Terminated as e:
        print(f"katana: terminated by {e}", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:
        if not _stdout_closed():
            return _internal_error(argv)
        _quiet_stdout()
        return BROKEN_PIPE_EXIT
    except Exception:  # a bug in katana, never a user's mistake: say so, keep the trace
        return _internal_error(argv)


def _internal_error(argv: list[str]) -> int:
    e = sys.exc_info()[1]
    print(f"katana: internal error: {type(e).__name__}: {e}", file=sys.stderr)
    print("katana: this is a bug in katana; run again with -v and report the trace",
          file=sys.stderr)
    if _wants_trace(argv):
        traceback.print_exc()
    return INTERNAL_ERROR_EXIT
