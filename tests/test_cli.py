"""The katana command line as a user meets it: versions, help, config, original forms, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from livekit import Live, build_scenario, katana

from katana import __version__, cli
from katana.errors import exit_codes


def test_version_and_help():
    assert katana("--version", check=True).stdout.strip() == f"katana {__version__}"
    helptext = katana("--help", check=True).stdout
    for command in ("generate", "list", "apply", "status", "revert", "config"):
        assert command in helptext
    assert "exit codes:" in helptext and "example" in helptext


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


def _subparsers():
    return cli._parser()._subparsers._group_actions[0].choices


def test_every_command_has_a_description_explained_arguments_an_example_and_exit_codes():
    table = cli.exit_code_table()
    for code, meaning in exit_codes():  # generated from katana.errors, not a copy
        assert f"{code:>3}  {meaning[:20]}" in table
    for name, sub in _subparsers().items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
        helptext = katana(name, "--help", check=True).stdout
        assert "example" in helptext and table in helptext, name
        assert f"katana {name}" in helptext.split("example", 1)[1], name


def test_common_options_before_or_after_the_command(tmp_path: Path):
    conf = tmp_path / "k.conf"
    conf.write_text("{maxWaitForPatching: 7}\n")
    before = katana("-c", str(conf), "config", check=True).stdout
    after = katana("config", "-c", str(conf), check=True).stdout
    assert before == after and str(conf) in after
    assert katana("config", "-q", "-c", str(conf)).returncode == 0
    both = katana("-q", "config", "-v")
    assert both.returncode == 2 and "contradict" in both.stderr
    assert katana("flags", "-v", "--ldflags", check=True).stdout.strip()


def test_v_traces_only_internal_errors(tmp_path: Path, monkeypatch, capsys):
    refused = katana("-v", "list", str(tmp_path / "nothing.po"))
    assert refused.returncode == 7 and "Traceback" not in refused.stderr
    refused = katana("status", "999999", "-vv")
    assert refused.returncode == 8 and "Traceback" not in refused.stderr

    def bug(args, config):
        raise ValueError("a bug")

    monkeypatch.setitem(cli._COMMANDS, "flags", bug)
    assert cli.main(["flags", "-v"]) == 70
    err = capsys.readouterr().err
    assert "internal error: ValueError: a bug" in err and "Traceback" in err
    assert cli.main(["flags"]) == 70
    assert "Traceback" not in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_quietly(tmp_path: Path):
    trees = build_scenario("body_change", tmp_path)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(trees["v0"].parent), str(trees["v1"].parent), "prog",
           check=True)
    # the reader closes before katana writes, as `| head -1` does once it has its line
    proc = subprocess.Popen([sys.executable, "-m", "katana", "list", "--json", str(po)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and err == "", err
    shell = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m katana list "
                            f"--json {po} | head -1"], capture_output=True, text=True)
    assert shell.stdout == "{\n" and shell.stderr == "", shell.stderr


def test_completion_and_man_page_name_every_command():
    names = list(_subparsers())
    script = katana("completion", "bash", check=True).stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    page = katana("man", check=True).stdout
    assert page.startswith(".TH KATANA 1")
    for name in names:
        assert f" {name}" in script and f"        {name}) opts=" in script, name
        assert f".SS {name}" in page, name
    for code, _ in exit_codes():
        assert f".TP\n{code}\n" in page
    # bash really completes with it: `katana fl<TAB>` and `katana flags --cm<TAB>`
    probe = script + ('COMP_WORDS=(katana fl); COMP_CWORD=1; _katana; echo "${COMPREPLY[@]}"\n'
                      'COMP_WORDS=(katana flags --cm); COMP_CWORD=2; _katana; '
                      'echo "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert done.stdout.split("\n")[:2] == ["flags", "--cmake"], done.stdout + done.stderr


@pytest.mark.live
def test_verbosity_from_the_configuration_unless_v_or_q(tmp_path: Path):
    trees = build_scenario("body_change", tmp_path)
    po = tmp_path / "p.po"
    katana("generate", "-o", str(po), str(trees["v0"].parent), str(trees["v1"].parent), "prog",
           check=True)
    silent, detailed = tmp_path / "silent.conf", tmp_path / "detailed.conf"
    silent.write_text("{verbosity: 0}\n")
    detailed.write_text("{verbosity: 2}\n")
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick 2 ")
        applied = katana("-c", str(silent), "apply", str(po), str(live.pid), check=True)
        assert applied.stdout == ""
        reverted = katana("revert", str(live.pid), "-c", str(silent), "-v", check=True)
        assert "reverted" in reverted.stdout  # -v wins over the file
        applied = katana("apply", str(po), str(live.pid), "-c", str(detailed), check=True)
        assert "applied" in applied.stdout and " ms" in applied.stdout.splitlines()[-1]
        assert katana("revert", str(live.pid), "-q", check=True).stdout == ""
        default = katana("apply", str(po), str(live.pid), check=True).stdout
        assert "applied" in default and len(default.splitlines()) < len(applied.stdout.splitlines())
    finally:
        live.kill()
