"""``katana flags``: the SCons tool's flags for make and CMake builds (a make project built with
them and patched live: test_make_project.py)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from katana.build import flags as buildflags

BIN = Path(sys.executable).parent  # where the console script `katana` is installed


def flags(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "katana", "flags", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def fake_cc(tmp_path: Path, name: str, version: str, dump: str) -> str:
    """A compiler that answers --version and -dumpversion as ``version`` and ``dump``."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\ncase $1 in --version) printf '%s\\n' {shlex.quote(version)};;"
                      f" -dumpversion) echo {dump};; esac\n")
    script.chmod(0o755)
    return str(script)


def test_cflags_are_the_scons_tools_for_this_compiler(tmp_path: Path):
    out = flags("--cflags", cwd=tmp_path, env={"CC": "cc"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    compiler = buildflags.probe_compiler(["cc"], os.environ)
    assert out.stdout.split() == buildflags.compile_flags(str(tmp_path.resolve()), compiler, True)
    assert f"-ffile-prefix-map={tmp_path.resolve()}=." in out.stdout.split()


def test_ldflags_and_both(tmp_path: Path):
    assert flags("--ldflags").stdout.split() == buildflags.LINK_FLAGS
    both = flags(cwd=tmp_path).stdout.splitlines()
    assert [line.split("=", 1)[0] for line in both] == ["CFLAGS", "LDFLAGS"]
    # the lines are shell assignments: eval "$(katana flags)" sets both variables
    shell = subprocess.run(["sh", "-c", f'{both[0]}; {both[1]}; echo "$CFLAGS|$LDFLAGS"'],
                           capture_output=True, text=True, check=True).stdout
    assert "-ffunction-sections" in shell and "-Wl,--emit-relocs" in shell


def test_gcc_version_decides_live_patching_and_entry_room(tmp_path: Path):
    fsf = "Copyright (C) Free Software Foundation, Inc."
    cases = [("gcc7", f"gcc (GCC) 7.5.0\n{fsf}", "7", False, False),
             ("gcc8", f"gcc (GCC) 8.4.0\n{fsf}", "8", False, True),
             ("gcc12", f"gcc (GCC) 12.2.0\n{fsf}", "12", True, True)]
    for name, version, dump, live_patching, entry_room in cases:
        words = flags("--cflags", "--cc", fake_cc(tmp_path, name, version, dump)).stdout.split()
        assert (buildflags.LIVE_PATCHING in words) is live_patching, name
        assert (buildflags.ENTRY_ROOM in words) is entry_room, name
        assert buildflags.OUTLINE_CALLEES[0] in words


def test_a_compiler_that_is_not_gcc_gets_a_warning(tmp_path: Path):
    clang = fake_cc(tmp_path, "clang", "clang version 15.0.7", "15.0.7")
    out = flags("--cflags", env={"CC": clang})
    assert out.returncode == 0 and "not GCC" in out.stderr
    assert buildflags.LIVE_PATCHING not in out.stdout and "-g" in out.stdout.split()


def test_prefix_map_and_inline_callees(tmp_path: Path):
    words = flags("--cflags", "--prefix-map", "/src/proj", "--inline-callees").stdout.split()
    assert "-ffile-prefix-map=/src/proj=." in words
    assert not set(buildflags.OUTLINE_CALLEES) & set(words)


def test_a_directory_the_shell_would_split_is_refused(tmp_path: Path):
    spaced = tmp_path / "my project"
    spaced.mkdir()
    out = flags("--cflags", cwd=spaced)
    assert out.returncode == 2 and "--prefix-map" in out.stderr and "Traceback" not in out.stderr


def test_one_kind_at_a_time():
    out = flags("--cflags", "--ldflags")
    assert out.returncode == 2 and "not allowed with" in out.stderr


def test_cmake_lines_name_the_cmake_directories():
    out = flags("--cmake").stdout
    assert 'string(APPEND CMAKE_C_FLAGS " -g ' in out
    assert "-ffile-prefix-map=${CMAKE_SOURCE_DIR}=." in out
    assert "-ffile-prefix-map=${CMAKE_BINARY_DIR}=." in out
    assert "string(APPEND CMAKE_EXE_LINKER_FLAGS \" -Wl,--emit-relocs" in out


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_builds_in_two_directories_give_the_same_objects(tmp_path: Path):
    """The prefix maps make an object independent of the build directory it was made in."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.c").write_text('#include <assert.h>\nint main(int c, char **v) '
                                '{ assert(c > 0); return v[0][0] == 0; }\n')
    (src / "katana.cmake").write_text(flags("--cmake").stdout)
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.13)\n"
                                        "project(p C)\ninclude(katana.cmake)\n"
                                        "add_executable(prog main.c)\n")
    objects = []
    for build in ("A", "B"):
        subprocess.run(["cmake", "-S", str(src), "-B", str(tmp_path / build)],
                       check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(tmp_path / build)], check=True,
                       capture_output=True)
        objects.append((tmp_path / build / "CMakeFiles/prog.dir/main.c.o").read_bytes())
    assert objects[0] == objects[1]
    assert str(tmp_path).encode() not in objects[0]
