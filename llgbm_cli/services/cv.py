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

Adapter x task scores are cached under ``<out>/scores`` (keyed by the adapter's sha256, the task,
its prompt form, the base model and the question ids), so base and zoo adapters are scored once
across folds and reruns. The oracle's candidates are scored together: the base layers below the
adapters run once per batch for all of them (``ScoreCache.score_many``). A finished fold leaves
``done.json`` and is skipped on the next run (its rows' statistics recomputed from its
``questions.json``; without that file it runs again); a finished training run (its ``final`` checkpoint and
marker) of the same config and zoo (every adapter's id and weights hash) is reused; an interrupted
one resumes from its latest checkpoint.

Under ``accelerate launch`` the folds are dealt round robin to the processes, each fold run by its
process alone (see docs/scaling.md); the main process gathers the rows and writes the summary.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .. import workdir
from ..errors import InputError
from ..progress import NULL_PROGRESS
from ..training.methods import FINAL, TRAINED, resolve, sections

DONE = "done.json"
QUESTIONS = "questions.json"
MARKER = "cv.json"  # what makes a folder recognisable as a cross-validation output
REFERENCES = ("base", "mean-delta")  # always evaluated: the comparisons of every method
ORACLE = "oracle-best"
RESAMPLES = 2000
LEVEL = 0.95
FOLD_FIELDS = [
    "fold", "method", "accuracy", "accuracy_vs_base", "vs_base_low", "vs_base_high", "vs_base_p",
    "vs_base_p_holm", "vs_base_test", "vs_base_mde", "vs_mean_delta", "vs_mean_delta_low", "vs_mean_delta_high",
    "vs_mean_delta_p", "vs_mean_delta_p_holm", "vs_mean_delta_test", "vs_mean_delta_mde", "gap_to_oracle",
    "delta_mse", "delta_cosine", "centered_cosine", "norm_ratio", "identified", "n_questions", "metric",
    "reference", "adapter",
]
SIGNIFICANCE = 0.05  # family-wise level of the Holm-adjusted tests that count as wins / losses
SUMMARY_KEYS = ("accuracy", "accuracy_vs_base", "vs_mean_delta", "gap_to_oracle", "centered_cosine",
                "delta_cosine", "delta_mse", "norm_ratio")


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


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The [ablation] section's keys that came after folds were first fingerprinted.
LATER_KEYS = ("cells", "base_cv")


def fold_config(cres) -> dict[str, Any]:
    """The config a fold's fingerprint covers: all of it but the ``[ablation]`` section, which no fold
    reads (an ablation cell's settings are overrides of the other sections). That section enters at
    its defaults, less :data:`LATER_KEYS`, as it did before it could hold cells: folds finished then
    stay valid."""
    from ..config import LlgbmConfig, fingerprint_view

    d = fingerprint_view(cres.to_dict())
    d["ablation"] = {k: v for k, v in LlgbmConfig().model_dump(mode="json")["ablation"].items() if k not in LATER_KEYS}
    return d


# --------------------------------------------------------------------------- scores, cached


def adapter_sha256(folder: Path, zoo_sha: Optional[str] = None) -> str:
    """The zoo manifest's sha256 of an adapter, else the sha256 of its weights and config files."""
    from ..adapters import CONFIG_FILE
    from ..io import sha256_file

    if zoo_sha:
        return zoo_sha
    folder = Path(folder)
    parts = [sha256_file(p) for p in sorted(folder.glob("*.safetensors"))]
    if (folder / CONFIG_FILE).exists():
        parts.append(sha256_file(folder / CONFIG_FILE))
    if not parts:
        raise InputError(f"{folder}: no adapter weights to score")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


class ScoreCache:
    """Adapter x task scores on a fixed question sample, one JSON file per key under ``folder``."""

    def __init__(self, resolved, folder: Path, model=None, tok=None):
        self.resolved, self.folder, self.model, self.tok = resolved, Path(folder), model, tok
        self.hits = 0
        self.misses = 0
        self.contamination: dict[str, dict[str, Any]] = {}  # task -> what its scored questions were checked against
        self._tasks: dict[str, tuple[Any, Any, list]] = {}

    def base_model(self):
        """(model, tokenizer) of the base model, loaded on first use (a rerun of finished folds loads nothing)."""
        if self.model is None:
            from ..models import load_base_model

            cfg = self.resolved.config
            self.model, self.tok = load_base_model(cfg.model.base, cfg.model.dtype, cfg.model.device)
        return self.model, self.tok

    def task(self, name: str):
        """(form, records) of a task's sampled test questions (eval's sample: same seed, same size)."""
        from ..tasks.evaluate import form_for
        from ..tasks.overlap import scored_sample, used_tasks
        from ..tasks.registry import registry_for

        if name not in self._tasks:
            cfg = self.resolved.config
            t = registry_for(self.resolved).get(name)
            # eval's questions: the same seeded sample, checked for contamination with the same policy
            recs, self.contamination[name] = scored_sample(self.resolved, t, used_tasks(self.resolved, [name]))
            self._tasks[name] = (form_for(self.resolved, t), recs)
        return self._tasks[name]

    def key(self, adapter_sha: Optional[str], task: str) -> dict[str, Any]:
        cfg = self.resolved.config
        form, recs = self.task(task)
        return {"adapter": adapter_sha or "base", "task": task, "form": repr(form),
                "base_model": cfg.model.base, "dtype": cfg.model.dtype, "max_length": cfg.data.max_length,
                "questions": [r.id for r in recs]}

    def _cached(self, key: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The cached score of ``key``; None when missing or unreadable (it is scored again and rewritten)."""
        path = self.folder / f"{fingerprint(key)}.json"
        try:
            got = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            return None
        if got is None or got.get("key") != key:
            return None
        self.hits += 1
        return got["score"]

    def score(self, adapter_folder: Optional[Path], task: str, zoo_sha: Optional[str] = None) -> dict[str, Any]:
        """``{"accuracy", "values", "question_ids", "metric"}`` of an adapter folder (None: the base model)."""
        from ..adapters import load_adapter
        from ..tasks.evaluate import score_records_with

        sha = None if adapter_folder is None else adapter_sha256(adapter_folder, zoo_sha)
        key = self.key(sha, task)
        got = self._cached(key)
        if got is not None:
            return got
        cfg = self.resolved.config
        form, recs = self.task(task)
        ad = None if adapter_folder is None else load_adapter(adapter_folder)
        model, tok = self.base_model()
        s = score_records_with(model, tok, ad, form, recs, batch_size=cfg.eval.batch_size,
                               generate_batch_size=cfg.data.generate_batch_size, max_length=cfg.data.max_length)
        return self._store(key, adapter_folder, s, recs)

    def _store(self, key: dict[str, Any], adapter_folder: Optional[Path], s, recs) -> dict[str, Any]:
        """Cache the TaskScore ``s`` of ``recs`` under ``key``; return the cached form."""
        from ..io import atomic_write_json

        out = {"accuracy": s.accuracy, "values": [float(v) for v in s.values()], "question_ids": [r.id for r in recs],
               "metric": s.form.metric}
        atomic_write_json(self.folder / f"{fingerprint(key)}.json",
                          {"key": key, "adapter_folder": None if adapter_folder is None else str(adapter_folder),
                           "score": out})
        self.misses += 1
        return out

    def score_many(self, items: Sequence[tuple[Path, Optional[str]]], task: str, group: int = 8) -> list[dict[str, Any]]:
        """:meth:`score` of each ``(adapter_folder, zoo_sha)`` on ``task``. The ones not cached are
        scored together, ``group`` at a time (each group's scores are cached when it ends, so an
        interrupted run loses at most one group): each batch runs the base layers below the adapters
        once for the whole group (:mod:`llgbm_cli.tasks.lower`)."""
        from ..adapters import load_adapter
        from ..tasks.evaluate import score_records_many

        form, recs = self.task(task)
        keys = [self.key(adapter_sha256(f, z), task) for f, z in items]
        out = [self._cached(key) for key in keys]
        todo = [i for i in range(len(items)) if out[i] is None]
        if len(todo) < 2:
            for i in todo:
                out[i] = self.score(items[i][0], task, items[i][1])
            return out
        cfg = self.resolved.config
        model, tok = self.base_model()
        for g in range(0, len(todo), max(1, group)):
            part = todo[g : g + max(1, group)]
            scores = score_records_many(model, tok, [load_adapter(items[i][0]) for i in part], form, recs,
                                        batch_size=cfg.eval.batch_size, generate_batch_size=cfg.data.generate_batch_size,
                                        max_length=cfg.data.max_length)
            for i, s in zip(part, scores):
                out[i] = self._store(keys[i], items[i][0], s, recs)
        return out


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
) -> CVResult:
    """Cross-validate ``methods`` over the folds ``folds`` (``all`` or comma-separated tasks); see the module doc.

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
            fp = fingerprint({"config": fold_config(cres), "methods": ms, "zoo": [(e.id, e.sha256) for e in zoo.entries]})
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
            rows, oracle = _run_fold(cres, k, fdir, ms, ov, zoo, scores, trained, progress)
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
    "task_examples",
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


def train_method(cres, method: str, run_dir: Path, progress=NULL_PROGRESS, zoo=None) -> bool:
    """Train ``method`` into ``run_dir`` unless a finished run of this config and this zoo is there
    (``<run_dir>.json`` records it); an interrupted run of them that keeps checkpoints resumes from
    its latest one, a run of another config or zoo is replaced; its descriptor's ``after_train``
    follows (b2: the index at ``index.path``). ``zoo``: the loaded zoo (read from the workdir when
    not given). True when it trained."""
    from ..io import atomic_write_json
    from ..training.loop import find_latest_checkpoint
    from ..zoo_manifest import Zoo

    tm = TRAINED[method]
    if zoo is None:
        zoo = Zoo.load(workdir.path(cres, "zoo"), must_exist=False)
    fp = run_fingerprint(cres.config, method, zoo.entries)
    marker = run_dir.parent / f"{run_dir.name}.json"
    prev = json.loads(marker.read_text()) if marker.exists() else {}
    if tm.final:
        if (run_dir / FINAL).exists() and prev.get("fingerprint") == fp:
            return False
        fresh = (run_dir / FINAL).exists() or (marker.exists() and prev.get("fingerprint") != fp)
        ck = None if fresh or not run_dir.exists() else find_latest_checkpoint(run_dir)
        args = {"resume": ck is not None, "force": ck is None and run_dir.exists()}
    else:
        if prev.get("fingerprint") == fp and prev.get("finished") and run_dir.exists():
            return False
        args = {"force": True}
    atomic_write_json(marker, {"method": method, "fingerprint": fp, "finished": False})
    resolve(tm.train)(cres, out_dir=run_dir, progress=progress, **args)
    if tm.after_train is not None:
        resolve(tm.after_train)(cres, force=True, progress=progress)
    atomic_write_json(marker, {"method": method, "fingerprint": fp, "finished": True})
    return True


def _run_fold(cres, k: str, fdir: Path, methods: list[str], ov: dict[str, Any], zoo, scores: ScoreCache,
              trained: list[str], progress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train, evaluate, score per question and compare, for the fold that holds out ``k``."""
    from ..io import atomic_write_json
    from .eval import load_world, run_eval

    cfg = cres.config
    checkpoints = {}
    for m in methods:
        if m in TRAINED:
            run_dir = fdir / "runs" / m
            if train_method(cres, m, run_dir, progress, zoo):
                trained.append(f"{k}/{m}")
            checkpoints[m] = TRAINED[m].checkpoint(run_dir)
    model, tok = scores.base_model()
    world = load_world(cres, [k], [k], model=model, tok=tok)
    ev = run_eval(cres, methods=methods, tasks=[k], holdout=[k], out=fdir / "eval", force=True,
                  checkpoints=checkpoints, overrides=ov, world=world, progress=progress)
    by_method = {r["method"]: r for r in ev.rows if r["task"] == k}

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

    rows = []
    for m in methods:
        r = by_method[m]
        rows.append({
            "fold": k, "method": m, "eval_accuracy": r["accuracy"],
            "delta_mse": r["delta_mse"], "delta_cosine": r["delta_cosine"], "centered_cosine": r["centered_cosine"],
            "norm_ratio": r["norm_ratio"], "identified": r["identified"], "heldout": r["heldout"],
            "metric": metric, "adapter": r.get("adapter"), "eval": str(Path(ev.out) / "results.md"),
        })
    return fold_rows(rows, values, oracle["accuracy"], cfg.project.seed), oracle


STAT_FIELDS = ("accuracy", "accuracy_vs_base", "vs_base_low", "vs_base_high", "vs_base_p", "vs_base_test",
               "vs_base_mde", "vs_mean_delta", "vs_mean_delta_low", "vs_mean_delta_high", "vs_mean_delta_p",
               "vs_mean_delta_test", "vs_mean_delta_mde", "gap_to_oracle", "n_questions")


def row_stats(values: dict[str, list[float]], method: str, oracle_accuracy: Optional[float],
              seed: int) -> dict[str, Any]:
    """The statistical fields of one method's row in a fold (:data:`STAT_FIELDS`), from the fold's
    per-question scores ``values`` (one list per method, ``base`` and ``mean-delta`` included): its
    accuracy, and against each reference the difference with its exact paired p-value, the test
    used, the bootstrap interval and the smallest difference detectable with 80% power."""
    from ..evaluation.stats import paired_test

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


# --------------------------------------------------------------------------- across folds


def holm_family(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Set ``vs_base_p_holm`` and ``vs_mean_delta_p_holm`` on every row: the Holm-adjusted p-values
    over the run's two families, every (fold × method) test against ``base`` of the methods other
    than ``base``, and every test against ``mean-delta`` of the methods other than
    ``mean-delta`` (None on a reference's row against itself, or where no p-value exists).
    Returns the size of each family (``{"vs_base": n, "vs_mean_delta": n}``)."""
    from ..evaluation.stats import holm

    sizes = {}
    for ref, key in (("base", "vs_base"), ("mean-delta", "vs_mean_delta")):
        fam = [r for r in rows if r["method"] != ref and r.get(f"{key}_p") is not None]
        for r in rows:
            r[f"{key}_p_holm"] = None
        for r, p in zip(fam, holm([r[f"{key}_p"] for r in fam])):
            r[f"{key}_p_holm"] = p
        sizes[key] = len(fam)
    return sizes


def summarize(rows: list[dict[str, Any]], oracle: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method the mean over folds of each measure with its Student-t interval (``<key>``,
    ``<key>_low``, ``<key>_high``), the Wilcoxon signed-rank p-value of its per-fold differences to
    base and to mean-delta (``accuracy_vs_base_wilcoxon_p``, ``vs_mean_delta_wilcoxon_p``) with its
    Holm-adjusted value over the methods compared with that reference (``..._wilcoxon_p_holm``), the
    folds where its centered cosine is above mean-delta's (``centered_above_mean_delta``) with the
    two-sided sign test's p (``..._p``, Holm over the methods other than base and mean-delta), and how
    many folds it beats or loses to base and mean-delta (Holm-adjusted exact p < 0.05, adjusted by
    :func:`holm_family`, which this sets on the rows); last the ``oracle-best`` reference."""
    from ..evaluation.stats import holm, sign_test, t_interval, wilcoxon_across

    holm_family(rows)
    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        s: dict[str, Any] = {"method": m, "folds": len(rs), "reference": False}
        for key in SUMMARY_KEYS:
            ti = t_interval([r.get(key) for r in rs], LEVEL)
            s[key], s[f"{key}_low"], s[f"{key}_high"] = ti["mean"], ti["low"], ti["high"]
        for key in ("accuracy_vs_base", "vs_mean_delta"):
            s[f"{key}_wilcoxon_p"] = wilcoxon_across([r.get(key) for r in rs])
        s["task_identification"] = (sum(bool(r.get("identified")) for r in rs) / len(rs)) if rs else None
        ref_cos = {r["fold"]: r.get("centered_cosine") for r in rows if r["method"] == "mean-delta"}
        both = [r for r in rs if r.get("centered_cosine") is not None and ref_cos.get(r["fold"]) is not None]
        s["centered_above_mean_delta"] = (None if m == "mean-delta" or not both else
                                          sum(r["centered_cosine"] > ref_cos[r["fold"]] for r in both))
        s["centered_above_mean_delta_p"] = (None if s["centered_above_mean_delta"] is None else
                                            sign_test(s["centered_above_mean_delta"], len(both)))
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
        fam = [s for s in out if s["method"] not in (ref, "base" if key.startswith("centered") else None)
               and s.get(key) is not None]
        for s in out:
            s[f"{key}_holm"] = None
        for s, p in zip(fam, holm([s[key] for s in fam])):
            s[f"{key}_holm"] = p
    scored = [o for o in oracle if o.get("accuracy") is not None]
    if scored:
        ti = t_interval([o["accuracy"] for o in scored], LEVEL)
        out.append({"method": ORACLE, "folds": len(scored), "reference": True, "accuracy": ti["mean"],
                    "accuracy_low": ti["low"], "accuracy_high": ti["high"]})
    return out


def cv_results_md(r: dict[str, Any]) -> str:
    from ..evaluation.reports import fmt, signed

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
    n_base = sum(1 for x in rows if x["method"] != "base" and x.get("vs_base_p") is not None)
    n_md = sum(1 for x in rows if x["method"] != "mean-delta" and x.get("vs_mean_delta_p") is not None)
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
    for s in r["summary"]:
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
    lines += ["", "## Per fold", "",
              f"| Fold | Method | Task Accuracy | Δ vs base [{pct}%] p (Holm) | Δ vs mean-delta [{pct}%] p (Holm) | "
              "Detectable Δ vs base (80% power) | Gap to oracle | Centered Cosine | Delta MSE | Questions |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    oracle = {o["fold"]: o for o in r["oracle"]}
    for k in r["folds"]:
        for row in (x for x in rows if x["fold"] == k):
            lines.append(f"| {k} | {row['method']} | {fmt(row['accuracy'])} | {boot(row, 'accuracy_vs_base', 'vs_base')}"
                         f" | {boot(row, 'vs_mean_delta', 'vs_mean_delta')} | {fmt(row.get('vs_base_mde'), 3)} | "
                         f"{signed(row.get('gap_to_oracle'))} | "
                         f"{fmt(row.get('centered_cosine'))} | {fmt(row.get('delta_mse'), 6)} | {row['n_questions']} |")
        o = oracle.get(k) or {}
        if o.get("accuracy") is not None:
            lines.append(f"| {k} | {ORACLE} (reference: {o['adapter']}, of {o['candidates']}) | {fmt(o['accuracy'])} "
                         "| — | — | — | — | — | — | — |")
    lines += ["", "Per-question scores: `folds/<fold>/questions.json`; each fold's full evaluation: "
              "`folds/<fold>/eval/results.md`.", ""]
    return "\n".join(lines)


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
