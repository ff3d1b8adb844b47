"""Statistics of a cross-validated evaluation: intervals across folds and paired tests within one.

* :func:`t_interval`: the mean of per-fold values with a two-sided Student-t interval
  (``mean ± t_{n-1} · sd / √n``). It treats the folds as a sample of tasks: it says how much the
  mean would move with other tasks of the same kind, not how precise one fold's accuracy is.
* :func:`paired_difference`: the mean paired difference of two score lists with its standard
  error (the normal approximation ``zoo score`` uses for a teacher against the base model).
* :func:`paired_bootstrap`: the difference of two methods' accuracies on the *same* questions of
  one fold, resampling questions with replacement (both methods with the same draw, so the
  pairing is kept). Reported: the observed difference, its percentile interval and a two-sided
  p-value from the bootstrap distribution shifted to a zero mean (the share of resampled
  differences at least as far from the observed one as the observed one is from zero).

Pure Python and numpy; the bootstrap is deterministic given its seed.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


# --------------------------------------------------------------------------- Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError("degrees of freedom must be positive")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must lie strictly between 0 and 1")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


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
    (resamples + 1)`` of the shifted bootstrap distribution (1 when the two never differ)."""
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
