"""The CLI end to end: the main job, evaluate, report, plugins, and one clear line for bad input."""

import argparse
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import make_loans, read_report, run_audit

REQUIRED = [
    "performance.accuracy",
    "performance.balanced_accuracy",
    "performance.roc_auc",
    "efficiency.train_wall_s",
    "efficiency.train_samples_per_s",
    "efficiency.peak_rss_mb",
    "efficiency.params",
    "efficiency.flops_per_sample",
    "efficiency.latency_ms_p50",
]


def test_train_on_a_csv_writes_the_report_and_model(cli, loans_csv, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--sensitive",
        "sex",
        "--epochs",
        "3",
        "--out",
        out,
        "--compress",
        "quantize,prune",
    )
    assert result.code == 0, result.err
    report = read_report(out)
    for name in REQUIRED:
        assert isinstance(report["metrics"][name], (int, float)), name
    for name in ("model.pt", "report.html", "report.md"):
        assert (out / name).is_file()
    assert report["run"]["data"]["sha256"]
    assert (
        report["metrics"]["efficiency.quantize.size_bytes"] < report["metrics"]["efficiency.model_size_bytes"]
    )
    assert 0.45 < report["metrics"]["efficiency.prune.sparsity"] < 0.55
    assert not list(out.glob(".*tmp"))


def test_adult_defaults_reach_the_accuracy_bar(cli, tmp_path):
    out = tmp_path / "adult"
    assert cli("train", "--out", out, "--quiet").code == 0
    assert read_report(out)["metrics"]["performance.accuracy"] >= 0.85


def test_same_seed_same_metrics(cli, loans_csv, tmp_path):
    reports = []
    for name in ("a", "b"):
        assert (
            cli(
                "train",
                "--data",
                loans_csv,
                "--target",
                "defaulted",
                "--epochs",
                "2",
                "--seed",
                "5",
                "--out",
                tmp_path / name,
                "-q",
            ).code
            == 0
        )
        reports.append(read_report(tmp_path / name)["metrics"])
    assert reports[0]["performance.accuracy"] == reports[1]["performance.accuracy"]
    assert reports[0]["performance.log_loss"] == reports[1]["performance.log_loss"]


def test_evaluate_a_saved_model_again(cli, loans_csv, tmp_path):
    out = tmp_path / "run"
    assert (
        cli(
            "train",
            "--data",
            loans_csv,
            "--target",
            "defaulted",
            "--sensitive",
            "sex",
            "--epochs",
            "2",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    other = tmp_path / "other.csv"
    make_loans(300, seed=9).to_csv(other, index=False)
    result = cli("evaluate", "--model", out / "model.pt", "--data", other, "--out", tmp_path / "eval", "-q")
    assert result.code == 0, result.err
    report = read_report(tmp_path / "eval")
    assert report["metrics"]["performance.test_rows"] == 300
    assert "fairness.sex.demographic_parity_difference" in report["metrics"]


def test_evaluate_builtin_reproduces_the_test_split(cli, tmp_path):
    out = tmp_path / "digits"
    assert cli("train", "--data", "digits", "--epochs", "3", "--out", out, "-q").code == 0
    assert (
        cli("evaluate", "--model", out / "model.pt", "--out", tmp_path / "eval", "-q").code == 0
    )  # --data defaults to the model's built-in data
    assert (
        read_report(tmp_path / "eval")["metrics"]["performance.accuracy"]
        == read_report(out)["metrics"]["performance.accuracy"]
    )


def test_yaml_config_is_read_and_flags_win(cli, loans_csv, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {loans_csv}\ntarget: defaulted\nepochs: 1\nhidden: [8]\nbatch-size: 32\n")
    out = tmp_path / "run"
    assert cli("train", "--config", config, "--epochs", "2", "--out", out, "-q").code == 0
    run = read_report(out)["run"]["config"]
    assert run["epochs"] == 2 and run["hidden"] == [8] and run["batch_size"] == 32


def test_yaml_values_take_the_flags_forms(cli, tmp_path):
    # a scalar where the flag takes a list, a list where it takes comma-separated text, true for a switch,
    # null for the switch's off form; training-only keys are skipped by evaluate
    config = tmp_path / "run.yaml"
    config.write_text(
        "data: digits\nepochs: 1\npatience: null\nrobustness: true\nattack: [pgd]\neps: 0.1\n"
        "robustness-samples: 40\npgd-steps: 2\n"
    )
    out = tmp_path / "run"
    assert cli("train", "--config", config, "--out", out, "-q").code == 0
    run = read_report(out)["run"]["config"]
    assert run["patience"] is None and run["options"]["eps"] == [0.1] and run["options"]["attack"] == "pgd"
    assert "robustness.pgd.eps_0p1.robust_accuracy" in read_report(out)["metrics"]
    assert (
        cli(
            "evaluate", "--model", out / "model.pt", "--config", config, "--out", tmp_path / "eval", "-q"
        ).code
        == 0
    )


def test_report_rerenders_from_json(cli, loans_csv, tmp_path):
    out = tmp_path / "run"
    assert (
        cli("train", "--data", loans_csv, "--target", "defaulted", "--epochs", "1", "--out", out, "-q").code
        == 0
    )
    (out / "report.html").unlink()
    assert cli("report", out / "report.json", "--format", "html").code == 0
    assert "performance.accuracy" in (out / "report.html").read_text()


def test_plugins_lists_the_builtins(cli):
    result = cli("plugins")
    for name in ("privacy", "fairness", "robustness"):
        assert name in result.out
    assert "audit_evaluate" in result.out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--data", "nope.csv", "--target", "y"], "does not exist"),
        (["train", "--data", "{csv}", "--target", "nope"], "no target column 'nope'"),
        (
            ["train", "--data", "{csv}", "--target", "defaulted", "--sensitive", "race"],
            "no sensitive column 'race'",
        ),
        (["train", "--data", "{nan}", "--target", "defaulted"], "missing value"),
        (["train", "--data", "{single}", "--target", "defaulted", "--sensitive", "sex"], "single value"),
        (["train", "--data", "{empty}", "--target", "defaulted"], "is empty"),
        (["train", "--optimizer", "lion"], "--optimizer 'lion' is unknown"),
        (["train", "--attack", "cw", "--robustness"], "--attack 'cw' is unknown"),
        (["train", "--epochs", "zero"], "invalid int value"),
        (["train", "--dp", "--epsilon", "1", "--compile"], "--compile cannot be combined with --dp"),
        (["train", "--dp"], "exactly one of --epsilon"),
        (["train", "--epsilon", "2"], "--epsilon only applies with --dp"),
        (
            ["train", "--max-grad-norm", "2", "--accountant", "prv"],
            "--max-grad-norm, --accountant only apply with --dp",
        ),
        (["train", "--mia-samples", "3"], "--mia-samples must be at least 10"),
        (["train", "--min-group-size", "5"], "--min-group-size only applies with --sensitive"),
        (
            ["train", "--sensitive", "sex", "--fairness-baseline"],
            "--fairness-baseline applies only with --fairness reweight",
        ),
        (["train", "--sensitive", "sex", "--min-group-size", "0"], "--min-group-size must be at least 1"),
        (
            ["train", "--sensitive", "sex", "--reweight-strength", "0.5"],
            "--reweight-strength applies only with --fairness reweight",
        ),
        (
            ["train", "--sensitive", "sex", "--fairness", "reweight", "--reweight-strength", "1.5"],
            "--reweight-strength must lie in (0, 1], got 1.5",
        ),
        (["train", "--fairness", "reweight"], "--fairness needs --sensitive"),
        (["evaluate", "--model", "{corrupt}"], "could not be read"),
        (["train", "--data", "{csv}"], "--target is required"),
        (["train", "--config", "{badyaml}"], "unknown"),
        (
            ["train", "--config", "{wrongtype}"],
            "key 'epochs' (--epochs): expected an integer, got 'ten' (from config file",
        ),
        (["train", "--eps", "0.1", "--pgd-steps", "3"], "--eps, --pgd-steps only apply with --robustness"),
        (
            [
                "evaluate",
                "--model",
                "{csvmodel}",
                "--data",
                "{csv}",
                "--sensitive",
                "sex",
                "--fairness",
                "reweight",
            ],
            "--fairness reweight trains a model",
        ),
        (
            ["train", "--data", "{catonly}", "--target", "defaulted", "--robustness"],
            "--robustness: no feature can be perturbed",
        ),
        (["train", "--momentum", "0.5"], "--momentum only applies with --optimizer sgd or rmsprop"),
        (["train", "--gamma", "0.3"], "--gamma only applies with --schedule step"),
        (
            ["train", "--schedule", "cosine", "--epochs", "2", "--warmup-epochs", "2"],
            "--warmup-epochs must be in [0, --epochs)",
        ),
        (["train", "--drop-sensitive"], "--drop-sensitive only applies with --sensitive"),
        (["train", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["train", "--hidden", "64,0"], "--hidden sizes must be at least 1, got 64,0"),
        (["train", "--data", "digits", "--positive-label", "3"], "--positive-label applies to tabular data"),
        (["evaluate", "--model", "{csvmodel}"], "not on built-in data; pass --data FILE"),
        (["train", "--robustness", "--eps", "abc"], "expected comma-separated numbers, got 'abc'"),
        (["train", "--robustness", "--pgd-alpha", "0"], "--pgd-alpha must be a positive fraction of epsilon"),
        (["train", "--robustness", "--adv-eps", "0.1"], "--adv-eps only applies with --robustness adv-train"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, loans_csv, args, expected):
    paths = {"csv": loans_csv}
    frame = make_loans(50)
    paths["nan"] = tmp_path / "nan.csv"
    frame.assign(defaulted=frame["defaulted"].where(frame.index > 0)).to_csv(paths["nan"], index=False)
    paths["single"] = tmp_path / "single.csv"
    frame.assign(sex="F").to_csv(paths["single"], index=False)
    paths["empty"] = tmp_path / "empty.csv"
    paths["empty"].write_text("")
    paths["corrupt"] = tmp_path / "model.pt"
    paths["corrupt"].write_bytes(b"not a checkpoint at all")
    paths["badyaml"] = tmp_path / "bad.yaml"
    paths["badyaml"].write_text("learning_rate: 3\n")
    paths["csvmodel"] = tmp_path / "csvrun" / "model.pt"
    if "{csvmodel}" in args:
        assert (
            cli(
                "train",
                "--data",
                loans_csv,
                "--target",
                "defaulted",
                "--epochs",
                "1",
                "--out",
                paths["csvmodel"].parent,
                "-q",
            ).code
            == 0
        )
    paths["catonly"] = tmp_path / "catonly.csv"
    make_loans(200).drop(columns=["income", "age"]).to_csv(paths["catonly"], index=False)
    paths["wrongtype"] = tmp_path / "wrong.yaml"
    paths["wrongtype"].write_text("epochs: ten\n")
    out = tmp_path / "out"
    argv = (
        [a.format(**paths) for a in args] + ["--out", str(out)] if args[0] in ("train", "evaluate") else args
    )
    result = cli(*argv)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert expected in lines[0]
    assert "Traceback" not in result.err
    assert not out.exists()


def test_console_script_runs_and_progress_is_silenced_by_quiet(tmp_path, loans_csv):
    args = [
        sys.executable,
        "-m",
        "audit.cli",
        "train",
        "--data",
        str(loans_csv),
        "--target",
        "defaulted",
        "--epochs",
        "1",
    ]
    loud = subprocess.run(args + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    quiet = subprocess.run(args + ["--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True)
    assert loud.returncode == 0 and quiet.returncode == 0
    assert "step/s" in loud.stderr or "s/step" in loud.stderr
    assert quiet.stderr.strip() == "" and quiet.stdout.strip() == ""
    json.loads((tmp_path / "b" / "report.json").read_text())


def test_quiet_also_silences_library_warnings(tmp_path):
    # digits' CNN takes Opacus' hook path, whose torch and accountant warnings reach stderr unless filtered
    args = [
        sys.executable,
        "-m",
        "audit.cli",
        "train",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--dp",
        "--noise-multiplier",
        "0.3",
        "--out",
        str(tmp_path / "q"),
        "--quiet",
    ]
    quiet = subprocess.run(args, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "" and quiet.stdout.strip() == ""


def test_benign_library_warnings_are_filtered_without_quiet(tmp_path):
    # Opacus' hook path (digits' CNN) and --compress quantize each raise a library warning the user cannot act on
    args = [
        sys.executable,
        "-m",
        "audit.cli",
        "train",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--dp",
        "--noise-multiplier",
        "0.3",
        "--compress",
        "quantize",
        "--out",
        str(tmp_path / "w"),
    ]
    loud = subprocess.run(args, capture_output=True, text=True)
    assert loud.returncode == 0, loud.stderr
    assert "Warning" not in loud.stderr, loud.stderr
    assert "efficiency." in loud.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny trained run and its data, shared by the tests of the commands that read a report or a model."""
    from audit.cli import main

    root = tmp_path_factory.mktemp("trained")
    make_loans().to_csv(root / "loans.csv", index=False)
    args = [
        "train",
        "--data",
        root / "loans.csv",
        "--target",
        "defaulted",
        "--epochs",
        "1",
        "--out",
        root / "run",
    ]
    assert main([str(a) for a in [*args, "-q"]]) == 0
    return root


def written_paths(stdout: str) -> list[Path]:
    """The files the one ``wrote ...`` line names (``folder/{a, b}`` groups, separated by '; ')."""
    lines = [line for line in stdout.splitlines() if line.startswith("wrote ")]
    assert len(lines) == 1, stdout
    paths: list[Path] = []
    for part in lines[0][len("wrote ") :].split("; "):
        grouped = re.fullmatch(r"(.*)/\{(.*)\}", part)
        paths += [Path(grouped[1]) / n for n in grouped[2].split(", ")] if grouped else [Path(part)]
    return paths


def _decisions_csv(folder: Path) -> Path:
    frame = make_loans()
    frame["approved"] = frame["income"].fillna(50).gt(50).map({True: "yes", False: "no"})
    frame.to_csv(folder / "decisions.csv", index=False)
    return folder / "decisions.csv"


def test_version_prints_the_package_version():
    result = run_audit("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"audit (rai-audit) {metadata.version('rai-audit')}"


def test_train_help_groups_options_by_the_plugin_that_declared_them():
    from audit.plugins import get_plugin_manager

    text = run_audit("train", "--help").stdout
    core = text.split("\ncore options:\n")[1].split("\n\n")[0]
    assert "--epochs" in core and "--mlflow" in core and "--dp " not in core
    declared = 0
    for impl in get_plugin_manager().hook.audit_cli_options.get_hookimpls():
        # a flag kept only to refuse it with a pointer to its replacement is hidden from --help
        options = [
            o
            for o in impl.function() or []
            if "train" in o.commands and o.kwargs.get("help") != argparse.SUPPRESS
        ]
        if options:
            declared += 1
            group = text.split(f"\n{impl.plugin_name} (plugin options):\n")[1].split("\n\n")[0]
            assert all(o.flags[0] in group for o in options), (impl.plugin_name, group)
    assert declared >= 3  # privacy, fairness, robustness


def test_every_subcommand_takes_quiet_and_says_nothing(cli, trained_run, tmp_path):
    report = trained_run / "run" / "report.json"
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.1\n")
    data = _decisions_csv(tmp_path)
    silent = {
        "evaluate": ["--model", trained_run / "run" / "model.pt", "--data", trained_run / "loans.csv"],
        "report": [report, "--out", tmp_path / "rendered"],
        "gate": [report, "--policy", policy],
        "verify": [report],
        "keygen": ["--out", tmp_path / "keys"],
        "decisions": ["--data", data, "--y-true", "defaulted", "--y-pred", "approved", "--sensitive", "sex"],
    }
    for command, args in silent.items():
        out = ["--out", tmp_path / command] if command in ("evaluate", "decisions") else []
        result = cli(command, *args, *out, "--quiet")
        assert (result.code, result.out, result.err) == (0, "", ""), command
    assert sorted(p.name for p in (tmp_path / "rendered").iterdir()) == [
        "model_card.md",
        "report.html",
        "report.md",
    ]
    # the answer of these commands is their output: --quiet is accepted and leaves it
    for args in (["metrics", report], ["diff", report, report, "--all"], ["plugins"]):
        result = cli(*args, "--quiet")
        assert result.code == 0 and result.out, args


def test_the_end_of_run_line_names_every_file_written(cli, trained_run, tmp_path):
    run = tmp_path / "run"
    result = cli(
        "train", "--data", trained_run / "loans.csv", "--target", "defaulted", "--epochs", "1", "--out", run
    )
    assert result.code == 0, result.err
    assert f"wrote {run}/{{model.pt, report.json, report.html, report.md, model_card.md}}" in result.out
    assert sorted(written_paths(result.out)) == sorted(p for p in run.iterdir())
    evaluated = tmp_path / "eval"
    result = cli(
        "evaluate", "--model", run / "model.pt", "--data", trained_run / "loans.csv", "--out", evaluated
    )
    assert sorted(written_paths(result.out)) == sorted(evaluated.iterdir())  # no model.pt: none written
    result = cli("report", run / "report.json", "--format", "md", "--out", tmp_path / "again.md")
    assert written_paths(result.out) == [tmp_path / "again.md"]
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.1\n")
    result = cli(
        "gate", run / "report.json", "--policy", policy, "--write-report", "--junit", tmp_path / "g.xml"
    )
    assert result.code == 0, result.err
    names = [p.name for p in written_paths(result.out)]
    assert names == ["report.json", "report.html", "report.md", "model_card.md", "g.xml"]  # model.pt is kept
    result = cli("keygen", "--out", tmp_path / "keys")
    assert sorted(written_paths(result.out)) == sorted((tmp_path / "keys").iterdir())
    data = _decisions_csv(tmp_path)
    decided = tmp_path / "decided"
    args = [
        "--data",
        data,
        "--y-true",
        "defaulted",
        "--y-pred",
        "approved",
        "--sensitive",
        "sex",
        "--out",
        decided,
    ]
    result = cli("decisions", *args)
    assert result.code == 0, result.err
    assert sorted(written_paths(result.out)) == sorted(decided.iterdir())
