"""The shipped release policy parses and names metrics the built-in plugins really produce."""

from pathlib import Path

from audit.gate import load_policy

ROOT = Path(__file__).resolve().parents[1]


def test_release_policy_gates_a_full_run(cli, tmp_path):
    out = tmp_path / "adult"
    assert (
        cli(
            "train",
            "--sensitive",
            "sex,race",
            "--dp",
            "--epsilon",
            "3",
            "--fairness",
            "reweight",
            "--robustness",
            "--robustness-samples",
            "200",
            "--epochs",
            "3",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    rules, _ = load_policy(str(ROOT / "examples" / "release-policy.yaml"))
    assert len(rules) == 6
    result = cli("gate", out / "report.json", "--policy", ROOT / "examples" / "release-policy.yaml")
    assert result.code in (0, 1)
    assert "missing" not in result.out  # every metric the policy names is in the report


def test_the_train_elsewhere_example_audits_its_own_model_through_the_api_and_the_cli(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import run_audit

    out = tmp_path / "ex"
    script = ROOT / "examples" / "train_elsewhere.py"
    ran = subprocess.run(
        [sys.executable, script, "--rows", "1500", "--epochs", "1", "--out", out],
        capture_output=True,
        text=True,
    )
    assert ran.returncode in (0, 1), ran.stderr  # 0: the policy passed, 1: it failed; never a crash
    api = json.loads((out / "audit" / "report.json").read_text())
    assert (
        ("gate passed: True" in ran.stdout) == (ran.returncode == 0) == (api["metrics"]["gate.passed"] == 1)
    )
    assert {"privacy.mia_auc", "fairness.sex.demographic_parity_difference"} <= set(api["metrics"])
    # the README's command line on the files the script wrote gives the same figures as the API did
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    args = [
        "--model",
        "train_elsewhere:factory",
        "--weights",
        out / "weights.pt",
        "--data",
        out / "test_ready.csv",
    ]
    args += ["--train-data", out / "train_ready.csv", "--target", "income", "--sensitive", "sex,race"]
    cli = run_audit("evaluate", *args, "--features-ready", "--out", tmp_path / "cli", "-q", env=env)
    assert cli.returncode == 0, cli.stderr
    metrics = json.loads((tmp_path / "cli" / "report.json").read_text())["metrics"]
    for name in ("performance.accuracy", "privacy.mia_auc", "fairness.sex.demographic_parity_difference"):
        assert metrics[name] == api["metrics"][name]
