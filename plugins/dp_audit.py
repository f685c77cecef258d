"""One-run privacy auditing of DP-SGD (Steinke, Nasr and Jagielski, NeurIPS 2023): canaries, guesses, the bound.

m canaries are each included with an independent fair coin; the auditor scores every canary from what the
threat model lets it see, guesses "in" for the k most confident and "out" for the k least (abstaining on the
rest) and counts its correct guesses. Their Theorem 3.1: for an (eps, delta)-DP algorithm the count of correct
guesses among r is at most Binomial(r, e^eps / (1 + e^eps)) plus a delta term (their Algorithm 2 / appendix
code, implemented exactly in ``p_value``); the largest eps that this rejects at level beta is the lower bound.

Everything here is plain numbers: the training run that produces the scores is in ``dp_audit_run``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from audit.report import Figure, Series

# Guess counts per side tried, fixed in advance; the confidence is split across them (Bonferroni), so the
# largest bound over the grid holds at the stated confidence.
GUESS_GRID = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BISECTION_STEPS = 50
THREAT_MODELS = {
    "whitebox": "white-box (gradient canaries, every noisy update seen)",
    "blackbox": "black-box (input canaries replacing real rows, final model's loss; group privacy of 2)",
}


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of at least v correct guesses out of r (m canaries) under (eps, delta)-DP; Steinke et al. Alg. 2.

    Pure eps: P[Binomial(r, q) >= v], q = e^eps / (1 + e^eps). With delta the bound adds
    2 m delta max_i P[v - i <= Binomial(r, q) < v] / i (their Theorem 3.1).
    """
    if not 0 <= v <= r <= m or eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need 0 <= v <= r <= m, eps >= 0, 0 <= delta <= 1; got m={m} r={r} v={v} eps={eps}")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # P[Binomial(r, q) = v - i] for i = 1..v, summed cumulatively: sums[i-1] = P[v - i <= Binomial < v]
    sums = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(sums / np.arange(1, v + 1)))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float, beta: float, neighbours: str = "add_remove"
) -> float:
    """The largest eps whose (eps, delta)-DP null hypothesis v correct guesses of r reject at level beta (0 if none).

    ``neighbours="replace"``: each canary's coin swaps it for a real row (black-box canaries), so the theorem
    bounds the replace-one epsilon. Group privacy turns an add/remove (e, delta) guarantee into a replace-one
    (2e, (1 + e^e) delta) one, so eps is rejected when that replace-one hypothesis is: the bound stays a bound
    on the add/remove epsilon the accountant states.
    """
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if neighbours not in ("add_remove", "replace"):
        raise ValueError(f"neighbours must be 'add_remove' or 'replace', got {neighbours!r}")

    def p_at(eps: float) -> float:
        if neighbours == "add_remove":
            return p_value(m, r, v, eps, delta)
        return p_value(m, r, v, 2 * eps, min(1.0, (1 + math.exp(min(eps, 700.0))) * delta))

    if r == 0 or p_at(0.0) >= beta:
        return 0.0
    low, high = 0.0, 1.0  # p_at(low) < beta <= p_at(high)
    while p_at(high) < beta:
        low, high = high, 2 * high
        if high > 1e3:  # every guess right with r large: the bound is finite, this is a guard only
            return low
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if p_at(mid) < beta:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class GuessResult:
    """One guess count's outcome: k guesses per side, r = guesses made, v = correct, and the bound at its level."""

    k: int
    r: int
    v: int
    epsilon: float


@dataclass(frozen=True)
class AuditResult:
    """The audit's bound: the largest over the guess grid, each grid point tested at beta / (grid size)."""

    epsilon_lower_bound: float
    confidence: float
    canaries: int
    included: int
    guesses: list[GuessResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "canaries": self.canaries,
            "included": self.included,
            "guesses": [vars(g) for g in self.guesses],
        }


def guess_counts(m: int) -> list[int]:
    """The grid's guess counts per side that fit m canaries (2k <= m), at least one."""
    return [k for k in GUESS_GRID if 2 * k <= m] or [max(1, m // 2)]


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float,
    neighbours: str = "add_remove",
) -> AuditResult:
    """Guess "in" for the k highest scores and "out" for the k lowest, for each k of the grid; return the bound.

    ``included`` must be the canaries' independent fair coins (the theorem's assumption); ties in the scores
    are broken by position, which does not depend on the coins.
    """
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    m = len(scores)
    if m < 2 or len(included) != m or not np.all(np.isfinite(scores)):
        raise ValueError(
            f"need at least 2 finite scores, one coin each; got {m} scores, {len(included)} coins"
        )
    order = np.argsort(-scores, kind="stable")  # most confident "in" first
    ranked = included[order]
    grid = guess_counts(m)
    beta = (1.0 - confidence) / len(grid)
    results = []
    for k in grid:
        v = int(ranked[:k].sum() + (~ranked[m - k :]).sum())
        bound = epsilon_lower_bound(m, 2 * k, v, delta=delta, beta=beta, neighbours=neighbours)
        results.append(GuessResult(k, 2 * k, v, bound))
    return AuditResult(
        epsilon_lower_bound=max(g.epsilon for g in results),
        confidence=confidence,
        canaries=m,
        included=int(included.sum()),
        guesses=results,
    )


def bound_figure(payload: dict[str, Any]) -> Figure:
    """The audited lower bound at each number of guesses, beside the accountant's epsilon (from the payload)."""
    series = []
    for kind in ("whitebox", "blackbox"):
        guesses = payload[kind]["guesses"]
        series.append(Series(THREAT_MODELS[kind], [g["r"] for g in guesses], [g["epsilon"] for g in guesses]))
    xs = sorted({x for s in series for x in s.x})
    series.append(Series("accountant's epsilon", xs, [payload["accountant_epsilon"]] * len(xs)))
    return Figure(
        "One-run audit: epsilon lower bound against guesses", "line", "guesses (r)", "epsilon", series
    )


def summary_line(payload: dict[str, Any]) -> str:
    """One plain-language line: the accountant's epsilon beside the audited lower bound."""
    if payload["skipped"]:
        return f"One-run DP-SGD audit skipped: {payload['skipped']}."
    bound, claimed = payload["epsilon_lower_bound"], payload["accountant_epsilon"]
    line = (
        f"One-run DP-SGD audit ({payload['whitebox']['canaries']} gradient and {payload['blackbox']['canaries']} "
        "input canaries, in a separate training run with the same noise, sampling, steps and clipping): the "
        f"accountant gives epsilon {claimed:.4g}, the canaries "
        f"prove epsilon >= {bound:.3g} at {payload['confidence']:.0%} confidence "
        f"(white-box {payload['whitebox']['epsilon_lower_bound']:.3g}, black-box "
        f"{payload['blackbox']['epsilon_lower_bound']:.3g})"
    )
    if bound > claimed:
        return line + ": above the guarantee, so the DP-SGD implementation or its accounting is broken."
    return line + ", within the guarantee."


def method_note(payload: dict[str, Any]) -> str:
    """How the bound was obtained and what it assumes, for the section's notes."""
    each = 1 - (1 - payload["confidence"]) / 2
    return (
        f"one-run audit: a separate DP-SGD run with the released run's noise multiplier, sampling rate, steps "
        f"({payload['audit_run_steps']}), clipping norm and delta, through the same DP code path (its accountant: "
        f"epsilon {payload['audit_run_epsilon']:.4g}); the released model never saw a canary. Each canary is included "
        "by its own fair coin (the only randomness the bound relies on); white-box gradient canaries have norm "
        "10 C before clipping; each threat model's bound holds at "
        f"{each:.1%}, their maximum at {payload['confidence']:.0%}, with each guess count of the grid at its "
        f"Bonferroni share; {payload['seconds']:.1f} s"
    )
