"""The katana command line as a user meets it: versions, help, config, original forms, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from livekit import build_scenario, katana

from katana import __version__


def test_version_and_help():
    assert katana("--version", check=True).stdout.strip() == f"katana {__version__}"
    helptext = katana("--help", check=True).stdout
    for command in ("generate", "list", "apply", "status", "revert", "config"):
        assert command in helptext


def test_console_script_and_module_agree():
    script = Path(sys.executable).parent / "katana"
    found = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.strip() == f"katana {__version__}"


def test_config_shows_values_and_sources(tmp_path):
    conf = tmp_path / "k.conf"
    conf.write_text("{maxWaitForPatching: 7, flags: {checkPtraceWrites: true}}\n")
    out = katana("-c", str(conf), "config", check=True).stdout
    assert "maxWaitForPatching" in out and "7" in out and str(conf) in out
    assert "flags.checkPtraceWrites" in out


def test_config_errors_are_one_line_with_exit_code(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("{maxWaitForPatching: -3}\n")
    result = katana("-c", str(conf), "config")
    assert result.returncode == 3
    assert "maxWaitForPatching" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors(tmp_path):
    result = katana("apply")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    missing = katana("list", str(tmp_path / "nothing.po"))
    assert missing.returncode == 7 and "Traceback" not in missing.stderr
    nopid = katana("status", "999999")
    assert nopid.returncode == 8 and "no process" in nopid.stderr


def test_original_forms_generate_and_list(tmp_path: Path):
    trees = build_scenario("body_change", tmp_path)
    result = katana("-g", str(trees["v0"].parent), str(trees["v1"].parent), "prog")
    assert result.returncode == 0, result.stderr
    po = trees["v0"].parent / "prog.po"  # the original's default: OLD_DIR/EXE.po
    assert po.is_file()
    listing = katana("-l", str(po), check=True).stdout
    assert "compute" in listing and "v0 -> v1" in listing
    json_out = katana("list", "--json", str(po), check=True).stdout
    assert '"compute"' in json_out
    disasm = katana("list", "--disasm", str(po), check=True).stdout
    assert "imul" in disasm or "lea" in disasm


def test_no_functional_change_has_its_own_exit_code(tmp_path: Path):
    trees = build_scenario("line_only", tmp_path)
    result = katana("generate", "-o", str(tmp_path / "x.po"), str(trees["v0"].parent),
                    str(trees["v1"].parent), "prog")
    assert result.returncode == 6 and "no functional change" in result.stderr
    assert not (tmp_path / "x.po").exists()


def test_generation_mistakes_are_named(tmp_path: Path):
    trees = build_scenario("body_change", tmp_path)
    v0, v1 = str(trees["v0"].parent), str(trees["v1"].parent)
    cases = [
        (["generate", v0, v0, "prog"], 5, "same build"),
        (["generate", v0, v1, str(trees["v0"])], 2, "inside the trees"),
        (["generate", v0, v1, "main.o"], 5, "not a linked executable"),
        (["generate", str(trees["v0"]), v1, "prog"], 5, "is a file, not a directory"),
        (["generate", "-o", "/dev/null", v0, v1, "prog"], 5, "not a regular file"),
        (["list", str(trees["v0"].parent / "main.o")], 7, ""),
    ]
    for args, code, words in cases:
        result = katana(*args)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert Path("/dev/null").is_char_device()


def test_objects_built_without_the_flags_are_refused(tmp_path: Path):
    trees = build_scenario("body_change", tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    src = trees["v1"].parent / "main.c"
    subprocess.run(["gcc", "-O2", "-c", str(src), "-o", str(plain / "main.o")], check=True)
    subprocess.run(["gcc", str(plain / "main.o"), "-o", str(plain / "prog")], check=True)
    result = katana("generate", "-o", str(tmp_path / "x.po"), str(trees["v0"].parent),
                    str(plain), "prog")
    assert result.returncode == 4 and "without -g" in result.stderr, result.stderr


def test_a_new_constructor_is_refused_at_generation(tmp_path: Path):
    trees = build_scenario("new_constructor", tmp_path)
    result = katana("generate", "-o", str(tmp_path / "x.po"), str(trees["v0"].parent),
                    str(trees["v1"].parent), "prog")
    assert result.returncode == 5, result.stderr
    assert "main.o: .init_array" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.po").exists()
