"""``audit decisions``: the fairness audit of recorded decisions, no model."""

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference

from tests.conftest import read_report, undeclared_metrics


@pytest.fixture
def decisions_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame(
        {
            "group": rng.choice(["x", "y"], n),
            "region": rng.choice(["north", "south"], n),
            "outcome": rng.choice(["approved", "denied"], n),
        }
    )
    frame["decision"] = np.where(
        rng.random(n) < np.where(frame["group"] == "x", 0.6, 0.3), "approved", "denied"
    )
    frame["score"] = rng.random(n)
    path = tmp_path / "decisions.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _decisions(cli, path, out, *extra):
    return cli(
        "decisions", "--data", path, "--y-true", "outcome", "--y-pred", "decision", "--out", out, *extra
    )


def test_decisions_audit_without_a_model(cli, tmp_path, decisions_csv):
    path, frame = decisions_csv
    out = tmp_path / "dec"
    result = _decisions(
        cli, path, out, "--score", "score", "--sensitive", "group", "--positive-label", "approved"
    )
    assert result.code == 0, result.err
    m = read_report(out)["metrics"]
    y = (frame["outcome"] == "approved").astype(int).to_numpy()
    p = (frame["decision"] == "approved").astype(int).to_numpy()
    assert m["fairness.group.demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=frame["group"]), abs=1e-9
    )
    assert "fairness.group.demographic_parity_difference" in result.out
    card = (out / "model_card.md").read_text()
    assert "trained or loaded no model" in card and "Target: `outcome`" in card and "`?`" not in card
    assert undeclared_metrics(m) == []


def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, decisions_csv):
    path, _ = decisions_csv
    bad = _decisions(cli, path, tmp_path / "x", "--sensitive", "group", "--y-true", "nope")
    assert bad.code == 2 and "no column 'nope'" in bad.err
    bad = _decisions(cli, path, tmp_path / "y", "--sensitive", "group", "--bootstrap", "30")
    assert bad.code == 2 and "--bootstrap was removed" in bad.err and "--intervals exact|none" in bad.err
    assert not (tmp_path / "y").exists()
    bad = _decisions(cli, path, tmp_path / "z", "--sensitive", "group", "--positive-label", "maybe")
    assert bad.code == 2 and "--positive-label 'maybe' is not a value" in bad.err


def test_sections_carry_their_order_and_the_fairness_payload(cli, tmp_path, decisions_csv):
    path, _ = decisions_csv
    out = tmp_path / "dec"
    result = _decisions(
        cli, path, out, "--sensitive", "group, region", "--positive-label", "approved", "--intervals", "exact"
    )
    assert result.code == 0, result.err
    report = read_report(out)
    sections = {s["name"]: s for s in report["sections"]}
    assert sections["performance"]["order"] == 10 and sections["fairness"]["order"] == 40
    data = sections["fairness"]["data"]
    assert list(data["features"]) == ["group", "region", "group&region"]
    assert data["intervals"]["method"] == "clopper-pearson" and data["mitigation"] is None
    assert data["intervals"]["simultaneous"] == "bonferroni" and data["constant_predictions"] is None
    assert report["run"]["data"]["sensitive"] == ["group", "region"]
    assert "--sensitive=group,region" in report["run"]["command_line"]
    assert sections["fairness"]["summary"][0].startswith("group: selection rates range from")


def test_one_class_decisions_are_warned_about_end_to_end(cli, tmp_path, decisions_csv):
    path, frame = decisions_csv
    frame = frame.assign(decision="approved")
    frame.to_csv(path, index=False)
    out = tmp_path / "dec"
    result = _decisions(cli, path, out, "--sensitive", "group", "--positive-label", "approved")
    assert result.code == 0, result.err
    fairness = next(s for s in read_report(out)["sections"] if s["name"] == "fairness")
    assert fairness["data"]["constant_predictions"] == {
        "class": "approved",
        "share": 1.0,
        "rows": len(frame),
        "by": "decisions",
    }
    assert fairness["warnings"][0].startswith("ONE-CLASS PREDICTIONS: the recorded decisions are 'approved'")
    assert "ONE-CLASS PREDICTIONS" in (out / "report.md").read_text()
