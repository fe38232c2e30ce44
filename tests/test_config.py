"""Configuration files: order and overriding, relaxed syntax, errors with places, validation."""

from pathlib import Path

import pytest

from katana.config import Config, default_paths, format_value, load_config, parse_relaxed
from katana.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def layers(tmp_path):
    """The four optional files of default_paths, rooted in tmp_path instead of / and ~."""
    home, cwd = tmp_path / "home", tmp_path / "project"
    paths = [tmp_path / "etc" / "katana", *default_paths(home=home, cwd=cwd)[1:]]
    return paths


# --- order and overriding ---------------------------------------------------------------------

def test_default_paths_order(tmp_path):
    home, cwd = tmp_path / "h", tmp_path / "c"
    assert default_paths(home=home, cwd=cwd) == [
        Path("/etc/katana"), home / ".katana", home / ".config" / "katana", cwd / ".katana"]


def test_no_files_gives_defaults(layers):
    config = load_config(paths=layers)
    assert config == Config()
    assert config.max_wait_for_patching == 5
    assert config.safe_point_retry_interval == 0.05
    assert config.verbosity == 1
    assert config.check_ptrace_writes is False and config.leave_stopped is False
    assert config.trusted_keys == () and config.require_signature is False
    assert all(source == "default" for _, _, source in config.items())
    assert config.warnings == ()


def test_later_files_override_key_by_key(layers, tmp_path):
    etc, user, xdg, local = layers
    write(etc, "{maxWaitForPatching: 10, verbosity: 0, flags: {leaveStopped: true}}")
    write(user, "{maxWaitForPatching: 20, trustedKeys: [a, b]}")
    write(xdg, "{flags: {checkPtraceWrites: true}}")
    write(local, "{maxWaitForPatching: 30}")
    extra = write(tmp_path / "cli.conf", "{verbosity: 2, trustedKeys: [c]}")
    config = load_config(extra=extra, paths=layers)
    assert config.max_wait_for_patching == 30
    assert config.verbosity == 2
    # nested objects merge: flags from two files both count
    assert config.leave_stopped is True and config.check_ptrace_writes is True
    assert config.trusted_keys == ("c",)  # arrays are replaced whole, not merged
    assert config.sources == {
        "maxWaitForPatching": str(local), "verbosity": str(extra),
        "flags.leaveStopped": str(etc), "flags.checkPtraceWrites": str(xdg),
        "trustedKeys": str(extra)}
    items = {key: (value, source) for key, value, source in config.items()}
    assert items["safePointRetryInterval"] == (0.05, "default")
    assert items["maxWaitForPatching"] == (30.0, str(local))
    assert list(items) == [key for key, _, _ in Config().items()]


def test_null_restores_the_default(layers):
    etc, user, _, _ = layers
    write(etc, "{maxWaitForPatching: 10}")
    write(user, "{maxWaitForPatching: null}")
    config = load_config(paths=layers)
    assert config.max_wait_for_patching == 5
    assert config.sources["maxWaitForPatching"] == str(user)


def test_same_file_twice_is_read_once(tmp_path):
    conf = write(tmp_path / ".katana", "{bogus: 1}")
    config = load_config(paths=default_paths(home=tmp_path, cwd=tmp_path)[1:])
    assert len(config.warnings) == 1 and str(conf) in config.warnings[0]


def test_extra_file_must_exist(layers, tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.conf does not exist"):
        load_config(extra=tmp_path / "missing.conf", paths=layers)


def test_extra_file_may_not_be_a_directory(layers, tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(extra=tmp_path, paths=layers)


def test_optional_directory_is_a_warning(layers):
    layers[3].mkdir(parents=True)
    config = load_config(paths=layers)
    assert config == Config(warnings=config.warnings)
    assert len(config.warnings) == 1 and "is a directory" in config.warnings[0]


def test_unreadable_file(layers):
    # A symlink loop fails to open even for root (ELOOP), unlike a chmod 0 file.
    layers[0].parent.mkdir(parents=True)
    layers[0].symlink_to(layers[0])
    with pytest.raises(ConfigError, match="cannot read configuration file .*symbolic links"):
        load_config(paths=layers)


def test_not_utf8(layers):
    layers[0].parent.mkdir(parents=True)
    layers[0].write_bytes(b"{logFile: \xff}")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(paths=layers)


# --- relaxed syntax ---------------------------------------------------------------------------

def test_relaxed_syntax_from_the_manual():
    text = "{maxWaitForPatching: 30, flags: {checkPtraceWrites: false}, logFile: /var/log/k.log}"
    assert parse_relaxed(text) == {
        "maxWaitForPatching": 30, "flags": {"checkPtraceWrites": False},
        "logFile": "/var/log/k.log"}


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("-7", -7), ("+3", 3), ("2.5", 2.5), (".5", 0.5), ("1e3", 1000.0),
    ("true", True), ("false", False), ("null", None),
    ("0x10", "0x10"), ("1_000", "1_000"), ("nan", "nan"), ("inf", "inf"), ("1.2.3", "1.2.3"),
    ("True", "True"), ("hello", "hello"), ("http://h:80/x", "http://h:80/x"),
    ('"true"', "true"), ('"42"', "42"), ('"a, b: {c}"', "a, b: {c}"),
    (r'"tab\there \"q\" \\ \/ \u00e9 \ud83d\ude00"', 'tab\there "q" \\ / \u00e9 \U0001F600'),
    ("[]", []), ("{}", {}), ("[1, [2, {a: b}],]", [1, [2, {"a": "b"}]]),
    ('{"quoted key": 1, bare: 2,}', {"quoted key": 1, "bare": 2}),
    ("{a:1,b:x}", {"a": 1, "b": "x"}),
    ("", {}), ("  // only a comment\n# and another\n", {}),
])
def test_relaxed_values(text, value):
    assert parse_relaxed(text) == value


def test_comments_and_layout():
    text = """
    # a shell-style comment
    {
        maxWaitForPatching: 30,   // seconds
        url: http://example.org/x#frag,  # '#' inside a word is part of it
        list: [a, b, // one
               c],
    }
    """
    assert parse_relaxed(text) == {
        "maxWaitForPatching": 30, "url": "http://example.org/x#frag", "list": ["a", "b", "c"]}


@pytest.mark.parametrize("text, where, expected", [
    ("{a: 1 b: 2}", "1:7", "expected ',' or '}' after the value of 'a', found 'b'"),
    ("{\n  a 1\n}", "2:5", "expected ':' after the key 'a', found '1'"),
    ("{a: }", "1:5", "expected a value"),
    ("{a: 1", "1:6", "found end of file"),
    ("[1,,2]", "1:4", "expected a value"),
    ("{,}", "1:2", "expected a key or '}'"),
    ("{a: 1} {b: 2}", "1:8", "expected end of file after the top-level value, found '{'"),
    ('{a: "open\n"}', "1:5", "unterminated string"),
    ('{a: "x\\q"}', "1:7", r"bad escape '\q'"),
    ('{a: "\\u12"}', "1:6", "expected 4 hex digits"),
    ('{a: "\\ud800"}', "1:6", "lone UTF-16 surrogate"),
    ("{a: 1,\n a: 2}", "2:2", "duplicate key 'a' (first set at line 1, column 2)"),
    ("{a: [1, 2}", "1:10", "expected ',' or ']'"),
])
def test_syntax_errors_name_file_line_and_column(text, where, expected):
    with pytest.raises(ConfigError) as info:
        parse_relaxed(text, "my.conf")
    message = str(info.value)
    assert message.startswith(f"my.conf:{where}: "), message
    assert expected in message


def test_malformed_file_in_load_config(layers):
    write(layers[1], "{\n  verbosity: 2\n  flags: {}\n}")
    with pytest.raises(ConfigError, match=rf"^{layers[1]}:3:3: expected ',' or '}}'"):
        load_config(paths=layers)


def test_top_level_must_be_an_object(layers):
    write(layers[0], "[1, 2]")
    with pytest.raises(ConfigError, match="expected an object at the top level"):
        load_config(paths=layers)


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, allowed", [
    ("maxWaitForPatching: 0", "maxWaitForPatching = 0", "> 0 and <= 3600"),
    ("maxWaitForPatching: 3601", "maxWaitForPatching = 3601", "<= 3600"),
    ("maxWaitForPatching: -1", "maxWaitForPatching = -1", "> 0"),
    ("maxWaitForPatching: soon", "maxWaitForPatching = soon", "a number of seconds"),
    ("maxWaitForPatching: true", "maxWaitForPatching = true", "a number of seconds"),
    ("safePointRetryInterval: 11", "safePointRetryInterval = 11", "<= 10"),
    ("verbosity: 3", "verbosity = 3", "0, 1 or 2"),
    ("verbosity: 1.5", "verbosity = 1.5", "an integer"),
    ("flags: {checkPtraceWrites: yes}", "flags.checkPtraceWrites = yes", "true or false"),
    ('flags: {leaveStopped: "true"}', 'flags.leaveStopped = "true"', "true or false"),
    ("flags: true", "flags = true", "an object"),
    ("trustedKeys: abc", "trustedKeys = abc", "a list of strings"),
    ("trustedKeys: [abc, 12]", "trustedKeys = [abc, 12]", "a list of strings"),
    ("requireSignature: 1", "requireSignature = 1", "true or false"),
])
def test_bad_values_are_errors(layers, text, key, allowed):
    write(layers[2], "{\n" + text + "\n}")
    with pytest.raises(ConfigError) as info:
        load_config(paths=layers)
    message = str(info.value)
    assert message.startswith(f"{layers[2]}:2:"), message
    assert f"{key} is not allowed" in message and allowed in message


def test_quoted_boolean_gets_a_hint(layers):
    write(layers[0], '{requireSignature: "false"}')
    with pytest.raises(ConfigError) as info:
        load_config(paths=layers)
    assert info.value.hint == "write false without quotes"


def test_good_values_are_converted(layers):
    write(layers[0], "{maxWaitForPatching: 3600, safePointRetryInterval: 1, verbosity: 0,"
                     " trustedKeys: [], requireSignature: true}")
    config = load_config(paths=layers)
    assert config.max_wait_for_patching == 3600.0
    assert isinstance(config.safe_point_retry_interval, float)
    assert config.verbosity == 0 and config.trusted_keys == () and config.require_signature


# --- unknown keys -----------------------------------------------------------------------------

def test_unknown_keys_are_warnings_with_suggestions(layers):
    write(layers[3], "{\n maxWaitForPatchin: 3,\n checkPtraceWrites: true,\n"
                     " flags: {leavestopped: true, colour: red},\n zzz: {a: 1}\n}")
    config = load_config(paths=layers)
    assert config == Config(warnings=config.warnings)  # nothing applied
    where = str(layers[3])
    assert config.warnings == (
        f"{where}:2:2: unknown key 'maxWaitForPatchin' ignored;"
        " did you mean 'maxWaitForPatching'?",
        f"{where}:3:2: unknown key 'checkPtraceWrites' ignored;"
        " did you mean 'flags.checkPtraceWrites'?",
        f"{where}:4:10: unknown key 'flags.leavestopped' ignored;"
        " did you mean 'flags.leaveStopped'?",
        f"{where}:4:30: unknown key 'flags.colour' ignored",
        f"{where}:5:2: unknown key 'zzz' ignored",
    )


# --- printing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (5.0, "5"), (0.05, "0.05"), (2, "2"), (True, "true"), (None, "null"), ((), "[]"),
    (("a", "b c"), '[a, "b c"]'), ("true", '"true"'), ("12", '"12"'), ("", '""'),
    ({"a": 1}, "{a: 1}"),
])
def test_format_value_round_trips(value, text):
    assert format_value(value) == text
    parsed = parse_relaxed(text)
    assert parsed == (list(value) if isinstance(value, tuple) else value)
