"""Release gates through the real CLI: each rule kind passing and failing, fail-closed, JUnit, malformed policies."""

import json
import xml.etree.ElementTree as ET

import pytest

from audit.report import content_digest
from tests.conftest import read_report


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("g") / "run"
    assert main(["train", "--sensitive", "sex", "--epochs", "2", "--out", str(out), "-q"]) == 0
    return out / "report.json"


def _policy(tmp_path, text):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("- performance.accuracy >= 0.5", 0),
        ("- performance.accuracy >= 0.99", 1),
        (
            "- {metric: performance.accuracy, op: '>=', value: 0.5, bound: lower}",
            0,
        ),  # the exact 95% interval's lower end
        ("- {metric: performance.accuracy, op: '>=', value: 0.999, bound: upper}", 1),
        ("- {metric: fairness.sex.demographic_parity_difference, op: '<=', value: 0.5, bound: upper}", 0),
        ("- {metric: fairness.sex.demographic_parity_difference, op: '<=', value: 0.0001, bound: upper}", 1),
        ("- {metric: 'fairness.*.equalized_odds_difference', op: '<=', value: 1.0}", 0),
        ("- {metric: 'fairness.*.equalized_odds_difference', op: '<=', value: 0.0}", 1),
        (
            "- {metric: 'fairness.nobody.*', op: '<=', value: 1.0}",
            1,
        ),  # a declared family with no match here fails closed
        (
            "- {metric: privacy.epsilon, op: '<=', value: 3}",
            1,
        ),  # no DP in this run: missing metric fails closed
        ("- {metric: privacy.epsilon, op: '<=', value: 3, severity: warn}", 0),
    ],
)
def test_rule_kinds(cli, tmp_path, report_path, rule, expected):
    result = cli("gate", report_path, "--policy", _policy(tmp_path, f"rules:\n  {rule}\n"))
    assert result.code == expected, result.out + result.err
    assert ("gate: PASS" if expected == 0 else "gate: FAIL") in result.out


def test_regression_against_a_baseline(cli, tmp_path, report_path):
    worse = json.loads(report_path.read_text())
    worse["metrics"]["performance.accuracy"] -= 0.05
    worse["content_sha256"] = content_digest(worse)  # a consistent report: the gate verifies before deciding
    baseline = tmp_path / "old.json"
    baseline.write_text(json.dumps(json.loads(report_path.read_text())))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(worse))
    policy = _policy(
        tmp_path, "rules:\n  - {id: acc-regression, metric: performance.accuracy, max_drop: 0.01}\n"
    )
    assert cli("gate", report_path, "--policy", policy, "--baseline", baseline).code == 0
    assert cli("gate", new, "--policy", policy, "--baseline", baseline).code == 1
    missing = cli("gate", new, "--policy", policy)
    assert missing.code == 2 and "--baseline" in missing.err


def test_junit_and_summary(cli, tmp_path, report_path):
    policy = _policy(
        tmp_path,
        "rules:\n  - performance.accuracy >= 0.5\n"
        "  - {id: strict, metric: performance.roc_auc, op: '>=', value: 0.999}\n",
    )
    junit, summary = tmp_path / "gate.xml", tmp_path / "gate.md"
    assert cli("gate", report_path, "--policy", policy, "--junit", junit, "--summary", summary).code == 1
    root = ET.parse(junit).getroot()
    cases = root.findall("testcase")
    assert len(cases) == 2 and root.get("failures") == "1"
    assert cases[1].find("failure") is not None and cases[0].find("failure") is None
    assert "Release gate failed" in summary.read_text()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "rules:\n  - performance.accuracy >= 0.5\n  - {metric: performance.accuracy, op: '=>', value: 1}\n",
            "line 3",
        ),
        ("rules:\n  - {metric: performance.accuracy, op: '>=', value: high}\n", "value must be a number"),
        ("rules: [\n", "not valid YAML"),
        ("rules: []\n", "non-empty list"),
        ("rules:\n  - {metric: a, op: '>=', value: 1, colour: red}\n", "unknown key"),
    ],
)
def test_malformed_policy_exits_2(cli, tmp_path, report_path, text, expected):
    result = cli("gate", report_path, "--policy", _policy(tmp_path, text))
    assert result.code == 2
    assert expected in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "metric, nearest", [("performance.acuracy", "nearest: performance.accuracy"), ("nothing.*.matches", "")]
)
def test_a_metric_no_plugin_declares_is_bad_input(cli, tmp_path, report_path, metric, nearest):
    # a typo must not read as "this run lacked the metric": exit 2 names it, before any training time is spent
    policy = _policy(tmp_path, f"rules:\n  - {{id: typo, metric: '{metric}', op: '>=', value: 0.5}}\n")
    result = cli("gate", report_path, "--policy", policy)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert f"rule typo: metric '{metric}' is unknown" in result.err and nearest in result.err
    out = tmp_path / "never"
    trained = cli("train", "--data", "digits", "--epochs", "1", "--policy", policy, "--out", out, "-q")
    assert trained.code == 2 and "is unknown" in trained.err and not out.exists()


def test_train_with_policy_gates_and_records_it(cli, tmp_path):
    policy = _policy(tmp_path, "rules:\n  - performance.accuracy >= 0.99\n")
    out = tmp_path / "run"
    assert cli("train", "--data", "digits", "--epochs", "1", "--policy", policy, "--out", out, "-q").code == 1
    report = read_report(out)
    assert report["metrics"]["gate.passed"] == 0
    assert report["run"]["policy_sha256"]


def test_metrics_diff_and_verify(cli, tmp_path, report_path):
    listing = cli("metrics", report_path)
    assert "performance.accuracy" in listing.out
    assert cli("verify", report_path).code == 0
    edited = json.loads(report_path.read_text())
    edited["metrics"]["performance.accuracy"] = 0.99
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(edited))
    result = cli("verify", tampered)
    assert result.code == 1 and "MODIFIED" in result.out
    diff = cli("diff", report_path, tampered)
    assert "performance.accuracy" in diff.out and "efficiency.params" not in diff.out


@pytest.mark.parametrize(
    "a, b, overlap",
    [
        ("fairness.nobody.*", "fairness.*.group.*", True),
        ("nothing.*.matches", "fairness.*.group.*", False),
        ("performance.acuracy", "performance.accuracy", False),
        ("robustness.pgd.eps_*.robust_accuracy", "robustness.*.eps_*.robust_accuracy", True),
        ("a*c", "b*", False),
        ("a?c", "abc", True),
    ],
)
def test_globs_overlap_when_some_name_matches_both(a, b, overlap):
    from audit.gate import globs_overlap

    assert globs_overlap(a, b) is overlap and globs_overlap(b, a) is overlap


@pytest.mark.parametrize(
    "old, new",
    [
        ("privacy.mia_auc.sex.Female", "privacy.sex.group.Female.mia_auc"),
        ("robustness.sex.Male.robust_accuracy.ci_low", "robustness.sex.group.Male.robust_accuracy.ci_low"),
        ("privacy.mia_auc.sex.Male.ci_high", "privacy.sex.group.Male.mia_auc.ci_high"),
    ],
)
def test_a_renamed_metric_names_its_new_name(cli, tmp_path, report_path, old, new):
    # metric names are public API: a policy written for 0.1 gets the 0.2 name, not "unknown" (CHANGELOG.md)
    policy = _policy(tmp_path, f"rules:\n  - {{metric: '{old}', op: '>=', value: 0.5}}\n")
    result = cli("gate", report_path, "--policy", policy)
    assert result.code == 2 and result.err.count("\n") == 1
    assert f"{old!r} was renamed to {new!r}" in result.err
