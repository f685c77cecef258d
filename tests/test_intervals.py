"""Exact binomial intervals: the closed forms at the edges, symmetry, and at least nominal coverage."""

import numpy as np
import pytest
from scipy.stats import binom

from audit.intervals import clopper_pearson


def test_edges_have_closed_forms_and_the_interval_is_symmetric():
    n = 10
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n)))
    assert clopper_pearson(n, n) == (pytest.approx(0.025 ** (1 / n)), 1.0)
    low, high = clopper_pearson(3, n)
    mirror_low, mirror_high = clopper_pearson(7, n)
    assert low == pytest.approx(1 - mirror_high) and high == pytest.approx(1 - mirror_low)


@pytest.mark.parametrize("n", [20, 100])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_coverage_is_at_least_nominal(n, p):
    k = np.arange(n + 1)
    covered = np.array([lo <= p <= hi for lo, hi in (clopper_pearson(int(i), n) for i in k)])
    assert float(binom.pmf(k, n, p)[covered].sum()) >= 0.95
