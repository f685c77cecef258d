"""audit tune --jobs N: N worker processes on one SQLite study, exactly --trials COMPLETE trials, stopped with
their parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import test_tune
from tests.conftest import assert_bad_input
from tests.test_tune import tune_args, tune_data

optuna = pytest.importorskip("optuna")
setup = test_tune.setup  # the same small loans table, space and policies (a fixture)
complete_trials = test_tune.complete_trials


def children(pid: int) -> set[int]:
    """The ids of the live processes whose parent is ``pid`` (read from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie counts as gone)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def test_two_jobs_run_exactly_the_trials_asked_for_and_choose_once(setup, cli):
    out = setup["dir"] / "tune"
    result = cli(*tune_args(setup, out, trials=5), "--jobs", "2")
    assert result.code == 0, result.err
    trials = complete_trials(out / "study.db")
    assert len(trials) == 5  # not 5 + (jobs - 1): a trial starts only while COMPLETE + RUNNING < --trials
    assert sorted(t.number for t in trials) == sorted({t.number for t in trials})
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5  # the workers drew different points
    data = tune_data(out)
    assert len(data["trials"]) == 5 and data["chosen"] is not None
    report = json.loads((out / "chosen" / "report.json").read_text())
    assert report["metrics"]["gate.passed"] == 1


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_below_one_is_exit_2_in_one_line_before_any_study(setup, cli, jobs):
    out = setup["dir"] / "tune"
    assert_bad_input(cli(*tune_args(setup, out), "--jobs", jobs), out / "study.db", says="--jobs")


def _start(setup: dict, out: Path, *, trials: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "audit.cli",
        *map(str, tune_args(setup, out, trials=trials)),
        "--jobs",
        "2",
    ]
    # its own session, so that a Ctrl-C can be sent to its whole process group as a terminal would
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _wait_for_workers(process: subprocess.Popen, out: Path) -> set[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(complete_trials(out / "study.db")) >= 1 and len(children(process.pid)) >= 2:
                return children(process.pid)
        except Exception:  # noqa: BLE001 - the study is still being created; poll again
            pass
        time.sleep(0.05)
    raise AssertionError("the workers did not start, or the study finished first")


def _gone(pids: set[int], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pids)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_killing_the_parent_stops_them_too(setup):
    """Ctrl-C (SIGINT to the process group) ends the command with exit 130 and no worker left; SIGKILL of the
    parent alone (the workers get no signal) ends the workers within seconds; the rerun finishes the study."""
    out = setup["dir"] / "tune"
    process = _start(setup, out, trials=40)
    workers = _wait_for_workers(process, out)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=30) == 130, process.stderr.read()
    assert _gone(workers)
    process = _start(setup, out, trials=40)
    workers = _wait_for_workers(process, out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _gone(workers)  # each worker saw its parent go (getppid changed) and exited
    rerun = subprocess.run(
        [sys.executable, "-m", "audit.cli", *map(str, tune_args(setup, out, trials=6)), "--jobs", "2"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    trials = complete_trials(out / "study.db")
    assert len(trials) >= 6 and len({t.number for t in trials}) == len(trials)


def test_a_trial_whose_process_died_before_its_first_heartbeat_is_failed_and_replaced(
    setup, cli, monkeypatch
):
    """Optuna's heartbeat cannot see a RUNNING trial whose process died between writing it and its first
    heartbeat; left alone, it would hold one of the --trials places for ever. It is failed once ORPHAN_S old."""
    import audit.tune

    out = setup["dir"] / "tune"
    assert cli(*tune_args(setup, out, trials=1, policy="impossible.yaml")).code == 1
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(
        study_name=optuna.get_all_study_summaries(storage)[0].study_name, storage=storage
    )
    orphan = study.ask()  # RUNNING, never reaches an objective, no heartbeat: as if its process were killed
    monkeypatch.setattr(audit.tune, "ORPHAN_S", 0)
    result = cli(*tune_args(setup, out, trials=2, policy="impossible.yaml"))  # no chosen/ audit: faster
    assert result.code == 1, result.err
    assert len(complete_trials(out / "study.db")) == 2
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
