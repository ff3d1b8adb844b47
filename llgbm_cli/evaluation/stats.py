"""Statistics of a cross-validated evaluation: intervals across folds and paired tests within one.

* :func:`t_interval`: the mean of per-fold values with a two-sided Student-t interval
  (``mean ± t_{n-1} · sd / √n``, the quantile from ``scipy.stats.t``). It treats the folds as a
  sample of tasks: it says how much the mean would move with other tasks of the same kind, not
  how precise one fold's accuracy is.
* :func:`wilcoxon_across`: beside that interval, the two-sided Wilcoxon signed-rank p-value of the
  per-fold values against 0 (``scipy.stats.wilcoxon``): no normality assumed across folds.
* :func:`paired_difference`: the mean paired difference of two score lists with its standard
  error (the normal approximation ``zoo score`` uses for a teacher against the base model).
* :func:`paired_test`: two methods on the *same* questions of one fold. The p-value comes from
  an exact test: :func:`mcnemar_exact` (the two-sided binomial test of the discordant questions,
  ``scipy.stats.binomtest``) when every score is 0 or 1, else the Wilcoxon signed-rank test of
  the per-question differences. The interval of the difference is a paired bootstrap percentile
  interval (:func:`paired_bootstrap`, questions resampled with replacement, both methods with the
  same draw); the bootstrap serves the interval only, never the p-value. :func:`mcnemar_mde` gives
  the smallest difference the exact McNemar test would detect with 80% power.
* :func:`holm`: Holm–Bonferroni step-down adjusted p-values over a family of tests. A
  cross-validation has two families: every (fold × method) comparison with ``base`` (methods
  other than ``base``), and every one with ``mean-delta`` (methods other than ``mean-delta``).

scipy and numpy; the bootstrap is deterministic given its seed.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8


# --------------------------------------------------------------------------- Student's t


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    from scipy import stats

    if not 0.0 < p < 1.0:
        raise ValueError("p must lie strictly between 0 and 1")
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    return float(stats.t.ppf(p, df))


def t_interval(values: Sequence[Optional[float]], level: float = 0.95) -> dict[str, Optional[float]]:
    """Mean of the finite ``values`` and its two-sided Student-t interval at ``level``.

    Returns ``{"mean", "low", "high", "half_width", "sd", "n"}``; with one value the interval is
    undefined (None), with none the mean too."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "half_width": None, "sd": None, "n": 0}
    mean = sum(v) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "half_width": None, "sd": None, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "sd": sd, "n": n}


def holm_into(rows: Sequence[dict], key: str, admit=lambda row: True) -> int:
    """Set ``<key>_holm`` on every row: the Holm-adjusted value of its ``key`` p-value over the family
    of the rows ``admit`` lets in that have one; None on the others. Returns the family's size."""
    family = [r for r in rows if admit(r) and r.get(key) is not None]
    for r in rows:
        r[f"{key}_holm"] = None
    for r, p in zip(family, holm([r[key] for r in family])):
        r[f"{key}_holm"] = p
    return len(family)


def folds_above(values: dict, reference: dict) -> tuple[int, list, Optional[float]]:
    """Over the keys (folds) where both have a value: how many of ``values`` are above ``reference``,
    those keys, and the exact two-sided sign test's p of that count (None where there is no key)."""
    both = [k for k, v in values.items() if v is not None and reference.get(k) is not None]
    above = sum(values[k] > reference[k] for k in both)
    return above, both, sign_test(above, len(both))


def sign_test(successes: int, n: int) -> Optional[float]:
    """Two-sided exact sign test: the binomial p of ``successes`` of ``n`` paired comparisons under
    p = 1/2 (e.g. the folds where a method is above a reference); None for ``n`` = 0."""
    from scipy import stats

    return None if n <= 0 else float(stats.binomtest(int(successes), int(n), 0.5).pvalue)


def wilcoxon_across(values: Sequence[Optional[float]]) -> Optional[float]:
    """Two-sided Wilcoxon signed-rank p-value of the finite ``values`` (e.g. one method's per-fold
    differences to base) against 0, with scipy's defaults (zero values dropped; the exact null
    distribution for up to 50 values without ties or zeros, an exhaustive permutation with them
    up to 13, the normal approximation beyond).

    None with fewer than two finite values (undefined, as the t-interval of one fold); 1.0 when
    every value is 0 (no difference to test). With a single non-zero value scipy gives 1.0."""
    from scipy import stats

    v = np.asarray([float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if v.size < 2:
        return None
    if not np.any(v != 0.0):
        return 1.0
    return float(stats.wilcoxon(v).pvalue)


def t_mde(sd: Optional[float], n: int, *, alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """The smallest mean the two-sided one-sample t-test at ``alpha`` over ``n`` values with standard
    deviation ``sd`` detects with probability ``power`` (e.g. a method's mean per-fold difference to
    base across the folds, at the spread the folds showed).

    The test rejects when ``|T| > t_{1-alpha/2, n-1}``; with a true mean ``d``, ``T`` follows the
    noncentral t with ``n - 1`` degrees of freedom and noncentrality ``d · √n / sd``
    (``scipy.stats.nct``), and the ``d`` where the power reaches ``power`` is found by
    ``scipy.optimize.brentq``. The Wilcoxon signed-rank test the folds report has an asymptotic
    efficiency of 3/π (0.955) against the t-test on normal differences, so this is an approximate
    bound for it. None with fewer than two values or no spread."""
    from scipy import optimize, stats

    if sd is None or n < 2 or not math.isfinite(float(sd)) or sd <= 1e-12:  # no spread (rounding noise only)
        return None
    df, crit = n - 1, float(stats.t.ppf(1.0 - alpha / 2.0, n - 1))

    def gap(nc: float) -> float:  # power at noncentrality nc, less the power asked for
        upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
        return upper + (0.0 if math.isnan(lower) else lower) - power  # scipy's far tail can be NaN at df 1

    hi = 1.0
    while gap(hi) < 0:  # the noncentrality doubled until the power is reached (crit + z_power suffices)
        hi *= 2.0
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-10)) * float(sd) / math.sqrt(n)


# --------------------------------------------------------------------------- paired differences


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of ``a - b`` over the same questions with its standard error (sample std of the paired
    differences / sqrt(n)) and ``z`` = diff / se (None when se is 0)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_difference: the two score lists must be non-empty and of equal length")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    return {"diff": mean, "se": se, "z": (mean / se) if se > 0 else None, "n": n}


# --------------------------------------------------------------------------- paired bootstrap


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of ``mean(a) - mean(b)`` over the same questions (``a[i]``, ``b[i]``: one
    question's score under two methods, e.g. 0/1 correctness).

    Returns ``{"diff", "low", "high", "p", "n", "resamples"}``: the observed difference, the
    percentile interval at ``level`` and the two-sided p-value ``(1 + #{|d* - d| >= |d|}) /
    (resamples + 1)`` of the shifted bootstrap distribution (1 when the two never differ). The
    reports use its interval only; their p-values come from :func:`paired_test`'s exact tests."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores must be two lists of the same length ({x.shape} vs {y.shape})")
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("paired bootstrap of no questions")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    d = x - y
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    boot = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = (float(q) for q in np.quantile(boot, [alpha, 1.0 - alpha]))
    # a tolerance so that sums of the same values in another order still count as equal
    extreme = int(np.sum(np.abs(boot - diff) >= abs(diff) - 1e-12))
    p = min(1.0, (1 + extreme) / (resamples + 1))
    return {"diff": diff, "low": low, "high": high, "p": p, "n": n, "resamples": resamples}


# --------------------------------------------------------------------------- exact paired tests


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores must be two lists of the same length ({x.shape} vs {y.shape})")
    if x.shape[0] == 0:
        raise ValueError("a paired test of no questions")
    return x, y


def is_binary(*scores: Sequence[float]) -> bool:
    """Whether every score is 0 or 1 (correctness), so that McNemar's test applies."""
    return all(bool(np.all((np.asarray(s, dtype=np.float64) == 0.0) | (np.asarray(s, dtype=np.float64) == 1.0)))
               for s in scores)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Exact two-sided McNemar test of two methods' 0/1 scores on the same questions.

    Only the discordant questions count: ``a_only`` (right for ``a`` alone) and ``b_only``. Under
    the null each discordant question is a fair coin, so ``p = binomtest(b_only, a_only + b_only,
    0.5).pvalue`` (two-sided, ``scipy.stats.binomtest``); 1.0 without discordant questions.
    Returns ``{"diff", "n", "a_only", "b_only", "p"}`` with ``diff = mean(a) - mean(b)``."""
    from scipy import stats

    x, y = _pair(a, b)
    if not is_binary(x, y):
        raise ValueError("McNemar's test needs scores of 0 or 1")
    a_only = int(np.sum((x == 1.0) & (y == 0.0)))
    b_only = int(np.sum((x == 0.0) & (y == 1.0)))
    d = a_only + b_only
    p = 1.0 if d == 0 else float(stats.binomtest(b_only, d, 0.5).pvalue)
    return {"diff": float(x.mean() - y.mean()), "n": int(x.shape[0]), "a_only": a_only, "b_only": b_only,
            "p": min(1.0, p)}


def mcnemar_mde(n: int, discordant: int, *, alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """The smallest accuracy difference the exact two-sided McNemar test at ``alpha`` detects with
    probability ``power``, for ``n`` questions of which ``discordant`` differ between the methods.

    The test is conditional on the discordant count ``d`` (``max(discordant, 1)``): it rejects
    when the number ``k`` of discordant questions won by one side has a two-sided binomial p-value
    below ``alpha``, i.e. ``k >= c`` or ``k <= d - c``. If one side wins each discordant question
    with probability ``q``, the power is ``P(K >= c) + P(K <= d - c)`` for ``K ~ Binomial(d, q)``,
    increasing in ``q`` above 0.5; the smallest ``q`` with power >= ``power`` is found by
    bisection, and the difference it stands for is ``(2q - 1) · d / n``. None when even ``q = 1``
    cannot reach the power (too few discordant questions for any rejection: fewer than 6 at 0.05).
    It describes the observed discordant rate: a run with fewer disagreements detects less."""
    from scipy import stats

    n = int(n)
    if n < 1:
        raise ValueError("mcnemar_mde of no questions")
    d = max(int(discordant), 1)
    k = np.arange(d + 1)
    pv = np.minimum(1.0, 2.0 * np.minimum(stats.binom.cdf(k, d, 0.5), stats.binom.sf(k - 1, d, 0.5)))
    upper = k[(pv < alpha) & (2 * k > d)]
    if upper.size == 0:
        return None
    c = int(upper.min())

    def pw(q: float) -> float:
        return float(stats.binom.sf(c - 1, d, q) + stats.binom.cdf(d - c, d, q))

    if pw(1.0) < power:
        return None
    lo, hi = 0.5, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if pw(mid) >= power:
            hi = mid
        else:
            lo = mid
    return (2.0 * hi - 1.0) * d / n


def paired_test(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict[str, Any]:
    """``mean(a) - mean(b)`` over the same questions with an exact p-value and a bootstrap interval.

    ``test``: ``"mcnemar"`` (:func:`mcnemar_exact`) when every score is 0 or 1, else
    ``"wilcoxon"`` (``scipy.stats.wilcoxon`` of the per-question differences, scipy's defaults;
    p = 1 when every difference is 0). ``low``/``high``: the :func:`paired_bootstrap` percentile
    interval at ``level``. ``mde``: :func:`mcnemar_mde` for this n and discordant count (0/1 scores
    only; None otherwise). Returns ``{"diff", "low", "high", "p", "test", "n", "a_only", "b_only",
    "mde", "resamples"}`` (``a_only``/``b_only`` None for the Wilcoxon test)."""
    from scipy import stats

    x, y = _pair(a, b)
    boot = paired_bootstrap(x, y, resamples=resamples, seed=seed, level=level)
    out: dict[str, Any] = {"diff": boot["diff"], "low": boot["low"], "high": boot["high"], "n": boot["n"],
                           "resamples": resamples}
    if is_binary(x, y):
        m = mcnemar_exact(x, y)
        out.update(p=m["p"], test="mcnemar", a_only=m["a_only"], b_only=m["b_only"],
                   mde=mcnemar_mde(m["n"], m["a_only"] + m["b_only"]))
        return out
    d = x - y
    p = 1.0 if not np.any(d != 0.0) else float(stats.wilcoxon(d).pvalue)
    out.update(p=p, test="wilcoxon", a_only=None, b_only=None, mde=None)
    return out


# --------------------------------------------------------------------------- multiple comparisons


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm–Bonferroni step-down adjusted p-values, in the order given.

    The ``m`` p-values present (None and NaN entries are passed through as None and do not count)
    are sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) · p_(j))``: monotone
    in the original p and capped at 1. A test is rejected at family-wise level ``alpha`` exactly
    when its adjusted p is below ``alpha``."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(float(p))]
    out: list[Optional[float]] = [None] * len(pvalues)
    m = len(idx)
    if m == 0:
        return out
    p = np.asarray([float(pvalues[i]) for i in idx], dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    for rank, j in enumerate(order):
        out[idx[j]] = float(adj[rank])
    return out
