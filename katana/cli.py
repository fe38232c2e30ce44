"""The ``katana`` command: generate, view and apply Patch Objects, and manage applied patches.

The original Katana's one-letter forms are kept: ``katana -g [-o OUT] OLD NEW EXE``,
``katana -p [-s] PATCH PID``, ``katana -l PATCH`` and ``-c CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from pathlib import Path

from katana import __version__
from katana.errors import INTERNAL_ERROR_EXIT, KatanaError, Terminated, UsageError

_ORIGINAL_FORMS = {"-g": "generate", "-p": "apply", "-l": "list"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a UsageError (exit code 2, one line), not sys.exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}", hint=f"see '{self.prog} --help'")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="katana", description="Hot patches as build artifacts: generate a Patch "
                "Object from two builds, look inside it, apply it to a running process.")
    p.add_argument("--version", action="version", version=f"katana {__version__}")
    p.add_argument("-c", "--config", metavar="FILE", type=Path,
                   help="configuration file read after /etc/katana, ~/.katana, "
                        "~/.config/katana and ./.katana")
    p.add_argument("-v", "--verbose", action="count", default=0, help="say more (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and results")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("config", help="print the effective configuration and where each value "
                   "comes from")

    g = sub.add_parser("generate", help="make a Patch Object from two object trees (-g)")
    g.add_argument("-o", "--output", type=Path, help="where to write the PO "
                   "(default: OLD_DIR/EXE.po)")
    g.add_argument("old_dir", type=Path, metavar="OLD_DIR")
    g.add_argument("new_dir", type=Path, metavar="NEW_DIR")
    g.add_argument("program", metavar="EXE", help="the program, relative to the trees")

    ls = sub.add_parser("list", help="show what a Patch Object does (-l)")
    ls.add_argument("patch", type=Path, metavar="PATCH")
    ls.add_argument("--disasm", action="store_true", help="old and new code side by side")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    a = sub.add_parser("apply", help="apply a Patch Object to running processes (-p)")
    a.add_argument("-s", "--stopped", action="store_true",
                   help="leave the target stopped (SIGSTOP) after detaching, for a debugger")
    a.add_argument("patch", type=Path, metavar="PATCH")
    a.add_argument("pids", nargs="+", metavar="PID", help="process ids, or 'all' for every "
                   "process running the patch's program")

    st = sub.add_parser("status", help="list the patches applied to a process")
    st.add_argument("pid", type=int, metavar="PID")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser("revert", help="undo the most recent patch applied to a process")
    r.add_argument("pid", type=int, metavar="PID")
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
    from katana.generate.api import generate_patch

    output = args.output or args.old_dir / f"{args.program}.po"
    summary = generate_patch(args.old_dir, args.new_dir, args.program, output)
    for line in summary.lines():
        print(line)
    return 0


def _cmd_list(args: argparse.Namespace, config) -> int:
    from katana.po import load_po
    from katana.view import render_json, render_text

    po = load_po(args.patch)
    if args.json:
        print(json.dumps(render_json(po), indent=2))
    else:
        print(render_text(po, disasm=args.disasm), end="")
    return 0


def _cmd_apply(args: argparse.Namespace, config) -> int:
    from katana.engine.command import apply_command

    return apply_command(args.patch, args.pids, config, leave_stopped=args.stopped,
                         verbosity=0 if args.quiet else 1 + args.verbose)


def _cmd_status(args: argparse.Namespace, config) -> int:
    from katana.engine.status import status_command

    return status_command(args.pid, as_json=args.json)


def _cmd_revert(args: argparse.Namespace, config) -> int:
    from katana.engine.revert import revert_command

    return revert_command(args.pid, config, verbosity=0 if args.quiet else 1 + args.verbose)


_CONFIGURED = {"config", "apply", "revert"}
_COMMANDS = {"config": _cmd_config, "generate": _cmd_generate, "list": _cmd_list,
             "apply": _cmd_apply, "status": _cmd_status, "revert": _cmd_revert}


def _on_terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, _on_terminate)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # held by __main__.run until now
        code = _main(argv)
        if threading.current_thread() is threading.main_thread():
            # The command is over: a signal from now on must not turn a finished command into
            # a death by signal during the interpreter's shutdown.
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
        return code
    except (KeyboardInterrupt, Terminated) as e:  # landed outside the command's own handling
        print("katana: interrupted" if isinstance(e, KeyboardInterrupt) else
              f"katana: terminated by {e}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 128 + e.signum


def _main(argv: list[str] | None = None) -> int:
    argv = _translate_original(sys.argv[1:] if argv is None else argv)
    verbose = any(a == "--verbose" or (len(a) > 1 and a.strip("v") == "-") for a in argv)
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            _parser().print_help()
            return 2
        # Only the commands that touch a process read the configuration: a broken ./.katana
        # must not stop anyone from looking at a PO or making one (-c is read whenever given).
        config = None
        if args.command in _CONFIGURED or args.config is not None:
            from katana.config import load_config

            config = load_config(args.config)
            for warning in config.warnings:
                print(f"katana: warning: {warning}", file=sys.stderr)
        return _COMMANDS[args.command](args, config)
    except KatanaError as e:
        print(f"katana: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"katana: hint: {e.hint}", file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        print("katana: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"katana: terminated by {e}", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:  # a bug in katana, never a user's mistake: say so, keep the trace
        print(f"katana: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("katana: this is a bug in katana; run again with -v and report the trace",
              file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return INTERNAL_ERROR_EXIT
