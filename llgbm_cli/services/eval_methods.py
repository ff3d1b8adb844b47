"""Evaluation methods, by name: one registered builder per method (as merge strategies are).

A method turns the tasks under evaluation into one adapter per task (``None``: the base model) and
says, per task, whether that adapter was made without the task (``heldout``). Methods that read a
trained run name it (``run``, a work-folder output), so eval finds their checkpoints, metrics and
the command that makes them in one place; methods trained on zoo tasks report what they were
trained on, and :func:`refuse_seen` (the leak guard) refuses one that saw a held-out task.

Adding a method: write ``def build(ctx, method, tasks) -> Built`` and decorate it with
``@register("name", "one line of help")``. Its name is then valid for ``eval --method`` and
``eval.methods``, listed in errors, and evaluated like every other. A method made by a training run
is declared instead as a :class:`~llgbm_cli.training.methods.TrainedMethod` (its builder, trainer,
checks and checkpoint option together): :func:`methods` lists those from that table.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import workdir
from ..errors import InputError
from ..names import child
from ..training.methods import TRAINED, resolve

MERGE_PREFIX = "merge:"
FOLDER = "<adapter folder>"


@dataclass
class Built:
    """What a method made for the tasks under evaluation."""

    adapters: dict[str, Any]  # task -> LoraAdapter, or None for the base model
    heldout: dict[str, Optional[bool]]  # task -> made without that task (None: unknown)
    where: dict[str, str] = field(default_factory=dict)  # task -> folder, when the adapter already lives on disk
    info: Optional[dict[str, Any]] = None  # what eval records under runs[method]
    absent: frozenset = frozenset()  # tasks this method has nothing for (teacher: a task outside the zoo): no row


@dataclass(frozen=True)
class EvalMethod:
    name: str
    help: str
    build: Callable[..., Built]
    run: Optional[str] = None  # the work-folder output (a training run) it reads, if any
    section: Optional[str] = None  # train.<section>.holdout_tasks retrains it without a task
    generator: bool = False  # generates adapters from text: checked for degenerate outputs
    regime: str = "zero-shot"  # "few-shot": it read labelled examples of the task; reported apart


METHODS: dict[str, EvalMethod] = {}  # the methods registered here; the trained ones come from TRAINED


def register(name: str, help: str, *, run: Optional[str] = None, section: Optional[str] = None,
             generator: bool = False, regime: str = "zero-shot"):
    def deco(fn):
        METHODS[name] = EvalMethod(name, help, fn, run, section, generator, regime)
        return fn

    return deco


def _trained(name: str) -> EvalMethod:
    tm = TRAINED[name]
    return EvalMethod(tm.name, tm.help, lambda ctx, method, tasks: resolve(tm.build)(ctx, method, tasks),
                      run=tm.name, section=tm.section, generator=tm.generates)


def methods() -> dict[str, EvalMethod]:
    """Every method by name, in the order of the valid-name list: the fixed zero-shot ones, the trained
    ones (:data:`~llgbm_cli.training.methods.TRAINED`), the few-shot ones, then the families
    (merge:<strategy>, a folder)."""
    fixed = {n: m for n, m in METHODS.items() if n not in (MERGE_PREFIX, FOLDER) and m.regime == "zero-shot"}
    few = {n: m for n, m in METHODS.items() if n not in (MERGE_PREFIX, FOLDER) and m.regime != "zero-shot"}
    return {**fixed, **{n: _trained(n) for n in TRAINED if n not in fixed}, **few,
            **{n: METHODS[n] for n in (MERGE_PREFIX, FOLDER) if n in METHODS}}


def fixed_names() -> list[str]:
    return [n for n in methods() if n not in (MERGE_PREFIX, FOLDER)]


def valid_methods() -> str:
    from ..merging import STRATEGIES

    return ", ".join(fixed_names()) + f", {MERGE_PREFIX}<strategy> (" + ", ".join(STRATEGIES) + "), or an adapter folder"


def method_of(name: str) -> EvalMethod:
    """The registered method a name stands for (``merge:<strategy>`` and folders are families)."""
    if name in TRAINED and name not in METHODS:
        return _trained(name)
    if name in METHODS and name not in (MERGE_PREFIX, FOLDER):
        return METHODS[name]
    if name.startswith(MERGE_PREFIX):
        return METHODS[MERGE_PREFIX]
    return METHODS[FOLDER]


def check_name(m: str, flag: str = "--method") -> str:
    """One method name, validated (a strategy must exist, a folder must hold an adapter)."""
    from ..adapters import CONFIG_FILE
    from ..merging import get_strategy

    m = str(m).strip()
    if m in fixed_names():
        return m
    if m.startswith(MERGE_PREFIX):
        get_strategy(m.split(":", 1)[1], source=f"{flag} {m}")
        return m
    if Path(m).expanduser().is_dir():
        if not (Path(m).expanduser() / CONFIG_FILE).exists():
            raise InputError(f"{flag} {m}: folder holds no {CONFIG_FILE}; give a PEFT LoRA adapter folder")
        return m
    guess = difflib.get_close_matches(m, fixed_names(), n=1)
    raise InputError(f"{flag} {m}: unknown method" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                     + f"; valid: {valid_methods()}")


def check_methods(methods: Sequence[str], flag: str = "--method") -> list[str]:
    """Validate method names; list the valid ones otherwise."""
    if not methods:
        raise InputError(f"{flag}: give at least one method; valid: " + valid_methods())
    out = []
    for m in methods:
        m = check_name(m, flag)
        if m in out:
            raise InputError(f"{flag} {m}: given twice")
        out.append(m)
    return out


def method_slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", method).strip("-") or "method"


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)


# --------------------------------------------------------------------------- shared pieces


def teacher_of(zoo, task: str):
    """A task's teacher: its latest checkpoint (highest step, then id)."""
    entries = zoo.by_task(task)
    return max(entries, key=lambda e: (e.step if e.step is not None else -1, e.id))


def seen_tasks(meta: dict[str, Any], prov: Optional[dict[str, Any]], section: str) -> Optional[list[str]]:
    """The tasks a trained run saw: its checkpoint's ``trained_on``, else derived from its provenance."""
    if "trained_on" in meta:
        return list(meta["trained_on"])
    cfg = (prov or {}).get("config") or {}
    return None if not cfg else sorted(set(cfg.get("zoo", {}).get("tasks", [])) -
                                        set(cfg.get("train", {}).get(section, {}).get("holdout_tasks", [])))


def refuse_seen(method: str, where: Path, seen: Optional[list[str]], holdout: list[str], section: str) -> None:
    """The leak guard: a method that saw a held-out task in training (or cannot say) is refused."""
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
            f"{toml_value(clash)} or drop --holdout"
        )


def condition_texts(world, task: str, mode: str, n: int, descriptions=None) -> list[str]:
    from ..generators.condition import describe_task
    from ..tasks.registry import descriptions_for, registry_for

    if mode == "description":
        return [describe_task(task, {**descriptions_for(world.resolved), **(descriptions or {})})]
    teacher = world.teachers.get(task)  # a task outside the zoo: prompts of its own train split
    cond = list(teacher.condition or []) if teacher is not None else []
    if not cond:
        t = registry_for(world.resolved).get(task)
        cond = [r.prompt for r in t.sample("train", max(n, 8), seed=world.resolved.config.project.seed)]
    return cond


def merge_entries(world, task: str) -> list[Any]:
    ids = world.resolved.config.eval.merge_adapters
    if ids:
        return [world.zoo.get(i) for i in ids]
    others = [t for t in sorted({e.task for e in world.train_entries}) if t != task]
    if not others:
        raise InputError(f"merge: no training task other than {task} to merge; set eval.merge_adapters")
    return [teacher_of(world.zoo, t) for t in others]


def merge_zoo(world, entries: list[Any], method: str):
    """The adapter of eval method ``method`` (``merge:<strategy>``, or ``mean-delta``: the linear mean),
    with the config's ``[merge]`` options."""
    from ..adapters import load_adapter
    from ..merging import merge_adapters
    from .merge import merge_options

    strategy = method.split(":", 1)[1] if method.startswith(MERGE_PREFIX) else "linear"
    opts = merge_options(world.resolved, strategy=(strategy, f"eval method {method}"))
    if method == "mean-delta":
        opts = opts.replace(normalize=True)
    ads = [load_adapter(world.zoo.path_of(e)) for e in entries]
    return merge_adapters(ads, opts)


# --------------------------------------------------------------------------- the methods
# Registration order is the order of the valid-name list.


@register("base", "the base model (zero delta)")
def _base(ctx, method: str, tasks: list[str]) -> Built:
    return Built({t: None for t in tasks}, {t: True for t in tasks})


@register("teacher", "the task's own teacher adapter (the oracle)")
def _teacher(ctx, method: str, tasks: list[str]) -> Built:
    from ..adapters import load_adapter

    world = ctx.world
    paths = {t: world.zoo.path_of(world.teachers[t]) for t in tasks if t in world.teachers}
    absent = frozenset(t for t in tasks if t not in world.teachers)  # no teacher: no row, not the base model
    return Built({t: load_adapter(paths[t]) if t in paths else None for t in tasks}, {t: False for t in tasks},
                 {t: str(p) for t, p in paths.items()}, absent=absent)


@register("mean-delta", "every training adapter merged linearly, the same for every task")
def _mean_delta(ctx, method: str, tasks: list[str]) -> Built:
    merged = merge_zoo(ctx.world, ctx.world.train_entries, method)
    return Built({t: merged for t in tasks}, {t: t in ctx.world.holdout or t not in ctx.world.teachers for t in tasks})


def _checkpoint(ctx, method: str) -> Path:
    given = ctx.checkpoints.get(method)
    ckpt = Path(given) if given is not None else TRAINED[method].checkpoint(workdir.path(ctx.world.resolved, method))
    if not ckpt.exists():
        raise InputError(f"method {method}: no checkpoint at {ckpt}; make it with `{workdir.made_by(method)}`")
    return ckpt


def generator_adapters(ctx, method: str, tasks: list[str]) -> Built:
    """Per task a generated LoraAdapter from a generator checkpoint (the builder of multitask and b1)."""
    from ..adapters import LoraAdapter, LoraModule
    from ..generators.base import load_generator
    from ..io import read_provenance
    from ..models import load_encoder
    from .generate import generate_modules

    world = ctx.world
    section = TRAINED[method].section
    ckpt = _checkpoint(ctx, method)
    gen, meta = load_generator(ckpt, device=next(world.model.parameters()).device)
    if meta.get("base_model") not in (None, world.resolved.config.model.base):
        raise InputError(f"method {method}: {ckpt} generates adapters for base model {meta['base_model']!r}, "
                         f"but this evaluation runs on {world.resolved.config.model.base!r}")
    seen = seen_tasks(meta, read_provenance(ckpt) or read_provenance(ckpt.parent), section)
    refuse_seen(method, ckpt, seen, world.holdout, section)
    cond = meta.get("condition", {})
    encoder = load_encoder(meta["encoder"], "cpu", max_length=cond.get("max_text_length", 512))
    lora = meta["lora"]
    out = {}
    for task in tasks:
        texts = condition_texts(world, task, cond.get("mode", "prompts"), int(cond.get("n_prompts", 8)),
                                cond.get("descriptions"))
        mods = generate_modules(gen, meta, texts, seed=world.resolved.config.project.seed, encoder=encoder)
        mods = {k: LoraModule(m.A.detach().float().cpu(), m.B.detach().float().cpu(), float(m.scaling))
                for k, m in mods.items()}
        out[task] = LoraAdapter(mods, int(lora["rank"]), float(lora["alpha"]), list(lora["target_modules"]),
                                base_model=meta.get("base_model"))
    info = {"checkpoint": str(ckpt), "trained_on": seen, "generator": meta.get("generator"), "step": meta.get("step")}
    return Built(out, {t: (seen is not None and t not in seen) for t in tasks}, info=info)


def retrieval_adapters(ctx, method: str, tasks: list[str]) -> Built:
    """B2: the predictor's delta for the task's condition -> index top-k -> merge, written under the
    eval folder (``adapters/<method>/<task>``). The predictor folder is ``checkpoints[method]`` when given."""
    from ..adapters import load_adapter
    from ..generators.predictor import load_predictor
    from ..models import load_encoder
    from .retrieve import retrieve

    world = ctx.world
    resolved = world.resolved
    given = ctx.checkpoints.get(method)
    pfolder = Path(given) if given is not None else workdir.path(resolved, method)
    if not pfolder.exists():
        raise InputError(f"method {method}: no delta predictor at {pfolder}; make it with `{workdir.made_by(method)}` "
                         f"and an index with `{workdir.made_by('index')}`")
    _, meta = load_predictor(pfolder)
    # Only the adapters it was fitted on count as seen: val_ids (the held-out tasks when
    # holdout_tasks is set) were only measured, never trained on.
    ids = list(meta.get("train_ids", []))
    by_id = {e.id: e.task for e in world.zoo.entries}
    seen = sorted({by_id[i] for i in ids if i in by_id}) if ids else None
    refuse_seen(method, pfolder, seen, world.holdout, TRAINED[method].section)
    strategy = resolved.config.retrieve.merge_strategy
    encoder = load_encoder(meta.get("encoder", resolved.config.model.encoder), "cpu")
    rel = Path("adapters") / method
    out, hits, where = {}, {}, {}
    for task in tasks:
        child(ctx.tmp / rel, task, what="task")  # its folder stays inside the evaluation's
        texts = condition_texts(world, task, "prompts", 8)
        r = retrieve(resolved, prompts=texts, merge=(strategy, resolved.origin("retrieve.merge_strategy")),
                     out=ctx.tmp / rel / task, encoder=encoder, predictor=pfolder, model=world.model,
                     tokenizer=world.tok)
        leaked = [h["id"] for h in r.hits + r.considered if h.get("task") in world.holdout]
        if leaked:
            raise InputError(f"method {method}: the index retrieved {', '.join(leaked)} of a held-out task; rebuild the "
                             f"index without the held-out tasks' adapters (`{workdir.made_by('index')}`)")
        hits[task] = [{k: h.get(k) for k in ("id", "task", "score", "predicted_score", "predicted_rank") if k in h}
                      for h in r.hits]
        out[task] = load_adapter(ctx.tmp / rel / task)
        where[task] = str(ctx.out / rel / task)
    info = {"predictor": str(pfolder), "trained_on": seen, "strategy": strategy, "hits": hits,
            "rank": resolved.config.retrieve.rank}
    return Built(out, {t: (seen is not None and t not in seen) for t in tasks}, where, info)


def regime_of(method: str) -> str:
    """``zero-shot`` or ``few-shot`` (a method that read labelled examples of the evaluated task; an
    adapter folder is few-shot when its provenance says so, as `llgbm compose` writes it)."""
    meth = method_of(method)
    if meth.name == FOLDER:
        from ..io import read_provenance

        try:
            prov = read_provenance(Path(method).expanduser()) or {}
        except (OSError, InputError):
            prov = {}
        return "few-shot" if prov.get("regime") == "few-shot" else "zero-shot"
    return meth.regime


@register("compose", "few-shot: merge weights over the other tasks' teachers searched (CMA-ES) on compose.examples "
          "labelled train examples of the task", regime="few-shot")
def _compose(ctx, method: str, tasks: list[str]) -> Built:
    from .compose import compose_for

    world = ctx.world
    adapters, info = {}, {}
    for t in tasks:  # the candidates merge:<strategy> merges: eval.merge_adapters, else the other tasks' teachers
        adapters[t], res = compose_for(world.resolved, world.model, world.tok, t, merge_entries(world, t), world.zoo)
        d = res.to_dict()
        d.pop("out")
        info[t] = d
    return Built(adapters, {t: all(e["task"] != t for e in info[t]["candidates"]) for t in tasks},
                 info={"regime": "few-shot", "tasks": info})


@register(MERGE_PREFIX, "the chosen zoo adapters merged (default: every other training task's teacher)")
def _merged(ctx, method: str, tasks: list[str]) -> Built:
    adapters, heldout = {}, {}
    for t in tasks:
        entries = merge_entries(ctx.world, t)
        adapters[t] = merge_zoo(ctx.world, entries, method)
        heldout[t] = all(e.task != t for e in entries)
    return Built(adapters, heldout)


@register(FOLDER, "that PEFT adapter, for every task")
def _folder(ctx, method: str, tasks: list[str]) -> Built:
    from ..adapters import load_adapter

    ad = load_adapter(method)
    return Built({t: ad for t in tasks}, {t: None for t in tasks}, {t: str(Path(method).expanduser()) for t in tasks})
