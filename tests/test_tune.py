"""audit tune: a seeded Optuna search under a release policy, scored on validation rows, resumable from SQLite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audit.tune_space import load_space, suggest
from tests.conftest import assert_bad_input, make_loans

optuna = pytest.importorskip("optuna")

SPACE = """\
lr: {kind: float, low: 1e-3, high: 1e-2, log: true}
hidden: {kind: categorical, choices: ["16", "32,16"]}
patience: {kind: int, low: 2, high: 3}
"""
OBJECTIVES = "max performance.accuracy, min fairness.sex.demographic_parity_difference:upper"
# reweighing's strength, drawn only in the trials that reweigh
STRENGTH_SPACE = """\
fairness: {kind: categorical, choices: [audit, reweight]}
reweight_strength: {kind: float, low: 0.5, high: 1.0, given: {param: fairness, equals: reweight}}
"""


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """A small loans table, a small space and a policy most trials pass."""
    make_loans().to_csv(tmp_path / "loans.csv", index=False)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "policy.yaml").write_text(
        "rules:\n  - performance.accuracy >= 0.5\n"
        '  - {metric: "fairness.*.demographic_parity_difference", op: "<=", value: 0.95, bound: upper}\n'
    )
    (tmp_path / "impossible.yaml").write_text("rules:\n  - performance.accuracy >= 0.999\n")
    return {"dir": tmp_path, "data": tmp_path / "loans.csv", "space": tmp_path / "space.yaml"}


def tune_args(
    setup: dict[str, Path], out: Path, *, trials: int = 3, policy: str = "policy.yaml"
) -> list[str]:
    """The command line of a small study."""
    return [
        "tune", "--data", setup["data"], "--target", "defaulted", "--sensitive", "sex",
        "--policy", setup["dir"] / policy, "--objectives", OBJECTIVES, "--trials", str(trials),
        "--epochs", "2", "--space", setup["space"], "--out", out, "--quiet",
    ]  # fmt: skip


def tune_data(out: Path) -> dict:
    """The tune section's payload of <out>/report.json."""
    return json.loads((out / "report.json").read_text())["sections"][0]["data"]


def test_a_study_gives_feasible_trials_a_pareto_front_and_a_fully_audited_chosen_model(setup, cli):
    out = setup["dir"] / "tune"
    result = cli(*tune_args(setup, out, trials=4))
    assert result.code == 0, result.err
    data = tune_data(out)
    assert len(data["trials"]) == 4 and data["feasible"]
    assert set(data["pareto"]) <= set(data["feasible"])
    chosen = data["chosen"]
    best = max(row["pick_value"] for row in data["trials"] if row["feasible"])
    assert chosen["validation"]["performance.accuracy"] == best
    for name in ("model.pt", "report.json", "report.html", "report.md", "model_card.md"):
        assert (out / "chosen" / name).is_file(), name
    report = json.loads((out / "chosen" / "report.json").read_text())
    params = next(row["params"] for row in data["trials"] if row["number"] == chosen["trial"])
    assert report["run"]["config"]["lr"] == pytest.approx(params["lr"])
    assert report["metrics"]["performance.accuracy"] == chosen["test"]["performance.accuracy"]
    assert report["metrics"]["gate.passed"] == 1
    carried = [f"{section['title']}: {w}" for section in report["sections"] for w in section["warnings"]]
    assert chosen["warnings"] == carried
    html = (out / "report.html").read_text()
    assert "Hyperparameter search" in html and "<svg" in html and "Pareto front" in html
    assert (
        "<circle" in html and "<polyline" not in html
    )  # the trials as a scatter: dots, no line through them


def test_the_default_space_searches_the_core_and_reweighing_when_a_sensitive_column_is_given(setup, cli):
    out = setup["dir"] / "tune"
    args = tune_args(setup, out, trials=2)
    del args[args.index("--space") : args.index("--space") + 2]
    assert cli(*args).code == 0
    params = tune_data(out)["trials"][0]["params"]
    assert {"lr", "batch_size", "hidden", "weight_decay", "optimizer", "patience", "fairness"} <= set(params)
    assert set(tune_data(out)["space"]["fairness"]["choices"]) == {"audit", "reweight"}
    fixed = setup["dir"] / "fixed"  # a mitigation the command sets itself is not searched
    assert cli(*args[: args.index("--out")], "--out", fixed, "--fairness", "reweight", "--quiet").code == 0
    assert "fairness" not in tune_data(fixed)["space"]
    assert (
        json.loads((fixed / "chosen" / "report.json").read_text())["run"]["config"]["options"]["fairness"]
        == "reweight"
    )


def test_an_entry_given_another_is_drawn_only_in_trials_where_that_entry_took_the_value(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE + STRENGTH_SPACE)
    space = load_space(
        str(tmp_path / "space.yaml"), {"lr", "hidden", "patience", "fairness", "reweight_strength"}
    )
    assert space["reweight_strength"]["given"] == {"param": "fairness", "equals": "reweight"}
    fixed = {"lr": 1e-3, "hidden": "16", "patience": 2}
    without = suggest(optuna.trial.FixedTrial({**fixed, "fairness": "audit"}), space)
    assert without["fairness"] == "audit" and "reweight_strength" not in without
    drawn = suggest(
        optuna.trial.FixedTrial({**fixed, "fairness": "reweight", "reweight_strength": 0.7}), space
    )
    assert drawn["reweight_strength"] == 0.7


def test_a_study_with_a_conditional_entry_records_it_only_on_the_trials_that_drew_it(setup, cli):
    setup["space"].write_text(SPACE + STRENGTH_SPACE)
    out = setup["dir"] / "tune"
    assert cli(*tune_args(setup, out, trials=6)).code == 0
    trials = tune_data(out)["trials"]
    assert {row["params"]["fairness"] for row in trials} == {"audit", "reweight"}  # seeded: both drawn
    for row in trials:
        assert ("reweight_strength" in row["params"]) == (row["params"]["fairness"] == "reweight")


def test_the_search_report_warns_when_the_chosen_model_predicts_one_class(setup, cli):
    loans = make_loans()  # labels without signal and 3% positive: every trial predicts "no"
    loans["defaulted"] = np.where(np.random.default_rng(0).random(len(loans)) < 0.03, "yes", "no")
    loans.to_csv(setup["data"], index=False)
    out = setup["dir"] / "tune"
    assert cli(*tune_args(setup, out, trials=2)).code == 0
    warnings = json.loads((out / "report.json").read_text())["sections"][0]["warnings"]
    assert any(w.startswith("chosen model, Performance: ONE-CLASS MODEL") for w in warnings), warnings


def test_no_trial_passing_the_policy_exits_1_naming_the_nearest_trials(setup, cli):
    out = setup["dir"] / "tune"
    result = cli(*tune_args(setup, out, policy="impossible.yaml"))
    assert result.code == 1, result.err
    assert "no trial passed the policy; nearest: trial" in result.err
    assert "performance.accuracy" in result.err and "needs >= 0.999" in result.err
    assert not (out / "chosen").exists()
    data = tune_data(out)
    assert data["chosen"] is None and data["feasible"] == [] and len(data["trials"]) == 3


def complete_trials(study_path: Path) -> list:
    """The COMPLETE trials of the one study in ``study_path``."""
    storage = f"sqlite:///{study_path}"
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return []
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.slow
def test_a_killed_study_resumes_to_exactly_the_trials_asked_for(setup):
    out = setup["dir"] / "tune"
    command = [sys.executable, "-m", "audit.cli", *map(str, tune_args(setup, out, trials=6))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if (out / "study.db").exists() and len(complete_trials(out / "study.db")) >= 1:
                break
        except Exception:  # noqa: BLE001 - the study is still being created by the other process; poll again
            pass
        time.sleep(0.05)
    assert process.poll() is None, "the study finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(complete_trials(out / "study.db"))
    assert 1 <= killed_at < 6
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    trials = complete_trials(out / "study.db")
    assert len(trials) == 6
    assert len({t.number for t in trials}) == 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # the resumed sampler drew new points
    assert len(tune_data(out)["trials"]) == 6


def test_the_trials_never_read_the_test_split(setup, cli, monkeypatch):
    """Garbage test labels change the chosen model's test audit and leave every trial's figures unchanged."""
    import audit.runner

    first = setup["dir"] / "first"
    assert cli(*tune_args(setup, first, trials=2)).code == 0
    load = audit.runner.load_dataset

    def garbage_test_labels(*args, **kwargs):
        dataset = load(*args, **kwargs)
        dataset.test.y = 1 - dataset.test.y  # every test label wrong
        return dataset

    monkeypatch.setattr(audit.runner, "load_dataset", garbage_test_labels)
    second = setup["dir"] / "second"
    garbage = cli(*tune_args(setup, second, trials=2))
    assert garbage.code == 1 and "fails it on the test split" in garbage.err  # the gate on test rows, once
    a, b = tune_data(first), tune_data(second)
    assert [row["objectives"] for row in a["trials"]] == [row["objectives"] for row in b["trials"]]
    assert a["chosen"]["validation"] == b["chosen"]["validation"]
    test_a, test_b = a["chosen"]["test"], b["chosen"]["test"]
    assert test_b["performance.accuracy"] == pytest.approx(1 - test_a["performance.accuracy"])


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--objectives", "maximize performance.accuracy", "--objectives"),
        ("--objectives", "max performance.accuracy:middle", "lower or upper"),
        ("--objectives", "max performance.acuracy", "nearest: performance.accuracy"),
        ("--pick", "best", "--pick"),
        ("--trials", "0", "--trials"),
        ("--postprocess", "demographic_parity", "--postprocess"),
    ],
)
def test_bad_options_are_exit_2_in_one_line_before_any_study(setup, cli, flag, value, says):
    out = setup["dir"] / "tune"
    args = tune_args(setup, out)
    args = [*args, flag, value]  # argparse: the last value given wins
    assert_bad_input(cli(*args), out / "study.db", says=says)


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ("lr: {kind: float, low: 1, high: 0.1}", "low < high"),
        ("lr: {kind: normal, low: 0, high: 1}", "kind"),
        ("learning_rate: {kind: float, low: 0.1, high: 1}", "not a tunable option"),
        ("hidden: {kind: categorical, choices: [wide]}", "hidden"),
        ("lr: {kind: float, low: 0, high: 1, log: true}", "low > 0"),
        ("[1, 2", "not valid YAML"),
        ("lr: {kind: float, low: 0.1, high: 1, step: 2}", "unknown key 'step'"),
        ("fairness: {kind: categorical, choices: [audit], colour: red}", "unknown key 'colour'"),
        (  # given names an entry that is not above it
            "reweight_strength: {kind: float, low: 0.5, high: 1, given: {param: fairness, equals: reweight}}",
            "must be a categorical entry above this one",
        ),
        (  # given names a value the entry cannot take
            "fairness: {kind: categorical, choices: [audit]}\n"
            "reweight_strength: {kind: float, low: 0.5, high: 1, given: {param: fairness, equals: reweight}}",
            "'reweight' among its choices",
        ),
        ("lr: {kind: float, low: 0.1, high: 1, given: fairness}", "expected {param: NAME, equals: VALUE}"),
        ("lr: {kind: float, low: 0.1, high: 1, given: {param: [a], equals: 1}}", "expected {param: NAME"),
    ],
)
def test_a_bad_space_is_exit_2_in_one_line(setup, cli, space, says):
    setup["space"].write_text(space)
    out = setup["dir"] / "tune"
    assert_bad_input(cli(*tune_args(setup, out)), out / "study.db", says=says)


def test_a_one_objective_study_reports_validation_accuracy_per_epoch_to_its_pruner(setup, cli):
    """Each trial's per-epoch reports are the loop's validation accuracy (the kept epoch's is the objective);
    a multi-objective study reports none (Optuna's Trial.report does not support it)."""
    out = setup["dir"] / "one"
    args = tune_args(setup, out, trials=2)
    args[args.index("--objectives") + 1] = "max performance.accuracy"
    assert cli(*args).code == 0
    trials = complete_trials(out / "study.db")
    for trial in trials:
        assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1))
        accuracy = trial.user_attrs["metrics"]["performance.accuracy"]  # float64; the loop's is float32
        assert any(abs(value - accuracy) < 1e-6 for value in trial.intermediate_values.values())
    multi = setup["dir"] / "multi"
    assert cli(*tune_args(setup, multi, trials=1)).code == 0
    assert complete_trials(multi / "study.db")[0].intermediate_values == {}


def test_two_processes_share_one_study_file(setup):
    """Run the same command twice at once: both finish, and the study holds exactly --trials COMPLETE trials (a
    process starts a trial only while COMPLETE + RUNNING < --trials, counted under the study's lock)."""
    out = setup["dir"] / "tune"
    command = [sys.executable, "-m", "audit.cli", *map(str, tune_args(setup, out, trials=4))]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate()[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], errors
    trials = complete_trials(out / "study.db")
    assert len(trials) == 4 and len({t.number for t in trials}) == len(trials)
