"""`llgbm eval --folds`: leave-one-task-out cross-validation over the zoo's tasks.

Each fold holds out one zoo task ``k``. What a trained method (:mod:`llgbm_cli.training.methods`)
needs is trained without ``k`` (with ``train.<section>.holdout_tasks = [k]``, and the config keys its
descriptor adds per fold: ``b2``'s retrieval index with ``index.exclude_tasks = [k]`` in
``runs/b2-index``, beside its delta predictor) into ``<out>/folds/<k>/runs/<method>``,
then the normal evaluation runs on ``k`` alone, held out, into ``<out>/folds/<k>/eval``. ``base``
and ``mean-delta`` are always evaluated: they are the references every method is compared with.

Per fold, every method's score on each test question is kept (``questions.json``, one list per
method in the order of ``question_ids``), and the statistics are computed from them (and
recomputed from them when a finished fold is reused, so a change of the statistics never needs the
models rerun): the accuracy difference to ``base`` and to ``mean-delta`` with an exact paired test
(McNemar for 0/1 scores, Wilcoxon signed-rank otherwise), a paired bootstrap percentile interval and
the smallest difference detectable with 80% power (:mod:`llgbm_cli.evaluation.stats`). The p-values
are Holm-adjusted over the run's family of comparisons with each reference, and wins / losses count
only adjusted p < 0.05. Across folds each method's mean comes with a Student-t interval and a
Wilcoxon signed-rank p-value. ``oracle-best`` is a reference, never a method: the single training
adapter (zoo adapters of the other tasks; by default each trajectory's last checkpoint,
``eval.oracle_candidates``) with the best test accuracy on ``k``; it reads test labels to choose.

Adapter x task scores are cached under ``<out>/scores`` (:mod:`llgbm_cli.evaluation.score_cache`:
keyed by the adapter's sha256, the task, its prompt form, the base model and the question ids), so
base and zoo adapters are scored once across folds and reruns; the oracle's candidates are scored
together. Every score a fold's evaluation makes (the base model and each method's adapter) goes into
that cache, and the evaluation reads back what it or a donor's cache (``donors``: an ablation's base
cell and other cells) already holds, so a fold that rebuilds an unchanged adapter does not score it
again. The statistics and tables are :mod:`llgbm_cli.evaluation.cv_stats`. A finished fold leaves
``done.json`` and is skipped on the next run (its rows' statistics recomputed from its
``questions.json``; without that file it runs again); a finished training run (its ``final`` checkpoint and
marker) of the same config and zoo (every adapter's id and weights hash) is reused; an interrupted
one resumes from its latest checkpoint.

Under ``accelerate launch`` the folds are dealt round robin to the processes, each fold run by its
process alone (see docs/scaling.md); the main process gathers the rows and writes the summary.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .. import workdir
from ..errors import InputError
from ..progress import NULL_PROGRESS
from ..evaluation.cv_stats import LEVEL, ORACLE, RESAMPLES, contamination_summary, cv_results_md, fold_rows, summarize
from ..evaluation.score_cache import ScoreCache, adapter_sha256
from ..io import fingerprint
from ..training.methods import FINAL, TRAINED, resolve, sections

DONE = "done.json"
QUESTIONS = "questions.json"
MARKER = "cv.json"  # what makes a folder recognisable as a cross-validation output
REFERENCES = ("base", "mean-delta")  # always evaluated: the comparisons of every method
FOLD_FIELDS = [
    "fold", "method", "accuracy", "accuracy_vs_base", "vs_base_low", "vs_base_high", "vs_base_p",
    "vs_base_p_holm", "vs_base_test", "vs_base_mde", "vs_mean_delta", "vs_mean_delta_low", "vs_mean_delta_high",
    "vs_mean_delta_p", "vs_mean_delta_p_holm", "vs_mean_delta_test", "vs_mean_delta_mde", "gap_to_oracle",
    "delta_mse", "delta_cosine", "centered_cosine", "norm_ratio", "identified", "n_questions", "metric",
    "reference", "adapter", "regime",
]


@dataclass
class CVResult:
    out: str
    command: str
    base_model: str
    seed: int
    test_sample: int
    methods: list[str]
    folds: list[str]
    oracle_candidates: str
    resamples: int = RESAMPLES
    level: float = LEVEL
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per fold x method
    oracle: list[dict[str, Any]] = field(default_factory=list)  # one per fold: the reference
    summary: list[dict[str, Any]] = field(default_factory=list)  # one per method (+ the oracle reference)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)  # "<fold>/<method>" trained (or resumed) in this run
    files: dict[str, str] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    processes: int = 1
    is_main: bool = True  # under accelerate launch only the main process's result is complete
    # what the folds' scored questions were checked against, and how many each dropped (None: unchecked)
    contamination: Optional[dict[str, Any]] = None
    # each fold's acceptance checks (its eval's results.json): fold -> [{name, status, detail}]
    checks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.reports import clean

        d = dict(self.__dict__)
        d.pop("is_main")
        return clean(d)


# --------------------------------------------------------------------------- inputs


def parse_folds(spec: str, zoo_tasks: Sequence[str]) -> list[str]:
    """``all`` (every zoo task) or comma-separated zoo task names, in the given order."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise InputError("--folds: give `all` or comma-separated zoo tasks")
    if names == ["all"]:
        names = list(zoo_tasks)
    bad = [t for t in names if t not in zoo_tasks]
    if bad:
        raise InputError(f"--folds {', '.join(bad)}: not a task of the zoo; valid: all, {', '.join(zoo_tasks)}")
    names = list(dict.fromkeys(names))
    if len(zoo_tasks) < 2:
        raise InputError(f"--folds: the zoo has one task ({', '.join(zoo_tasks)}); leaving it out leaves nothing "
                         "to train on: build a zoo of at least two tasks")
    return names


def cv_methods(methods: Sequence[str]) -> list[str]:
    """The methods of a cross-validation: the references first, then the requested ones."""
    from .eval_methods import check_methods

    ms = check_methods(list(methods))
    return [m for m in REFERENCES if m not in ms] + ms


def reproduce_command(resolved, folds_spec: str, methods: Sequence[str], out: Path, test_sample: int,
                      overrides: Optional[dict[str, Any]] = None) -> str:
    from .eval_methods import toml_value

    parts = ["llgbm"]
    if resolved.path is not None:
        parts += ["--project", str(resolved.path)]
    parts += ["eval", "--folds", folds_spec]
    for m in methods:
        parts += ["--method", m]
    parts += ["--test-sample", str(test_sample), "--out", str(out)]
    for k, v in sorted((overrides or {}).items()):
        if v is not None and k != "eval.test_sample":
            parts += ["--set", f"{k}={toml_value(v)}"]
    return shlex.join(parts)


def fold_overrides(base: dict[str, Any], fold: str, methods: Sequence[str] = (),
                   runs: Optional[Path] = None) -> dict[str, Any]:
    """The config of fold ``fold``: every trainer's section and eval hold it out, and each trained
    method among ``methods`` adds its own keys (``runs``: the fold's run folder; b2: its index)."""
    ov = {k: v for k, v in base.items() if v is not None}
    ov.update({f"train.{s}.holdout_tasks": [fold] for s in sections()})
    ov.update({"eval.holdout": [fold], "eval.tasks": [fold]})
    for m in methods:
        tm = TRAINED.get(m)
        if tm is not None and tm.fold_overrides is not None and runs is not None:
            ov.update(tm.fold_overrides(fold, runs))
    return ov


def fold_config(cres) -> dict[str, Any]:
    """The config a fold's fingerprint covers (as run fingerprints read it, ``config.fingerprint_view``):
    all of it but the ``[ablation]`` section, which no fold reads (an ablation cell's settings are
    overrides of the other sections). That section enters at its defaults, as it did before it could
    hold cells, so that folds finished then stay valid."""
    from ..config import LlgbmConfig, fingerprint_view

    d = fingerprint_view(cres.to_dict())
    d["ablation"] = fingerprint_view(LlgbmConfig().model_dump(mode="json"))["ablation"]
    return d


def fold_fingerprint(cres, methods: Sequence[str], zoo) -> str:
    """What a finished fold (its ``done.json``) was run under: its config, methods and the zoo's adapters."""
    return fingerprint({"config": fold_config(cres), "methods": list(methods),
                        "zoo": [(e.id, e.sha256) for e in zoo.entries]})


def finished_cv(resolved, *, folds: Sequence[str], methods: Sequence[str], out: Path,
                overrides: Optional[dict[str, Any]] = None) -> tuple[Optional[CVResult], str]:
    """The cross-validation in ``out`` read back without running anything, when it covers exactly
    ``folds`` and ``methods`` and every fold finished under this config and zoo (its ``done.json``
    fingerprint); else ``(None, why)``."""
    from ..zoo_manifest import Zoo

    out = Path(out)
    try:
        marker = json.loads((out / MARKER).read_text())
        saved = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None, f"{out}: no finished cross-validation there"
    ms = cv_methods(list(methods))
    if list(marker.get("folds") or []) != list(folds) or list(marker.get("methods") or []) != ms:
        return None, f"{out}: run on other folds or methods ({', '.join(marker.get('folds') or [])})"
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    base_ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    for k in folds:
        fdir = out / "folds" / k
        cres = resolved.with_overrides(fold_overrides(base_ov, k, ms, fdir / "runs"))
        try:
            done = json.loads((fdir / DONE).read_text())
        except (OSError, ValueError):
            return None, f"{out}: fold {k} has not finished"
        if done.get("fingerprint") != fold_fingerprint(cres, ms, zoo):
            return None, f"{out}: fold {k} ran under another config or zoo"
    fields = {f for f in CVResult.__dataclass_fields__ if f != "is_main"}
    return CVResult(**{k: v for k, v in saved.items() if k in fields}), ""


# --------------------------------------------------------------------------- oracle candidates

def oracle_candidates(zoo, fold: str, mode: str) -> list[Any]:
    """Zoo entries of the other tasks: every one (``all``) or each trajectory's last checkpoint (``last``)."""
    from .zoo import trajectory_of

    others = [e for e in zoo.entries if e.task != fold]
    if mode == "all":
        return others
    last: dict[tuple[str, Any], Any] = {}
    for e in others:
        k = trajectory_of(e)
        if k not in last or (e.step if e.step is not None else -1, e.id) > (
                last[k].step if last[k].step is not None else -1, last[k].id):
            last[k] = e
    return [e for e in others if last.get(trajectory_of(e)) is e]


# --------------------------------------------------------------------------- the service


def run_cv(
    resolved,
    *,
    folds: str,
    methods: Optional[Sequence[str]] = None,
    out: Optional[str | Path] = None,
    force: bool = False,
    overrides: Optional[dict[str, Any]] = None,
    progress=NULL_PROGRESS,
    donors: Sequence[Path] = (),
) -> CVResult:
    """Cross-validate ``methods`` over the folds ``folds`` (``all`` or comma-separated tasks); see the module doc.
    ``donors``: other cross-validation folders whose finished training runs of the very same config
    and zoo a fold copies instead of training again (an ablation's cells that change only what
    evaluation reads).

    Under ``accelerate launch`` every process calls this: the main process prepares the output
    folder while the others wait, the folds are dealt round robin (each fold trained, evaluated and
    scored by its process alone, as one process would), and the main process gathers every fold's
    rows and alone writes the summary; only its result (``is_main``) is complete."""
    import contextlib
    import shutil

    from ..distributed import IndependentProcesses
    from ..io import FileLock, atomic_write_json, check_output, provenance, write_provenance
    from ..zoo_manifest import Zoo

    cfg = resolved.config
    ec = cfg.eval
    procs = IndependentProcesses()
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    if not zoo.entries:
        raise InputError(f"{zoo.manifest_path}: the zoo is empty; {workdir.hint('zoo')}")
    fold_names = parse_folds(folds, zoo.tasks())
    ms = cv_methods(list(methods) if methods else list(ec.methods))
    out = Path(out).expanduser() if out is not None else resolved.resolve_path(f"{ec.out}-cv")
    base_ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    command = reproduce_command(resolved, folds, ms, out, ec.test_sample, base_ov)
    if not procs.is_main:
        progress = NULL_PROGRESS  # one set of progress bars, the main process's

    with contextlib.ExitStack() as held:
        def prepare() -> str:
            o = check_output(out, "cross-validation", force=force, incremental=True,
                             inputs=[workdir.path(resolved, "zoo"), workdir.path(resolved, "deltas")],
                             roots=[resolved.workdir, resolved.root])
            held.enter_context(FileLock(o.parent / f".{o.name}.lock", what=f"the cross-validation {o}"))
            if force and o.exists():
                shutil.rmtree(o)
            o.mkdir(parents=True, exist_ok=True)
            atomic_write_json(o / MARKER, {"folds": fold_names, "methods": ms, "command": command})
            write_provenance(o, provenance("eval --folds", resolved.to_dict(), folds=fold_names, methods=ms))
            return str(o)

        out = Path(procs.on_main(prepare))  # the others wait: --force may be clearing the folder
        result = CVResult(str(out), command, cfg.model.base, cfg.project.seed, ec.test_sample, ms, fold_names,
                          ec.oracle_candidates, processes=procs.world, is_main=procs.is_main)
        scores = ScoreCache(resolved, out / "scores")  # loads the base model when first needed
        bar = progress.add("cross-validation: folds", total=len(procs.shard(fold_names)))

        def fold(k: str) -> dict[str, Any]:
            fdir = out / "folds" / k
            ov = fold_overrides(base_ov, k, ms, fdir / "runs")
            cres = resolved.with_overrides(ov)
            fp = fold_fingerprint(cres, ms, zoo)
            done = fdir / DONE
            if done.exists():
                prev = json.loads(done.read_text())
                # the statistics are recomputed from the fold's per-question scores; without them the fold runs again
                rows = restat_rows(fdir, prev, ms, cres.config.project.seed) if prev.get("fingerprint") == fp else None
                if rows is not None:
                    if rows != prev["rows"]:
                        atomic_write_json(done, {**prev, "rows": rows})
                    progress.advance(bar)
                    return {"fold": k, "rows": rows, "oracle": prev["oracle"], "ran": False, "trained": [],
                            "contamination": prev.get("contamination")}
            progress.update(bar, description=f"cross-validation: fold {k}")
            trained: list[str] = []
            rows, oracle = _run_fold(cres, k, fdir, ms, ov, zoo, scores, trained, progress, donors)
            checked = scores.contamination.get(k)
            atomic_write_json(done, {"fold": k, "fingerprint": fp, "rows": rows, "oracle": oracle,
                                     "contamination": checked})
            progress.advance(bar)
            return {"fold": k, "rows": rows, "oracle": oracle, "ran": True, "trained": trained,
                    "contamination": checked}

        checked: list[Optional[dict[str, Any]]] = []
        for f in procs.each(fold_names, fold):
            result.rows.extend(f["rows"])
            result.oracle.append(f["oracle"])
            (result.ran if f["ran"] else result.skipped).append(f["fold"])
            result.trained.extend(f["trained"])
            checked.append(f.get("contamination"))
        if not procs.is_main:
            return result
        result.summary = summarize(result.rows, result.oracle, ms)
        result.contamination = contamination_summary(checked)
        result.checks = {k: fold_checks(out / "folds" / k) for k in result.folds}
        _write_files(out, result)
    return result


# ``train.multitask`` keys that only the multitask generator's training reads: a change to them
# leaves B1's and B2's runs valid (the rest of the section, the condition encoding and weight
# decay, is shared by every trainer and stays in their fingerprints).
MULTITASK_ONLY = frozenset({
    "generator", "generator_preset", "learning_rate", "batch_size", "delta_batch_size", "total_steps",
    "warmup_steps", "lr_schedule", "max_grad_norm", "lambda_delta", "lambda_schedule", "lambda_warmup_steps",
    "delta_loss_type", "delta_normalize", "weight_loss", "weight_loss_norm", "token_weighting", "log_interval",
    "save_interval", "eval_interval", "mixed_precision", "loss_balance", "delta_centered", "task_weight",
    "task_examples", "kl_temperature", "kl_examples", "delta_probes", "delta_per_probe", "own_task_probes",
})


def run_fingerprint(cfg, method: str, zoo_entries: Iterable[Any] = ()) -> str:
    """What a trained method's run depends on: its section, the model, LoRA, probes, delta spec, zoo
    settings, the other sections its descriptor says it reads, seed (the condition encoding of every
    generator lives in ``train.multitask``; its multitask-only keys count for multitask alone) and the
    zoo's contents, each adapter's id and weights hash (``zoo_entries``): a teacher rebuilt with
    other settings under the same id makes the run stale."""
    from ..config import fingerprint_view

    tm = TRAINED[method]
    view = fingerprint_view(cfg.model_dump(mode="json"))  # [train.b2] read where runs were first fingerprinted
    return fingerprint({
        "method": method, "section": view["train"][tm.section],
        "multitask": {k: v for k, v in view["train"]["multitask"].items() if tm.multitask_keys or k not in MULTITASK_ONLY},
        **{s: view[s] for s in ("model", "lora", "probes", "delta", "zoo", *tm.reads)},
        "seed": cfg.project.seed,
        "zoo_entries": sorted((e.id, e.sha256 or "") for e in zoo_entries),
    })


def _finished_run(run_dir: Path, fp: str, final: bool) -> bool:
    """Whether ``run_dir`` holds a finished run whose marker (``<run_dir>.json``) records ``fp``."""
    marker = run_dir.parent / f"{run_dir.name}.json"
    try:
        prev = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if prev.get("fingerprint") != fp or not run_dir.is_dir():
        return False
    return (run_dir / FINAL).exists() if final else bool(prev.get("finished"))


def donor_run(cres, method: str, fold: str, donors: Sequence[Path], zoo_entries: Iterable[Any]) -> Optional[Path]:
    """The first of ``donors`` (other cross-validations' run folders of fold ``fold``) that holds a
    finished run of ``method`` trained under exactly this config and zoo: its fingerprint taken as
    that folder makes it (b2: with its own index path) equals the one its marker records."""
    tm = TRAINED[method]
    entries = list(zoo_entries)
    for d in donors:
        d = Path(d)
        cfg = cres.config
        if tm.fold_overrides is not None:  # the keys the donor's own folder gave its run (b2: its index)
            from ..config import set_dotted

            data = cfg.model_dump(mode="json")
            for key, value in tm.fold_overrides(fold, d).items():
                set_dotted(data, key, value)
            cfg = type(cfg).model_validate(data)
        if _finished_run(d / method, run_fingerprint(cfg, method, entries), tm.final):
            return d / method
    return None


def _copy_run(src: Path, run_dir: Path) -> None:
    """``src``'s run into ``run_dir`` (its intermediate checkpoints left behind), replacing what was there."""
    import shutil

    tmp = run_dir.parent / f".{run_dir.name}.copy"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tmp.rename(run_dir)


def train_method(cres, method: str, run_dir: Path, progress=NULL_PROGRESS, zoo=None,
                 donors: Sequence[Path] = (), fold: Optional[str] = None) -> bool:
    """Train ``method`` into ``run_dir`` unless a finished run of this config and this zoo is there
    (``<run_dir>.json`` records it); an interrupted run of them that keeps checkpoints resumes from
    its latest one, a run of another config or zoo is replaced; its descriptor's ``after_train``
    follows (b2: the index at ``index.path``). ``zoo``: the loaded zoo (read from the workdir when
    not given). ``donors``: run folders of the same fold ``fold`` in other cross-validations (an
    ablation's base cell and other cells); a finished run there of the very same config and zoo is
    copied instead of trained again (the marker names it). True when it trained."""
    from ..io import atomic_write_json
    from ..training.loop import find_latest_checkpoint
    from ..zoo_manifest import Zoo

    tm = TRAINED[method]
    if zoo is None:
        zoo = Zoo.load(workdir.path(cres, "zoo"), must_exist=False)
    fp = run_fingerprint(cres.config, method, zoo.entries)
    marker = run_dir.parent / f"{run_dir.name}.json"
    prev = json.loads(marker.read_text()) if marker.exists() else {}
    if _finished_run(run_dir, fp, tm.final):
        return False
    src = donor_run(cres, method, fold, [d for d in donors if Path(d).resolve() != run_dir.parent.resolve()],
                    zoo.entries) if donors and fold is not None else None
    if src is not None:
        atomic_write_json(marker, {"method": method, "fingerprint": fp, "finished": False})
        _copy_run(src, run_dir)
        if tm.after_train is not None:
            resolve(tm.after_train)(cres, force=True, progress=progress)
        atomic_write_json(marker, {"method": method, "fingerprint": fp, "finished": True, "copied_from": str(src)})
        return False
    if tm.final:
        fresh = (run_dir / FINAL).exists() or (marker.exists() and prev.get("fingerprint") != fp)
        ck = None if fresh or not run_dir.exists() else find_latest_checkpoint(run_dir)
        args = {"resume": ck is not None, "force": ck is None and run_dir.exists()}
    else:
        args = {"force": True}
    atomic_write_json(marker, {"method": method, "fingerprint": fp, "finished": False})
    resolve(tm.train)(cres, out_dir=run_dir, progress=progress, **args)
    if tm.after_train is not None:
        resolve(tm.after_train)(cres, force=True, progress=progress)
    atomic_write_json(marker, {"method": method, "fingerprint": fp, "finished": True})
    return True


def oracle_picks(top: Optional[str], oracle_task: str, kind: dict[str, str]) -> dict[str, bool]:
    """Whether a retrieval's top hit ``top`` is the oracle-best adapter's task, and of its family (the
    registry's ``kind`` of each task: multiple-choice or generative)."""
    return {"picks_oracle_task": top == oracle_task,
            "picks_oracle_family": top in kind and kind.get(top) == kind.get(oracle_task)}


def _run_fold(cres, k: str, fdir: Path, methods: list[str], ov: dict[str, Any], zoo, scores: ScoreCache,
              trained: list[str], progress, donors: Sequence[Path] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train, evaluate, score per question and compare, for the fold that holds out ``k``."""
    from ..io import atomic_write_json
    from .eval import load_world, run_eval

    cfg = cres.config
    checkpoints = {}
    for m in methods:
        if m in TRAINED:
            run_dir = fdir / "runs" / m
            if train_method(cres, m, run_dir, progress, zoo, donors=[Path(d) / "folds" / k / "runs" for d in donors],
                            fold=k):
                trained.append(f"{k}/{m}")
            checkpoints[m] = TRAINED[m].checkpoint(run_dir)
    model, tok = scores.base_model()
    world = load_world(cres, [k], [k], model=model, tok=tok)
    # what this run or a donor (the base cell of an ablation) scored already, keyed by the adapter's files, the
    # prompt form, the base model and the questions, is read back: a cell scores only the adapters it changes
    caches = [scores] + [ScoreCache(cres, Path(d) / "scores") for d in donors if (Path(d) / "scores").is_dir()]

    def cached(folder, task, form, recs):
        sha = None if folder is None else adapter_sha256(Path(folder))  # hashed once for every cache
        return next((got for c in caches if (got := c.lookup(sha, task, form, recs)) is not None), None)

    ev = run_eval(cres, methods=methods, tasks=[k], holdout=[k], out=fdir / "eval", force=True,
                  checkpoints=checkpoints, overrides=ov, world=world, progress=progress, cached=cached)
    by_method = {r["method"]: r for r in ev.rows if r["task"] == k}
    recs = scores.task(k)[1]
    for (m, t), sc in ev.scores.items():  # kept for later runs: the base model's and each adapter's scores
        folder = by_method[m].get("adapter") if m is not None and m in by_method else None
        if t == k and (m is None or folder) and len(sc.values()) == len(recs):
            scores.put(Path(folder) if folder else None, k, sc, recs)

    values: dict[str, list[float]] = {}
    qids: list[str] = []
    metric = None
    for m in methods:
        # eval's own per-question scores (a method without an adapter scores as the base model);
        # the cache scores only what eval did not hand back
        sc = ev.scores.get((m, k)) or ev.scores.get((None, k))
        if sc is not None:
            values[m], metric = [float(v) for v in sc.values()], sc.form.metric
            qids = [r.id for r in scores.task(k)[1]]
            continue
        row = by_method[m]
        folder = Path(row["adapter"]) if row.get("adapter") else None
        sha = _zoo_sha(zoo, folder)
        s = scores.score(folder, k, sha)
        values[m], qids, metric = s["values"], s["question_ids"], s["metric"]

    oracle = {"fold": k, "method": ORACLE, "reference": True, "adapter": None, "accuracy": None, "candidates": 0,
              "mode": cfg.eval.oracle_candidates}
    if cfg.eval.oracle_candidates != "none":
        cands = oracle_candidates(zoo, k, cfg.eval.oracle_candidates)
        best = None
        for e, s in zip(cands, scores.score_many([(zoo.path_of(e), e.sha256) for e in cands], k)):
            if best is None or s["accuracy"] > best[1]["accuracy"]:
                best = (e, s)
        if best is not None:
            oracle.update(adapter=best[0].id, adapter_task=best[0].task, accuracy=best[1]["accuracy"],
                          candidates=len(cands))
            values[ORACLE] = best[1]["values"]
    atomic_write_json(fdir / QUESTIONS, {"fold": k, "metric": metric, "question_ids": qids, "methods": values,
                                         "oracle_adapter": oracle["adapter"]})

    from ..tasks.registry import registry_for

    reg = registry_for(cres)
    kind = {t: reg.get(t).kind for t in reg.names()}
    rows = []
    for m in methods:
        r = by_method[m]
        hits = (((ev.runs or {}).get(m) or {}).get("hits") or {}).get(k) or []
        picked = {}
        if hits and oracle.get("adapter_task"):  # a retrieval method: does its top hit find the oracle's task?
            picked = {"retrieved": [h.get("task") for h in hits], "oracle_task": oracle["adapter_task"],
                      **oracle_picks(hits[0].get("task"), oracle["adapter_task"], kind)}
        rows.append({**picked,
            "fold": k, "method": m, "eval_accuracy": r["accuracy"],
            "delta_mse": r["delta_mse"], "delta_cosine": r["delta_cosine"], "centered_cosine": r["centered_cosine"],
            "norm_ratio": r["norm_ratio"], "identified": r["identified"], "heldout": r["heldout"],
            "metric": metric, "adapter": r.get("adapter"), "eval": str(Path(ev.out) / "results.md"),
            "regime": r.get("regime") or "zero-shot",
            **({"task_probe_centered_cosine": r["task_probe_centered_cosine"]}
               if r.get("task_probe_centered_cosine") is not None else {}),
        })
    return fold_rows(rows, values, oracle["accuracy"], cfg.project.seed), oracle


def restat_rows(fdir: Path, done: dict[str, Any], methods: Sequence[str], seed: int) -> Optional[list[dict[str, Any]]]:
    """The rows of a finished fold (its ``done.json``, read as ``done``) with the statistics
    recomputed from its ``questions.json``; None when those scores are missing, unreadable or lack
    a method (the fold is then run again)."""
    try:
        q = json.loads((fdir / QUESTIONS).read_text())
        values = {m: [float(x) for x in v] for m, v in q["methods"].items()}
        rows = done["rows"]
        need = {r["method"] for r in rows} | set(REFERENCES)
        if not set(methods) <= {r["method"] for r in rows} or not need <= set(values):
            return None
        if len({len(values[m]) for m in need}) != 1:
            return None
        return fold_rows(rows, values, (done.get("oracle") or {}).get("accuracy"), seed)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _zoo_sha(zoo, folder: Optional[Path]) -> Optional[str]:
    if folder is None:
        return None
    for e in zoo.entries:
        if Path(zoo.path_of(e)).resolve() == folder.resolve():
            return e.sha256
    return None


def fold_checks(fdir: Path) -> list[dict[str, Any]]:
    """The acceptance checks of a fold's evaluation (name, status, detail), from its results.json."""
    try:
        checks = json.loads((fdir / "eval" / "results.json").read_text()).get("checks") or []
    except (OSError, ValueError):
        return []
    return [{k: c.get(k) for k in ("name", "status", "detail")} for c in checks]


def _write_files(out: Path, result: CVResult) -> None:
    from ..evaluation.plots import crossfold_plot
    from ..evaluation.reports import clean, rows_csv
    from ..io import atomic_write_json, atomic_write_text

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    folds = {}
    for k in result.folds:
        rs = [r for r in result.rows if r["fold"] == k]
        o = next((o for o in result.oracle if o["fold"] == k), None)
        if o is not None and o.get("accuracy") is not None:
            rs = rs + [{"method": f"{ORACLE} (reference)", "accuracy": o["accuracy"], "centered_cosine": None}]
        folds[k] = rs
    made = crossfold_plot(folds, plots / "folds.png") or []
    result.plots = [str(p) for p in made]
    result.files = {"json": str(out / "results.json"), "csv": str(out / "results.csv"), "md": str(out / "results.md")}
    d = clean(result.to_dict())
    atomic_write_json(out / "results.json", d)
    oracle_rows = [{"fold": o["fold"], "method": ORACLE, "accuracy": o["accuracy"], "reference": True,
                    "adapter": o["adapter"]} for o in d["oracle"] if o.get("accuracy") is not None]
    csv_rows = [{**r, "reference": False} for r in d["rows"]] + oracle_rows
    atomic_write_text(out / "results.csv", rows_csv(csv_rows, FOLD_FIELDS))
    atomic_write_text(out / "results.md", cv_results_md(d))
