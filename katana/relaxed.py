"""Relaxed JSON: the syntax of Katana's configuration files, parsed with places for messages.

It is JSON with relaxed quoting: a word that does not read as a number, ``true``, ``false`` or
``null`` is a string, so ``{maxWaitForPatching: 30, logFile: /var/log/katana.log}`` is valid;
``#`` and ``//`` start comments, and a trailing comma is allowed. Every error is a ConfigError
naming the file, line and column and what was expected. ``katana.config`` validates what this
module returns; keeping the syntax here lets it be read (and tested) without the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from katana.errors import ConfigError

# Characters that end a bare word. ':' ends a key (`{a:1}`) but not a value, so that a value such
# as `http://host:8080/` needs no quotes.
_DELIMITERS = frozenset('{}[]:,"')
_VALUE_DELIMITERS = _DELIMITERS - {":"}
LITERALS: dict[str, object] = {"true": True, "false": False, "null": None}
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
    if word in LITERALS:
        return LITERALS[word]
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


def parse_with_positions(text: str, filename: str) -> tuple[object, dict[KeyPath, Position]]:
    """Like ``parse_relaxed``, also returning where every key and array element was written."""
    parser = _Parser(text, filename)
    return parser.document(), parser.positions


def is_bare_word(text: str) -> bool:
    """Whether ``text`` can be written without quotes and still read back as this very string."""
    # Not a literal or number, no delimiter, and nothing a comment or a blank would cut short.
    bare = bool(text) and _word_value(text) == text and not (set(text) & _DELIMITERS)
    return bare and not text.startswith(("#", "//")) and not any(c.isspace() for c in text)
