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
