"""DP-SGD privacy accounting: the accountants (PLD by dp-accounting; RDP and PRV by Opacus) and noise calibration.

An accountant here is anything with Opacus' accountant interface as the privacy plugin uses it: ``history``
(a list of ``(noise_multiplier, sample_rate, steps)``), ``get_optimizer_hook_fn(sample_rate)`` and
``get_epsilon(delta)``. Opacus' own accountants have it; ``PLDAccountant`` gives it to dp-accounting's PLD.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

# Tightest first. PLD (privacy loss distributions, pessimistic discretisation) is an upper bound on epsilon
# whatever its grid; Opacus' PRV adds its own eps_error (reported epsilon ~1% above PLD's); RDP is loosest.
ACCOUNTANTS = ("pld", "prv", "rdp")
DEFAULT_ACCOUNTANT = "pld"
LABELS = {"pld": "dp-accounting's PLD", "prv": "Opacus' PRV", "rdp": "Opacus' RDP"}
# dp-accounting's default grid; the pessimistic estimate stays an upper bound on any grid (finer: tighter, slower).
PLD_DISCRETIZATION = 1e-4
# Search tolerance, relative to the noise: at most 0.02% more noise than the optimum (the answer is nudged up by
# one tolerance and checked against the target). Each PLD evaluation costs ~0.1-0.5 s; Brent needs ~6-10.
CALIBRATION_RTOL = 1e-4
BRACKET_FACTOR = 0.7  # the search for PLD's noise starts in [0.7, 1] x RDP's


class PLDAccountant:
    """Opacus' accountant interface over dp-accounting's PLD accountant for Poisson-sampled Gaussian steps."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Account one step; equal consecutive steps share one history entry (composed together)."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            _, _, steps = self.history.pop()
            self.history.append((noise_multiplier, sample_rate, steps + 1))
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def get_optimizer_hook_fn(self, sample_rate: float) -> Callable[[Any], None]:
        """A step hook for Opacus' DPOptimizer, as Opacus' own accountants give."""

        def hook(optimizer: Any) -> None:
            self.step(
                noise_multiplier=optimizer.noise_multiplier,
                sample_rate=sample_rate * optimizer.accumulated_iterations,
            )

        return hook

    def get_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` over the history."""
        return pld_epsilon(tuple(self.history), delta)


@functools.lru_cache(maxsize=64)
def _step_pld(sigma: float, sample_rate: float) -> Any:
    """One Poisson-sampled Gaussian step's PLD, built as dp-accounting's PLDAccountant builds it."""
    # cached: building it is the expensive part; composing it over the steps is an FFT
    from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism

    return from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=PLD_DISCRETIZATION, sampling_prob=sample_rate
    )


def pld_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Epsilon of a history of (noise multiplier, sample rate, steps) by dp-accounting's PLD (connect-the-dots)."""
    composed = None
    for sigma, rate, steps in history:
        pld = _step_pld(float(sigma), float(rate)).self_compose(int(steps))
        composed = pld if composed is None else composed.compose(pld)
    return float(composed.get_epsilon_for_delta(delta)) if composed is not None else 0.0


def make_accountant(name: str) -> Any:
    """A fresh accountant of the given name (one of ``ACCOUNTANTS``)."""
    if name == "pld":
        return PLDAccountant()
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"prv": PRVAccountant, "rdp": RDPAccountant}[name]()


def epsilon_under(name: str, history: list[tuple[float, float, int]], *, delta: float) -> float:
    """Epsilon that accountant ``name`` gives for a history of (noise multiplier, sample rate, steps)."""
    if not history:
        return 0.0
    accountant = make_accountant(name)
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def calibrate_noise(
    name: str, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """The smallest noise multiplier (within tolerance) whose epsilon over ``steps`` is at most the target.

    Raises ValueError when no finite noise reaches the target.
    """
    from opacus.accountants.utils import get_noise_multiplier

    # RDP's calibration is cheap and its noise is enough under every accountant (RDP is the loosest bound).
    rdp = get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant="rdp" if name == "pld" else name,
    )
    if name != "pld":
        return rdp
    return _calibrate_pld(
        rdp, target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps
    )


def _calibrate_pld(
    upper: float, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    from scipy.optimize import brentq

    def gap(sigma: float) -> float:
        return pld_epsilon(((sigma, sample_rate, steps),), delta) - target_epsilon

    while gap(upper) > 0:  # not expected (PLD is the tighter bound), but a bracket must hold the answer
        upper /= BRACKET_FACTOR
    # PLD needs 5-30% less noise than RDP; small noise is PLD's slow end, so the bracket starts close below
    lower = upper * BRACKET_FACTOR
    while gap(lower) <= 0:
        upper, lower = lower, lower * BRACKET_FACTOR
    tol = CALIBRATION_RTOL * upper
    sigma = brentq(gap, lower, upper, xtol=tol)
    # Brent's answer lies within the tolerance of the boundary, on either side: step up until it is within budget.
    sigma = min(upper, sigma + tol)
    while gap(sigma) > 0 and sigma < upper:
        sigma = min(upper, sigma + tol)
    return float(sigma)
