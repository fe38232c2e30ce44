"""The one exception tree of Katana.

Every error a user can cause or meet is a ``KatanaError``. The CLI turns each kind into a one-line
message (plus an optional hint saying what to do next) and a distinct exit code; anything else that
escapes is a bug in Katana and is reported as such (exit code 70, ``EX_SOFTWARE``).
"""

from __future__ import annotations


class KatanaError(Exception):
    """Root of every error Katana reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(KatanaError):
    """The command line was wrong."""

    exit_code = 2


class ConfigError(KatanaError):
    """A configuration file is malformed or holds a bad value."""

    exit_code = 3


class BuildError(KatanaError):
    """The build does not meet what patching needs (flags, snapshots)."""

    exit_code = 4


class GenerateError(KatanaError):
    """Two object trees cannot be turned into a patch."""

    exit_code = 5


class NoChangeError(GenerateError):
    """The two versions differ in no function or data that a patch could carry."""

    exit_code = 6


class FormatError(KatanaError):
    """A Patch Object (or another input file) is damaged or of an unknown format."""

    exit_code = 7


class TargetError(KatanaError):
    """The target process cannot be inspected or traced."""

    exit_code = 8


class MismatchError(KatanaError):
    """The patch was made for another build than the one the process runs."""

    exit_code = 9


class BusyError(KatanaError):
    """No safe point came before the deadline: a function to replace stayed in use."""

    exit_code = 10


class ApplyError(KatanaError):
    """Applying (or reverting) failed; every change to the target was undone."""

    exit_code = 11


class SignatureError(KatanaError):
    """A Patch Object was refused on trust: unsigned where a signature is required, changed
    after it was signed, or signed by a key that is not trusted. Nothing was touched."""

    exit_code = 12


class KeyFileError(KatanaError):
    """A signing or trusted key file is missing, unreadable, damaged or not protected."""

    exit_code = 13


INTERNAL_ERROR_EXIT = 70


def check(condition: object, error: type[KatanaError], message: str) -> None:
    """Raise ``error(message)`` unless ``condition`` holds (the pyelftools idiom)."""
    if not condition:
        raise error(message)
