"""The plans' acceptance checks, computed from measured values only.

Each check returns a dict ``{name, status, detail, values}`` with status ``pass``, ``fail`` or
``skip`` (the run it needs was not part of this evaluation). Training checks read a run's
``metrics.jsonl`` (and the λ schedule from the run's provenance); the others read the evaluation's
own rows, and the check that a method beats base its per-question scores: it passes only on an
exact paired test, Holm-adjusted over the comparisons it considers. ``eval --strict`` turns a
``fail`` into exit code 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..training.methods import TRAINED, resolve

PASS, FAIL, SKIP = "pass", "fail", "skip"


def check(name: str, ok: Optional[bool], detail: str, **values: Any) -> dict[str, Any]:
    status = SKIP if ok is None else (PASS if ok else FAIL)
    return {"name": name, "status": status, "detail": detail, "values": values}


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (NaN and Infinity parse, so they can be caught)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]


def _finite(v: Any) -> bool:
    return not isinstance(v, (int, float)) or isinstance(v, bool) or math.isfinite(float(v))


def _series(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def _window(vals: list[float]) -> int:
    return max(1, len(vals) // 5)


def trains_stably(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every logged value finite (no NaN/Inf) over a non-empty log."""
    name = f"{label} trains stably (no NaN/Inf)"
    if not rows:
        return check(name, False, "metrics.jsonl is empty or missing", rows=0)
    bad = [(r.get("step"), k) for r in rows for k, v in r.items() if not _finite(v)]
    if bad:
        step, key = bad[0]
        return check(name, False, f"{len(bad)} non-finite values; first: {key} at step {step}", rows=len(rows),
                     non_finite=len(bad))
    return check(name, True, f"{len(rows)} logged steps, all finite", rows=len(rows), non_finite=0)


def decreases(label: str, rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Mean of the last fifth of the log below the mean of the first fifth."""
    name = f"{label} {key} decreases"
    vals = [v for v in _series(rows, key) if math.isfinite(v)]
    if len(vals) < 2:
        return check(name, None, f"{key} logged {len(vals)} times; need 2")
    k = _window(vals)
    first, last = sum(vals[:k]) / k, sum(vals[-k:]) / k
    return check(name, last < first, f"{key} {first:.4g} -> {last:.4g} (mean of first/last {k} logs)",
                 first=first, last=last)


def increases(label: str, rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    name = f"{label} {key} improves"
    vals = [v for v in _series(rows, key) if math.isfinite(v)]
    if len(vals) < 2:
        return check(name, None, f"{key} logged {len(vals)} times; need 2")
    k = _window(vals)
    first, last = sum(vals[:k]) / k, sum(vals[-k:]) / k
    return check(name, last > first, f"{key} {first:.4f} -> {last:.4f} (mean of first/last {k} logs)",
                 first=first, last=last)


def lambda_ramps(rows: list[dict[str, Any]], mt: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Logged λ equals the configured schedule at every logged step (row ``step`` = steps done)."""
    from ..losses import lambda_at

    name = "multitask λ ramps as scheduled"
    pts = [(int(r["step"]), float(r["lambda_delta"])) for r in rows if "lambda_delta" in r and "step" in r]
    if not pts or not mt:
        return check(name, None, "no λ logged or no train.multitask config in the run's provenance")
    worst = 0.0
    for step, lam in pts:
        want = lambda_at(step - 1, mt["lambda_delta"], mt["lambda_schedule"], mt["lambda_warmup_steps"])
        worst = max(worst, abs(lam - want) if math.isfinite(lam) else math.inf)
    tol = 1e-6 * max(1.0, float(mt["lambda_delta"]))
    first, last = pts[0][1], pts[-1][1]
    return check(name, worst <= tol,
                 f"{mt['lambda_schedule']} to {mt['lambda_delta']} over {mt['lambda_warmup_steps']} steps: "
                 f"λ {first:.3g} -> {last:.3g}, max deviation {worst:.2g}", max_deviation=worst, first=first, last=last)


def checkpoint_reloads(label: str, folder: Optional[Path]) -> dict[str, Any]:
    name = f"{label} checkpoints reload"
    if folder is None:
        return check(name, None, "no checkpoint")
    from ..errors import InputError
    from ..generators.base import load_generator

    try:
        gen, meta = load_generator(folder)
    except (InputError, RuntimeError, KeyError, OSError) as e:
        return check(name, False, f"{folder}: {getattr(e, 'message', e)}")
    n = sum(p.numel() for p in gen.parameters())
    finite = all(bool(p.isfinite().all()) for p in gen.parameters())
    return check(name, finite, f"{folder.name} reloaded ({meta.get('generator')}, {n} parameters, "
                 f"{'finite' if finite else 'non-finite'} weights)", parameters=n)


def not_degenerate(label: str, deltas: dict[str, Any], adapter_norms: dict[str, float]) -> dict[str, Any]:
    """No all-zero LoRA and no collapsed diversity (every task getting the same delta)."""
    name = f"{label} no degenerate solution"
    if not deltas:
        return check(name, None, "no generated adapters")
    zero = [t for t, n in adapter_norms.items() if not n > 1e-8]
    cos = []
    tasks = sorted(deltas)
    from .delta_metrics import delta_cosine

    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            cos.append(delta_cosine(deltas[a], deltas[b]))
    worst = max(cos) if cos else math.nan
    collapsed = bool(cos) and worst > 0.9999
    detail = (f"min ‖ΔW‖ {min(adapter_norms.values()):.3g}; max cosine between tasks' deltas "
              f"{worst:.4f}" if adapter_norms else "no adapters")
    if zero:
        detail = f"all-zero LoRA for {', '.join(zero)}"
    elif collapsed:
        detail += " (collapsed: the same delta for every task)"
    return check(name, not zero and not collapsed, detail, max_pair_cosine=worst, zero=zero)


def training_degeneracy(label: str, rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The degeneracy flags a delta-only run logs itself (norm collapse, tasks collapsing together),
    read from its last logged step: this check needs no second held-out task."""
    last = next((r for r in reversed(rows) if "degenerate_norm" in r or "degenerate_diversity" in r), None)
    if last is None:
        return None
    norm_bad = bool(last.get("degenerate_norm", 0.0) > 0)
    div_bad = bool(last.get("degenerate_diversity", 0.0) > 0)
    parts = []
    if "lora_norm_ratio" in last:
        parts.append(f"generated/teacher LoRA norm {last['lora_norm_ratio']:.3g}")
    if "gen_pairwise_cosine" in last:
        parts.append(f"pairwise cosine of generated adapters {last['gen_pairwise_cosine']:.4f}"
                     + (f" (teachers {last['teacher_pairwise_cosine']:.4f})" if "teacher_pairwise_cosine" in last else ""))
    flags = [w for w, bad in (("norm collapse", norm_bad), ("diversity collapse", div_bad)) if bad]
    detail = "; ".join(parts) + (f" -> {', '.join(flags)}" if flags else "")
    return check(f"{label} no degenerate solution (training run)", not flags, detail, step=last.get("step"))


PREDICTION_KEYS = ("val_cosine", "val_delta_cosine", "heldout_delta_cosine", "eval_delta_cosine", "delta_cosine",
                   "delta_cosine_sim", "train_delta_cosine")


def b2_prediction(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """B2's delta predictor reports a finite, positive cosine between predicted and true deltas."""
    name = "B2 reaches a reported delta-prediction accuracy"
    for key in PREDICTION_KEYS:
        vals = _series(rows, key)
        if vals:
            v = vals[-1]
            ref = _series(rows, "val_mean_delta_cosine")
            vs = f" (mean-delta baseline {ref[-1]:.4f})" if ref else ""
            return check(name, math.isfinite(v) and v > 0, f"{key} = {v:.4f}{vs} (last log)", key=key, value=v)
    return check(name, None, "no delta-cosine metric in the B2 run's metrics.jsonl")


def _values(sc: Any) -> Optional[list[float]]:
    """Per-question scores of a TaskScore (``.values()``) or of a plain list; None when missing."""
    if sc is None:
        return None
    v = sc.values() if callable(getattr(sc, "values", None)) else sc
    return [float(x) for x in v]


def beats_base(rows: list[dict[str, Any]], scores: Optional[Mapping[tuple[Optional[str], str], Any]] = None,
               alpha: float = 0.05) -> dict[str, Any]:
    """A trained method's adapter (generated or retrieved) beats base on a task, shown by an exact
    paired test on the task's questions: McNemar's for 0/1 scores, Wilcoxon signed-rank otherwise
    (:func:`llgbm_cli.evaluation.stats.paired_test`). The p-values are Holm-adjusted over every
    comparison considered (tasks × those methods); it passes when one with a positive difference
    has an adjusted p below ``alpha``. ``scores``: per-question scores by ``(method, task)`` (a
    TaskScore or a list; ``(None, task)``: the base model, which a method without an adapter scores
    as). Without them nothing can be tested and the check is skipped."""
    from .stats import holm, paired_test

    name = "a generated or retrieved adapter beats base on a task"
    cand = [r for r in rows if r["method"] in TRAINED and r.get("accuracy_vs_base") is not None]
    if not cand:
        names = list(TRAINED)
        return check(name, None, f"no {', '.join(names[:-1])} or {names[-1]} method evaluated" if len(names) > 1
                     else f"no {names[0]} method evaluated")
    tested = []
    for r in cand:
        if scores is None:
            break
        base = _values(scores.get((None, r["task"])))
        mine = _values(scores.get((r["method"], r["task"]))) or base
        if base is None or mine is None or len(base) != len(mine) or not base:
            continue
        t = paired_test(mine, base)
        tested.append({"method": r["method"], "task": r["task"], "diff": t["diff"], "p": t["p"], "test": t["test"]})
    if not tested:
        best = max(cand, key=lambda r: r["accuracy_vs_base"])
        return check(name, None, f"no per-question scores to test: best {best['method']} on {best['task']} "
                     f"{best['accuracy_vs_base']:+.4f} vs base, untested", method=best["method"], task=best["task"],
                     gain=best["accuracy_vs_base"])
    for t, adj in zip(tested, holm([t["p"] for t in tested])):
        t["p_holm"] = adj
    shown = [t for t in tested if t["diff"] > 0 and t["p_holm"] < alpha]
    if shown:
        best = min(shown, key=lambda t: (t["p_holm"], -t["diff"]))
    else:
        best = max(tested, key=lambda t: (t["diff"], -t["p"]))
    word = "shown" if shown else "not shown"
    test = "exact McNemar" if best["test"] == "mcnemar" else "Wilcoxon signed-rank"
    detail = (f"{word}: {'' if shown else 'best '}{best['method']} on {best['task']} {best['diff']:+.2f} "
              f"(p = {best['p']:.2g}, Holm-adjusted {best['p_holm']:.2g}); {test} test vs base, Holm over "
              f"{len(tested)} comparison{'s' if len(tested) != 1 else ''}")
    return check(name, bool(shown), detail, method=best["method"], task=best["task"], gain=best["diff"],
                 p=best["p"], p_holm=best["p_holm"], test=best["test"], comparisons=len(tested))


def retrieval_floor(summary: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Retrieval (b2) reaches at least base accuracy, reported against multitask."""
    name = "retrieval is a competitive floor (vs multitask)"
    by = {s["method"]: s for s in summary}
    if "b2" not in by or "base" not in by:
        return check(name, None, "b2 and base are both needed")
    b2, base = by["b2"], by["base"]
    mt = by.get("multitask")
    ok = b2["accuracy"] >= base["accuracy"] - 1e-12
    gap = ""
    if mt is not None:
        ok = ok and b2["accuracy"] >= mt["accuracy"] - tolerance
        gap = (f"; multitask {mt['accuracy']:.4f} (gap {b2['accuracy'] - mt['accuracy']:+.4f}, tolerance "
               f"{tolerance}); delta cosine b2 {b2['delta_cosine']:.4f} vs multitask {mt['delta_cosine']:.4f}")
    return check(name, ok, f"b2 accuracy {b2['accuracy']:.4f}, base {base['accuracy']:.4f}{gap}")


def multitask_run_checks(label: str, rows: list[dict[str, Any]], provenance: Optional[dict[str, Any]],
                         checkpoint: Optional[Path]) -> list[Optional[dict[str, Any]]]:
    mt = ((provenance or {}).get("config") or {}).get("train", {}).get("multitask")
    # with the kl loss the logged probe-delta cosine is only watched, not trained: no check on it
    kl = (mt or {}).get("delta_loss_type") == "kl"
    return [lambda_ramps(rows, mt), decreases(label, rows, "loss_weights"), decreases(label, rows, "loss_delta"),
            None if kl else increases(label, rows, "delta_cosine_sim"), checkpoint_reloads(label, checkpoint)]


def b1_run_checks(label: str, rows: list[dict[str, Any]], provenance: Optional[dict[str, Any]],
                  checkpoint: Optional[Path]) -> list[Optional[dict[str, Any]]]:
    key = "loss_delta" if any("loss_delta" in r for r in rows) else "loss_total"
    return [decreases(label, rows, key), training_degeneracy(label, rows)]


def b2_run_checks(label: str, rows: list[dict[str, Any]], provenance: Optional[dict[str, Any]],
                  checkpoint: Optional[Path]) -> list[Optional[dict[str, Any]]]:
    return [b2_prediction(rows)]


def training_checks(label: str, rows: list[dict[str, Any]], provenance: Optional[dict[str, Any]],
                    checkpoint: Optional[Path]) -> list[Optional[dict[str, Any]]]:
    """The plans' checks of one training run of trained method ``label``: it trains stably, and its
    descriptor's own checks (:class:`~llgbm_cli.training.methods.TrainedMethod` ``checks``)."""
    return [trains_stably(label, rows), *resolve(TRAINED[label].checks)(label, rows, provenance, checkpoint)]


def failed(checks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in checks if c["status"] == FAIL]
