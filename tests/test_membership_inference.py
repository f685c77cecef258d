"""Membership-inference attacks: balanced sides, per-group AUCs and the epsilon lower bound."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audit_plugins.membership_inference import (
    CONFIDENCE,
    MIN_SAMPLES,
    PER_ATTACK_CONFIDENCE,
    draw_sides,
    epsilon_lower_bound,
    group_aucs,
    loss_attacks,
)


def test_epsilon_lower_bound_is_zero_for_indistinguishable_scores():
    rng = np.random.default_rng(0)
    assert epsilon_lower_bound(rng.normal(size=2000), rng.normal(size=2000), delta=1e-5) == 0.0
    assert epsilon_lower_bound(rng.normal(3, 1, size=2000), rng.normal(size=2000), delta=1e-5) > 1.0


def test_draw_sides_are_balanced_distinct_and_capped():
    members, nonmembers = draw_sides(500, 80, 5000, seed=1)
    assert len(members) == len(nonmembers) == 80
    assert len(set(members.tolist())) == 80 and members.max() < 500 and sorted(nonmembers) == list(range(80))
    assert [len(side) for side in draw_sides(500, 300, 50, seed=1)] == [50, 50]


def test_loss_attacks_see_memorised_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    attacks = loss_attacks(rng.random(200) * 0.1, labels, 1 + rng.random(200), labels, delta=1e-5, seed=0)
    assert [a.name for a in attacks] == ["loss threshold", "class-calibrated loss"]
    assert all(a.auc == 1.0 and a.epsilon_lower_bound > 1.0 for a in attacks)
    assert attacks[1].nonmembers == 100  # half the non-members calibrate the class-conditional attack
    assert set(attacks[0].to_dict()) == {
        "name",
        "auc",
        "tpr_at_fpr_0.01",
        "tpr_at_fpr_0.001",
        "epsilon_lower_bound",
        "members",
        "nonmembers",
        "confidence",
    }


def test_group_aucs_skip_groups_with_too_few_rows_on_a_side():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 60), rng.normal(size=60)
    member_groups = np.array(["a"] * 50 + ["b"] * 10)
    nonmember_groups = np.array(["a"] * 51 + ["b"] * (MIN_SAMPLES - 1))
    rows = group_aucs(members, nonmembers, member_groups, nonmember_groups)
    assert [row["group"] for row in rows] == ["a"]
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(51)], np.r_[members[:50], nonmembers[:51]])
    assert rows[0] == {"group": "a", "members": 50, "nonmembers": 51, "auc": expected}


def test_each_attack_is_bounded_at_the_bonferroni_share_so_the_maximum_holds_at_95():
    assert CONFIDENCE == 0.95 and PER_ATTACK_CONFIDENCE == pytest.approx(1 - 0.05 / 2, abs=1e-12)
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.0, 1.0, 400), rng.normal(1.5, 1.0, 400)  # losses: members lower
    labels = np.zeros(400, dtype=int)
    attacks = loss_attacks(members, labels, nonmembers, labels, delta=1e-5, seed=0)
    at_975 = epsilon_lower_bound(-members, -nonmembers, delta=1e-5, confidence=0.975, seed=0)
    at_95 = epsilon_lower_bound(-members, -nonmembers, delta=1e-5, confidence=0.95, seed=0)
    assert attacks[0].confidence == PER_ATTACK_CONFIDENCE
    assert attacks[0].epsilon_lower_bound == at_975
    assert 0 < at_975 < at_95  # the stricter per-attack level gives a smaller (honest) bound
