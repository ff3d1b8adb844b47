"""The statistics and tables of a cross-validation (``eval --folds``), from its per-question scores.

Per fold and method: the accuracy difference to ``base`` and to ``mean-delta`` on the same questions
with the exact paired test, its bootstrap interval and the smallest detectable difference
(:func:`row_stats`); Holm over the run's families (:func:`holm_family`); across folds the t-interval,
the Wilcoxon signed-rank p Holm-adjusted over the methods, and the sign test of the folds closer to
the held-out teacher than ``mean-delta`` (:func:`summarize`); and results.md (:func:`cv_results_md`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

ORACLE = "oracle-best"
RESAMPLES = 2000
LEVEL = 0.95
SIGNIFICANCE = 0.05  # family-wise level of the Holm-adjusted tests that count as wins / losses
SUMMARY_KEYS = ("accuracy", "accuracy_vs_base", "vs_mean_delta", "gap_to_oracle", "centered_cosine",
                "delta_cosine", "delta_mse", "norm_ratio", "task_probe_centered_cosine")


STAT_FIELDS = ("accuracy", "accuracy_vs_base", "vs_base_low", "vs_base_high", "vs_base_p", "vs_base_test",
               "vs_base_mde", "vs_mean_delta", "vs_mean_delta_low", "vs_mean_delta_high", "vs_mean_delta_p",
               "vs_mean_delta_test", "vs_mean_delta_mde", "gap_to_oracle", "n_questions")


def row_stats(values: dict[str, list[float]], method: str, oracle_accuracy: Optional[float],
              seed: int) -> dict[str, Any]:
    """The statistical fields of one method's row in a fold (:data:`STAT_FIELDS`), from the fold's
    per-question scores ``values`` (one list per method, ``base`` and ``mean-delta`` included): its
    accuracy, and against each reference the difference with its exact paired p-value, the test
    used, the bootstrap interval and the smallest difference detectable with 80% power."""
    from .stats import paired_test

    v = values[method]
    acc = sum(v) / len(v) if v else None
    out: dict[str, Any] = {"accuracy": acc}
    for ref, key in (("base", "vs_base"), ("mean-delta", "vs_mean_delta")):
        t = paired_test(v, values[ref], resamples=RESAMPLES, seed=seed, level=LEVEL)
        out.update({"accuracy_vs_base" if ref == "base" else key: t["diff"], f"{key}_low": t["low"],
                    f"{key}_high": t["high"], f"{key}_p": t["p"], f"{key}_test": t["test"], f"{key}_mde": t["mde"]})
    out["gap_to_oracle"] = None if oracle_accuracy is None or acc is None else acc - oracle_accuracy
    out["n_questions"] = len(v)
    return out


def fold_rows(rows: list[dict[str, Any]], values: dict[str, list[float]], oracle_accuracy: Optional[float],
              seed: int) -> list[dict[str, Any]]:
    """``rows`` (one per method of a fold) with their statistical fields (re)computed from ``values``."""
    out = []
    for r in rows:
        stats = row_stats(values, r["method"], oracle_accuracy, seed)
        out.append({"fold": r["fold"], "method": r["method"], **stats,
                    **{k: v for k, v in r.items() if k not in stats and k not in ("fold", "method")}})
    return out


def holm_family(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Set ``vs_base_p_holm`` and ``vs_mean_delta_p_holm`` on every row: the Holm-adjusted p-values
    over the run's two families, every (fold × method) test against ``base`` of the methods other
    than ``base``, and every test against ``mean-delta`` of the methods other than
    ``mean-delta`` (None on a reference's row against itself, or where no p-value exists).
    Returns the size of each family (``{"vs_base": n, "vs_mean_delta": n}``)."""
    return {key: holm_by_regime(rows, f"{key}_p", lambda r, ref=ref: r["method"] != ref)
            for ref, key in (("base", "vs_base"), ("mean-delta", "vs_mean_delta"))}


def regime(row: dict[str, Any]) -> str:
    """``zero-shot`` or ``few-shot`` (a method that read labelled examples of the held-out task)."""
    return row.get("regime") or "zero-shot"


def holm_by_regime(rows: list[dict[str, Any]], key: str, admit) -> int:
    """:func:`~llgbm_cli.evaluation.stats.holm_into` within each regime: a few-shot method's tests
    form a family of their own, never adjusted together with (or diluting) the zero-shot ones.
    Returns the size of the zero-shot family plus the few-shot one's."""
    from .stats import holm_into

    return sum(holm_into([r for r in rows if regime(r) == g], key, admit)
               for g in dict.fromkeys(regime(r) for r in rows))


def summarize(rows: list[dict[str, Any]], oracle: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method the mean over folds of each measure with its Student-t interval (``<key>``,
    ``<key>_low``, ``<key>_high``), the Wilcoxon signed-rank p-value of its per-fold differences to
    base and to mean-delta (``accuracy_vs_base_wilcoxon_p``, ``vs_mean_delta_wilcoxon_p``) with its
    Holm-adjusted value over the methods compared with that reference (``..._wilcoxon_p_holm``), the
    folds where its centered cosine is above mean-delta's (``centered_above_mean_delta``) with the
    two-sided sign test's p (``..._p``, Holm over the methods other than base and mean-delta), the
    smallest mean difference to base the across-fold test detects with 80% power at the folds' spread
    (``accuracy_vs_base_mde``, :func:`~llgbm_cli.evaluation.stats.t_mde`), and how
    many folds it beats or loses to base and mean-delta (Holm-adjusted exact p < 0.05, adjusted by
    :func:`holm_family`, which this sets on the rows); last the ``oracle-best`` reference."""
    from .stats import folds_above, t_interval, t_mde, wilcoxon_across

    holm_family(rows)
    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        s: dict[str, Any] = {"method": m, "folds": len(rs), "reference": False,
                             "regime": regime(rs[0]) if rs else "zero-shot"}
        spread = {}
        for key in SUMMARY_KEYS:
            spread[key] = ti = t_interval([r.get(key) for r in rs], LEVEL)
            s[key], s[f"{key}_low"], s[f"{key}_high"] = ti["mean"], ti["low"], ti["high"]
        for key in ("accuracy_vs_base", "vs_mean_delta"):
            s[f"{key}_wilcoxon_p"] = wilcoxon_across([r.get(key) for r in rs])
        vs_base = spread["accuracy_vs_base"]  # the folds' spread around base
        s["accuracy_vs_base_mde"] = None if m == "base" else t_mde(vs_base["sd"], vs_base["n"])
        s["task_identification"] = (sum(bool(r.get("identified")) for r in rs) / len(rs)) if rs else None
        picks = [r for r in rs if r.get("picks_oracle_task") is not None]
        if picks:  # a retrieval method: how often its top hit is the oracle-best's task, and its family
            s["picks_oracle_task"] = sum(bool(r["picks_oracle_task"]) for r in picks)
            s["picks_oracle_family"] = sum(bool(r.get("picks_oracle_family")) for r in picks)
            s["picks_folds"] = len(picks)
        above, both, p = folds_above({r["fold"]: r.get("centered_cosine") for r in rs},
                                  {r["fold"]: r.get("centered_cosine") for r in rows if r["method"] == "mean-delta"})
        s["centered_above_mean_delta"], s["centered_above_mean_delta_p"] = (
            (None, None) if m == "mean-delta" or not both else (above, p))
        for ref, p in (("base", "vs_base"), ("mean_delta", "vs_mean_delta")):
            diff = "accuracy_vs_base" if ref == "base" else "vs_mean_delta"

            def shown(r):
                adj = r.get(f"{p}_p_holm")
                return adj is not None and adj < SIGNIFICANCE

            s[f"wins_vs_{ref}"] = sum(1 for r in rs if shown(r) and (r.get(diff) or 0) > 0)
            s[f"losses_vs_{ref}"] = sum(1 for r in rs if shown(r) and (r.get(diff) or 0) < 0)
        out.append(s)
    for key, ref in (("accuracy_vs_base_wilcoxon_p", "base"), ("vs_mean_delta_wilcoxon_p", "mean-delta"),
                     ("centered_above_mean_delta_p", "mean-delta")):
        skip = (ref, "base" if key.startswith("centered") else None)
        holm_by_regime(out, key, lambda s, skip=skip: s["method"] not in skip)
    scored = [o for o in oracle if o.get("accuracy") is not None]
    if scored:
        ti = t_interval([o["accuracy"] for o in scored], LEVEL)
        out.append({"method": ORACLE, "folds": len(scored), "reference": True, "accuracy": ti["mean"],
                    "accuracy_low": ti["low"], "accuracy_high": ti["high"]})
    return out


def cv_results_md(r: dict[str, Any]) -> str:
    from .reports import fmt, signed

    def ci(s, key, sign=False):
        f = signed if sign else fmt
        if s.get(key) is None:
            return "—"
        if s.get(f"{key}_low") is None:
            return f(s[key])
        return f"{f(s[key])} [{f(s[f'{key}_low'])}, {f(s[f'{key}_high'])}]"

    def boot(row, key, p):
        if row.get(key) is None:
            return "—"
        cell = f"{signed(row[key])} [{signed(row[f'{p}_low'])}, {signed(row[f'{p}_high'])}] p={fmt(row[f'{p}_p'], 3)}"
        if row.get(f"{p}_p_holm") is not None:
            cell += f" (Holm {fmt(row[f'{p}_p_holm'], 3)})"
        return cell

    def wil(s, key):
        p, adj = s.get(f"{key}_wilcoxon_p"), s.get(f"{key}_wilcoxon_p_holm")
        return ci(s, key, True) + ("" if p is None else f" p={fmt(p, 3)}") + ("" if adj is None else f" (Holm {fmt(adj, 3)})")

    rows = r["rows"]
    zero = [x for x in rows if regime(x) == "zero-shot"]
    n_base = sum(1 for x in zero if x["method"] != "base" and x.get("vs_base_p") is not None)
    n_md = sum(1 for x in zero if x["method"] != "mean-delta" and x.get("vs_mean_delta_p") is not None)
    pct = int(r["level"] * 100)
    lines = [
        "# llgbm cross-validation", "", "Reproduce with:", "", "```bash", r["command"], "```", "",
        f"Base model `{r['base_model']}`; leave-one-task-out over {len(r['folds'])} folds ({', '.join(r['folds'])}); "
        f"{r['test_sample']} test questions per task (seed {r['seed']}). {_contamination_md(r.get('contamination'))}", "",
        f"Across folds: the mean over folds with a two-sided {pct}% Student-t interval "
        "(mean ± t(n-1) · sd / √n over the folds' values; it describes the spread across tasks, not the "
        "precision of one fold), and the two-sided Wilcoxon signed-rank p-value of the folds' differences "
        "against 0, Holm-adjusted over the methods compared with the same reference. Within a fold: the accuracy difference to `base` and to `mean-delta` on the same questions. "
        "Its p-value comes from an exact paired test: McNemar's test (a two-sided binomial test of the questions "
        "that only one of the two answered right) when every score is 0 or 1, the Wilcoxon signed-rank test of "
        f"the per-question differences otherwise. Its interval is the {pct}% percentile interval of a paired "
        f"bootstrap over questions ({r['resamples']} resamples, seed {r['seed']}). The p-values are adjusted with "
        f"Holm's method over each family: the {n_base} comparisons with `base` (every fold and method other than "
        f"base) and the {n_md} comparisons with `mean-delta` (every fold and method other than mean-delta). "
        "Wins / losses count only folds with a Holm-adjusted p < 0.05. Detectable Δ: the smallest difference to "
        "`base` that the exact McNemar test (two-sided, α = 0.05) detects with 80% power, for the fold's number of "
        "questions and of questions where the two disagree (— where none is detectable or the scores are not 0/1).",
        "",
        f"`{ORACLE}` is a reference, not a method: per fold the single training adapter (candidates: "
        f"{r['oracle_candidates']}) with the best test accuracy on the held-out task; choosing it reads the "
        "test labels. Gap to oracle = method accuracy − oracle-best accuracy.", "",
        "## Summary (mean over folds)", "",
        "| Method | Folds | Task Accuracy | Δ vs base (Wilcoxon p) | Δ vs mean-delta (Wilcoxon p) | Gap to oracle | "
        "Centered Cosine (folds above mean-delta) | "
        "Delta Cosine | Task ID | Wins/losses vs base | Wins/losses vs mean-delta |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    header = lines[-2:]
    few = [s for s in r["summary"] if not s.get("reference") and regime(s) == "few-shot"]
    for s in [s for s in r["summary"] if s not in few] + (["few-shot"] if few else []) + few:
        if s == "few-shot":
            lines += ["", "## Few-shot (a separate regime)", "",
                      "These methods read labelled examples of the held-out task's train split (never its test "
                      "questions), which no method above does: their p-values are Holm-adjusted in families of their "
                      "own, and they are compared with base and mean-delta, not with the zero-shot methods.", "",
                      *header]
            continue
        if s.get("reference"):
            lines.append(f"| {s['method']} (reference) | {s['folds']} | {ci(s, 'accuracy')} | — | — | — | — | — | — "
                         "| — | — |")
            continue
        lines.append(
            f"| {s['method']} | {s['folds']} | {ci(s, 'accuracy')} | {wil(s, 'accuracy_vs_base')} | "
            f"{wil(s, 'vs_mean_delta')} | {ci(s, 'gap_to_oracle', True)} | {ci(s, 'centered_cosine')}"
            + ("" if s.get("centered_above_mean_delta") is None else f" ({s['centered_above_mean_delta']}/{s['folds']}, "
               f"sign test p={fmt(s['centered_above_mean_delta_p'], 3)}, Holm {fmt(s['centered_above_mean_delta_p_holm'], 3)})")
            + f" | {fmt(s.get('delta_cosine'))} | {fmt(s.get('task_identification'), 2)} | "
            f"{s['wins_vs_base']}/{s['losses_vs_base']} | {s['wins_vs_mean_delta']}/{s['losses_vs_mean_delta']} |")
    mde = [s for s in r["summary"] if s.get("accuracy_vs_base_mde") is not None]
    if mde:
        lines += ["", "Smallest mean Δ vs base detectable across the folds (two-sided one-sample t-test, α = 0.05, "
                  "80% power, at the spread of the folds' differences; the Wilcoxon test reported has about 95% of its "
                  "efficiency): " + "; ".join(f"`{s['method']}` {signed(s['accuracy_vs_base_mde'], 3)}" for s in mde) + "."]
    on_task = [s for s in r["summary"] if s.get("task_probe_centered_cosine") is not None]
    if on_task:
        lines += ["", "Centered cosine on the held-out task's own prompts (`eval.task_probes` train prompts of it; "
                  "both deltas minus the training teachers' mean there), mean over folds [95% t-interval]: "
                  + "; ".join(f"`{s['method']}` {ci(s, 'task_probe_centered_cosine')}" for s in on_task) + "."]
    picks = [s for s in r["summary"] if s.get("picks_folds")]
    if picks:
        lines += ["", "Retrieval against the oracle-best (which reads test labels): "
                  + "; ".join(f"`{s['method']}`'s top hit is the oracle-best adapter's task on {s['picks_oracle_task']} "
                              f"of {s['picks_folds']} folds and of its family (multiple-choice or generative) on "
                              f"{s['picks_oracle_family']}" for s in picks) + "."]
    lines += ["", "## Per fold", "",
              f"| Fold | Method | Task Accuracy | Δ vs base [{pct}%] p (Holm) | Δ vs mean-delta [{pct}%] p (Holm) | "
              "Detectable Δ vs base (80% power) | Gap to oracle | Centered Cosine | Delta MSE | Questions |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    oracle = {o["fold"]: o for o in r["oracle"]}
    for k in r["folds"]:
        for row in (x for x in rows if x["fold"] == k):
            name = row["method"] + (" (few-shot)" if regime(row) == "few-shot" else "")
            lines.append(f"| {k} | {name} | {fmt(row['accuracy'])} | {boot(row, 'accuracy_vs_base', 'vs_base')}"
                         f" | {boot(row, 'vs_mean_delta', 'vs_mean_delta')} | {fmt(row.get('vs_base_mde'), 3)} | "
                         f"{signed(row.get('gap_to_oracle'))} | "
                         f"{fmt(row.get('centered_cosine'))} | {fmt(row.get('delta_mse'), 6)} | {row['n_questions']} |")
        o = oracle.get(k) or {}
        if o.get("accuracy") is not None:
            lines.append(f"| {k} | {ORACLE} (reference: {o['adapter']}, of {o['candidates']}) | {fmt(o['accuracy'])} "
                         "| — | — | — | — | — | — | — |")
    lines += checks_md(r.get("checks") or {}, r["folds"])
    lines += ["", "Per-question scores: `folds/<fold>/questions.json`; each fold's full evaluation: "
              "`folds/<fold>/eval/results.md`.", ""]
    return "\n".join(lines)


FEW_FOLDS = 3  # up to this many folds, every check of every fold is listed (in results.md and on the terminal)


def checks_md(checks: dict[str, list[dict[str, Any]]], folds: Sequence[str]) -> list[str]:
    """The folds' acceptance checks: each one listed for a run of a few folds, else a count per fold."""
    if not any(checks.get(k) for k in folds):
        return []
    lines = ["", "## Acceptance checks per fold", ""]
    if len(folds) <= FEW_FOLDS:
        lines += ["| Fold | Check | Result | Measured |", "|---|---|---|---|"]
        lines += [f"| {k} | {c['name']} | {str(c['status']).upper()} | {c['detail']} |"
                  for k in folds for c in checks.get(k) or []]
    else:
        lines += ["| Fold | Pass | Fail | Failed checks |", "|---|---|---|---|"]
        for k in folds:
            passed, failed = check_counts(checks.get(k) or [])
            lines.append(f"| {k} | {passed} | {len(failed)} | {'; '.join(failed) or '—'} |")
    return lines


def check_counts(checks: Sequence[dict[str, Any]]) -> tuple[int, list[str]]:
    """(how many passed, the names of those that failed) of one fold's checks."""
    return sum(c["status"] == "pass" for c in checks), [c["name"] for c in checks if c["status"] == "fail"]


def contamination_summary(folds: Sequence[Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    """The folds' contamination records (``tasks.overlap.scored_sample``) as one: the policy, every task
    checked against, and per fold the count dropped (``drop``) or found (``allow``); None when a fold
    was scored before questions were checked."""
    if not folds or any(f is None for f in folds):
        return None
    return {"policy": folds[0]["policy"], "checked": sorted({t for f in folds for t in f["checked"]}),
            "dropped": {f["task"]: f["contaminated"] for f in folds}}


def _contamination_md(c: Optional[dict[str, Any]]) -> str:
    """The sentence on what the held-out task's scored questions could have been seen in."""
    held = ("In each fold the held-out task's own train split and teachers were excluded from every trained "
            "method, index and mean.")
    if not c:
        return held + " The scored questions were not checked against the other tasks' train splits."
    checked = list(c.get("checked") or [])
    found = {k: int(n) for k, n in (c.get("dropped") or {}).items()}
    policy = c.get("policy")
    what = ", ".join(checked) if checked else "no task"
    out = f"{held} The scored questions were checked against the train splits of {what}"
    out += f" (policy `{policy}`): " if policy else ": "
    hits = {k: n for k, n in found.items() if n}
    if not hits:
        return out + "none found."
    verb = "dropped" if policy == "drop" else "found"
    return out + "; ".join(f"{n} {verb} in fold {k}" for k, n in hits.items()) + "."
