"""The one-run audit's statistics (Steinke, Nasr and Jagielski 2023): p-value, bisection, guesses, soundness."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from audit.checkpoint import load_checkpoint
from audit_plugins.dp_audit import (
    GUESS_GRID,
    audit_scores,
    epsilon_lower_bound,
    guess_counts,
    p_value,
)
from tests.conftest import assert_bad_input, read_report, undeclared_metrics


def _papers_p_value(m, r, v, eps, delta):
    """The p-value as the paper's appendix code computes it: a loop over i, alpha kept as a running maximum."""
    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


@pytest.mark.parametrize(
    "m,r,v,eps,delta",
    [
        (1000, 100, 90, 1.0, 1e-5),
        (1000, 100, 90, 2.0, 0.0),
        (200, 40, 35, 0.5, 1e-3),
        (5000, 2000, 1400, 0.7, 1e-5),
    ],
)
def test_p_value_is_the_papers_algorithm(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(
        _papers_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15
    )


def test_every_guess_right_gives_the_closed_form_bound():
    # pure DP, v = r: P[Binomial(r, q) = r] = q^r < beta  <=>  eps > log(q / (1 - q)) with q = beta^(1/r);
    # 100 correct guesses of 100 prove eps >= 3.49 at 95%
    q = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(1000, 100, 100, delta=0.0, beta=0.05) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-9
    )
    assert math.log(q / (1 - q)) == pytest.approx(3.493, abs=1e-3)


def test_the_bound_grows_with_correct_guesses_and_shrinks_with_delta_and_confidence():
    bounds = [epsilon_lower_bound(1000, 200, v, delta=1e-5, beta=0.05) for v in (100, 120, 150, 180, 200)]
    assert bounds[0] == 0.0 and all(a < b for a, b in zip(bounds, bounds[1:]))
    assert epsilon_lower_bound(1000, 200, 180, delta=1e-3, beta=0.05) < bounds[3]
    assert epsilon_lower_bound(1000, 200, 180, delta=1e-5, beta=0.001) < bounds[3]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        p_value(10, 20, 5, 1.0, 0.0)  # more guesses than canaries
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 4, 4, delta=0.0, beta=1.0)
    with pytest.raises(ValueError):
        audit_scores(np.array([1.0, np.nan]), np.array([True, False]), delta=0.0, confidence=0.95)


def test_guess_grid_is_fixed_in_advance_and_fits_the_canaries():
    assert guess_counts(1000) == [k for k in GUESS_GRID if 2 * k <= 1000]
    assert guess_counts(3) == [1]


def test_audit_scores_tests_each_guess_count_at_its_share_of_beta():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    scores = included + rng.normal(0, 0.3, 1000)  # nearly separable
    result = audit_scores(scores, included, delta=1e-5, confidence=0.95)
    beta = 0.05 / len(guess_counts(1000))
    order = np.argsort(-scores)
    for guess in result.guesses:
        v = included[order[: guess.k]].sum() + (~included[order[-guess.k :]]).sum()
        assert (guess.r, guess.v) == (2 * guess.k, v)
        assert guess.epsilon == pytest.approx(
            epsilon_lower_bound(1000, 2 * guess.k, int(v), delta=1e-5, beta=beta)
        )
    assert result.epsilon_lower_bound == max(g.epsilon for g in result.guesses) > 2
    assert result.included == included.sum() and result.canaries == 1000


def test_the_bound_is_sound_on_randomised_response():
    # An eps-DP mechanism (randomised response on each coin, the worst case of the theorem): the bound may
    # exceed the true eps only with probability beta = 5%; over 100 audits it must stay rare.
    eps, m, trials = 1.0, 500, 100
    rng = np.random.default_rng(1)
    keep = math.exp(eps) / (1 + math.exp(eps))
    bounds = []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        answer = np.where(rng.random(m) < keep, included, ~included)
        scores = answer + rng.random(m) * 1e-3  # break ties at random, independently of the coins
        bounds.append(audit_scores(scores, included, delta=0.0, confidence=0.95).epsilon_lower_bound)
    assert np.mean(np.array(bounds) > eps) <= 0.05
    assert np.median(bounds) > 0.4  # and the audit does see the mechanism's leakage


def test_replace_one_canaries_are_bounded_through_group_privacy():
    # A canary that replaces a real row changes two rows of an add/remove neighbour: the same guesses prove at
    # most half the epsilon (group privacy of 2), and a replace-one (2e, (1 + e^e) delta) hypothesis is what
    # an add/remove (e, delta) guarantee implies, so the replace bound is the largest e that rejects that.
    for m, r, v, delta in [(1000, 100, 100, 0.0), (1000, 200, 170, 1e-5), (500, 40, 38, 1e-5)]:
        add_remove = epsilon_lower_bound(m, r, v, delta=delta, beta=0.05)
        replace = epsilon_lower_bound(m, r, v, delta=delta, beta=0.05, neighbours="replace")
        assert 0 < replace <= add_remove / 2 + 1e-9
        assert p_value(m, r, v, 2 * replace, (1 + math.exp(replace)) * delta) < 0.05
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 4, 4, delta=0.0, beta=0.05, neighbours="swap")


# --- through the CLI ---------------------------------------------------------------------------------------

TIMING = ("wall_s", "time_s", "per_s", "rss_mb", "latency_ms", "cuda_peak")  # measured, not computed
SHORT_DP = "--dp --noise-multiplier 1.0 --epochs 2 --batch-size 64 --mia-reference-models 0".split()


def _privacy(report):
    return next(s for s in report["sections"] if s["name"] == "privacy")


def _loans(loans_csv, out, *extra):
    return ["train", "--data", loans_csv, "--target", "defaulted", *SHORT_DP, *extra, "--out", out, "-q"]


def test_dp_audit_options_are_refused_without_what_they_need(cli, tmp_path, loans_csv):
    out = tmp_path / "out"
    base = ["train", "--data", loans_csv, "--target", "defaulted", "--out", out]
    assert_bad_input(cli(*base, "--dp-audit"), out, says="--dp-audit")
    assert_bad_input(
        cli(*base, "--dp", "--epsilon", "1", "--dp-audit-canaries", "50"), out, says="--dp-audit"
    )
    assert_bad_input(
        cli(*base, "--dp", "--epsilon", "1", "--dp-audit", "--dp-audit-canaries", "4"),
        out,
        says="at least 10",
    )


def test_dp_audit_leaves_the_released_model_and_its_accounting_as_they_were(cli, tmp_path, loans_csv):
    plain, audited = tmp_path / "plain", tmp_path / "audited"
    assert cli(*_loans(loans_csv, plain)).code == 0
    assert cli(*_loans(loans_csv, audited, "--dp-audit", "--dp-audit-canaries", "300")).code == 0
    before, after = read_report(plain), read_report(audited)
    # model.pt differs only in the config it records (dp_audit: true): same weights, spec, schema, metadata
    saved = [load_checkpoint(str(folder / "model.pt")) for folder in (plain, audited)]
    assert saved[0]["state_dict"].keys() == saved[1]["state_dict"].keys()
    assert all(
        torch.equal(saved[0]["state_dict"][k], saved[1]["state_dict"][k]) for k in saved[0]["state_dict"]
    )
    rest = [{k: v for k, v in c.items() if k not in ("state_dict", "config")} for c in saved]
    assert rest[0] == rest[1]
    options = [c["config"]["options"] for c in saved]
    changed = {k for k in options[0] | options[1] if options[0].get(k) != options[1].get(k)}
    assert changed == {"dp_audit", "dp_audit_canaries"}
    assert _privacy(after)["data"]["guarantee"] == _privacy(before)["data"]["guarantee"]
    audit_metrics = {k for k in after["metrics"] if k.startswith("privacy.audit.")}
    assert set(before["metrics"]) == set(after["metrics"]) - audit_metrics
    # every other metric is untouched too: the audit run's random draws are its own
    assert all(
        after["metrics"][k] == v for k, v in before["metrics"].items() if not any(t in k for t in TIMING)
    )


def test_dp_audit_reports_the_bound_beside_the_accountants_epsilon(cli, tmp_path, loans_csv):
    out = tmp_path / "audited"
    assert cli(*_loans(loans_csv, out, "--dp-audit", "--dp-audit-canaries", "300")).code == 0
    report = read_report(out)
    metrics, section = report["metrics"], _privacy(report)
    audit = section["data"]["dp_audit"]
    assert undeclared_metrics(metrics) == []
    assert (
        metrics["privacy.audit.epsilon_lower_bound"]
        == audit["epsilon_lower_bound"]
        == max(
            metrics["privacy.audit.epsilon_lower_bound.whitebox"],
            metrics["privacy.audit.epsilon_lower_bound.blackbox"],
        )
    )
    assert 0 <= audit["epsilon_lower_bound"] <= metrics["privacy.epsilon"] == audit["accountant_epsilon"]
    assert audit["audit_run_epsilon"] == pytest.approx(metrics["privacy.epsilon"], rel=1e-9)
    assert audit["audit_run_steps"] == metrics["privacy.steps"]
    assert metrics["privacy.audit.canaries"] == 300 and metrics["privacy.audit.confidence"] == 0.95
    assert audit["whitebox"]["confidence"] == audit["blackbox"]["confidence"] == 0.975
    figure = next(f for f in section["figures"] if f["title"].startswith("One-run audit"))
    assert [g["r"] for g in audit["whitebox"]["guesses"]] == figure["series"][0]["x"]
    assert figure["series"][0]["y"] == [g["epsilon"] for g in audit["whitebox"]["guesses"]]
    assert any(
        line.startswith("One-run DP-SGD audit") and "within the guarantee" in line
        for line in section["summary"]
    )
