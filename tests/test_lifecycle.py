"""SCENARIOS.md "Lifecycle": stacked patches, revert, status from any shell, all processes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from livekit import Live, build_scenario, build_version, katana

pytestmark = pytest.mark.live


def _po(trees: dict, a: str, b: str, out: Path) -> Path:
    po = out / f"{a}-{b}.po"
    katana("generate", "-o", str(po), str(trees[a].parent), str(trees[b].parent), "prog",
           check=True)
    return po


@pytest.fixture(scope="module", params=["pie", "nopie"])
def stacked(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"stacked-{request.param}")
    trees = build_scenario("stacked", tmp, pie=request.param == "pie",
                           versions=("v0", "v1", "v2"))
    return trees, _po(trees, "v0", "v1", tmp), _po(trees, "v1", "v2", tmp)


def _result(live: Live, after: int) -> tuple[int, int]:
    m = live.wait_for(r"tick (\d+) result (\d+)", after=after)
    while int(m.group(1)) % 7 == 0:  # multiples of 7 answer 7 in every version
        m = live.wait_for(r"tick (\d+) result (\d+)", after=live.last_index + 1)
    return int(m.group(1)), int(m.group(2))


def test_stacked_then_reverted_step_by_step(stacked):
    trees, v0_v1, v1_v2 = stacked
    live = Live([str(trees["v0"])])
    try:
        tick, result = _result(live, 0)
        assert result == tick * 2
        katana("apply", str(v0_v1), str(live.pid), check=True)
        again = katana("apply", str(v0_v1), str(live.pid))
        assert again.returncode == 9 and "already has this patch" in again.stderr
        tick1, result = _result(live, live.mark())
        assert result == tick1 * 3 and tick1 > tick
        # v1 -> v2 is checked against what the process runs now: v1, through the record
        katana("apply", str(v1_v2), str(live.pid), check=True)
        tick2, result = _result(live, live.mark())
        assert result == tick2 * 4 + 1000 and tick2 > tick1
        status = katana("status", str(live.pid), check=True).stdout
        assert "1. prog v0 -> v1" in status and "2. prog v1 -> v2" in status
        assert "running: v2" in status
        assert '"to": "v2"' in katana("status", "--json", str(live.pid), check=True).stdout
        # the patches made for v0 and v1 are refused now: the process runs v2
        for po in (v0_v1, v1_v2):
            refused = katana("apply", str(po), str(live.pid))
            assert refused.returncode == 9 and "already has this patch" in refused.stderr
        katana("revert", str(live.pid), check=True)
        tick3, result = _result(live, live.mark())
        assert result == tick3 * 3 and tick3 > tick2
        katana("revert", str(live.pid), check=True)
        tick4, result = _result(live, live.mark())
        assert result == tick4 * 2 and tick4 > tick3
        nothing = katana("revert", str(live.pid))
        assert nothing.returncode == 14 and "no katana patch" in nothing.stderr
        assert live.alive()
    finally:
        live.kill()


def test_revert_refused_while_new_code_is_busy(tmp_path):
    trees = build_scenario("revert_busy", tmp_path)
    po = _po(trees, "v0", "v1", tmp_path)
    conf = tmp_path / "katana.conf"
    conf.write_text("{maxWaitForPatching: 1}\n")
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"v0 round \d+")
        katana("apply", str(po), str(live.pid), check=True)
        live.wait_for(r"v1 round \d+", after=live.mark())
        result = katana("-c", str(conf), "revert", str(live.pid))
        assert result.returncode == 10, result.stderr
        assert "work" in result.stderr and "Traceback" not in result.stderr
        live.wait_for(r"v1 round \d+", after=live.mark())  # still running v1, untouched
        assert "1. prog v0 -> v1" in katana("status", str(live.pid), check=True).stdout
    finally:
        live.kill()


def test_all_processes_of_one_build(tmp_path):
    # A program name and a build of its own (a string only this run links in), so that no
    # other test's processes are candidates: neither by name nor by build-id, also when
    # another checkout runs this test on the same machine at the same time.
    run = hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8]
    name = f"katana_all{run}"
    scenario = Path(__file__).parent / "scenarios"
    trees = {}
    for v in ("v0", "v1"):
        src = tmp_path / "src" / v
        shutil.copytree(scenario / "body_change" / v, src)
        (src / "run_id.c").write_text(f'const char katana_run_id[] = "{run}";\n')
        trees[v] = build_version(src, tmp_path / v, program=name)
    po = tmp_path / "all.po"
    katana("generate", "-o", str(po), str(tmp_path / "v0"), str(tmp_path / "v1"), name,
           check=True)
    # a process of the same program name but another build: skipped, named in the summary
    other = build_version(scenario / "stacked" / "v2", tmp_path / "other", program=name)
    # body_change v0 as any other test or suite builds it, under another name: not this build
    bystander = Live([str(build_scenario("body_change", tmp_path / "bystander", versions=("v0",))
                          ["v0"])])
    lives = [Live([str(trees["v0"])]) for _ in range(3)] + [Live([str(other)])]
    try:
        for live in lives + [bystander]:
            live.wait_for(r"tick \d+ result \d+")
        result = katana("apply", str(po), "all")
        assert result.returncode == 0, result.stderr
        assert "3 patched, 1 skipped, 0 failed (of 4)" in result.stdout
        assert f"{lives[3].pid}: skipped" in result.stderr
        for live in lives[:3]:
            m = live.wait_for(r"tick (\d+) result (\d+)", after=live.mark())
            tick, value = int(m.group(1)), int(m.group(2))
            assert value == (7 if tick % 7 == 0 else tick * 1000)
        assert "no katana patches applied" in katana("status", str(lives[3].pid)).stdout
        assert "no katana patches applied" in katana("status", str(bystander.pid)).stdout
    finally:
        for live in lives + [bystander]:
            live.kill()


@pytest.mark.parametrize("pie", [True, False], ids=["pie", "nopie"])
def test_stacked_transform_reaims_the_earlier_patch(tmp_path, pie):
    """v1 adds `acc` and add_a/add_b; v2 grows `acc`. add_a is unchanged in v2, so it is still
    patch 1's code: its references must move to the new storage with the variable."""
    trees = build_scenario("stacked_transform", tmp_path, pie=pie, versions=("v0", "v1", "v2"))
    v0_v1, v1_v2 = _po(trees, "v0", "v1", tmp_path), _po(trees, "v1", "v2", tmp_path)
    listing = katana("list", str(v1_v2), check=True).stdout
    assert "add_a" not in listing.split("Variables")[0]  # v2 leaves add_a alone
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick \d+ V0")
        katana("apply", str(v0_v1), str(live.pid), check=True)
        live.wait_for(r"a (\d+) b (\d+) V1", after=live.mark())
        katana("apply", str(v1_v2), str(live.pid), check=True)
        after = live.mark()
        previous = 0
        for _ in range(6):
            m = live.wait_for(r"a (\d+) b (\d+) z (\d+) V2", after=after)
            after = live.last_index + 1
            a, b, z = map(int, m.groups())
            assert b == 2 * a and z == 0 and a > previous
            previous = a
    finally:
        live.kill()


def test_apply_can_leave_the_target_stopped(tmp_path):
    """`katana -p -s`: the original's debugging aid. The process stays stopped, patched, until
    SIGCONT."""
    trees = build_scenario("body_change", tmp_path)
    po = _po(trees, "v0", "v1", tmp_path)
    live = Live([str(trees["v0"])])
    try:
        live.wait_for(r"tick \d+ result \d+")
        katana("-p", "-s", str(po), str(live.pid), check=True)
        state = Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "T"
        os.kill(live.pid, signal.SIGCONT)
        m = live.wait_for(r"tick (\d+) result (\d+)", after=live.mark())
        while int(m.group(1)) % 7 == 0:
            m = live.wait_for(r"tick (\d+) result (\d+)", after=live.last_index + 1)
        assert int(m.group(2)) == int(m.group(1)) * 1000
    finally:
        live.kill()


@pytest.mark.parametrize("upgrade", ["deleted", "replaced"])
def test_a_process_whose_executable_was_replaced_on_disk(tmp_path, upgrade):
    """A package upgrade deletes the file a service runs, or puts another build at its path:
    apply reads what the process runs, through /proc/PID/exe, never the path."""
    trees = build_scenario("stacked", tmp_path, versions=("v0", "v1", "v2"))
    po = _po(trees, "v0", "v1", tmp_path)
    installed = tmp_path / "installed" / "prog"
    installed.parent.mkdir()
    shutil.copy(trees["v0"], installed)
    live = Live([str(installed)])
    try:
        _result(live, 0)
        installed.unlink()
        if upgrade == "replaced":
            shutil.copy(trees["v2"], installed)  # another build at the same path
        katana("apply", str(po), str(live.pid), check=True)
        tick, result = _result(live, live.mark())
        assert result == tick * 3
    finally:
        live.kill()
