"""Privacy accounting: PLD agrees with dp-accounting computed independently, and buys less noise than RDP."""

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant as DpPLDAccountant

from audit_plugins.accounting import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    PLDAccountant,
    calibrate_noise,
    epsilon_under,
    make_accountant,
)

# (sample rate, noise multiplier, steps, delta): Adult's batch 1024 over 10 epochs, a small table, a long run
SETTINGS = [(1024 / 29304, 2.5, 290, 1e-5), (64 / 640, 1.0, 20, 1e-4), (0.01, 0.9, 3000, 1e-6)]


def independent_pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """dp-accounting's PLD on one self-composed event: no code of the plugin involved."""
    accountant = DpPLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("q, sigma, steps, delta", SETTINGS)
def test_pld_epsilon_agrees_with_dp_accounting_and_is_below_rdp(q, sigma, steps, delta):
    history = [(sigma, q, steps)]
    epsilon = epsilon_under("pld", history, delta=delta)
    assert epsilon == pytest.approx(independent_pld_epsilon(q, sigma, steps, delta), rel=0.02)
    assert epsilon < epsilon_under("prv", history, delta=delta) < epsilon_under("rdp", history, delta=delta)


def test_pld_accountant_counts_steps_as_opacus_does():
    accountant = make_accountant("pld")
    assert isinstance(accountant, PLDAccountant) and DEFAULT_ACCOUNTANT == "pld" == ACCOUNTANTS[0]
    for _ in range(30):
        accountant.step(noise_multiplier=1.1, sample_rate=0.05)
    accountant.step(noise_multiplier=2.0, sample_rate=0.05)
    assert accountant.history == [(1.1, 0.05, 30), (2.0, 0.05, 1)]
    two_events = DpPLDAccountant()
    two_events.compose(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1)), 30)
    two_events.compose(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(2.0)))
    assert accountant.get_epsilon(1e-5) == pytest.approx(two_events.get_epsilon(1e-5), rel=0.02)
    assert epsilon_under("pld", [], delta=1e-5) == 0.0


@pytest.mark.parametrize("target, q, steps, delta", [(1.0, 1024 / 29304, 290, 1e-5), (0.5, 0.05, 100, 1e-5)])
def test_pld_calibration_needs_less_noise_than_rdp_and_stays_within_the_target(target, q, steps, delta):
    kwargs = dict(target_epsilon=target, delta=delta, sample_rate=q, steps=steps)
    pld, rdp = calibrate_noise("pld", **kwargs), calibrate_noise("rdp", **kwargs)
    assert pld < 0.97 * rdp  # a few percent less noise for the same guarantee
    achieved = independent_pld_epsilon(q, pld, steps, delta)
    assert achieved <= target and achieved > 0.99 * target  # within budget, and not needlessly noisy
    assert epsilon_under("rdp", [(rdp, q, steps)], delta=delta) <= target
