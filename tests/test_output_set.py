"""A run's files are one set: a run killed mid-write leaves the old set or the new, never a mix; modes follow umask."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audit.outputs import KILL_AFTER_WRITES_ENV, SET_FILES, clean_leftovers
from tests.conftest import read_report

TRAIN = ["train", "--data", "digits", "--epochs", "1", "-q"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An earlier run's folder (seed 0), written under umask 022; each test works on a copy."""
    from audit.cli import main

    out = tmp_path_factory.mktemp("set") / "run"
    old = os.umask(0o022)
    try:
        assert main([*TRAIN, "--out", str(out)]) == 0
    finally:
        os.umask(old)
    return out


def _leftovers(folder: Path) -> list[str]:
    """Staging or set-aside folders beside ``folder``, temporary files in it."""
    beside = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    return beside + [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _kill_during_train(out: Path, after_writes: int) -> None:
    """A real ``audit train`` over ``out`` (another seed), SIGKILLed by the outputs' test hook after N write steps."""
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_SIGN_KEY"}
    env[KILL_AFTER_WRITES_ENV] = str(after_writes)
    command = [sys.executable, "-m", "audit.cli", *TRAIN, "--seed", "7", "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


# Steps of writing a train set: model.pt, the three renderings, report.json (1-5), then the swap (6).
@pytest.mark.parametrize("after_writes, expected_seed", [(3, 0), (6, 7)])
def test_a_run_killed_while_writing_leaves_a_whole_set(
    cli, tmp_path, earlier, umask_022, after_writes, expected_seed
):
    out = tmp_path / "run"
    shutil.copytree(earlier, out)
    (out / "notes.txt").write_text("the user's own file")
    (out / "extra").mkdir()
    (out / "extra" / "data.csv").write_text("a,b\n")
    (out / ".report.json.abcd1234.tmp").write_bytes(b"")  # what an older version left when killed
    _kill_during_train(out, after_writes)
    assert read_report(out)["run"]["seed"] == expected_seed  # the old set (seed 0) or the new (seed 7)
    verified = cli("verify", out / "report.json")
    assert verified.code == 0 and "the 4 files it lists" in verified.out, verified.out
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert (out / "extra" / "data.csv").read_text() == "a,b\n"
    assert _leftovers(out)  # the killed run's staging folder (its new set, or the old set it swapped out)
    assert cli(*TRAIN, "--out", out).code == 0
    assert _leftovers(out) == []
    assert cli("verify", out / "report.json").code == 0 and (out / "notes.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*SET_FILES, "notes.txt", "extra"])
    for name in SET_FILES:
        assert (out / name).stat().st_mode & 0o777 == 0o644, name  # 0666 less the umask, as any new file
    assert out.stat().st_mode & 0o777 == 0o755


def test_a_folder_set_aside_by_a_killed_swap_is_put_back(tmp_path):
    # without an atomic exchange the swap is two renames; a kill between them leaves the old set aside
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(finished.stdout)
    aside = tmp_path / f".run.old-{dead}-x1"
    aside.mkdir()
    (aside / "report.json").write_text("{}")
    staging = tmp_path / f".run.staging-{dead}-x2"
    staging.mkdir()
    clean_leftovers(tmp_path / "run")
    assert (tmp_path / "run" / "report.json").exists() and not aside.exists() and not staging.exists()


def test_gate_rewrites_in_place_when_the_folder_is_the_working_directory(cli, tmp_path, earlier, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(earlier, out)
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.0\n")
    inode = out.stat().st_ino
    monkeypatch.chdir(
        out
    )  # the folder cannot be swapped under the user's shell: files are replaced one by one
    old_umask = os.umask(0o027)
    try:
        assert cli("gate", "report.json", "--policy", policy, "--write-report").code == 0
    finally:
        os.umask(old_umask)
    assert out.stat().st_ino == inode and _leftovers(out) == []
    assert read_report(out)["metrics"]["gate.passed"] == 1
    assert cli("verify", "report.json").code == 0
    assert (out / "report.html").stat().st_mode & 0o777 == 0o640
    assert (out / "model.pt").stat().st_mode & 0o777 == 0o644  # kept as the run wrote it (umask 022)
