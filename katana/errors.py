"""The one exception tree of Katana.

Every error a user can cause or meet is a ``KatanaError``. The CLI turns each kind into a one-line
message (plus an optional hint saying what to do next) and a distinct exit code; anything else that
escapes is a bug in Katana and is reported as such (exit code 70, ``EX_SOFTWARE``).
"""

from __future__ import annotations


class KatanaError(Exception):
    """Root of every error Katana reports to a user."""

    exit_code = 1
    kind = "error"  # its name in --json (docs/json.md)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(KatanaError):
    """The command line was wrong."""

    exit_code = 2
    kind = "usage"


class ConfigError(KatanaError):
    """A configuration file is malformed or holds a bad value."""

    exit_code = 3
    kind = "config"


class BuildError(KatanaError):
    """The build does not meet what patching needs (flags, snapshots)."""

    exit_code = 4
    kind = "build"


class GenerateError(KatanaError):
    """Two object trees cannot be turned into a patch."""

    exit_code = 5
    kind = "generate"


class NoChangeError(GenerateError):
    """The two versions differ in no function or data that a patch could carry."""

    exit_code = 6
    kind = "no-change"


class FormatError(KatanaError):
    """A Patch Object (or another input file) is damaged or of an unknown format."""

    exit_code = 7
    kind = "format"


class TargetError(KatanaError):
    """The target process cannot be inspected or traced."""

    exit_code = 8
    kind = "target"


class MismatchError(KatanaError):
    """The patch was made for another build than the one the process runs."""

    exit_code = 9
    kind = "mismatch"


class BusyError(KatanaError):
    """No safe point came before the deadline: a function to replace stayed in use."""

    exit_code = 10
    kind = "busy"
    busy: list[str] = []  # the functions found in use (set where it is raised)


class ApplyError(KatanaError):
    """Applying (or reverting) failed; every change to the target was undone."""

    exit_code = 11
    kind = "apply"


class SignatureError(KatanaError):
    """A Patch Object was refused on trust: unsigned where a signature is required, changed
    after it was signed, or signed by a key that is not trusted. Nothing was touched."""

    exit_code = 12
    kind = "signature"


class KeyFileError(KatanaError):
    """A signing or trusted key file is missing, unreadable, damaged or not protected."""

    exit_code = 13
    kind = "key"


class NothingToRevertError(KatanaError):
    """There was nothing to revert: the process carries no katana patch (or not that one)."""

    exit_code = 14
    kind = "nothing-to-revert"


class OutputError(KatanaError):
    """Standard output could not be written (a full disk, a closed descriptor): what the
    command did stands, its report is lost."""

    exit_code = 74  # EX_IOERR (sysexits.h)
    kind = "output"


class AlreadyAppliedError(MismatchError):
    """The process already runs the build the patch leads to: nothing to do."""


INTERNAL_ERROR_EXIT = 70
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C stopped
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what `yes | head -1` reports for yes

_OTHER_EXITS = {
    0: "success",
    INTERNAL_ERROR_EXIT: "a bug in katana (run again with -v for the trace, and report it)",
    INTERRUPTED_EXIT: "interrupted (Ctrl-C)",
    BROKEN_PIPE_EXIT: "the reader of the output went away (| head): quiet",
}


def exit_codes() -> list[tuple[int, str]]:
    """(exit code, meaning) for every code the CLI can return, from this module's classes.

    The meaning is the first sentence of the class docstring, so that ``--help`` and the man page
    follow the exception tree instead of a copy of it.
    """
    codes = dict(_OTHER_EXITS)
    pending: list[type[KatanaError]] = [KatanaError]
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        if cls is KatanaError or cls.exit_code in codes:
            continue  # a child without a code of its own shares its parent's line
        doc = " ".join((cls.__doc__ or cls.__name__).split())
        first = doc.split(". ")[0].rstrip(".")
        codes[cls.exit_code] = first[:1].lower() + first[1:]
    return sorted(codes.items())


def kind_of(code: int) -> str:
    """The name ``--json`` gives an exit code (docs/json.md): the class's ``kind``."""
    if code == INTERNAL_ERROR_EXIT:
        return "internal"
    if code == INTERRUPTED_EXIT or code > 128:
        return "interrupted"
    pending: list[type[KatanaError]] = [KatanaError]
    while pending:
        cls = pending.pop(0)
        if cls.exit_code == code:
            return cls.kind
        pending += cls.__subclasses__()
    return "error"


class Terminated(BaseException):
    """SIGTERM, SIGHUP or SIGQUIT reached katana: the counterpart of KeyboardInterrupt (not a
    KatanaError: like Ctrl-C it is no error, and ``except KatanaError`` must not swallow it).
    The command exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def check(condition: object, error: type[KatanaError], message: str) -> None:
    """Raise ``error(message)`` unless ``condition`` holds (the pyelftools idiom)."""
    if not condition:
        raise error(message)
