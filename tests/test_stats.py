"""Statistics of cross-validation: the t-interval and Wilcoxon test across folds, the exact paired
tests (McNemar, Wilcoxon), the detectable difference, Holm's adjustment and the paired bootstrap."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats


def test_t_quantile_matches_the_tables():
    from llgbm_cli.evaluation.stats import t_quantile

    # two-sided 95% quantiles of Student's t (printed tables)
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (200, 1.9719)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile(1.0, 4)


def test_t_interval_equals_scipy():
    import numpy as np

    from llgbm_cli.evaluation.stats import t_interval

    for v in ([0.5, 0.6, 0.55, 0.7, 0.65], [0.01, -0.03], [0.2, 0.1, 0.4, -0.1, 0.0, 0.3, 0.25]):
        for level in (0.9, 0.95):
            r = t_interval(v, level)
            lo, hi = stats.t.interval(level, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
            assert r["low"] == pytest.approx(lo, abs=1e-12) and r["high"] == pytest.approx(hi, abs=1e-12)


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


# --------------------------------------------------------------------------- exact tests


def _discordant(a_only, b_only, same=10):
    """0/1 scores: ``a_only`` questions right for a alone, ``b_only`` for b alone, ``same`` agreeing."""
    a = [1] * a_only + [0] * b_only + [1, 0] * (same // 2)
    b = [0] * a_only + [1] * b_only + [1, 0] * (same // 2)
    return a, b


def test_mcnemar_exact_known_values_and_scipy():
    from llgbm_cli.evaluation.stats import mcnemar_exact

    r = mcnemar_exact(*_discordant(5, 0))
    assert r["p"] == pytest.approx(0.0625) and r["a_only"] == 5 and r["b_only"] == 0 and r["n"] == 15
    assert r["diff"] == pytest.approx(5 / 15)
    assert mcnemar_exact(*_discordant(6, 0))["p"] == pytest.approx(0.03125)
    for a_only, b_only in ((7, 0), (3, 9), (12, 11), (0, 4), (20, 8)):
        a, b = _discordant(a_only, b_only)
        r = mcnemar_exact(a, b)
        assert r["p"] == stats.binomtest(b_only, a_only + b_only, 0.5).pvalue
        # symmetric: swapping the methods flips the difference, not the p-value
        back = mcnemar_exact(b, a)
        assert back["p"] == r["p"] and back["diff"] == pytest.approx(-r["diff"])
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([0.5, 1], [1, 0])


def test_paired_test_picks_the_exact_test():
    import numpy as np

    from llgbm_cli.evaluation.stats import paired_bootstrap, paired_test

    a, b = _discordant(7, 1, same=40)
    r = paired_test(a, b, resamples=500, seed=2)
    boot = paired_bootstrap(a, b, resamples=500, seed=2)
    assert r["test"] == "mcnemar" and r["p"] == stats.binomtest(1, 8, 0.5).pvalue
    assert (r["low"], r["high"], r["diff"]) == (boot["low"], boot["high"], boot["diff"])
    assert r["a_only"] == 7 and r["b_only"] == 1 and r["n"] == 48
    # not 0/1 scores (e.g. a token F1): the Wilcoxon signed-rank test of the per-question differences
    rng = np.random.default_rng(4)
    x = rng.random(30)
    y = x - 0.1 * rng.random(30)
    w = paired_test(x, y, resamples=200)
    assert w["test"] == "wilcoxon" and w["p"] == pytest.approx(stats.wilcoxon(x - y).pvalue) and w["mde"] is None
    assert w["a_only"] is None
    assert paired_test([0.5, 0.2], [0.5, 0.2], resamples=50)["p"] == 1.0
    assert paired_test([1, 0, 1], [1, 0, 1], resamples=50)["p"] == 1.0


def test_mde_matches_the_power_definition_and_falls_with_n():
    from llgbm_cli.evaluation.stats import mcnemar_mde

    # rejection: the exact two-sided binomial test below 0.05; power at the returned share q of a-wins
    n, d = 200, 40
    mde = mcnemar_mde(n, d)
    q = (mde * n / d + 1) / 2
    reject = [k for k in range(d + 1) if stats.binomtest(k, d, 0.5).pvalue < 0.05]
    power = sum(stats.binom.pmf(k, d, q) for k in reject)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert sum(stats.binom.pmf(k, d, q - 1e-3) for k in reject) < 0.8
    # at the same rate of disagreement more questions detect a smaller difference
    got = [mcnemar_mde(n, round(0.25 * n)) for n in (40, 80, 160, 320, 500)]
    assert all(x is not None for x in got) and got == sorted(got, reverse=True) and len(set(got)) == len(got)
    # too few discordant questions for any rejection at 0.05 (5 vs 0 gives p = 0.0625)
    assert mcnemar_mde(100, 5) is None and mcnemar_mde(100, 0) is None
    assert mcnemar_mde(100, 6) == pytest.approx(0.06 * (2 * 0.8 ** (1 / 6) - 1) / 1, rel=1e-2)


def test_holm_textbook_and_brute_force():
    import numpy as np

    from llgbm_cli.evaluation.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and holm([None]) == [None]
    got = holm([0.2, None, 0.01, float("nan"), 0.9])
    assert got[1] is None and got[3] is None and got[0] == pytest.approx(0.4) and got[2] == pytest.approx(0.03)
    assert got[4] == pytest.approx(0.9)

    def brute(p):
        # the definition: the adjusted p of test i is the smallest alpha at which the step-down
        # procedure rejects it, max over the tests ranked no later of (m - rank) * p, capped at 1
        m = len(p)
        order = sorted(range(m), key=lambda i: p[i])
        out = [0.0] * m
        for r, i in enumerate(order):
            out[i] = min(1.0, max((m - s) * p[order[s]] for s in range(r + 1)))
        return out

    rng = np.random.default_rng(0)
    for _ in range(50):
        p = list(rng.random(int(rng.integers(1, 9))) ** 3)
        adj = holm(p)
        assert adj == pytest.approx(brute(p))
        assert all(0 <= x <= 1 for x in adj) and all(x >= y for x, y in zip(adj, p))
        ranked = sorted(zip(p, adj))
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(ranked))  # monotone in p


def test_wilcoxon_across_folds_equals_scipy():
    from llgbm_cli.evaluation.stats import wilcoxon_across

    v = [0.05, -0.01, 0.08, 0.03, 0.02, -0.02, 0.04]
    assert wilcoxon_across(v) == pytest.approx(stats.wilcoxon(v).pvalue)
    assert wilcoxon_across([0.1, None, float("nan"), 0.2, 0.3]) == pytest.approx(stats.wilcoxon([0.1, 0.2, 0.3]).pvalue)
    assert wilcoxon_across([0.0, 0.0, 0.0]) == 1.0
    assert wilcoxon_across([0.1]) is None and wilcoxon_across([]) is None
    assert not math.isnan(wilcoxon_across([0.1, 0.0]))


def test_t_mde_is_where_the_t_tests_power_reaches_80_percent():
    """At the returned mean, simulated one-sample t-tests (scipy.stats.ttest_1samp) reject at α = 0.05 in
    80% of draws; a quarter below it, far fewer do; large n gives the normal-approximation figure."""
    from llgbm_cli.evaluation.stats import t_mde

    d = t_mde(0.02, 13)
    rng = np.random.default_rng(0)
    draws = rng.normal(d, 0.02, size=(20000, 13))
    assert (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean() == pytest.approx(0.80, abs=0.01)
    lower = rng.normal(0.75 * d, 0.02, size=(20000, 13))
    assert (stats.ttest_1samp(lower, 0.0, axis=1).pvalue < 0.05).mean() < 0.6
    z = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(5000)
    assert t_mde(1.0, 5000) == pytest.approx(z, rel=1e-3)
    assert t_mde(2.0, 13) == pytest.approx(2 * t_mde(1.0, 13))  # in units of the spread
    assert t_mde(1.0, 2) > t_mde(1.0, 3) > 0  # df 1 still solves
    assert t_mde(0.0, 13) is None and t_mde(1.0, 1) is None and t_mde(None, 5) is None
