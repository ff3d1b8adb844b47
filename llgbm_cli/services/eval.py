"""`llgbm eval`: every method side by side on held-out tasks, in delta space and on task accuracy.

Per method × task the method's adapter (none for ``base``) is measured on the same probes and delta
spec as the delta cache (the header fingerprints must match) and compared with the task's teacher
delta from the cache: delta MSE, cosine, centered cosine, norm ratio and task identification (see
:mod:`llgbm_cli.evaluation.delta_metrics`); then the task's test questions are scored with it.

The task's *teacher* is its latest zoo checkpoint (highest step). The methods (``base``,
``teacher``, ``mean-delta``, ``multitask``, ``b1``, ``b2``, ``merge:<strategy>``, an adapter folder)
are a registry in :mod:`llgbm_cli.services.eval_methods`: one builder per method.

Generated and merged adapters are written under ``<out>/adapters/<method>/<task>`` so every
number can be reproduced and inspected. With ``holdout`` (leave-one-out) a generator, predictor
or index that saw a held-out task in training is refused.

Under ``accelerate launch`` every process loads the base model on its own device; the main process
alone builds the adapters (in its temporary output folder) and hands them to the others, which
are pickled as they are, so every process scores exactly the same adapters. The scoring cells
(each task's base model plus every method x task with an adapter) are dealt round robin, and so
are the delta batches (the batches of one process's computation, so every row is bit for bit the
one-process row); the per-cell scores (per-question ones included) and the delta rows are
gathered on the main process, which alone writes the output folder. The result does not depend
on the number of processes.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..progress import NULL_PROGRESS
from .. import workdir
from ..errors import InputError
from ..names import child
from ..training.methods import TRAINED
from . import eval_methods as M_



@dataclass
class EvalResult:
    out: str
    command: str
    base_model: str
    seed: int
    test_sample: int
    methods: list[str]
    tasks: list[str]
    holdout: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # per task: what the scored questions were checked against and what was found (tasks/overlap.py)
    contamination: list[dict[str, Any]] = field(default_factory=list)
    # evaluated tasks outside the zoo: no teacher, so no delta metric against one (stated, not zero-filled)
    no_teacher: list[str] = field(default_factory=list)
    # method x task -> TaskScore (per-question scores included; (None, task): the base model); not in the files
    scores: dict[tuple[Optional[str], str], Any] = field(default_factory=dict, repr=False)
    processes: int = 1  # not in the files either: the results do not depend on it
    is_main: bool = True  # under accelerate launch only the main process's result is complete

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.reports import clean

        d = dict(self.__dict__)
        for k in ("scores", "processes", "is_main"):
            d.pop(k)
        return clean(d)


# --------------------------------------------------------------------------- method names


def reproduce_command(resolved, methods, tasks, holdout, out: Path, test_sample: int,
                      overrides: Optional[dict[str, Any]] = None,
                      checkpoints: Optional[dict[str, Path]] = None) -> str:
    """The exact command line that reproduces a result (written at the top of results.md)."""
    parts = ["llgbm"]
    if resolved.path is not None:
        parts += ["--project", str(resolved.path)]
    parts.append("eval")
    for m in methods:
        parts += ["--method", m]
    for t in tasks:
        if t not in holdout:
            parts += ["--task", t]
    for t in holdout:
        parts += ["--holdout", t]
    parts += ["--test-sample", str(test_sample), "--out", str(out)]
    for m, ck in sorted((checkpoints or {}).items()):
        parts += [TRAINED[m].flag, str(ck)]
    for k, v in sorted((overrides or {}).items()):
        if v is not None and not k.startswith("eval."):
            parts += ["--set", f"{k}={M_.toml_value(v)}"]
    parts.append("--force")
    return shlex.join(parts)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """Everything the methods share: model, probes, teachers, training adapters."""

    resolved: Any
    model: Any
    tok: Any
    probes: Any
    spec: Any
    zoo: Any
    cache: Any
    teachers: dict[str, Any]  # task -> teacher ZooEntry
    teacher_deltas: dict[str, Any]  # task -> [D]
    train_entries: list[Any]
    train_mean: Any  # [D]
    holdout: list[str]


def load_world(resolved, tasks: list[str], holdout: list[str], model=None, tok=None, *,
               device: Optional[str] = None) -> World:
    import torch

    from ..deltas.context import DeltaContext
    from ..holdout import split
    from ..models import load_base_model
    from ..tasks.registry import registry_for
    from ..zoo_manifest import Zoo

    cfg = resolved.config
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    if not zoo.entries:
        raise InputError(f"{zoo.manifest_path}: the zoo is empty; {workdir.hint('zoo')}")
    if not set(zoo.tasks()) - set(holdout):
        raise InputError(f"--holdout: every zoo task is held out ({', '.join(sorted(holdout))}); nothing is left to "
                         "train on or to form the mean training delta: hold out fewer tasks")
    if model is None:
        model, tok = load_base_model(cfg.model.base, cfg.model.dtype, device or cfg.model.device)
    ctx = DeltaContext.build(resolved, model, tok, tasks=registry_for(resolved))
    cache = ctx.open_cache()
    teachers = {t: M_.teacher_of(zoo, t) for t in zoo.tasks()}
    teacher_deltas = {t: ctx.cached(cache, e).float() for t, e in teachers.items()}
    train_entries, _ = split(zoo.entries, holdout, key="--holdout")
    train_mean = torch.stack([ctx.cached(cache, e).float() for e in train_entries]).mean(0)
    return World(resolved, model, tok, ctx.probes, ctx.spec, zoo, cache, teachers, teacher_deltas, train_entries,
                 train_mean, list(holdout))


def resolve_tasks(zoo_tasks: list[str], tasks: Sequence[str], holdout: Sequence[str],
                  registered: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(tasks to evaluate, held-out tasks). A held-out task is a zoo task; an evaluated one is a zoo
    task or any ``registered`` task (one without a teacher: no trained method, index or mean saw it)."""
    bad = [t for t in tasks if t not in zoo_tasks and t not in registered]
    if bad:
        raise InputError(f"--task {', '.join(bad)}: neither a task of the zoo nor a registered task; valid: "
                         f"{', '.join(dict.fromkeys([*zoo_tasks, *registered]))} (declare a new one as [tasks.NAME])")
    bad = [t for t in holdout if t not in zoo_tasks]
    if bad:
        raise InputError(f"--holdout {', '.join(bad)}: not a task of the zoo; valid: {', '.join(zoo_tasks)}")
    out = list(dict.fromkeys(list(tasks) + list(holdout))) if (tasks or holdout) else list(zoo_tasks)
    return out, list(dict.fromkeys(holdout))


# --------------------------------------------------------------------------- methods -> adapters


def _check_fits(world: World, ad, label: str) -> None:
    from ..adapters import validate_against
    from ..models import BUILTIN_BASE

    base = world.resolved.config.model.base
    if ad.base_model in BUILTIN_BASE and ad.base_model != base:
        raise InputError(f"{ad.path or label}: adapter was made for base model {ad.base_model!r}, but this "
                         f"evaluation runs on {base!r}; set model.base or evaluate adapters of this base")
    validate_against(ad, world.model)


@dataclass
class _BuildContext:
    """What a method builder may use: the shared world, given checkpoints, the output folder
    (``out``, final) and the folder being written (``tmp``, renamed to ``out`` at the end)."""

    world: World
    checkpoints: dict[str, Path]
    out: Path
    tmp: Path


# --------------------------------------------------------------------------- the service


def run_eval(
    resolved,
    *,
    methods: Optional[Sequence[str]] = None,
    tasks: Optional[Sequence[str]] = None,
    holdout: Optional[Sequence[str]] = None,
    out: Optional[str | Path] = None,
    force: bool = False,
    checkpoints: Optional[dict[str, Path]] = None,
    overrides: Optional[dict[str, Any]] = None,
    progress=NULL_PROGRESS,
    world: Optional[World] = None,
    group=None,
    cached=None,
) -> EvalResult:
    """Evaluate ``methods`` on ``tasks`` (defaults from ``[eval]``); see the module doc.

    Phases: adapters (one per method x task, from the method registry) -> deltas -> scoring ->
    rows -> acceptance checks -> files. ``checkpoints`` overrides the checkpoint folder of
    ``multitask``/``b1`` (used by ablate). ``overrides`` are the config flags given, recorded in the
    reproduce command. Failed checks are reported in the result; :func:`enforce_checks` turns them
    into an error (``--strict``).

    ``group`` (a :class:`llgbm_cli.distributed.ProcessGroup`, default: the processes of this
    launch) shares the work as the module doc says; every process of it calls this, and only the
    main process's result (``is_main``) is complete and written.

    ``cached`` (a single process only): a function ``(adapter folder or None, task, form, records) ->``
    score or None, e.g. score caches' :meth:`~llgbm_cli.evaluation.score_cache.ScoreCache.lookup`; a
    method x task cell it returns a score for (the same adapter files, prompt form, base model and
    questions) is read back instead of scored again (a cross-validation's cells reuse the base cell's
    references this way).
    """
    import time

    from ..distributed import ProcessGroup
    from ..io import atomic_dir, check_output, output_lock, provenance, write_provenance
    from ..zoo_manifest import Zoo

    t0 = time.perf_counter()
    cfg = resolved.config
    ec = cfg.eval
    dist = group if group is not None else ProcessGroup(cfg.model.device)
    if not dist.is_main:
        progress = NULL_PROGRESS  # one set of progress bars, the main process's
    methods = M_.check_methods(list(methods) if methods else list(ec.methods))
    out = Path(out).expanduser() if out is not None else workdir.path(resolved, "eval")
    check_output(out, "evaluation", force=force, inputs=[workdir.path(resolved, "zoo"), *(checkpoints or {}).values()],
                 roots=[resolved.workdir, resolved.root])
    holdout = list(holdout) if holdout else list(ec.holdout)
    tasks_in = list(tasks) if tasks else list(ec.tasks)
    from ..tasks.registry import registry_for

    zoo_tasks = (world.zoo if world is not None else Zoo.load(workdir.path(resolved, "zoo"))).tasks()
    tasks, holdout = resolve_tasks(zoo_tasks, tasks_in, holdout, registry_for(resolved).names())
    if world is None:
        world = load_world(resolved, tasks, holdout, device=dist.device(cfg.model.device))
    elif world.holdout != holdout:
        raise ValueError("world built for other held-out tasks")
    checkpoints = dict(checkpoints or {})
    command = reproduce_command(resolved, methods, tasks, holdout, out, ec.test_sample, overrides, checkpoints)
    result = EvalResult(str(out), command, cfg.model.base, cfg.project.seed, ec.test_sample, methods, tasks, holdout,
                        processes=dist.world, is_main=dist.is_main,
                        no_teacher=[t for t in tasks if t not in world.teachers])
    samples = scored_samples(resolved, tasks)  # before any work: `refuse` stops here
    result.contamination = [info for _, info in samples.values()]
    samples = {t: recs for t, (recs, _) in samples.items()}
    dist.barrier()  # every process has judged the output folder before the main one writes

    if not dist.is_main:  # the shared work, then back without writing anything
        built = _Built(adapters=_received_adapters(dist))
        _deltas_phase(world, built, progress, dist)
        _scoring_phase(world, built, methods, tasks, samples, progress, dist)
        result.seconds = time.perf_counter() - t0
        return result
    with output_lock(out, f"the evaluation {out}"), atomic_dir(out, force=force) as tmp:
        built = _shared_adapters_phase(dist, _BuildContext(world, checkpoints, out, tmp), methods, tasks, result,
                                       progress)
        method_delta = _deltas_phase(world, built, progress, dist)
        acc, base_acc, nq, chance = _scoring_phase(world, built, methods, tasks, samples, progress, dist,
                                                   result.scores, cached=cached if dist.world == 1 else None)
        _rows_phase(world, built, method_delta, acc, base_acc, nq, chance, methods, tasks, result)
        if cfg.eval.task_probes:
            _task_probe_phase(world, built, methods, tasks, result, progress)
        curves = _checks_phase(resolved, built, method_delta, methods, tasks, checkpoints, result)
        _files_phase(tmp, out, curves, result, t0)
        write_provenance(tmp, provenance("eval", resolved.to_dict(), methods=methods, tasks=tasks, holdout=holdout,
                                         cache_header={k: world.cache.header.get(k) for k in
                                                       ("base_fingerprint", "probe_fingerprint", "spec")},
                                         runs=result.runs, processes=dist.world))
    return result


@dataclass
class _Built:
    """Every method x task adapter (None: the base model), where it lives and whether it is held out."""

    adapters: dict[tuple[str, str], Any] = field(default_factory=dict)
    where: dict[tuple[str, str], Optional[str]] = field(default_factory=dict)
    heldout: dict[tuple[str, str], Optional[bool]] = field(default_factory=dict)
    metric: dict[str, str] = field(default_factory=dict)  # the task's headline metric (acc, number, ...)
    absent: set = field(default_factory=set)  # (method, task) the method has nothing for: no row, not scored
    files: dict[tuple[str, str], str] = field(default_factory=dict)  # where its files are now (before the rename)


def _adapters_phase(ctx: _BuildContext, methods: list[str], tasks: list[str], result: EvalResult, progress) -> _Built:
    """1. one adapter (or None) per method x task, saved under ``adapters/`` where it is not a zoo/user folder."""
    from ..adapters import save_adapter
    from ..io import provenance

    resolved = ctx.world.resolved
    b = _Built()
    gen_task = progress.add("eval: adapters", total=len(methods) * len(tasks))
    for m in methods:
        made = M_.method_of(m).build(ctx, m, tasks)
        if made.info is not None:
            result.runs[m] = made.info
        b.absent.update((m, t) for t in made.absent)
        for t in tasks:
            ad = b.adapters[m, t] = made.adapters[t]
            b.heldout[m, t] = made.heldout[t]
            if t in made.where:
                b.where[m, t] = made.where[t]
                inside = Path(made.where[t]).is_relative_to(ctx.out)  # written into this evaluation: still in tmp
                b.files[m, t] = str(ctx.tmp / Path(made.where[t]).relative_to(ctx.out)) if inside else made.where[t]
            if ad is not None:
                _check_fits(ctx.world, ad, m)
                if (m, t) not in b.where:
                    rel = child(Path("adapters"), M_.method_slug(m), t, what="method and task")
                    save_adapter(ctx.tmp / rel, ad, base_model=resolved.config.model.base,
                                 provenance=provenance("eval", resolved.to_dict(), method=m, task=t))
                    b.where[m, t], b.files[m, t] = str(ctx.out / rel), str(ctx.tmp / rel)
            progress.advance(gen_task)
    return b


def _shared_adapters_phase(dist, ctx: _BuildContext, methods: list[str], tasks: list[str], result: EvalResult,
                           progress) -> _Built:
    """1 on the main process, its adapters handed to the others (an error there ends them too)."""
    if dist.world == 1:
        return _adapters_phase(ctx, methods, tasks, result, progress)
    try:
        built = _adapters_phase(ctx, methods, tasks, result, progress)
    except BaseException as e:
        dist.gather([("failed", 2 if isinstance(e, InputError) else 1)])
        raise
    dist.gather([("adapters", built.adapters)])
    return built


def _received_adapters(dist) -> dict[tuple[str, str], Any]:
    """The main process's adapters on another process; it exits (quietly: the main process reports
    the error) with the main process's exit code if building them failed there."""
    what, payload = dist.gather([])[0]
    if what == "failed":
        raise SystemExit(payload)
    return payload


def _deltas_phase(world: World, b: _Built, progress, dist=None) -> dict[tuple[str, str], Any]:
    """2. the delta of every adapter, on the cache's probes and spec; the batches are dealt to the
    processes and the rows gathered (complete on the main process)."""
    from ..deltas.compute import compute_delta_share

    cfg = world.resolved.config
    rank, n = (dist.rank, dist.world) if dist is not None else (0, 1)
    keys = [k for k in b.adapters if b.adapters[k] is not None]
    d_task = progress.add("eval: deltas", total=len(keys))
    mine = compute_delta_share(world.model, [b.adapters[k] for k in keys], world.probes, world.spec,
                               cfg.delta.adapters_per_batch, rank, n, progress=lambda k: progress.advance(d_task, k),
                               pack=cfg.delta.pack)
    rows = dict(dist.gather(mine) if dist is not None else mine)
    return {k: rows[i] for i, k in enumerate(keys) if i in rows}


def scored_samples(resolved, tasks: Sequence[str]) -> dict[str, tuple[list, dict[str, Any]]]:
    """Per task the test questions an evaluation scores (the seeded sample of ``eval.test_sample``)
    and its contamination record: checked against the train splits of the zoo's tasks, the probes'
    tasks and the evaluated tasks, with ``eval.contamination``'s policy (:func:`tasks.overlap.scored_sample`)."""
    from ..tasks.overlap import scored_sample, used_tasks
    from ..tasks.registry import registry_for

    reg = registry_for(resolved)
    used = used_tasks(resolved, tasks)
    return {t: scored_sample(resolved, reg.get(t), used) for t in tasks}


def _scoring_phase(world: World, b: _Built, methods: list[str], tasks: list[str], samples: dict[str, list],
                   progress, dist=None, scores: Optional[dict] = None, cached=None):
    """3. each task's metric (its registry definition: acc, acc_norm, exact_match or number) for every
    method x task on the same test questions (``samples``: the checked sample of each task). The
    cells (each task's base model, then every method with an adapter) are dealt to the processes;
    their scores are gathered into ``scores`` (``(None, task)``: the base model). A cell ``cached``
    returns a score for (one process only) is not scored again."""
    from ..tasks.evaluate import form_for, score_records, score_records_many
    from ..tasks.registry import registry_for

    cfg = world.resolved.config
    ec = cfg.eval
    s_task = progress.add("eval: scoring", total=len(tasks) * len(methods))
    kw = dict(batch_size=ec.batch_size, generate_batch_size=cfg.data.generate_batch_size,
              max_length=cfg.data.max_length)
    reg = registry_for(world.resolved)
    base_acc, acc, nq, chance, forms, recs = {}, {}, {}, {}, {}, {}
    for t in tasks:
        task_def = reg.get(t)
        forms[t] = form = form_for(world.resolved, task_def)
        recs[t] = samples[t]
        nq[t], b.metric[t] = len(recs[t]), form.metric
        # chance accuracy of a multiple-choice task: mean of 1 / number of options (none for generation)
        opts = [len(r.options) for r in recs[t]]
        chance[t] = sum(1 / k for k in opts) / len(opts) if opts and all(opts) else None
    cells = [c for t in tasks for c in [(None, t)] + [(m, t) for m in methods if b.adapters[m, t] is not None]]
    reused = {}
    if cached is not None:
        for m, t in cells:
            folder = None if m is None else b.files.get((m, t))
            if m is not None and (not folder or not Path(folder).is_dir()):
                continue
            sc = cached(folder, t, forms[t], recs[t])
            if sc is not None:
                reused[m, t] = sc
                progress.advance(s_task, 1 + (sum(b.adapters[k, t] is None for k in methods) if m is None else 0))
        cells = [c for c in cells if c not in reused]
    mine = []
    dealt = dist.shard(cells) if dist is not None else cells
    for t in dict.fromkeys(t for _, t in dealt):
        # A task's methods are scored together: each batch runs the base layers below their adapters once.
        ms = [m for m, u in dealt if u == t and m is not None]
        if (None, t) in dealt:
            mine.append(((None, t), score_records(world.model, world.tok, forms[t], recs[t], **kw)))
            progress.advance(s_task, 1 + sum(b.adapters[k, t] is None for k in methods))
        if ms:
            got = score_records_many(world.model, world.tok, [b.adapters[m, t] for m in ms], forms[t], recs[t], **kw)
            mine += [((m, t), sc) for m, sc in zip(ms, got)]
            progress.advance(s_task, len(ms))
    got = dict(dist.gather(mine) if dist is not None else mine)
    if dist is not None and not dist.is_main:
        return None
    got.update(reused)
    cells += list(reused)
    if scores is not None:
        scores.update((c, got[c]) for c in cells)
    for t in tasks:
        base_acc[t] = got[None, t].accuracy
        for m in methods:
            if (m, t) not in b.absent:
                acc[m, t] = base_acc[t] if b.adapters[m, t] is None else got[m, t].accuracy
    return acc, base_acc, nq, chance


def _rows_phase(world: World, b: _Built, method_delta, acc, base_acc, nq, chance, methods, tasks,
                result: EvalResult) -> None:
    """4. one row per method x task, and the per-method summary."""
    import torch

    from ..evaluation import delta_metrics as M

    zero = torch.zeros_like(world.train_mean)
    for m in methods:
        for t in tasks:
            if (m, t) in b.absent:
                continue
            d = method_delta.get((m, t), zero)
            row = {"method": m, "task": t, "heldout": b.heldout[m, t], "regime": M_.regime_of(m)}
            row.update(M.delta_metrics(d, world.teacher_deltas.get(t), world.train_mean, world.teacher_deltas, t))
            row.update(accuracy=acc[m, t], accuracy_vs_base=acc[m, t] - base_acc[t], n_questions=nq[t],
                       chance=chance[t], metric=b.metric.get(t, "acc"), adapter=b.where.get((m, t)))
            result.rows.append(row)
    result.summary = summarize(result.rows, methods)


def _task_probe_phase(world: World, b: _Built, methods, tasks, result: EvalResult, progress) -> None:
    """4b. (``eval.task_probes`` > 0) the delta metrics on the evaluated task's own prompts: per task,
    ``eval.task_probes`` prompts of its train split (never test); every method's adapter, the task's
    teacher and the training teachers measured there; per row ``task_probe_cosine`` (to the teacher)
    and ``task_probe_centered_cosine`` (both minus the training teachers' mean there). None where the
    task has no teacher or no train split."""
    import torch

    from ..adapters import load_adapter
    from ..deltas.compute import compute_deltas, pack_pays
    from ..deltas.probes import load_probes
    from ..tasks.registry import registry_for

    cfg = world.resolved.config
    reg = registry_for(world.resolved)
    trained = [load_adapter(world.zoo.path_of(e)) for e in world.train_entries]
    p_task = progress.add("eval: deltas on the tasks' own prompts", total=len(tasks))
    for t in tasks:
        rows = [r for r in result.rows if r["task"] == t]
        for r in rows:
            r["task_probe_cosine"] = r["task_probe_centered_cosine"] = None
        teacher = world.teachers.get(t)
        try:
            ps = load_probes(f"task:{t}", world.tok, count=cfg.eval.task_probes, seed=cfg.project.seed, tasks=reg,
                             chat_template=cfg.probes.chat_template, max_length=cfg.probes.max_length)
        except InputError:
            ps = None
        if teacher is None or ps is None:
            progress.advance(p_task, 1)
            continue
        kw = dict(adapters_per_batch=cfg.delta.adapters_per_batch, pack=pack_pays(ps, cfg.delta.pack))
        mean = torch.as_tensor(compute_deltas(world.model, trained, ps, world.spec, **kw)).float().mean(0)
        ms = [m for m in methods if (m, t) not in b.absent and b.adapters[m, t] is not None]
        ads = [load_adapter(world.zoo.path_of(teacher))] + [b.adapters[m, t] for m in ms]
        d = torch.as_tensor(compute_deltas(world.model, ads, ps, world.spec, **kw)).float()
        d_t, by_m = d[0], dict(zip(ms, d[1:]))
        cos = torch.nn.functional.cosine_similarity
        for r in rows:
            dm = by_m.get(r["method"], torch.zeros_like(d_t))  # no adapter: the base model, zero delta
            r["task_probe_cosine"] = float(cos(dm, d_t, dim=0, eps=1e-12)) if dm.abs().sum() > 0 else None
            r["task_probe_centered_cosine"] = float(cos(dm - mean, d_t - mean, dim=0, eps=1e-12))
        progress.advance(p_task, 1)
    for s in result.summary:
        vals = [r["task_probe_centered_cosine"] for r in result.rows
                if r["method"] == s["method"] and r.get("task_probe_centered_cosine") is not None]
        s["task_probe_centered_cosine"] = sum(vals) / len(vals) if vals else None


def _checks_phase(resolved, b: _Built, method_delta, methods, tasks, checkpoints, result: EvalResult) -> dict[str, list]:
    """5. the plans' acceptance checks; returns the training curves of every run found (for the plots)."""
    from ..evaluation import checks as C
    from ..io import read_provenance

    curves: dict[str, list] = {}
    for m, meth in M_.methods().items():
        if meth.run is None:
            continue
        run = _run_folder(resolved, m, checkpoints.get(m), result.runs.get(m))
        if run is None:
            continue
        rows = C.read_metrics_file(run / "metrics.jsonl")
        curves[m] = rows
        if m in methods:
            ck = Path(result.runs[m]["checkpoint"]) if m in result.runs and "checkpoint" in result.runs[m] else None
            result.checks.extend(C.training_checks(m, rows, read_provenance(run), ck))
    for m in sorted(n for n, meth in M_.methods().items() if meth.generator):
        if m in methods:
            gen_d = {t: method_delta[m, t] for t in tasks if (m, t) in method_delta}
            norms = {t: float(sum(float(mod.delta_weight().norm()) ** 2 for mod in b.adapters[m, t].modules.values())
                              ** 0.5) for t in tasks}
            if len(tasks) > 1:
                result.checks.append(C.not_degenerate(m, gen_d, norms))
    result.checks.append(C.beats_base(result.rows, result.scores))  # tested on the per-question scores
    result.checks.append(C.retrieval_floor(result.summary, resolved.config.eval.floor_tolerance))
    result.checks = [c for c in result.checks if c is not None]
    return curves


def _files_phase(tmp: Path, out: Path, curves: dict[str, list], result: EvalResult, t0: float) -> None:
    """6. plots and results.{md,json,csv}."""
    import time

    from ..evaluation.plots import accuracy_plot, crossfold_plot, curves_plot, delta_plot
    from ..evaluation.reports import write_results

    plots = tmp / "plots"
    plots.mkdir()
    made = accuracy_plot(result.rows, plots / "accuracy.png")
    made += delta_plot(result.rows, result.summary, plots / "delta_metrics.png")
    if len(result.holdout) > 1:  # each held-out task is a fold: the spread across them, per method
        made += crossfold_plot({t: [r for r in result.rows if r["task"] == t] for t in result.holdout},
                               plots / "folds.png") or []
    if curves:
        made += curves_plot(curves, plots / "training_curves.png") or []
    result.plots = [str(out / "plots" / p.name) for p in made]
    result.seconds = time.perf_counter() - t0
    files = write_results(tmp, result.to_dict())
    result.files = {k: str(out / Path(v).name) for k, v in files.items()}


def enforce_checks(result: EvalResult) -> None:
    """Raise CheckFailed (exit 1) naming every failed acceptance check (for ``--strict``)."""
    from ..errors import CheckFailed
    from ..evaluation.checks import failed

    bad = failed(result.checks)
    if bad:
        raise CheckFailed(f"{len(bad)} acceptance check(s) failed: " + "; ".join(
            f"{c['name']} ({c['detail']})" for c in bad) + f"; see {Path(result.out) / 'results.md'}")


def _run_folder(resolved, method: str, given: Optional[Path], info: Optional[dict]) -> Optional[Path]:
    """The run folder (with its metrics.jsonl) behind trained method ``method``'s checkpoint."""
    tm = TRAINED[method]
    if info and info.get("checkpoint"):
        ck = Path(info["checkpoint"])
    elif given is not None:
        ck = Path(given)
    else:
        ck = tm.checkpoint(workdir.path(resolved, method))
    p = ck.parent if tm.final else ck
    return p if (p / "metrics.jsonl").exists() else None


def summarize(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method, means over tasks; ``task_specific`` compares with ``mean-delta`` where evaluated."""
    from ..evaluation.delta_metrics import mean_of

    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:  # e.g. the teacher, when every evaluated task is outside the zoo
            continue
        out.append({
            "method": m,
            "tasks": len(rs),
            "delta_mse": mean_of([r["delta_mse"] for r in rs]),
            "delta_cosine": mean_of([r["delta_cosine"] for r in rs]),
            "centered_cosine": mean_of([r["centered_cosine"] for r in rs]),
            "norm_ratio": mean_of([r["norm_ratio"] for r in rs]),
            "task_identification": (sum(bool(r["identified"]) for r in ids) / len(ids)
                                    if (ids := [r for r in rs if r["identified"] is not None]) else math.nan),
            "accuracy": mean_of([r["accuracy"] for r in rs]),
            "accuracy_vs_base": mean_of([r["accuracy_vs_base"] for r in rs]),
            "heldout": all(r["heldout"] is True for r in rs),
            "regime": rs[0].get("regime", "zero-shot"),
        })
    ref = next((s for s in out if s["method"] == "mean-delta"), None)
    for s in out:
        if ref is None or s["method"] in ("mean-delta", "base"):
            s["task_specific"] = None
        else:
            s["task_specific"] = bool(s["centered_cosine"] > ref["centered_cosine"]
                                      and s["task_identification"] > ref["task_identification"])
    return out
