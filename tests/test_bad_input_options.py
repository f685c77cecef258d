"""Plugin options no run can use, and bad input to the report-side commands: exit 2, one line, nothing written."""

from __future__ import annotations

import pytest

from tests.conftest import assert_bad_input, make_loans


@pytest.mark.parametrize(
    "args, says",
    [
        (["--dp", "--epsilon", "inf"], "--epsilon must be a finite positive number"),
        (["--dp", "--epsilon", "nan"], "--epsilon must be a finite positive number"),
        (["--dp", "--epsilon", "-1"], "--epsilon must be a finite positive number"),
        (["--dp", "--noise-multiplier", "inf"], "--noise-multiplier must be a finite positive number"),
        (["--dp", "--noise-multiplier", "0"], "--noise-multiplier must be a finite positive number"),
        (
            ["--dp", "--epsilon", "1", "--max-grad-norm", "inf"],
            "--max-grad-norm must be a finite positive number",
        ),
        (["--dp", "--epsilon", "1", "--delta", "0"], "--delta must be in (0, 1)"),
        (["--dp", "--epsilon", "1", "--delta=-1e-5"], "--delta must be in (0, 1)"),
        (["--dp", "--epsilon", "1", "--delta", "0.5"], "is not below 1/N"),
        (["--dp", "--epsilon", "1e-6"], "cannot be reached with any noise"),
        (["--dp", "--epsilon", "1", "--noise-multiplier", "1"], "exactly one of --epsilon"),
        (["--dp", "--epsilon", "1", "--robustness", "adv-train"], "--dp cannot be combined"),
        (["--robustness", "--eps", "inf"], "--eps must be finite positive numbers"),
        (["--robustness", "--eps", "0.1,nan"], "--eps must be finite positive numbers"),
        (["--robustness", "--eps", "0.1,abc"], "expected comma-separated numbers"),
        (["--robustness", "--pgd-alpha", "inf"], "--pgd-alpha must be a positive fraction"),
        (["--robustness", "adv-train", "--adv-eps", "inf"], "--adv-eps must be a finite positive number"),
        (["--robustness", "--attack", "cw"], "--attack 'cw' is unknown"),
        (["--robustness", "--robustness-samples", "0"], "--robustness-samples must be at least 1"),
        (["--mia-samples", "2"], "--mia-samples must be at least 10"),
    ],
)
def test_plugin_options_no_run_can_use(cli, tmp_path, args, says):
    out = tmp_path / "run"
    assert_bad_input(
        cli("train", "--data", "digits", "--epochs", "1", *args, "--out", out, "-q"), out, says=says
    )


@pytest.fixture
def decisions_csv(tmp_path):
    frame = make_loans(300)
    frame["decision"] = frame["defaulted"]
    path = tmp_path / "decisions.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "args, says",
    [
        (["--sensitive", ""], "--sensitive names no column"),
        (["--sensitive", "nope"], "no sensitive column 'nope'"),
        (["--sensitive", "sex", "--seed", "-1"], "--seed must be in"),
        (["--sensitive", "sex", "--bootstrap", "-3"], "--bootstrap was removed"),
        (["--sensitive", "sex", "--min-group-size", "0"], "--min-group-size must be at least 1"),
        (["--sensitive", "sex", "--y-pred", "age"], "distinct values; expected two"),
        (["--sensitive", "sex", "--positive-label", "maybe"], "--positive-label 'maybe' is not a value"),
        (["--sensitive", "sex", "--score", "purpose"], "score column 'purpose'"),
    ],
)
def test_decisions_bad_input(cli, tmp_path, decisions_csv, args, says):
    out = tmp_path / "run"
    base = {"--y-true": "defaulted", "--y-pred": "decision"}
    for flag in ("--y-true", "--y-pred"):
        if flag in args:
            base[flag] = args[args.index(flag) + 1]
            args = args[: args.index(flag)] + args[args.index(flag) + 2 :]
    argv = [
        "decisions",
        "--data",
        decisions_csv,
        *[x for kv in base.items() for x in kv],
        *args,
        "--out",
        out,
    ]
    assert_bad_input(cli(*argv), out, says=says)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("r") / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--out", str(out), "-q"]) == 0
    return out / "report.json"


def test_report_side_commands_refuse_bad_input(cli, tmp_path, report):
    missing, garbage, notreport = tmp_path / "none.json", tmp_path / "garbage.json", tmp_path / "list.json"
    garbage.write_text("{not json")
    notreport.write_text("[1, 2, 3]")
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.5\n")
    cases = [
        (("metrics", missing), "does not exist"),
        (("metrics", garbage), "is not valid JSON"),
        (("metrics", notreport), "has no 'metrics' map"),
        (("diff", report, missing), "does not exist"),
        (("report", garbage), "is not valid JSON"),
        (("gate", missing, "--policy", policy), "does not exist"),
        (("gate", report, "--policy", tmp_path / "nopolicy.yaml"), "does not exist"),
        (("gate", notreport, "--policy", policy), "has no 'metrics' map"),
        (("verify", garbage), "is not valid JSON"),
        (("report", report, "--format", "pdf"), "invalid choice"),
        (("nosuchcommand",), "invalid choice"),
    ]
    for args, says in cases:
        assert_bad_input(cli(*args), says=says)


def test_output_paths_that_cannot_be_written_cost_no_training(cli, tmp_path, report):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.5\n")
    cases = [
        (("train", "--data", "digits", "--out", a_file), "is an existing file"),
        (("train", "--data", "digits", "--out", a_file / "run"), "which is a file"),
        (
            ("train", "--data", "digits", "--out", tmp_path / ("x" * 300)),
            "longer than this file system allows",
        ),
        (
            ("train", "--data", "digits", "--sign-key", tmp_path / "nokey.pem", "--out", tmp_path / "r"),
            "nokey.pem",
        ),
        (("gate", report, "--policy", policy, "--junit", tmp_path), "is a folder"),
        (("gate", report, "--policy", policy, "--summary", a_file / "s.md"), "which is a file"),
    ]
    for args, says in cases:
        assert_bad_input(cli(*args, "-q") if args[0] == "train" else cli(*args), tmp_path / "r", says=says)
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize(
    "version, says", [("2.0", "from a newer rai-audit"), ("banana", "expected a version")]
)
def test_a_report_of_a_future_major_version_is_refused_by_every_reader(cli, tmp_path, report, version, says):
    import json

    data = json.loads(report.read_text())
    data["schema_version"] = version
    future = tmp_path / "report.json"
    future.write_text(json.dumps(data))
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.5\n")
    for args in (
        ("metrics", future),
        ("report", future),
        ("gate", future, "--policy", policy),
        ("verify", future),
    ):
        assert_bad_input(cli(*args), says=says)
