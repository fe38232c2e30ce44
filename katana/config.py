"""Katana's configuration: relaxed-JSON files, merged in order, validated against a fixed schema.

Files are read in order, each later one overriding the earlier ones key by key (see
``default_paths``), then the file given with ``-c FILE``. The syntax is JSON with relaxed quoting:
a word that does not read as a number, ``true``, ``false`` or ``null`` is a string, so
``{maxWaitForPatching: 30, logFile: /var/log/katana.log}`` is valid (``katana.relaxed`` parses it;
this module holds the schema and the loading). ``docs/configuration.md`` is the user's page; this
module is its implementation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from katana.errors import ConfigError
from katana.relaxed import (
    LITERALS,
    KeyPath,
    Position,
    is_bare_word,
    parse_relaxed,
    parse_with_positions,
)

# parse_relaxed stays importable from here, where it was first defined (the tests use it); the
# syntax itself now lives in katana.relaxed.
__all__ = ["Config", "default_paths", "format_value", "load_config", "parse_relaxed"]


# --- the schema -------------------------------------------------------------------------------

class _Invalid(Exception):
    """A value of the wrong type or out of range (turned into a ConfigError with its place)."""


def _seconds(limit: float) -> Callable[[object], object]:
    def check(value: object) -> object:
        # bool is an int subclass in Python: `true` must not pass for 1 second.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= limit:
            raise _Invalid
        return float(value)
    return check


def _integer(low: int, high: int) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid
        return value
    return check


def _boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise _Invalid
    return value


def _string(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise _Invalid
    return value


def _strings(value: object) -> object:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid
    return tuple(value)


@dataclass(frozen=True)
class _Key:
    dotted: str  # as a file spells it
    attr: str  # the Config field, whose default is the key's
    check: Callable[[object], object]
    allowed: str  # for messages: what the value may be


_KEYS: tuple[_Key, ...] = (
    _Key("maxWaitForPatching", "max_wait_for_patching", _seconds(3600),
         "a number of seconds > 0 and <= 3600"),
    _Key("safePointRetryInterval", "safe_point_retry_interval", _seconds(10),
         "a number of seconds > 0 and <= 10"),
    _Key("verbosity", "verbosity", _integer(0, 2), "an integer 0, 1 or 2"),
    _Key("flags.checkPtraceWrites", "check_ptrace_writes", _boolean, "true or false"),
    _Key("flags.leaveStopped", "leave_stopped", _boolean, "true or false"),
    _Key("flags.returnHooks", "return_hooks", _boolean, "true or false"),
    _Key("trustedKeys", "trusted_keys", _strings, 'a list of strings, like ["a", "b"]'),
    _Key("requireSignature", "require_signature", _boolean, "true or false"),
    _Key("auditLog", "audit_log", _string,
         "syslog, off, or the path of a Unix datagram socket or of a file"),
)
_KEY_BY_NAME = {key.dotted: key for key in _KEYS}
_GROUPS = frozenset(key.dotted.rsplit(".", 1)[0] for key in _KEYS if "." in key.dotted)


@dataclass(frozen=True)
class Config:
    """The effective configuration; every field has its documented default."""

    max_wait_for_patching: float = 5.0
    check_ptrace_writes: bool = False
    leave_stopped: bool = False
    return_hooks: bool = True
    verbosity: int = 1
    safe_point_retry_interval: float = 0.05
    trusted_keys: tuple[str, ...] = ()
    require_signature: bool = False
    audit_log: str = "syslog"
    # dotted key -> the file that set it; a key that no file set is absent (its source is "default")
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    warnings: tuple[str, ...] = ()

    def items(self) -> list[tuple[str, object, str]]:
        """Every known key as (dotted key, effective value, source file or "default")."""
        return [(key.dotted, getattr(self, key.attr), self.sources.get(key.dotted, "default"))
                for key in _KEYS]


def format_value(value: object) -> str:
    """Spell a value in the configuration syntax (for `katana config`)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{format_value(k)}: {format_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    text = str(value)
    return text if is_bare_word(text) else json.dumps(text)


# --- loading ----------------------------------------------------------------------------------

_Settings = dict[str, tuple[object, str]]  # dotted key -> (value, source file)


def default_paths(home: Path | None = None, cwd: Path | None = None) -> list[Path]:
    """The optional configuration files, lowest priority first (``-c FILE`` comes after them)."""
    paths = [Path("/etc/katana")]
    if home is None:
        try:
            home = Path.home()
        except RuntimeError:  # no $HOME and no passwd entry (a bare container): no user files
            home = None
    if home is not None:
        paths += [home / ".katana", home / ".config" / "katana"]
    return [*paths, (Path.cwd() if cwd is None else cwd) / ".katana"]


def _suggest(dotted: str) -> str:
    """A ' did you mean ...?' for a misspelt or misplaced key, or ''."""
    known = [key.dotted for key in _KEYS] + sorted(_GROUPS)
    leaf = dotted.rsplit(".", 1)[-1].lower()
    by_leaf = [name for name in known if name.rsplit(".", 1)[-1].lower() == leaf]
    if by_leaf:  # right name, wrong place (`checkPtraceWrites` outside `flags`) or wrong case
        return f"; did you mean {by_leaf[0]!r}?"
    lowered = {name.lower(): name for name in known}
    import difflib  # only for a misspelt key

    close = difflib.get_close_matches(dotted.lower(), list(lowered), n=1, cutoff=0.75)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


class _FileReader:
    """Validates one parsed file into settings and warnings, naming the file and place."""

    def __init__(self, source: str, positions: dict[KeyPath, Position]) -> None:
        self.source = source
        self.positions = positions
        self.settings: _Settings = {}
        self.warnings: list[str] = []

    def where(self, path: KeyPath) -> str:
        line, col = self.positions.get(path, (1, 1))
        return f"{self.source}:{line}:{col}"

    def read_object(self, obj: dict[str, object], path: tuple[str, ...]) -> None:
        for name, value in obj.items():
            self.read_entry((*path, name), value)

    def read_entry(self, path: tuple[str, ...], value: object) -> None:
        dotted = ".".join(path)
        key = _KEY_BY_NAME.get(dotted)
        if key is not None:
            self.settings[dotted] = (self.check(key, path, value), self.source)
        elif dotted in _GROUPS:
            if not isinstance(value, dict):
                raise ConfigError(f"{self.where(path)}: {dotted} = {format_value(value)} is not "
                                  f"allowed: expected an object, like {{{_example(dotted)}}}")
            self.read_object(value, path)
        else:
            self.warnings.append(f"{self.where(path)}: unknown key {dotted!r} ignored"
                                 f"{_suggest(dotted)}")

    def check(self, key: _Key, path: KeyPath, value: object) -> object:
        if value is None:  # null restores the default, overriding what an earlier file set
            return _default(key)
        try:
            return key.check(value)
        except _Invalid:
            raise ConfigError(f"{self.where(path)}: {key.dotted} = {format_value(value)} is not "
                              f"allowed: expected {key.allowed}",
                              hint=_type_hint(value)) from None


def _example(group: str) -> str:
    key = next(key for key in _KEYS if key.dotted.startswith(group + "."))
    return f"{key.dotted.split('.', 1)[1]}: {format_value(_default(key))}"


def _default(key: _Key) -> object:
    return getattr(Config(), key.attr)


def _type_hint(value: object) -> str | None:
    if isinstance(value, str) and value.lower() in LITERALS:
        return f"write {value.lower()} without quotes"
    return None


def _read_file(path: Path, required: bool, warnings: list[str]) -> str | None:
    """The text of one file; None for an optional file that is not there."""
    if path.is_dir():
        if required:
            raise ConfigError(f"configuration file {path} is a directory",
                              hint="give -c the path of a file")
        warnings.append(f"{path}: is a directory, not a configuration file; ignored")
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise ConfigError(f"configuration file {path} does not exist",
                              hint="check the path given with -c") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}",
                          hint="fix its permissions or remove it") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8 text (byte {exc.start})",
                          hint="save it as UTF-8") from None


def _read_settings(path: Path, required: bool, warnings: list[str]) -> _Settings:
    text = _read_file(path, required, warnings)
    if text is None:
        return {}
    value, positions = parse_with_positions(text, str(path))
    if not isinstance(value, dict):
        raise ConfigError(f"{path}:1:1: expected an object at the top level, like "
                          f"{{maxWaitForPatching: 5}}, found {format_value(value)}")
    reader = _FileReader(str(path), positions)
    reader.read_object(value, ())
    warnings += reader.warnings
    return reader.settings


def _ordered_unique(paths: Sequence[Path]) -> list[Path]:
    # A file named twice (cwd == $HOME makes ./.katana and ~/.katana one file) is read once, at its
    # last place: that gives the same values as reading it twice, without doubled warnings.
    last = {_identity(path): index for index, path in enumerate(paths)}
    return [path for index, path in enumerate(paths) if last[_identity(path)] == index]


def _identity(path: Path) -> str:
    # os.path.realpath, unlike Path.resolve on Python 3.11, does not raise on a symlink loop: the
    # loop is reported when the file is read, with its name.
    return os.path.realpath(path)


def load_config(extra: Path | None = None, paths: Sequence[Path] | None = None) -> Config:
    """Read ``paths`` (default: ``default_paths()``), then ``extra`` (``-c FILE``), later files
    overriding earlier ones key by key. The optional files may be missing; ``extra`` must exist.

    Raises ConfigError for a malformed file, a bad value or a missing ``extra``; unknown keys are
    not errors but ``Config.warnings`` (for the CLI to print).
    """
    ordered = list(default_paths() if paths is None else paths)
    required = set()
    if extra is not None:
        ordered.append(extra)
        required.add(_identity(extra))
    settings: _Settings = {}
    warnings: list[str] = []
    for path in _ordered_unique(ordered):
        settings.update(_read_settings(path, _identity(path) in required, warnings))
    values = {_KEY_BY_NAME[dotted].attr: value for dotted, (value, _) in settings.items()}
    sources = {dotted: source for dotted, (_, source) in settings.items()}
    return Config(**values, sources=MappingProxyType(sources), warnings=tuple(warnings))
