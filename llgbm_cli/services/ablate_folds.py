"""`llgbm ablate --folds`: ablation cells under leave-one-task-out cross-validation.

A cell is a set of config overrides: a cell of the ``[ablation]`` grid (one multitask setting
changed) or one declared as ``[ablation.cells.NAME]`` (``set``: any dotted keys; ``methods``: what it
evaluates, default ``ablation.methods``; ``help``: one line). Each cell is an ``eval --folds`` run
(:func:`llgbm_cli.services.cv.run_cv`, resumable fold by fold) with its overrides into
``<out>/<cell>``, beside the base cell, the project's own config, in ``<out>/base`` (or the finished
cross-validation ``ablation.base_cv`` names, when it holds the folds and methods).

Against the base cell, per fold and method, the difference in accuracy on the very same questions
(their ids are compared; a difference stops the run), with the exact paired test of
:func:`llgbm_cli.evaluation.stats.paired_test` (McNemar for 0/1 scores) and its interval; the
p-values Holm-adjusted over every comparison of the run (cells × methods × folds). Across folds the
mean difference with its Student-t interval and a Wilcoxon signed-rank p. ``<out>/comparison.{md,json,csv}``
hold that table; each cell's own tables are its cross-validation's results.md.

Cells accumulate in one folder: a call naming some cells compares them with every other cell of the
profile already finished there under the current config (:func:`llgbm_cli.services.cv.finished_cv`),
in one Holm family; a stale one is left out with a note. A cell's fold copies a finished training
run of the base cell or another cell when its run fingerprint is the same (a cell that changes only
what evaluation reads trains nothing), and reads back the scores of every adapter it shares with the base
cell or another cell (the base model, ``mean-delta``: the same files, prompt form, base model and questions) from
their score caches instead of scoring it again, so a cell scores only what it changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..names import child
from ..progress import NULL_PROGRESS
from .ablate import Cell, ablation_grid

BASE = "base"  # the base cell: the project's own config
FIELDS = ["cell", "method", "fold", "n_questions", "accuracy", "base_accuracy", "diff", "low", "high", "p", "p_holm",
          "test"]
SIGNIFICANCE = 0.05


@dataclass
class AblateFoldsResult:
    out: str
    folds: list[str]
    cells: list[dict[str, Any]] = field(default_factory=list)  # name, overrides, methods, folder
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per cell x method x fold, vs the base cell
    summary: list[dict[str, Any]] = field(default_factory=list)  # one per cell x method, across folds
    ran: list[str] = field(default_factory=list)  # "<cell>/<fold>" run by this call
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # cells' methods the base cell does not evaluate
    is_main: bool = True

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.reports import clean

        d = dict(self.__dict__)
        d.pop("is_main")
        return clean(d)


def declared_cells(ab) -> list[Cell]:
    """The ``[ablation.cells.NAME]`` cells, in file order."""
    return [Cell(name, "declared", dict(c.set)) for name, c in ab.cells.items()]


def folds_cells(ab, names: Optional[Sequence[str]]) -> list[Cell]:
    """The cells named (declared ones, then the grid's); every declared cell when none is named."""
    from .ablate import select_cells

    declared = declared_cells(ab)
    if not names:
        if not declared:
            raise InputError("--folds: no cell to run; name grid cells with --cell (see `llgbm ablate --dry-run`) "
                             "or declare [ablation.cells.NAME] with set = { \"section.key\" = value }")
        return declared
    if BASE in names:
        raise InputError(f"--cell {BASE}: the base cell (the project's own config) runs on its own; name the others")
    return select_cells(declared + [c for c in ablation_grid(ab) if c.name not in ab.cells], names)


def _cell_overrides(base_ov: dict[str, Any], cell: Cell, out: Path) -> dict[str, Any]:
    """The config keys a cell runs under; one that measures deltas its own way gets a delta cache of its own."""
    ov = {**base_ov, **cell.overrides}
    if any(k.startswith(("probes.", "delta.")) for k in cell.overrides) and "delta.cache" not in cell.overrides:
        ov["delta.cache"] = str(child(out, f"deltas-{cell.name}", what="cell"))
    return ov


def _methods(ab, cell: Cell, given: Optional[Sequence[str]]) -> list[str]:
    if given:
        return list(given)
    declared = ab.cells.get(cell.name)
    return list(declared.methods) if declared is not None and declared.methods else list(ab.methods)


def run_ablate_folds(
    resolved,
    *,
    folds: str,
    cells: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
    out: Optional[str | Path] = None,
    force: bool = False,
    overrides: Optional[dict[str, Any]] = None,
    progress=NULL_PROGRESS,
) -> AblateFoldsResult:
    """Cross-validate the base cell and every cell named (see the module doc); compare each with the base."""
    from .cv import REFERENCES, run_cv

    ab = resolved.config.ablation
    chosen = folds_cells(ab, cells)
    base_ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    out = Path(out).expanduser() if out is not None else resolved.resolve_path(f"{ab.out}-folds")
    every = list(dict.fromkeys(m for c in chosen for m in _methods(ab, c, methods) if m not in REFERENCES))

    runs: dict[str, Any] = {}
    ran: list[str] = []
    if ab.base_cv:
        base_folder = resolved.resolve_path(ab.base_cv)
        if not (base_folder / "cv.json").exists():
            raise InputError(f"ablation.base_cv: {base_folder} is not a cross-validation output; run `llgbm eval "
                             f"--folds ... --out {base_folder}` first, or leave the key out to run the base cell")
        is_main = True  # the cells' runs say which process is the main one
    else:
        base_folder = out / BASE
        base_run = run_cv(resolved.with_overrides(base_ov), folds=folds, methods=every or ["base"], out=base_folder,
                          force=force, overrides=base_ov, progress=progress)
        ran += [f"{BASE}/{k}" for k in base_run.ran]
        is_main = base_run.is_main
    known = declared_cells(ab) + [c for c in ablation_grid(ab) if c.name not in ab.cells]
    for c in chosen:
        ov = _cell_overrides(base_ov, c, out)
        if "delta.cache" in ov and "delta.cache" not in c.overrides:
            # the teachers' deltas measured the cell's way: a cache of its own, filled (incrementally) first
            from .cache_deltas import run_cache_deltas

            run_cache_deltas(resolved.with_overrides(ov), progress=progress)
        # a training run the cell shares with the base cell or another cell (same config, same zoo) is copied
        donors = [base_folder] + [out / o.name for o in known if o.name != c.name and (out / o.name / "cv.json").exists()]
        runs[c.name] = run_cv(resolved.with_overrides(ov), folds=folds, methods=_methods(ab, c, methods),
                              out=child(out, c.name, what="cell"), force=force, overrides=ov, progress=progress,
                              donors=donors)
        ran += [f"{c.name}/{k}" for k in runs[c.name].ran]
        is_main = is_main and runs[c.name].is_main
    fold_names = next(iter(runs.values())).folds
    result = AblateFoldsResult(str(out), fold_names, ran=ran, is_main=is_main)
    if not is_main:  # under accelerate launch the main process compares and writes
        return result
    from .cv import finished_cv

    for c in known:  # cells finished by earlier calls into this folder stay in the comparison (and its Holm family)
        if c.name in runs or not (out / c.name / "cv.json").exists():
            continue
        ov = _cell_overrides(base_ov, c, out)
        kept, why = finished_cv(resolved.with_overrides(ov), folds=fold_names, methods=_methods(ab, c, methods),
                                out=out / c.name, overrides=ov)
        if kept is not None:
            runs[c.name] = kept
            chosen.append(c)
        else:
            result.notes.append(f"{c.name}: not compared ({why}); rerun it with --cell {c.name}")
    runs = {c.name: runs[c.name] for c in known if c.name in runs}  # the cells in the profile's order
    base_methods = json.loads((base_folder / "cv.json").read_text()).get("methods", [])
    result.cells.append({"cell": BASE, "overrides": {}, "methods": base_methods, "folder": str(base_folder)})
    for name, run in runs.items():
        result.cells.append({"cell": name, "overrides": next(c.overrides for c in chosen if c.name == name),
                             "methods": run.methods, "folder": run.out})
    result.rows = compare(base_folder, {n: Path(r.out) for n, r in runs.items()},
                          {n: [m for m in r.methods if m not in REFERENCES] for n, r in runs.items()},
                          result.folds, resolved.config.project.seed)
    result.summary = summarize(result.rows)
    base_rows = json.loads((base_folder / "results.json").read_text())["rows"]
    delta_space(result.summary, base_rows, {n: r.rows for n, r in runs.items()})
    for name, run in runs.items():
        result.notes += [f"{name}: {m} is not evaluated in the base cell, so it is not compared here; its own "
                         f"tests against base and mean-delta are in {run.out}/results.md"
                         for m in run.methods if m not in REFERENCES and m not in base_methods]
    result.files = write_comparison(out, result)
    return result


def _questions(folder: Path, fold: str) -> dict[str, Any]:
    p = folder / "folds" / fold / "questions.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: cannot read the fold's per-question scores ({e}); rerun its `llgbm eval --folds`")


def compare(base: Path, cells: dict[str, Path], methods: dict[str, list[str]], folds: Sequence[str],
            seed: int) -> list[dict[str, Any]]:
    """Per cell, method and fold: the method's scores in the cell against the same method's in the base
    cell, on the same question ids (checked), with the exact paired test; p-values Holm-adjusted over
    all the rows."""
    from ..evaluation.cv_stats import LEVEL, RESAMPLES
    from ..evaluation.stats import holm_into, paired_test

    rows = []
    for name, folder in cells.items():
        for k in folds:
            q, qb = _questions(folder, k), _questions(base, k)
            if q["question_ids"] != qb["question_ids"]:
                raise InputError(f"cell {name}, fold {k}: scored on other questions than the base cell "
                                 f"({folder} vs {base}); both must use the same eval.test_sample and seed")
            for m in methods[name]:
                if m not in qb["methods"]:
                    continue  # nothing to pair it with: see not_compared
                a, b = q["methods"][m], qb["methods"][m]
                t = paired_test(a, b, resamples=RESAMPLES, seed=seed, level=LEVEL)
                rows.append({"cell": name, "method": m, "fold": k, "n_questions": len(a),
                             "accuracy": sum(a) / len(a), "base_accuracy": sum(b) / len(b), "diff": t["diff"],
                             "low": t["low"], "high": t["high"], "p": t["p"], "test": t["test"]})
    holm_into(rows, "p")
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell and method across folds: the mean difference to the base cell with its t-interval, the
    Wilcoxon signed-rank p with its Holm-adjusted value over the run's cells and methods, and the folds
    where it is better or worse at Holm-adjusted p < 0.05."""
    from ..evaluation.cv_stats import LEVEL
    from ..evaluation.stats import holm_into, t_interval, wilcoxon_across

    out = []
    for key in dict.fromkeys((r["cell"], r["method"]) for r in rows):
        rs = [r for r in rows if (r["cell"], r["method"]) == key]
        ti = t_interval([r["diff"] for r in rs], LEVEL)
        shown = [r for r in rs if r.get("p_holm") is not None and r["p_holm"] < SIGNIFICANCE]
        out.append({"cell": key[0], "method": key[1], "folds": len(rs), "diff": ti["mean"], "low": ti["low"],
                    "high": ti["high"], "wilcoxon_p": wilcoxon_across([r["diff"] for r in rs]),
                    "better": sum(r["diff"] > 0 for r in shown), "worse": sum(r["diff"] < 0 for r in shown),
                    "smallest_p_holm": min((r["p_holm"] for r in rs if r.get("p_holm") is not None), default=None)})
    holm_into(out, "wilcoxon_p")
    return out


def delta_space(summary: list[dict[str, Any]], base_rows: list[dict[str, Any]],
                cell_rows: dict[str, list[dict[str, Any]]]) -> None:
    """Add to each summary row the centered cosine to the held-out teacher, the cell's and the base
    cell's means over the folds where both have one, the folds where the cell's is above, and the
    exact two-sided sign test of that count (``centered_sign_p``, Holm over the rows)."""
    from ..evaluation.stats import folds_above, holm_into

    for s in summary:
        mine = {r["fold"]: r.get("centered_cosine") for r in cell_rows[s["cell"]] if r["method"] == s["method"]}
        ref = {r["fold"]: r.get("centered_cosine") for r in base_rows if r["method"] == s["method"]}
        above, both, p = folds_above(mine, ref)
        s.update(centered_cosine=sum(mine[k] for k in both) / len(both) if both else None,
                 base_centered_cosine=sum(ref[k] for k in both) / len(both) if both else None,
                 centered_above=above, centered_folds=len(both), centered_sign_p=p)
    holm_into(summary, "centered_sign_p")


def comparison_md(r: AblateFoldsResult) -> str:
    from ..evaluation.reports import fmt, signed

    n = len(r.rows)
    md = ["# llgbm ablation over folds", "",
          f"Cells against the base cell ({next(c['folder'] for c in r.cells if c['cell'] == BASE)}) on the same "
          f"questions of each of {len(r.folds)} folds ({', '.join(r.folds)}). Per fold: the exact paired test "
          f"(McNemar for 0/1 scores), p Holm-adjusted over the {n} comparisons of this run; across folds: the mean "
          "difference with its 95% t-interval and the Wilcoxon signed-rank p. Better / worse: folds at Holm-adjusted "
          f"p < {SIGNIFICANCE}.", "",
          "| Cell | Overrides | Method | Δ vs base cell [95% t] | Wilcoxon p (Holm) | Better / worse | Smallest Holm p | "
          "Centered cosine: cell vs base cell (folds above, sign test p, Holm) |",
          "|---|---|---|---|---|---|---|---|"]
    over = {c["cell"]: c["overrides"] for c in r.cells}
    for s in r.summary:
        ov = ", ".join(f"{k}={json.dumps(v)}" for k, v in over.get(s["cell"], {}).items()) or "—"
        span = (f"{signed(s['diff'])} [{signed(s['low'])}, {signed(s['high'])}]" if s["low"] is not None
                else signed(s["diff"]))
        md.append(f"| {s['cell']} | {ov} | {s['method']} | {span} | {fmt(s['wilcoxon_p'], 3)} ({fmt(s['wilcoxon_p_holm'], 3)}) | "
                  f"{s['better']} / {s['worse']} | {fmt(s['smallest_p_holm'], 3)} | {fmt(s.get('centered_cosine'))} vs "
                  f"{fmt(s.get('base_centered_cosine'))} ({s.get('centered_above')}/{s.get('centered_folds')}, "
                  f"{fmt(s.get('centered_sign_p'), 3)}, {fmt(s.get('centered_sign_p_holm'), 3)}) |")
    md += ["", "## Per fold", "", "| Cell | Method | Fold | n | Accuracy | Base cell | Δ [95% bootstrap] | p (Holm) |",
           "|---|---|---|---|---|---|---|---|"]
    for x in r.rows:
        md.append(f"| {x['cell']} | {x['method']} | {x['fold']} | {x['n_questions']} | {fmt(x['accuracy'])} | "
                  f"{fmt(x['base_accuracy'])} | {signed(x['diff'])} [{signed(x['low'])}, {signed(x['high'])}] | "
                  f"{fmt(x['p'], 3)} ({fmt(x['p_holm'], 3)}) |")
    md += [""] + [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    md += ["Each cell's own tables: " + "; ".join(f"{c['cell']}: {c['folder']}/results.md" for c in r.cells), ""]
    return "\n".join(md)


def write_comparison(out: Path, r: AblateFoldsResult) -> dict[str, str]:
    from ..evaluation.reports import clean, rows_csv
    from ..io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", clean({"folds": r.folds, "cells": r.cells, "rows": r.rows,
                                                      "summary": r.summary, "notes": r.notes}))
    atomic_write_text(out / "comparison.csv", rows_csv(clean(r.rows), FIELDS))
    atomic_write_text(out / "comparison.md", comparison_md(r))
    return {"json": str(out / "comparison.json"), "csv": str(out / "comparison.csv"), "md": str(out / "comparison.md")}
