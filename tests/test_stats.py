"""Statistics of cross-validation: the t-interval across folds and the paired bootstrap within one."""

from __future__ import annotations

import math

import pytest


def test_t_quantile_matches_the_tables():
    from llgbm_cli.evaluation.stats import t_cdf, t_quantile

    # two-sided 95% quantiles of Student's t (printed tables)
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (200, 1.9719)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(2.7764451, 4) == pytest.approx(0.975, abs=1e-6)


def test_t_interval_by_hand():
    from llgbm_cli.evaluation.stats import t_interval

    v = [0.50, 0.60, 0.55, 0.70, 0.65]
    mean = sum(v) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / 4)
    half = 2.7764451 * sd / math.sqrt(5)
    r = t_interval(v)
    assert r["mean"] == pytest.approx(0.6)
    assert r["sd"] == pytest.approx(sd)
    assert r["low"] == pytest.approx(mean - half, abs=1e-6) and r["high"] == pytest.approx(mean + half, abs=1e-6)
    assert r["n"] == 5
    one = t_interval([0.4, None, float("nan")])
    assert one["mean"] == 0.4 and one["low"] is None and one["n"] == 1
    assert t_interval([])["mean"] is None


def test_bootstrap_identical_vectors():
    from llgbm_cli.evaluation.stats import paired_bootstrap

    a = [1, 0, 1, 1, 0, 0, 1, 0]
    r = paired_bootstrap(a, a, resamples=500, seed=3)
    assert r["diff"] == 0.0 and r["low"] == 0.0 and r["high"] == 0.0
    assert r["p"] == 1.0


def test_bootstrap_clearly_better_and_interval():
    import numpy as np

    from llgbm_cli.evaluation.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    b = (rng.random(200) < 0.4).astype(float)
    a = np.where(rng.random(200) < 0.5, 1.0, b)  # a fixes half of b's wrong answers, never the reverse
    r = paired_bootstrap(a, b, resamples=2000, seed=0)
    assert r["diff"] == pytest.approx(float(a.mean() - b.mean()))
    assert r["diff"] > 0.2
    assert r["p"] < 0.05
    assert r["low"] <= r["diff"] <= r["high"] and r["low"] > 0
    # symmetric: the other way round flips the sign, not the p-value
    back = paired_bootstrap(b, a, resamples=2000, seed=0)
    assert back["diff"] == pytest.approx(-r["diff"]) and back["p"] == pytest.approx(r["p"])
    # deterministic given the seed
    assert paired_bootstrap(a, b, resamples=2000, seed=0) == r


def test_bootstrap_noise_is_not_significant():
    import numpy as np

    from llgbm_cli.evaluation.stats import paired_bootstrap

    rng = np.random.default_rng(1)
    a = (rng.random(60) < 0.5).astype(float)
    b = a.copy()
    b[[3, 17]] = 1 - b[[3, 17]]  # two answers differ, one each way or the same way
    r = paired_bootstrap(a, b, resamples=2000, seed=0)
    assert r["p"] > 0.05
    assert r["low"] <= r["diff"] <= r["high"]


def test_bootstrap_bad_input():
    from llgbm_cli.evaluation.stats import paired_bootstrap

    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
