"""`llgbm ablate`: the plans' ablation grid, each cell trained and evaluated, resumable.

The grid (from ``[ablation]``) varies one multitask setting at a time around the project's
config: ``lambda_delta`` (5 values), ``delta_loss_type`` (3), ``probe_count`` (3),
``lambda_schedule`` (3), plus the interaction λ × loss type (2 × 2): 18 cells by default. The
multitask levers get cells of their own when ``[ablation]`` lists values for them:
``loss_balance`` (e.g. none, gradnorm), ``delta_centered`` (false, true) and ``task_weight``
(e.g. 0, 0.1), one cell per value (none by default). A cell
is ``train multitask`` with the cell's overrides into ``<out>/<cell>/train`` followed by ``eval``
into ``<out>/<cell>/eval``. A finished cell leaves ``done.json`` (its summary row) and is skipped
on the next run; a cell interrupted mid-training resumes from its latest checkpoint. Probe-count
cells measure deltas on fewer probes, so their teacher deltas live in a cache of their own
(``<out>/deltas-probes-<n>``), filled once and shared by cells with the same count.

Cells that come out as the same setting once applied to the project's config (with the default
``[ablation]``: ``lambda_delta=1``, ``delta_loss_type=mse``, ``lambda_schedule=linear`` and the
interaction cell ``lambda_delta=1+delta_loss_type=mse`` are all the project's own setting) are run
once, under the first cell's name; the others are listed with ``same_as`` and left out of the summary.

Under ``accelerate launch`` the cells to run are dealt round robin (cell *i* of the grid, without
the ``same_as`` ones, to rank *i* mod *N*); each process trains and evaluates its cells from start
to end by itself, as one process would (no group while they work: a cell's training and eval do
not join the other processes), skipping its finished ones. At the end the processes meet, the
main process gathers every cell's row and alone writes the summary, the same as one process's. A
cell that fails stops its process's share; once the others have finished theirs, every process
stops with that error (:meth:`~llgbm_cli.distributed.IndependentProcesses.each`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..progress import NULL_PROGRESS
from .. import workdir
from ..errors import InputError
from ..names import child

DONE = "done.json"
SUMMARY_FIELDS = ["cell", "group", "lambda_delta", "delta_loss_type", "probe_count", "lambda_schedule",
                  "loss_balance", "delta_centered", "task_weight",
                  "delta_cosine", "centered_cosine", "task_identification", "accuracy", "accuracy_vs_base",
                  "mean_delta_centered_cosine", "mean_delta_task_identification", "task_specific",
                  "beats_weights_only_cosine", "beats_weights_only_accuracy"]


@dataclass
class Cell:
    name: str
    group: str
    overrides: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"cell": self.name, "group": self.group, "overrides": self.overrides}


def _v(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def ablation_grid(ab) -> list[Cell]:
    """The cells of the ``[ablation]`` section, in the plans' order."""
    mt = "train.multitask."
    cells = [Cell(f"lambda_delta={_v(v)}", "lambda_delta", {mt + "lambda_delta": v}) for v in ab.lambda_delta]
    cells += [Cell(f"delta_loss_type={v}", "delta_loss_type", {mt + "delta_loss_type": v}) for v in ab.delta_loss_type]
    cells += [Cell(f"probe_count={v}", "probe_count", {"probes.count": v}) for v in ab.probe_count]
    cells += [Cell(f"lambda_schedule={v}", "lambda_schedule", {mt + "lambda_schedule": v}) for v in ab.lambda_schedule]
    cells += [Cell(f"lambda_delta={_v(lam)}+delta_loss_type={loss}", "interaction",
                   {mt + "lambda_delta": lam, mt + "delta_loss_type": loss})
              for lam in ab.interaction_lambda for loss in ab.interaction_loss]
    cells += [Cell(f"loss_balance={v}", "loss_balance", {mt + "loss_balance": v}) for v in ab.loss_balance]
    cells += [Cell(f"delta_centered={str(bool(v)).lower()}", "delta_centered", {mt + "delta_centered": bool(v)})
              for v in ab.delta_centered]
    cells += [Cell(f"task_weight={_v(float(v))}", "task_weight", {mt + "task_weight": float(v)}) for v in ab.task_weight]
    return cells


def select_cells(cells: list[Cell], names: Optional[Sequence[str]]) -> list[Cell]:
    if not names:
        return cells
    by = {c.name: c for c in cells}
    bad = [n for n in names if n not in by]
    if bad:
        guess = difflib.get_close_matches(bad[0], list(by), n=1)
        raise InputError(f"--cell {bad[0]}: not a cell of the grid" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                         + f"; cells: {', '.join(by)} (see `llgbm ablate --dry-run`)")
    return [by[n] for n in dict.fromkeys(names)]


# The settings a cell can change, as dotted config keys.
CELL_KEYS = ("train.multitask.lambda_delta", "train.multitask.delta_loss_type", "train.multitask.lambda_schedule",
             "probes.count", "train.multitask.loss_balance", "train.multitask.delta_centered",
             "train.multitask.task_weight")
FLOAT_KEYS = ("train.multitask.lambda_delta", "train.multitask.task_weight")


def _setting(cfg, cell: Cell) -> str:
    """The cell's effective setting: its overrides on top of the project's values."""
    eff = {}
    for key in CELL_KEYS:
        v = cell.overrides[key] if key in cell.overrides else _get(cfg, key)
        eff[key] = float(v) if key in FLOAT_KEYS else v
    return json.dumps(eff, sort_keys=True)


def _get(cfg, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def duplicate_cells(cfg, cells: Sequence[Cell]) -> dict[str, str]:
    """Cell name -> the earlier cell with the same effective setting, for every repeated setting."""
    first: dict[str, str] = {}
    same: dict[str, str] = {}
    for c in cells:
        sig = _setting(cfg, c)
        if sig in first:
            same[c.name] = first[sig]
        else:
            first[sig] = c.name
    return same


@dataclass
class AblateResult:
    out: str
    dry_run: bool
    cells: list[dict[str, Any]] = field(default_factory=list)
    same_as: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    processes: int = 1
    is_main: bool = True  # under accelerate launch only the main process's result is complete

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.reports import clean

        d = dict(self.__dict__)
        d.pop("is_main")
        return clean(d)


def cell_overrides(resolved, cell: Cell, base_overrides: dict[str, Any]) -> dict[str, Any]:
    ab = resolved.config.ablation
    ov = dict(base_overrides)
    if ab.total_steps is not None:
        ov["train.multitask.total_steps"] = ab.total_steps
    ov.update(cell.overrides)
    if "probes.count" in cell.overrides:
        ov["delta.cache"] = str(Path(ab.out) / f"deltas-probes-{cell.overrides['probes.count']}")
    return ov


def run_ablate(
    resolved,
    *,
    cells: Optional[Sequence[str]] = None,
    dry_run: bool = False,
    overrides: Optional[dict[str, Any]] = None,
    progress=NULL_PROGRESS,
) -> AblateResult:
    """Run (or with ``dry_run`` list) the grid's cells; finished cells are skipped. See the module doc.

    Under ``accelerate launch`` every process calls this; only the main process's result
    (``is_main``) is complete."""
    import contextlib

    from ..distributed import IndependentProcesses
    from ..io import FileLock, atomic_write_json, provenance, write_provenance

    ab = resolved.config.ablation
    out = workdir.path(resolved, "ablation")
    grid = select_cells(ablation_grid(ab), cells)
    base_ov = dict(overrides or {})
    procs = IndependentProcesses()
    result = AblateResult(str(out), dry_run, same_as=duplicate_cells(resolved.config, grid), processes=procs.world,
                          is_main=procs.is_main)
    for c in grid:
        d = c.to_dict()
        d["same_as"] = result.same_as.get(c.name)
        d["done"] = d["same_as"] is None and (out / c.name / DONE).exists()
        result.cells.append(d)
    if dry_run:
        return result
    grid = [c for c in grid if c.name not in result.same_as]
    if not procs.is_main:
        progress = NULL_PROGRESS  # one set of progress bars, the main process's
    lock = FileLock(out.parent / f".{out.name}.lock", what=f"the ablation {out}") if procs.is_main \
        else contextlib.nullcontext()
    with lock:
        out.mkdir(parents=True, exist_ok=True)
        if procs.is_main:
            write_provenance(out, provenance("ablate", resolved.to_dict(), cells=[c.name for c in grid]))
        task = progress.add("ablation cells", total=len(procs.shard(grid)))

        def cell(c: Cell) -> tuple[str, dict[str, Any], bool]:
            """(cell, row, ran) of one cell of this process's share, run alone."""
            cdir = child(out, c.name, what="cell")
            ov = cell_overrides(resolved, c, base_ov)
            done = cdir / DONE
            if done.exists():
                prev = json.loads(done.read_text())
                if prev.get("overrides") == _jsonable(ov):
                    progress.advance(task)
                    return c.name, prev["row"], False
            progress.update(task, description=f"cell {c.name}")
            cres = resolved.with_overrides(ov)
            row = _run_cell(cres, c, cdir, ov, progress)
            atomic_write_json(done, {"cell": c.name, "overrides": _jsonable(ov), "row": row})
            progress.advance(task)
            return c.name, row, True

        got = {name: (row, ran) for name, row, ran in procs.each(grid, cell)}
        if not procs.is_main:
            return result
        for c in grid:
            row, ran = got[c.name]
            result.rows.append(row)
            (result.ran if ran else result.skipped).append(c.name)
        _compare_with_weights_only(result.rows)
        result.findings = findings(result.rows)
        if result.same_as:
            result.findings.append("same setting, run once: " + "; ".join(
                f"{d} = {o}" for d, o in result.same_as.items()))
        result.files = write_summary(out, result.rows, result.findings)
    return result


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, sort_keys=True))


def _run_cell(cres, cell: Cell, cdir: Path, ov: dict[str, Any], progress) -> dict[str, Any]:
    from ..deltas.cache import DeltaCache
    from ..training.loop import find_latest_checkpoint
    from ..workdir import FINAL
    from .cache_deltas import run_cache_deltas
    from .eval import run_eval
    from .train_multitask import train_multitask

    cfg = cres.config
    if "probes.count" in cell.overrides:
        run_cache_deltas(cres)  # incremental: a later cell with the same count reuses every row
    elif not DeltaCache.exists(workdir.path(cres, "deltas")):
        raise InputError(f"{workdir.path(cres, 'deltas')}: no delta cache; {workdir.hint('deltas')}")
    train_dir = cdir / "train"
    if not (train_dir / FINAL).exists():
        ck = find_latest_checkpoint(train_dir) if train_dir.exists() else None
        train_multitask(cres, out_dir=train_dir, resume=ck is not None, force=ck is None and train_dir.exists(),
                        progress=progress)
    holdout = list(cfg.train.multitask.holdout_tasks)
    ev = run_eval(cres, methods=list(cfg.ablation.methods), holdout=holdout or None, out=cdir / "eval", force=True,
                  checkpoints={"multitask": train_dir / FINAL}, overrides=ov)
    summ = {s["method"]: s for s in ev.summary}
    mt_s = summ.get("multitask", {})
    ref = summ.get("mean-delta", {})
    mt = cfg.train.multitask
    return {
        "cell": cell.name, "group": cell.group, "lambda_delta": mt.lambda_delta, "delta_loss_type": mt.delta_loss_type,
        "probe_count": cfg.probes.count, "lambda_schedule": mt.lambda_schedule,
        "loss_balance": mt.loss_balance, "delta_centered": mt.delta_centered, "task_weight": mt.task_weight,
        "delta_cosine": mt_s.get("delta_cosine"), "centered_cosine": mt_s.get("centered_cosine"),
        "task_identification": mt_s.get("task_identification"), "accuracy": mt_s.get("accuracy"),
        "accuracy_vs_base": mt_s.get("accuracy_vs_base"), "task_specific": mt_s.get("task_specific"),
        "mean_delta_centered_cosine": ref.get("centered_cosine"),
        "mean_delta_task_identification": ref.get("task_identification"),
        "tasks": ev.tasks, "holdout": ev.holdout, "eval": str(Path(ev.out) / "results.md"),
        "checks": {c["name"]: c["status"] for c in ev.checks},
    }


def _compare_with_weights_only(rows: list[dict[str, Any]]) -> None:
    """Mark each cell against the weights-only cell (λ = 0) where the grid has one."""
    ref = next((r for r in rows if r["cell"] == "lambda_delta=0"), None)
    for r in rows:
        if ref is None or r is ref or r.get("delta_cosine") is None:
            r["beats_weights_only_cosine"] = r["beats_weights_only_accuracy"] = None
            continue
        r["beats_weights_only_cosine"] = bool(r["delta_cosine"] > ref["delta_cosine"])
        r["beats_weights_only_accuracy"] = bool(r["accuracy"] > ref["accuracy"])


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: where the delta loss beats weights-only training (λ = 0) and where it does not."""
    ref = next((r for r in rows if r["cell"] == "lambda_delta=0"), None)
    if ref is None:
        return ["no weights-only cell (lambda_delta=0) in this run: nothing to compare against"]
    out = []
    for key, what in (("beats_weights_only_cosine", "delta cosine"), ("beats_weights_only_accuracy", "accuracy")):
        win = [r["cell"] for r in rows if r.get(key)]
        lose = [r["cell"] for r in rows if r.get(key) is False]
        out.append(f"{what}: beats λ=0 ({ref[what.replace(' ', '_')]:.4f}) in {', '.join(win) or 'no cell'}; "
                   f"does not in {', '.join(lose) or 'no cell'}")
    return out


def write_summary(out: Path, rows: list[dict[str, Any]], notes: list[str]) -> dict[str, str]:
    from ..evaluation.plots import ablation_plot
    from ..evaluation.reports import clean, fmt, rows_csv, signed
    from ..io import atomic_write_json, atomic_write_text

    rows = clean(rows)
    atomic_write_json(out / "summary.json", {"rows": rows, "findings": notes})
    atomic_write_text(out / "summary.csv", rows_csv(rows, SUMMARY_FIELDS))
    md = ["# llgbm ablation", "", "Generator (`multitask`) per cell; mean over evaluated tasks.", "",
          "| Cell | Delta Cosine | Centered Cosine | Task ID | Task Accuracy | Δ vs base | Task-specific | "
          "> λ=0 cosine | > λ=0 accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['cell']} | {fmt(r['delta_cosine'])} | {fmt(r['centered_cosine'])} | "
                  f"{fmt(r['task_identification'], 2)} | {fmt(r['accuracy'])} | {signed(r['accuracy_vs_base'])} | "
                  f"{fmt(r.get('task_specific'))} | {fmt(r.get('beats_weights_only_cosine'))} | "
                  f"{fmt(r.get('beats_weights_only_accuracy'))} |")
    md += ["", "## Findings", ""] + [f"- {n}" for n in notes] + [""]
    atomic_write_text(out / "summary.md", "\n".join(md))
    ablation_plot(rows, out / "ablation.png")
    return {"json": str(out / "summary.json"), "csv": str(out / "summary.csv"), "md": str(out / "summary.md"),
            "plot": str(out / "ablation.png")}
