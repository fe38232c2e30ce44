"""A program nobody on the team wrote, patched live: expat's own example ``elements.c`` (it
prints the name of each XML element it reads from stdin, indented by depth), as Debian's
libexpat1-dev ships it, built with the flags of ``katana flags``. v1 is the same file with
its one printf changed to print ``<name>``; the running v0, blocked reading stdin between two
chunks of a document, is patched, and the next chunk comes out as v1 prints it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

SOURCE = Path("/usr/share/doc/libexpat1-dev/examples/elements.c")
TIMEOUT = 20.0
CHUNK = 8192  # BUFSIZ: elements.c reads its input in blocks of this size


def _flags(which: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "katana", "flags", which], check=True,
                         capture_output=True, text=True).stdout
    return shlex.split(out)


def _build(text: str, project: Path, version: str) -> Path:
    """Check out ``version`` (``text``) in the one source path and build it into
    build/<version>, as docs/make-and-cmake.md builds a make project."""
    (project / "elements.c").write_text(text)
    out = project / "build" / version
    out.mkdir(parents=True)
    cflags = ["-O2", *_flags("--cflags"), f"-ffile-prefix-map={project}=."]
    subprocess.run(["gcc", *cflags, "-c", "elements.c", "-o", f"{out}/elements.o"],
                   cwd=project, check=True)
    subprocess.run(["gcc", *_flags("--ldflags"), f"{out}/elements.o", "-lexpat", "-o",
                    f"{out}/elements"], cwd=project, check=True)
    return out / "elements"


def _wait_for(path: Path, text: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while text not in (seen := path.read_text()):
        assert time.monotonic() < deadline, f"never printed {text!r}; printed {seen[-200:]!r}"
        time.sleep(0.01)
    return seen


def _chunk(name: str) -> bytes:
    """Elements ``<name/>`` filling one read of elements.c exactly."""
    one = f"<{name}/>".encode()
    body = one * ((CHUNK - 1) // len(one))
    return body + b" " * (CHUNK - len(body))


@pytest.mark.skipif(not SOURCE.is_file() or shutil.which("stdbuf") is None,
                    reason=f"needs {SOURCE} (Debian's libexpat1-dev) and stdbuf")
def test_expat_example_patched_live(tmp_path):
    original = SOURCE.read_text()
    changed = original.replace('printf("%" XML_FMT_STR "\\n", name);',
                               'printf("<%" XML_FMT_STR ">\\n", name);')
    assert changed != original, "the example's printf is no longer the one this test changes"
    project = tmp_path / "expat-example"
    project.mkdir()
    v0 = _build(original, project, "v0")
    _build(changed, project, "v1")
    po = tmp_path / "elements.po"
    made = subprocess.run([sys.executable, "-m", "katana", "generate", "-o", str(po),
                           str(project / "build" / "v0"), str(project / "build" / "v1"),
                           "elements"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    printed = tmp_path / "out.txt"
    with printed.open("w") as out:
        # line-buffered output (stdbuf), so that each element shows as soon as it is parsed
        proc = subprocess.Popen(["stdbuf", "-oL", str(v0)], stdin=subprocess.PIPE, stdout=out)
    try:
        proc.stdin.write(b"<doc>" + _chunk("before")[5:])
        proc.stdin.flush()
        _wait_for(printed, "\tbefore\n")
        applied = subprocess.run([sys.executable, "-m", "katana", "apply", str(po),
                                  str(proc.pid)], capture_output=True, text=True)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        proc.stdin.write(_chunk("after"))
        proc.stdin.flush()
        seen = _wait_for(printed, "\t<after>\n")
        assert "\tafter\n" not in seen and seen.startswith("doc\n\tbefore\n")
        proc.stdin.write(b"</doc>")
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0  # v1 parsed the end of the document too
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
