"""The ``--json`` contract (docs/json.md, schema 1): one object on standard output, printed on
success and on failure alike, with the command's exit code inside it.

A command fills a ``Report`` as it goes (its results, per process); the CLI prints it once, at
the end, with ``exit_code`` and ``error`` added, whatever way the command ended. So a caller (a
script, the Ansible modules) never parses a message, and a refusal halfway through a list of
processes still says what happened to each one before it.
"""

from __future__ import annotations

import json
import sys

from katana.errors import KatanaError, Terminated, kind_of

SCHEMA = 1


class Report:
    """The object one command prints under ``--json``."""

    def __init__(self, command: str | None) -> None:
        self.command = command
        self.fields: dict[str, object] = {}
        self.failure: str | None = None  # what went wrong when the command returns non-zero

    def update(self, **fields: object) -> None:
        self.fields.update(fields)

    def document(self, exit_code: int, error: BaseException | None = None,
                 message: str | None = None) -> dict[str, object]:
        head: dict[str, object] = {"schema": SCHEMA, "command": self.command,
                                   "exit_code": exit_code, "error": None}
        if exit_code != 0 or error is not None:
            head["error"] = error_object(exit_code, error, message or self.failure)
        return {**head, **self.fields}

    def emit(self, exit_code: int, error: BaseException | None = None,
             message: str | None = None) -> None:
        print(json.dumps(self.document(exit_code, error, message), indent=2))
        sys.stdout.flush()


def error_object(code: int, error: BaseException | None, message: str | None = None) -> dict:
    """``{"code", "kind", "message", "hint"}`` for a command that failed as a whole."""
    hint = error.hint if isinstance(error, KatanaError) else None
    if message is None and isinstance(error, KeyboardInterrupt):
        message = "interrupted"  # its str() is empty
    elif message is None and isinstance(error, Terminated):
        message = f"terminated by {error}"
    if message is None:
        message = error.message if isinstance(error, KatanaError) else \
            f"{type(error).__name__}: {error}" if error is not None else "failed"
    return {"code": code, "kind": kind_of(code), "message": message, "hint": hint}


def guess_command(argv: list[str], commands) -> str | None:
    """The subcommand named in ``argv``, for a usage error found before parsing ended."""
    return next((a for a in argv if a in commands), None)
