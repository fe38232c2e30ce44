"""Katana's configuration: relaxed-JSON files, merged in order, validated against a fixed schema.

Files are read in order, each later one overriding the earlier ones key by key (see
``default_paths``), then the file given with ``-c FILE``. The syntax is JSON with relaxed quoting:
a word that does not read as a number, ``true``, ``false`` or ``null`` is a string, so
``{maxWaitForPatching: 30, logFile: /var/log/katana.log}`` is valid. ``docs/configuration.md`` is
the user's page; this module is its implementation.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from katana.errors import ConfigError

# Characters that end a bare word. ':' ends a key (`{a:1}`) but not a value, so that a value such
# as `http://host:8080/` needs no quotes.
_DELIMITERS = frozenset('{}[]:,"')
_VALUE_DELIMITERS = _DELIMITERS - {":"}
_LITERALS: dict[str, object] = {"true": True, "false": False, "null": None}
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_EOF = "end of file"
_NUMBER_CHARS = frozenset("0123456789+-.eE")

Position = tuple[int, int]  # (line, column), both from 1
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class _Token:
    kind: str  # one of "{}[]:," or "string" (quoted) or "word" (bare)
    text: str  # the source text, for "found ..." in messages
    value: object
    pos: Position


class _Lexer:
    """Splits relaxed JSON into tokens, tracking line and column for messages."""

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.i = 0
        self.line = 1
        self.col = 1

    def error(self, pos: Position, message: str) -> ConfigError:
        return ConfigError(f"{self.filename}:{pos[0]}:{pos[1]}: {message}")

    def _advance(self, n: int = 1) -> None:
        for ch in self.text[self.i : self.i + n]:
            if ch == "\n":
                self.line, self.col = self.line + 1, 1
            else:
                self.col += 1
        self.i += n

    def _skip_blanks(self) -> None:
        # A comment starts only where a token could start, so `http://host/x` stays one word.
        text = self.text
        while self.i < len(text):
            ch = text[self.i]
            if ch.isspace():
                self._advance()
            elif ch == "#" or text.startswith("//", self.i):
                end = text.find("\n", self.i)
                self._advance((len(text) if end < 0 else end) - self.i)
            else:
                return

    def next(self, value: bool = False) -> _Token | None:
        """Return the next token (where a ``value`` may come, if so), or None at the end."""
        self._skip_blanks()
        if self.i >= len(self.text):
            return None
        pos, ch = (self.line, self.col), self.text[self.i]
        if ch == '"':
            return self._string(pos)
        if ch in _DELIMITERS:
            self._advance()
            return _Token(ch, ch, ch, pos)
        return self._word(pos, _VALUE_DELIMITERS if value else _DELIMITERS)

    def _word(self, pos: Position, delimiters: frozenset[str]) -> _Token:
        start, text = self.i, self.text
        while self.i < len(text) and not text[self.i].isspace() and text[self.i] not in delimiters:
            self._advance()
        word = text[start : self.i]
        return _Token("word", word, _word_value(word), pos)

    def _string(self, pos: Position) -> _Token:
        self._advance()  # the opening quote
        out: list[str] = []
        start = self.i
        while True:
            if self.i >= len(self.text) or self.text[self.i] == "\n":
                raise self.error(pos, "unterminated string: expected a closing '\"' on this line")
            ch = self.text[self.i]
            if ch == '"':
                self._advance()
                return _Token("string", self.text[start - 1 : self.i], "".join(out), pos)
            if ch == "\\":
                out.append(self._escape())
            else:
                out.append(ch)
                self._advance()

    def _escape(self) -> str:
        pos = (self.line, self.col)
        code = self.text[self.i + 1 : self.i + 2]
        if code in _ESCAPES:
            self._advance(2)
            return _ESCAPES[code]
        if code == "u":
            unit = self._hex4(pos)
            if not 0xD800 <= unit < 0xE000:
                return chr(unit)
            # JSON spells a character beyond U+FFFF as a UTF-16 surrogate pair; half a pair is no
            # character at all and could not even be encoded back to UTF-8.
            low = self._hex4(pos) if self.text.startswith("\\u", self.i) else -1
            if unit < 0xDC00 and 0xDC00 <= low < 0xE000:
                return chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
            raise self.error(pos, "bad \\u escape: a lone UTF-16 surrogate (expected a pair)")
        raise self.error(pos, f"bad escape '\\{code}': expected one of \\\" \\\\ \\/ \\b \\f "
                              "\\n \\r \\t \\uXXXX")

    def _hex4(self, pos: Position) -> int:
        digits = self.text[self.i + 2 : self.i + 6]
        if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.error(pos, "bad \\u escape: expected 4 hex digits after \\u")
        self._advance(6)
        return int(digits, 16)


def _word_value(word: str) -> object:
    """What a bare word reads as: a literal, a number, or else the string itself."""
    if word in _LITERALS:
        return _LITERALS[word]
    # Only ASCII number spellings: int() and float() would also take "1_000", "inf" and non-ASCII
    # digits, which no JSON reader would.
    if not set(word) <= _NUMBER_CHARS or not any(c.isdigit() for c in word):
        return word
    for convert in (int, float):
        try:
            return convert(word)
        except ValueError:
            continue
    return word


class _Parser:
    """Recursive descent over _Lexer tokens; records where every key was written."""

    def __init__(self, text: str, filename: str) -> None:
        self.lexer = _Lexer(text, filename)
        self.token = self.lexer.next(value=True)
        self.positions: dict[KeyPath, Position] = {}

    def _found(self) -> str:
        return _EOF if self.token is None else repr(self.token.text)

    def _fail(self, expected: str) -> ConfigError:
        pos = (self.lexer.line, self.lexer.col) if self.token is None else self.token.pos
        return self.lexer.error(pos, f"expected {expected}, found {self._found()}")

    def _take(self, value_next: bool = False) -> _Token:
        token = self.token
        assert token is not None
        self.token = self.lexer.next(value=value_next)
        return token

    def _at(self, kind: str) -> bool:
        return self.token is not None and self.token.kind == kind

    def document(self) -> object:
        if self.token is None:
            return {}  # an empty file (or comments only) sets nothing
        value = self.value(())
        if self.token is not None:
            raise self._fail("end of file after the top-level value")
        return value

    def value(self, path: KeyPath) -> object:
        if self._at("{"):
            return self._object(path)
        if self._at("["):
            return self._array(path)
        if self._at("string") or self._at("word"):
            return self._take().value
        raise self._fail("a value (an object, an array, a string, a number, true, false or null)")

    def _object(self, path: KeyPath) -> dict[str, object]:
        self._take()
        result: dict[str, object] = {}
        while not self._at("}"):
            if not (self._at("string") or self._at("word")):
                raise self._fail("a key or '}'")
            key_token = self._take()
            key = key_token.text if key_token.kind == "word" else str(key_token.value)
            if key in result:
                first = self.positions[(*path, key)]
                raise self.lexer.error(key_token.pos, f"duplicate key {key!r} (first set at line "
                                                      f"{first[0]}, column {first[1]})")
            self.positions[(*path, key)] = key_token.pos
            if not self._at(":"):
                raise self._fail(f"':' after the key {key!r}")
            self._take(value_next=True)
            result[key] = self.value((*path, key))
            if not self._at(","):
                if not self._at("}"):
                    raise self._fail(f"',' or '}}' after the value of {key!r}")
                break
            self._take()  # a trailing comma before '}' is fine
        self._take()
        return result

    def _array(self, path: KeyPath) -> list[object]:
        self._take(value_next=True)
        result: list[object] = []
        while not self._at("]"):
            if self.token is not None:
                self.positions[(*path, len(result))] = self.token.pos
            result.append(self.value((*path, len(result))))
            if not self._at(","):
                if not self._at("]"):
                    raise self._fail("',' or ']' after an array element")
                break
            self._take(value_next=True)
        self._take()
        return result


def parse_relaxed(text: str, filename: str = "<string>") -> object:
    """Parse relaxed JSON text into dicts, lists, strings, numbers, bools and None.

    Raises ConfigError naming ``filename``, the line and the column, and what was expected.
    An empty text (or one of comments only) is an empty object.
    """
    return _Parser(text, filename).document()


def _parse_with_positions(text: str, filename: str) -> tuple[object, dict[KeyPath, Position]]:
    parser = _Parser(text, filename)
    return parser.document(), parser.positions


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
    _Key("trustedKeys", "trusted_keys", _strings, 'a list of strings, like ["a", "b"]'),
    _Key("requireSignature", "require_signature", _boolean, "true or false"),
)
_KEY_BY_NAME = {key.dotted: key for key in _KEYS}
_GROUPS = frozenset(key.dotted.rsplit(".", 1)[0] for key in _KEYS if "." in key.dotted)


@dataclass(frozen=True)
class Config:
    """The effective configuration; every field has its documented default."""

    max_wait_for_patching: float = 5.0
    check_ptrace_writes: bool = False
    leave_stopped: bool = False
    verbosity: int = 1
    safe_point_retry_interval: float = 0.05
    trusted_keys: tuple[str, ...] = ()
    require_signature: bool = False
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
    bare = text and _word_value(text) == text and not (set(text) & _DELIMITERS)
    if bare and not text.startswith(("#", "//")) and not any(c.isspace() for c in text):
        return text
    return json.dumps(text)


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
    if isinstance(value, str) and value.lower() in _LITERALS:
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
    value, positions = _parse_with_positions(text, str(path))
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
