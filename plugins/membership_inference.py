"""Membership-inference audit: loss-threshold attacks and the epsilon lower bound their TPR/FPR imply.

The headline bound is the largest over the attacks, so each attack's bound is taken at the Bonferroni share of
the level (1 - 0.05 / attacks): the maximum then holds at 95% (each at 95% would only give ~90% for two).

Plain numpy in, plain figures out: the privacy plugin picks the rows from its evaluation context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from audit.groups import group_masks
from audit.intervals import clopper_pearson

# Per side: the attacks split each side in halves (calibration / Clopper-Pearson bounds), and a per-group
# AUC on fewer rows says nothing.
MIN_SAMPLES = 10
FPR_TARGETS = (0.01, 0.001)
ATTACKS = ("loss threshold", "class-calibrated loss")
CONFIDENCE = 0.95  # for the maximum over ATTACKS


def per_attack_confidence(confidence: float, attacks: int) -> float:
    """Each attack's level so that the maximum over ``attacks`` bounds holds at ``confidence`` (union bound)."""
    return 1.0 - (1.0 - confidence) / attacks


PER_ATTACK_CONFIDENCE = per_attack_confidence(CONFIDENCE, len(ATTACKS))


@dataclass
class AttackResult:
    """One attack's figures on balanced member / non-member samples."""

    name: str
    auc: float
    tpr_at_fpr: dict[float, float]
    epsilon_lower_bound: float
    members: int
    nonmembers: int
    confidence: float  # the level of this attack's own epsilon lower bound

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``tpr_at_fpr_<target>`` keys instead of float dictionary keys."""
        return {
            "name": self.name,
            "auc": self.auc,
            **{f"tpr_at_fpr_{f:g}": self.tpr_at_fpr[f] for f in FPR_TARGETS},
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "members": self.members,
            "nonmembers": self.nonmembers,
            "confidence": self.confidence,
        }


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_target: float) -> float:
    """Highest true-positive rate whose false-positive rate does not exceed ``fpr_target``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


def _epsilon_at(tpr: float, fpr: float, delta: float) -> float:
    """The epsilon an (epsilon, delta)-DP mechanism needs to let an attack reach (tpr, fpr)."""
    candidates = []
    if fpr > 0 and tpr - delta > 0:
        candidates.append(math.log((tpr - delta) / fpr))
    if tpr < 1 and 1 - fpr - delta > 0:
        candidates.append(math.log((1 - fpr - delta) / (1 - tpr)))
    return max(candidates + [0.0])


def epsilon_lower_bound(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> float:
    """A lower bound on epsilon that holds with ``confidence``: threshold chosen on one half, bounded on the other.

    On the held-out half, TPR is replaced by its Clopper-Pearson lower bound and FPR by its upper bound,
    so the bound is conservative (Jagielski et al., 2020; Nasr et al., 2021).
    """
    rng = np.random.default_rng(seed)
    m, n = rng.permutation(member_scores), rng.permutation(nonmember_scores)
    m_fit, m_eval = m[: len(m) // 2], m[len(m) // 2 :]
    n_fit, n_eval = n[: len(n) // 2], n[len(n) // 2 :]
    thresholds = np.unique(np.quantile(np.concatenate([m_fit, n_fit]), np.linspace(0.0, 1.0, 201)))
    tpr_fit = (m_fit[None, :] >= thresholds[:, None]).mean(1)
    fpr_fit = (n_fit[None, :] >= thresholds[:, None]).mean(1)
    # Pick the threshold whose point estimate is largest, with FPR kept off zero to avoid a degenerate pick.
    fpr_safe = np.maximum(fpr_fit, 1.0 / max(len(n_fit), 1))
    point = [_epsilon_at(t, f, delta) for t, f in zip(tpr_fit, fpr_safe)]
    threshold = thresholds[int(np.argmax(point))]
    tp, fp = int((m_eval >= threshold).sum()), int((n_eval >= threshold).sum())
    # The two directions below use all four tails of the two intervals, so each interval gets half the error:
    # by the union bound, TPR and FPR both lie in theirs with probability >= ``confidence``.
    each = 1 - (1 - confidence) / 2
    tpr_lo, tpr_hi = clopper_pearson(tp, len(m_eval), each)
    fpr_lo, fpr_hi = clopper_pearson(fp, len(n_eval), each)
    # Both directions of the DP inequality; each uses the conservative side of each interval.
    return max(
        _epsilon_at(tpr_lo, fpr_hi, delta),
        _epsilon_at(1 - tpr_hi, 1 - fpr_lo, delta) if fpr_lo < 1 else 0.0,
        0.0,
    )


def run_attack(
    name: str,
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    delta: float,
    seed: int,
    confidence: float = CONFIDENCE,
) -> AttackResult:
    """AUC, TPR at FPR 1% and 0.1%, and the epsilon lower bound for scores where higher means 'member'."""
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    scores = np.concatenate([member_scores, nonmember_scores])
    return AttackResult(
        name=name,
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_fpr={f: tpr_at_fpr(labels, scores, f) for f in FPR_TARGETS},
        epsilon_lower_bound=epsilon_lower_bound(
            member_scores, nonmember_scores, delta=delta, confidence=confidence, seed=seed
        ),
        members=len(member_scores),
        nonmembers=len(nonmember_scores),
        confidence=confidence,
    )


def class_calibrated_scores(
    losses: np.ndarray, labels: np.ndarray, reference_losses: np.ndarray, reference_labels: np.ndarray
) -> np.ndarray:
    """Membership scores: how much lower a row's loss is than the typical held-out loss of its class."""
    n_classes = int(max(labels.max(initial=0), reference_labels.max(initial=0))) + 1
    typical = np.array(
        [
            np.median(reference_losses[reference_labels == c])
            if (reference_labels == c).any()
            else np.median(reference_losses)
            for c in range(n_classes)
        ]
    )
    return typical[labels] - losses


def draw_sides(members: int, nonmembers: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced sides: k member and k non-member row indices without replacement, k = min(sizes, samples)."""
    rng = np.random.default_rng(seed)
    k = min(members, nonmembers, samples)
    return rng.choice(members, k, replace=False), rng.choice(nonmembers, k, replace=False)


def loss_attacks(
    member_losses: np.ndarray,
    member_labels: np.ndarray,
    nonmember_losses: np.ndarray,
    nonmember_labels: np.ndarray,
    *,
    delta: float,
    seed: int,
    confidence: float = PER_ATTACK_CONFIDENCE,
) -> list[AttackResult]:
    """The loss-threshold attack and the class-calibrated one, each bounded at ``confidence`` (its Bonferroni share)."""
    # Half of the non-members calibrate the class-conditional attack; the rest are scored.
    half = len(nonmember_losses) // 2
    ref_losses, ref_labels = nonmember_losses[:half], nonmember_labels[:half]
    threshold, calibrated = ATTACKS
    return [
        run_attack(
            threshold,
            -member_losses,
            -nonmember_losses,
            delta=delta,
            seed=seed,
            confidence=confidence,
        ),
        run_attack(
            calibrated,
            class_calibrated_scores(member_losses, member_labels, ref_losses, ref_labels),
            class_calibrated_scores(nonmember_losses[half:], nonmember_labels[half:], ref_losses, ref_labels),
            delta=delta,
            seed=seed,
            confidence=confidence,
        ),
    ]


def group_aucs(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    member_groups: np.ndarray,
    nonmember_groups: np.ndarray,
) -> list[dict[str, Any]]:
    """Attack AUC within each group that has at least ``MIN_SAMPLES`` members and non-members, in group order."""
    sides = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    rows = []
    for group, mask in group_masks(np.r_[member_groups, nonmember_groups]):
        members, nonmembers = int(sides[mask].sum()), int((1 - sides[mask]).sum())
        if members < MIN_SAMPLES or nonmembers < MIN_SAMPLES:
            continue
        auc = float(roc_auc_score(sides[mask], scores[mask]))
        rows.append({"group": group, "members": members, "nonmembers": nonmembers, "auc": auc})
    return rows
