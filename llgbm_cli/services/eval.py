"""`llgbm eval`: every method side by side on held-out tasks, in delta space and on task accuracy.

Per method × task the method's adapter (none for ``base``) is measured on the same probes and delta
spec as the delta cache (the header fingerprints must match) and compared with the task's teacher
delta from the cache: delta MSE, cosine, centered cosine, norm ratio and task identification (see
:mod:`llgbm_cli.evaluation.metrics`); then the task's test questions are scored with it.

The task's *teacher* is its latest zoo checkpoint (highest step). Methods:

* ``base``: the base model (zero delta);
* ``teacher``: the task's own teacher adapter (the oracle);
* ``mean-delta``: every training adapter merged linearly, the same for every task (the reference
  a method must beat to be called task-specific);
* ``multitask`` / ``b1``: a generator checkpoint turns the task's condition text into an adapter;
* ``b2``: B2's delta predictor + index retrieval + merge;
* ``merge:<strategy>``: the chosen zoo adapters merged (default: every other training task's teacher);
* a folder: that PEFT adapter, for every task.

Generated and merged adapters are written under ``<out>/adapters/<method>/<task>`` so every
number can be reproduced and inspected. With ``holdout`` (leave-one-out) a generator, predictor
or index that saw a held-out task in training is refused.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..commands.common import NULL_PROGRESS
from ..errors import InputError

FIXED_METHODS = ("base", "teacher", "mean-delta", "multitask", "b1", "b2")
TRAIN_RUNS = {  # method -> (run folder under workdir, the command that makes it)
    "multitask": (Path("train") / "multitask", "llgbm train multitask"),
    "b1": (Path("train") / "b1", "llgbm train delta-only --variant b1"),
    "b2": (Path("train") / "b2", "llgbm train delta-only --variant b2"),
}


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

    def to_dict(self) -> dict[str, Any]:
        from ..evaluation.reports import clean

        return clean(dict(self.__dict__))


# --------------------------------------------------------------------------- method names


def method_slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", method).strip("-") or "method"


def check_methods(methods: Sequence[str]) -> list[str]:
    """Validate method names (a folder must hold an adapter); list the valid ones otherwise."""
    from ..adapters import CONFIG_FILE
    from ..merging import get_strategy

    if not methods:
        raise InputError("--method: give at least one method; valid: " + _valid_methods())
    out = []
    for m in methods:
        m = str(m).strip()
        if m in FIXED_METHODS:
            pass
        elif m.startswith("merge:"):
            get_strategy(m.split(":", 1)[1])
        elif Path(m).expanduser().is_dir():
            if not (Path(m).expanduser() / CONFIG_FILE).exists():
                raise InputError(f"--method {m}: folder holds no {CONFIG_FILE}; give a PEFT LoRA adapter folder")
        else:
            import difflib

            guess = difflib.get_close_matches(m, list(FIXED_METHODS), n=1)
            raise InputError(f"--method {m}: unknown method" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                             + f"; valid: {_valid_methods()}")
        if m in out:
            raise InputError(f"--method {m}: given twice")
        out.append(m)
    return out


def _valid_methods() -> str:
    from ..merging import STRATEGIES

    return ", ".join(FIXED_METHODS) + ", merge:<strategy> (" + ", ".join(STRATEGIES) + "), or an adapter folder"


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
        parts += [f"--{m}-checkpoint", str(ck)]
    for k, v in sorted((overrides or {}).items()):
        if v is not None and not k.startswith("eval."):
            parts += ["--set", f"{k}={_toml_value(v)}"]
    parts.append("--force")
    return shlex.join(parts)


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)


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


def teacher_of(zoo, task: str):
    """A task's teacher: its latest checkpoint (highest step, then id)."""
    entries = zoo.by_task(task)
    return max(entries, key=lambda e: (e.step if e.step is not None else -1, e.id))


def _open_cache(resolved, model, probes, spec):
    from ..deltas.cache import DeltaCache, make_header

    cfg = resolved.config
    folder = resolved.resolve_path(cfg.delta.cache)
    cache = DeltaCache.open(folder)
    bad = cache.mismatches(make_header(model, probes, spec, cfg.model.base))
    if bad:
        raise InputError(f"{folder}: the delta cache was built with another {', '.join(bad)} than this config; "
                         "run `llgbm cache-deltas` with this config (or point delta.cache at a matching cache)")
    return cache


def _cached(cache, entry) -> Any:
    if entry.id not in cache:
        raise InputError(f"{cache.folder}: no delta for zoo adapter {entry.id!r}; run `llgbm cache-deltas`")
    return cache.row(entry.id)


def load_world(resolved, tasks: list[str], holdout: list[str], model=None, tok=None) -> World:
    import torch

    from ..deltas.compute import DeltaSpec, resolve_layers
    from ..deltas.probes import load_probes
    from ..models import load_base_model
    from ..zoo import Zoo

    cfg = resolved.config
    zoo = Zoo.load(resolved.resolve_path(cfg.zoo.path))
    if not zoo.entries:
        raise InputError(f"{zoo.manifest_path}: the zoo is empty; run `llgbm zoo build` first")
    if model is None:
        model, tok = load_base_model(cfg.model.base, cfg.model.dtype, cfg.model.device)
    spec = DeltaSpec.from_config(cfg.delta)
    try:
        resolve_layers(model, spec)
    except ValueError as e:
        raise InputError(str(e))
    pc = cfg.probes
    probes = load_probes(pc.source, tok, count=pc.count, chat_template=pc.chat_template, max_length=pc.max_length,
                         seed=cfg.project.seed).to(next(model.parameters()).device)
    cache = _open_cache(resolved, model, probes, spec)
    teachers = {t: teacher_of(zoo, t) for t in zoo.tasks()}
    teacher_deltas = {t: _cached(cache, e).float() for t, e in teachers.items()}
    train_entries = [e for e in zoo.entries if e.task not in holdout]
    train_mean = torch.stack([_cached(cache, e).float() for e in train_entries]).mean(0)
    return World(resolved, model, tok, probes, spec, zoo, cache, teachers, teacher_deltas, train_entries,
                 train_mean, list(holdout))


def resolve_tasks(zoo_tasks: list[str], tasks: Sequence[str], holdout: Sequence[str]) -> tuple[list[str], list[str]]:
    """(tasks to evaluate, held-out tasks); every name must be a zoo task."""
    for flag, names in (("--task", tasks), ("--holdout", holdout)):
        bad = [t for t in names if t not in zoo_tasks]
        if bad:
            raise InputError(f"{flag} {', '.join(bad)}: not a task of the zoo; valid: {', '.join(zoo_tasks)}")
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


def _condition_texts(world: World, task: str, mode: str, n: int) -> list[str]:
    from ..generators.condition import describe_task

    if mode == "description":
        return [describe_task(task)]
    cond = list(world.teachers[task].condition or [])
    if not cond:
        from ..data import sample

        cond = [r.prompt for r in sample(task, "train", max(n, 8), seed=world.resolved.config.project.seed)]
    return cond


def _checkpoint(world: World, method: str, given: Optional[Path]) -> Path:
    from ..training.loop import FINAL

    run, cmd = TRAIN_RUNS[method]
    ckpt = Path(given) if given is not None else world.resolved.workdir / run / FINAL
    if not ckpt.exists():
        raise InputError(f"method {method}: no checkpoint at {ckpt}; make it with `{cmd}`")
    return ckpt


def _seen_tasks(meta: dict[str, Any], prov: Optional[dict[str, Any]], section: str) -> Optional[list[str]]:
    if "trained_on" in meta:
        return list(meta["trained_on"])
    cfg = (prov or {}).get("config") or {}
    return None if not cfg else sorted(set(cfg.get("zoo", {}).get("tasks", [])) -
                                        set(cfg.get("train", {}).get(section, {}).get("holdout_tasks", [])))


def _refuse_seen(method: str, where: Path, seen: Optional[list[str]], holdout: list[str], section: str) -> None:
    if seen is None:
        if holdout:
            raise InputError(f"method {method}: {where} does not record which tasks it was trained on, so "
                             f"{', '.join(holdout)} cannot be called held out; retrain it with this llgbm")
        return
    clash = [t for t in holdout if t in seen]
    if clash:
        raise InputError(
            f"--holdout {', '.join(clash)}: method {method} saw {'it' if len(clash) == 1 else 'them'} in training "
            f"({where} trained on {', '.join(seen)}); retrain with --set train.{section}.holdout_tasks="
            f"{_toml_value(clash)} or drop --holdout"
        )


def generator_adapters(world: World, method: str, tasks: list[str], given: Optional[Path] = None):
    """Per task a generated LoraAdapter from a generator checkpoint (multitask or b1)."""
    from ..adapters import LoraAdapter, LoraModule
    from ..generators.base import load_generator
    from ..io import read_provenance
    from ..models import load_encoder
    from .generate import generate_modules

    section = "multitask" if method == "multitask" else "delta_only"
    ckpt = _checkpoint(world, method, given)
    gen, meta = load_generator(ckpt, device=next(world.model.parameters()).device)
    if meta.get("base_model") not in (None, world.resolved.config.model.base):
        raise InputError(f"method {method}: {ckpt} generates adapters for base model {meta['base_model']!r}, "
                         f"but this evaluation runs on {world.resolved.config.model.base!r}")
    seen = _seen_tasks(meta, read_provenance(ckpt) or read_provenance(ckpt.parent), section)
    _refuse_seen(method, ckpt, seen, world.holdout, section)
    cond = meta.get("condition", {})
    encoder = load_encoder(meta["encoder"], "cpu", max_length=cond.get("max_text_length", 512))
    lora = meta["lora"]
    out = {}
    for task in tasks:
        texts = _condition_texts(world, task, cond.get("mode", "prompts"), int(cond.get("n_prompts", 8)))
        mods = generate_modules(gen, meta, texts, seed=world.resolved.config.project.seed, encoder=encoder)
        mods = {k: LoraModule(m.A.detach().float().cpu(), m.B.detach().float().cpu(), float(m.scaling))
                for k, m in mods.items()}
        out[task] = LoraAdapter(mods, int(lora["rank"]), float(lora["alpha"]), list(lora["target_modules"]),
                                base_model=meta.get("base_model"))
    info = {"checkpoint": str(ckpt), "trained_on": seen, "generator": meta.get("generator"), "step": meta.get("step")}
    return out, info, {t: (seen is not None and t not in seen) for t in tasks}


def retrieval_adapters(world: World, tasks: list[str], folder: Path):
    """B2: the predictor's delta for the task's condition -> index top-k -> merge, written under ``folder``."""
    from ..adapters import load_adapter
    from ..generators.predictor import load_predictor
    from ..models import load_encoder
    from .retrieve import retrieve
    from .train_delta_only import b2_folder

    resolved = world.resolved
    pfolder = b2_folder(resolved)
    if not pfolder.exists():
        raise InputError(f"method b2: no delta predictor at {pfolder}; make it with `{TRAIN_RUNS['b2'][1]}` "
                         "and an index with `llgbm index build`")
    _, meta = load_predictor(pfolder)
    # Only the adapters it was fitted on count as seen: val_ids (the held-out tasks when
    # holdout_tasks is set) were only measured, never trained on.
    ids = list(meta.get("train_ids", []))
    by_id = {e.id: e.task for e in world.zoo.entries}
    seen = sorted({by_id[i] for i in ids if i in by_id}) if ids else None
    _refuse_seen("b2", pfolder, seen, world.holdout, "delta_only")
    strategy = resolved.config.retrieve.merge_strategy
    encoder = load_encoder(meta.get("encoder", resolved.config.model.encoder), "cpu")
    out, hits = {}, {}
    for task in tasks:
        texts = _condition_texts(world, task, "prompts", 8)
        r = retrieve(resolved, prompts=texts, merge=strategy, out=folder / task, encoder=encoder)
        leaked = [h["id"] for h in r.hits if h.get("task") in world.holdout]
        if leaked:
            raise InputError(f"method b2: the index retrieved {', '.join(leaked)} of a held-out task; rebuild the "
                             f"index without the held-out tasks' adapters (`llgbm index build`)")
        hits[task] = [{"id": h["id"], "task": h.get("task"), "score": h.get("score")} for h in r.hits]
        out[task] = load_adapter(folder / task)
    info = {"predictor": str(pfolder), "trained_on": seen, "strategy": strategy, "hits": hits}
    return out, info, {t: (seen is not None and t not in seen) for t in tasks}


def merge_entries(world: World, task: str) -> list[Any]:
    ids = world.resolved.config.eval.merge_adapters
    if ids:
        return [world.zoo.get(i) for i in ids]
    others = [t for t in sorted({e.task for e in world.train_entries}) if t != task]
    if not others:
        raise InputError(f"merge: no training task other than {task} to merge; set eval.merge_adapters")
    return [teacher_of(world.zoo, t) for t in others]


def _merge(world: World, entries: list[Any], strategy: str):
    from ..adapters import load_adapter
    from ..merging import merge_adapters

    mc = world.resolved.config.merge
    ads = [load_adapter(world.zoo.path_of(e)) for e in entries]
    return merge_adapters(ads, strategy, density=mc.density, drop_rate=mc.drop_rate, seed=mc.seed,
                          space=mc.space, rank=mc.rank)


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
) -> EvalResult:
    """Evaluate ``methods`` on ``tasks`` (defaults from ``[eval]``); see the module doc.

    ``checkpoints`` overrides the checkpoint folder of ``multitask``/``b1`` (used by ablate).
    ``overrides`` are the config flags given, recorded in the reproduce command. Failed checks are
    reported in the result; :func:`enforce_checks` turns them into an error (``--strict``).
    """
    import time

    import torch

    from ..adapters import save_adapter
    from ..data import sample
    from ..deltas.compute import compute_deltas
    from ..evaluation import checks as C
    from ..evaluation import metrics as M
    from ..evaluation.plots import accuracy_plot, crossfold_plot, curves_plot, delta_plot
    from ..evaluation.reports import write_results
    from ..io import atomic_dir, provenance, read_provenance, write_provenance
    from ..tasks.scoring import score_adapter, score_multiple_choice
    from ..zoo import Zoo

    t0 = time.perf_counter()
    cfg = resolved.config
    ec = cfg.eval
    methods = check_methods(list(methods) if methods else list(ec.methods))
    out = Path(out).expanduser() if out is not None else resolved.resolve_path(ec.out)
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; pass --force to overwrite it")
    holdout = list(holdout) if holdout else list(ec.holdout)
    tasks_in = list(tasks) if tasks else list(ec.tasks)
    zoo_tasks = (world.zoo if world is not None else Zoo.load(resolved.resolve_path(cfg.zoo.path))).tasks()
    tasks, holdout = resolve_tasks(zoo_tasks, tasks_in, holdout)
    if world is None:
        world = load_world(resolved, tasks, holdout)
    elif world.holdout != holdout:
        raise ValueError("world built for other held-out tasks")
    test_sample = ec.test_sample
    seed = cfg.project.seed
    checkpoints = dict(checkpoints or {})
    command = reproduce_command(resolved, methods, tasks, holdout, out, test_sample, overrides, checkpoints)
    result = EvalResult(str(out), command, cfg.model.base, seed, test_sample, methods, tasks, holdout)

    with atomic_dir(out, force=force) as tmp:
        # 1. one adapter (or None) per method x task, saved where it is not a zoo/user folder
        adapters: dict[tuple[str, str], Any] = {}
        where: dict[tuple[str, str], Optional[str]] = {}
        heldout: dict[tuple[str, str], Optional[bool]] = {}
        gen_task = progress.add("eval: adapters", total=len(methods) * len(tasks))
        for m in methods:
            if m == "base":
                for t in tasks:
                    adapters[m, t], where[m, t], heldout[m, t] = None, None, True
            elif m == "teacher":
                from ..adapters import load_adapter

                for t in tasks:
                    p = world.zoo.path_of(world.teachers[t])
                    adapters[m, t], where[m, t], heldout[m, t] = load_adapter(p), str(p), False
            elif m == "mean-delta":
                merged = _merge(world, world.train_entries, "linear")
                for t in tasks:
                    adapters[m, t], heldout[m, t] = merged, t in holdout
            elif m.startswith("merge:"):
                strategy = m.split(":", 1)[1]
                for t in tasks:
                    entries = merge_entries(world, t)
                    adapters[m, t] = _merge(world, entries, strategy)
                    heldout[m, t] = all(e.task != t for e in entries)
            elif m in ("multitask", "b1"):
                ads, info, held = generator_adapters(world, m, tasks, checkpoints.get(m))
                result.runs[m] = info
                for t in tasks:
                    adapters[m, t], heldout[m, t] = ads[t], held[t]
            elif m == "b2":
                rel = Path("adapters") / "b2"
                ads, info, held = retrieval_adapters(world, tasks, tmp / rel)
                result.runs[m] = info
                for t in tasks:
                    adapters[m, t], heldout[m, t], where[m, t] = ads[t], held[t], str(out / rel / t)
            else:
                from ..adapters import load_adapter

                ad = load_adapter(m)
                for t in tasks:
                    adapters[m, t], where[m, t], heldout[m, t] = ad, str(Path(m).expanduser()), None
            for t in tasks:
                ad = adapters[m, t]
                if ad is not None:
                    _check_fits(world, ad, m)
                    if (m, t) not in where:
                        rel = Path("adapters") / method_slug(m) / t
                        save_adapter(tmp / rel, ad, base_model=cfg.model.base,
                                     provenance=provenance("eval", resolved.to_dict(), method=m, task=t))
                        where[m, t] = str(out / rel)
                progress.advance(gen_task)

        # 2. deltas of every adapter, on the cache's probes and spec
        keys = [k for k in adapters if adapters[k] is not None]
        d_task = progress.add("eval: deltas", total=len(keys))
        deltas = compute_deltas(world.model, [adapters[k] for k in keys], world.probes, world.spec,
                                cfg.delta.adapters_per_batch, progress=lambda k: progress.advance(d_task, k),
                                pack=cfg.delta.pack)
        method_delta = {k: deltas[i] for i, k in enumerate(keys)}
        zero = torch.zeros_like(world.train_mean)

        # 3. task accuracy
        s_task = progress.add("eval: scoring", total=len(tasks) * len(methods))
        kw = dict(batch_size=ec.batch_size, chat_template=cfg.data.chat_template, max_length=cfg.data.max_length)
        base_acc, acc, nq, chance = {}, {}, {}, {}
        for t in tasks:
            recs = sample(t, "test", test_sample, seed=seed)
            nq[t] = len(recs)
            chance[t] = sum(1 / len(r.options) for r in recs) / len(recs) if recs else math.nan
            base_acc[t] = score_multiple_choice(world.model, world.tok, recs, **kw).accuracy
            for m in methods:
                ad = adapters[m, t]
                acc[m, t] = base_acc[t] if ad is None else score_adapter(world.model, world.tok, ad, recs, **kw).accuracy
                progress.advance(s_task)

        # 4. rows and summary
        for m in methods:
            for t in tasks:
                d = method_delta.get((m, t), zero)
                row = {"method": m, "task": t, "heldout": heldout[m, t]}
                row.update(M.delta_metrics(d, world.teacher_deltas[t], world.train_mean, world.teacher_deltas, t))
                row.update(accuracy=acc[m, t], accuracy_vs_base=acc[m, t] - base_acc[t], n_questions=nq[t],
                           chance=chance[t],
                           adapter=where.get((m, t)))
                result.rows.append(row)
        result.summary = summarize(result.rows, methods)

        # 5. acceptance checks
        curves: dict[str, list] = {}
        for m in ("multitask", "b1", "b2"):
            run = _run_folder(resolved, m, checkpoints.get(m), result.runs.get(m))
            if run is None:
                continue
            rows = C.read_metrics_file(run / "metrics.jsonl")
            curves[m] = rows
            if m in methods:
                ck = Path(result.runs[m]["checkpoint"]) if m in result.runs and "checkpoint" in result.runs[m] else None
                result.checks.extend(C.training_checks(m, rows, read_provenance(run), ck))
                if m == "b1":
                    result.checks.append(C.training_degeneracy(m, rows))
        for m in ("b1", "multitask"):
            if m in methods:
                gen_d = {t: method_delta[m, t] for t in tasks if (m, t) in method_delta}
                norms = {t: float(sum(float(mod.delta_weight().norm()) ** 2 for mod in adapters[m, t].modules.values())
                                  ** 0.5) for t in tasks}
                if len(tasks) > 1:
                    result.checks.append(C.not_degenerate(m, gen_d, norms))
        result.checks.append(C.beats_base(result.rows))
        result.checks.append(C.retrieval_floor(result.summary, ec.floor_tolerance))
        result.checks = [c for c in result.checks if c is not None]

        # 6. files
        plots = tmp / "plots"
        plots.mkdir()
        made = accuracy_plot(result.rows, plots / "accuracy.png")
        made += delta_plot(result.rows, result.summary, plots / "delta_metrics.png")
        if len(holdout) > 1:  # each held-out task is a fold: the spread across them, per method
            made += crossfold_plot({t: [r for r in result.rows if r["task"] == t] for t in holdout},
                                   plots / "folds.png") or []
        if curves:
            made += curves_plot(curves, plots / "training_curves.png") or []
        result.plots = [str(out / "plots" / p.name) for p in made]
        result.seconds = time.perf_counter() - t0
        files = write_results(tmp, result.to_dict())
        result.files = {k: str(out / Path(v).name) for k, v in files.items()}
        write_provenance(tmp, provenance("eval", resolved.to_dict(), methods=methods, tasks=tasks, holdout=holdout,
                                         cache_header={k: world.cache.header.get(k) for k in
                                                       ("base_fingerprint", "probe_fingerprint", "spec")},
                                         runs=result.runs))
    return result


def enforce_checks(result: EvalResult) -> None:
    """Raise CheckFailed (exit 1) naming every failed acceptance check (for ``--strict``)."""
    from ..errors import CheckFailed
    from ..evaluation.checks import failed

    bad = failed(result.checks)
    if bad:
        raise CheckFailed(f"{len(bad)} acceptance check(s) failed: " + "; ".join(
            f"{c['name']} ({c['detail']})" for c in bad) + f"; see {Path(result.out) / 'results.md'}")


def _run_folder(resolved, method: str, given: Optional[Path], info: Optional[dict]) -> Optional[Path]:
    if info and info.get("checkpoint"):
        p = Path(info["checkpoint"]).parent
    elif given is not None:
        p = Path(given).parent
    else:
        p = resolved.workdir / TRAIN_RUNS[method][0]
    return p if (p / "metrics.jsonl").exists() else None


def summarize(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method, means over tasks; ``task_specific`` compares with ``mean-delta`` where evaluated."""
    from ..evaluation.metrics import mean_of

    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        out.append({
            "method": m,
            "tasks": len(rs),
            "delta_mse": mean_of([r["delta_mse"] for r in rs]),
            "delta_cosine": mean_of([r["delta_cosine"] for r in rs]),
            "centered_cosine": mean_of([r["centered_cosine"] for r in rs]),
            "norm_ratio": mean_of([r["norm_ratio"] for r in rs]),
            "task_identification": sum(bool(r["identified"]) for r in rs) / len(rs) if rs else math.nan,
            "accuracy": mean_of([r["accuracy"] for r in rs]),
            "accuracy_vs_base": mean_of([r["accuracy_vs_base"] for r in rs]),
            "heldout": all(r["heldout"] is True for r in rs),
        })
    ref = next((s for s in out if s["method"] == "mean-delta"), None)
    for s in out:
        if ref is None or s["method"] in ("mean-delta", "base"):
            s["task_specific"] = None
        else:
            s["task_specific"] = bool(s["centered_cosine"] > ref["centered_cosine"]
                                      and s["task_identification"] > ref["task_identification"])
    return out
