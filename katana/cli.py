"""The ``katana`` command: generate, view and apply Patch Objects, and manage applied patches.

The original Katana's one-letter forms are kept: ``katana -g [-o OUT] OLD NEW EXE``,
``katana -p [-s] PATCH PID``, ``katana -l PATCH`` and ``-c CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from katana import __version__
from katana.errors import INTERNAL_ERROR_EXIT, KatanaError, UsageError

_ORIGINAL_FORMS = {"-g": "generate", "-p": "apply", "-l": "list"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a UsageError (exit code 2, one line), not sys.exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}", hint=f"see '{self.prog} --help'")


_EXIT_CODES = """\
exit codes:
  0   success                              8   target process missing or not traceable
  2   usage error                          9   the patch is for another build
  3   configuration error                  10  no safe point within maxWaitForPatching
  4   build does not meet patching's needs 11  applying or reverting failed, all undone
  5   the trees cannot make a patch        12  refused: unsigned, changed after signing,
  6   no functional change                     or signed by an untrusted key
  7   damaged or unknown Patch Object      13  key file missing, damaged or unprotected
  70  a bug in katana (run with -v and report the trace)
"""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="katana", description="Hot patches as build artifacts: generate a Patch "
                "Object from two builds, look inside it, apply it to a running process.",
                epilog=_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g.add_argument("-o", "--output", type=Path, help="where to write the PO (default: "
                   "OLD_DIR/EXE.po; for release snapshots, the project's "
                   "patches/EXE-FROM-TO.po, never the snapshot)")
    g.add_argument("--from-label", metavar="LABEL", help="name of the old version in the PO, "
                   "shown by list and status (default: a snapshot's version, else OLD_DIR's name)")
    g.add_argument("--to-label", metavar="LABEL", help="name of the new version (default: a "
                   "snapshot's version, else NEW_DIR's name)")
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

    k = sub.add_parser("keygen", help="make an Ed25519 key pair: NAME.key (private, mode "
                       "0600) and NAME.pub")
    k.add_argument("name", type=Path, metavar="NAME")

    sg = sub.add_parser("sign", help="sign a Patch Object: writes PATCH.sig")
    sg.add_argument("patch", type=Path, metavar="PATCH")
    sg.add_argument("--key", type=Path, required=True, metavar="NAME.key",
                    help="the private key")

    v = sub.add_parser("verify", help="check a Patch Object's signature against --key or "
                       "the configured trustedKeys")
    v.add_argument("patch", type=Path, metavar="PATCH")
    v.add_argument("--key", type=Path, action="append", metavar="NAME.pub",
                   help="a public key to accept (instead of trustedKeys); may be repeated")
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
    from katana.engine.trust import describe, describe_text
    from katana.errors import KeyFileError
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
    from katana.engine.trust import describe
    from katana.errors import SignatureError
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
    from katana.engine.command import apply_command

    return apply_command(args.patch, args.pids, config, leave_stopped=args.stopped,
                         verbosity=0 if args.quiet else 1 + args.verbose)


def _cmd_status(args: argparse.Namespace, config) -> int:
    from katana.engine.status import status_command

    return status_command(args.pid, as_json=args.json)


def _cmd_revert(args: argparse.Namespace, config) -> int:
    from katana.engine.revert import revert_command

    return revert_command(args.pid, config, verbosity=0 if args.quiet else 1 + args.verbose)


_CONFIGURED = {"config", "apply", "revert", "verify"}
_COMMANDS = {"config": _cmd_config, "generate": _cmd_generate, "list": _cmd_list,
             "apply": _cmd_apply, "status": _cmd_status, "revert": _cmd_revert,
             "keygen": _cmd_keygen, "sign": _cmd_sign, "verify": _cmd_verify}


def main(argv: list[str] | None = None) -> int:
    argv = _translate_original(sys.argv[1:] if argv is None else argv)
    verbose = any(a == "--verbose" or (len(a) > 1 and a.strip("v") == "-") for a in argv)
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            _parser().print_help()
            return 2
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
    except Exception as e:  # a bug in katana, never a user's mistake: say so, keep the trace
        print(f"katana: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("katana: this is a bug in katana; run again with -v and report the trace",
              file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return INTERNAL_ERROR_EXIT
