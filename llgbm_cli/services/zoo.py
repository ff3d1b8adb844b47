"""Teacher zoo: build LoRA trajectories per task, register existing adapters, score them.

``build_zoo`` trains one LoRA teacher per task on the base model, the way Drag-and-Drop LLMs
collects its data: after ``[zoo] warmup_steps`` it keeps ``[zoo] checkpoints`` checkpoints evenly
spaced up to ``[zoo] steps``, each a PEFT folder ``adapters/<task>-s<step>``. The training loop is
:mod:`llgbm_cli.training.teacher`: through the functional LoRA patch (base weights untouched and
shared across tasks) with an answer-only loss whose output head is applied only at answer positions,
stopping backpropagation at the first LoRA layer when ``[lora] last_layers`` restricts it: the two
things that make it CPU-sized.

Resumable: each checkpoint folder is written atomically, its optimizer state beside it under
``.state/``, and ``zoo.jsonl`` is rewritten (atomically, under a lock) after every checkpoint. A
rerun keeps checkpoints whose folder and weights hash match the manifest, continues a task from
its last finished checkpoint, and redoes anything half-written. ``--force`` sets the rebuilt tasks'
earlier teachers (manifest rows, folders, training states) aside under ``.state/<pid>.forced/``
until the rebuild finishes: interrupted, or killed and rerun, the earlier build is put back.

Under ``accelerate launch`` the tasks with work left are dealt round robin to the processes; each
trains whole trajectories on its own device, seeded per task, so the zoo does not depend on the
number of processes. Only the main process writes ``zoo.jsonl``: the others leave each finished
checkpoint's row in ``.state/<id>.row.json``, gathered by the main process at the end, or adopted
by the next run's main process after an interruption.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from ..io import atomic_write_json, check_output, provenance, read_provenance, write_provenance
from ..names import check_name, child
from ..zoo_manifest import Zoo, ZooEntry

log = logging.getLogger(__name__)

STATE_DIR = ".state"
SCORES_FILE = "scores.json"
HELDOUT_SCORES_FILE = "scores-heldout.json"
SCORE_GROUP = 8  # checkpoints of one task that `zoo score` scores together (tasks/lower.py)
PENDING_SUFFIX = ".row.json"  # a finished checkpoint's manifest row, written by a non-main process


# --------------------------------------------------------------------------- helpers


def checkpoint_steps(steps: int, warmup: int, k: int) -> list[int]:
    """K checkpoint steps evenly spaced after ``warmup``, the last one at ``steps``."""
    span = steps - warmup
    out = sorted({warmup + max(1, round((i + 1) * span / k)) for i in range(k)})
    return out


def task_seed(seed: int, task: str) -> int:
    """A distinct, stable seed per task (the same on every machine and Python run)."""
    return (int(seed) * 1_000_003 + zlib.crc32(task.encode())) % (2**31 - 1)


def adapter_id(task: str, step: int, run: int = 0) -> str:
    return f"{task}-s{step:05d}" if run == 0 else f"{task}-r{run}-s{step:05d}"


_RUN_ID = re.compile(r"-r(\d+)-s\d+$")
_STEP_ID = re.compile(r"-s\d+$")


def trajectory_of(entry) -> tuple[str, Any]:
    """(task, trajectory) of a zoo entry: the run of ids ``task-rN-sSTEP`` (``task-sSTEP`` is run 0),
    else its seed (an imported adapter of another seed is another trajectory)."""
    m = _RUN_ID.search(entry.id)
    if m:
        return entry.task, f"r{m.group(1)}"
    if _STEP_ID.search(entry.id):
        return entry.task, "r0"
    return entry.task, f"seed{entry.seed}"


def run_seed(seed: int, task: str, run: int = 0) -> int:
    """The seed of trajectory ``run`` of ``task`` (run 0 keeps the task's own seed)."""
    return task_seed(seed, task if run == 0 else f"{task}#r{run}")


def trajectory_subset(n: int, fraction: float, seed: int, run: int = 0) -> list[int]:
    """The indices (ascending) of the train records trajectory ``run`` of a task trains on: block
    ``run`` of one permutation of the split seeded by ``seed`` (the task's own seed, shared by its
    runs), each block ``floor(fraction * n)`` records long (at least one). While ``runs * fraction <= 1`` the runs'
    blocks are disjoint; past the end the blocks wrap around (:func:`trajectory_overlap` says by how much)."""
    import torch

    if fraction >= 1.0:
        return list(range(n))
    keep = max(1, int(fraction * n + 1e-9))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted({perm[(run * keep + i) % n] for i in range(keep)})


def trajectory_overlap(n: int, fraction: float, runs: int) -> Optional[str]:
    """None when the ``runs`` trajectories of an ``n``-record split train on disjoint records, else a
    sentence saying how many records two of them share at most."""
    if runs < 2:
        return None
    blocks = [set(trajectory_subset(n, fraction, 0, r)) for r in range(runs)]
    shared = max(len(a & b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    if not shared:
        return None
    return (f"{runs} runs x data_fraction {fraction:g} > 1: trajectories share up to {shared} of their "
            f"{len(blocks[0])} train records (disjoint only while zoo.runs x zoo.data_fraction <= 1)")


@dataclass(frozen=True)
class Unit:
    """One trajectory: a task and its run index."""

    task: str
    run: int = 0

    @property
    def key(self) -> str:
        return self.task if self.run == 0 else f"{self.task}#r{self.run}"


def zoo_dir(resolved) -> Path:
    from .. import workdir

    return workdir.path(resolved, "zoo")


def build_spec(resolved, task: Optional[str] = None) -> dict[str, Any]:
    """The settings ``task``'s teachers depend on (``[zoo]`` with its ``[zoo.per_task.NAME]`` table;
    no task: ``[zoo]`` alone); teachers built with other settings are not mixed in."""
    c = resolved.config
    zoo = (c.zoo if task is None else c.zoo.for_task(task)).model_dump(mode="json")
    for k in ("path", "tasks", "condition_prompts", "runs", "per_task"):  # more runs add trajectories, change none
        zoo.pop(k, None)
    if zoo.get("mixed_precision") == "no":  # the default: zoos built before the key existed match
        zoo.pop("mixed_precision")
    if zoo.get("data_fraction") == 1.0:  # the default: zoos built before the key existed match
        zoo.pop("data_fraction")
    else:  # runs train on blocks of one permutation (teachers of the earlier independent draws differ)
        zoo["subsets"] = "blocks"
    return {
        "base": c.model.base,
        "seed": c.project.seed,
        "lora": c.lora.model_dump(mode="json"),
        "max_length": c.data.max_length,
        "chat_template": c.data.chat_template,
        "zoo": zoo,
    }


def _complete(zoo: Zoo, entry: Optional[ZooEntry]) -> bool:
    """A checkpoint counts as finished only if its folder is there and its weights hash matches."""
    from ..adapters import CONFIG_FILE, WEIGHTS_FILE, weights_sha256

    if entry is None:
        return False
    folder = zoo.path_of(entry)
    if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        return False
    try:
        return entry.sha256 is None or weights_sha256(folder) == entry.sha256
    except OSError:
        return False


def _clean_stale_temps(folder: Path) -> None:
    """Temporary folders a killed process left behind (atomic writes clean up only on exceptions)."""
    if not folder.exists():
        return
    for p in folder.iterdir():
        if p.name.startswith(".") and (p.name.endswith(".tmp") or ".old-" in p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- build


@dataclass
class TaskReport:
    task: str
    seed: int
    run: int = 0
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed_from: Optional[int] = None
    steps_run: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_step(self) -> Optional[float]:
        return self.seconds / self.steps_run if self.steps_run else None


@dataclass
class BuildResult:
    zoo: str
    tasks: list[TaskReport]
    seconds: float
    processes: int = 1
    is_main: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "zoo": self.zoo,
            "seconds": round(self.seconds, 2),
            "processes": self.processes,
            "notes": self.notes,
            "built": sum(len(t.built) for t in self.tasks),
            "skipped": sum(len(t.skipped) for t in self.tasks),
            "tasks": [
                {**asdict(t), "seconds": round(t.seconds, 2),
                 "seconds_per_step": None if t.seconds_per_step is None else round(t.seconds_per_step, 4)}
                for t in self.tasks
            ],
        }


def build_zoo(resolved, *, tasks: Optional[list[str]] = None, force: bool = False, progress=None,
              model_and_tokenizer=None) -> BuildResult:
    """Train the teacher trajectories of ``tasks`` (default ``[zoo] tasks``) into the zoo folder.

    Under ``accelerate launch`` every process calls this; the work is split as the module doc says
    and the returned report (every task's) is complete on the main process only.
    """
    import contextlib

    from ..progress import NULL_PROGRESS
    from ..distributed import ProcessGroup
    from ..tasks.registry import registry_for

    progress = progress or NULL_PROGRESS
    cfg = resolved.config
    reg = registry_for(resolved)
    tasks = list(dict.fromkeys(reg.check(t, "--tasks") for t in (tasks or cfg.zoo.tasks)))  # a task trains once
    notes = []
    for t in tasks:  # read every task's data before any training: a bad file fails in seconds
        n = len(reg.get(t).records("train"))
        zc = cfg.zoo.for_task(t)
        if zc.data_fraction < 1.0 and (note := trajectory_overlap(n, zc.data_fraction, cfg.zoo.runs)):
            notes.append(f"{t}: {note}")
    folder = zoo_dir(resolved)
    specs = {t: build_spec(resolved, t) for t in dict.fromkeys([*tasks, *cfg.zoo.tasks])}
    dist = ProcessGroup(cfg.model.device)
    if not dist.is_main:
        progress = NULL_PROGRESS  # one set of progress bars, the main process's
    t_start = time.perf_counter()
    check_output(folder, "zoo", flag="zoo.path", incremental=True, roots=[resolved.workdir, resolved.root])
    dist.barrier()  # every process judges the folder before any of them writes to it
    folder.mkdir(parents=True, exist_ok=True)
    zoo = Zoo.load(folder, must_exist=False)
    with zoo.lock() if dist.is_main else contextlib.nullcontext():
        if dist.is_main:  # a forced rebuild killed outright: its earlier build comes back first
            _recover_forced(folder)
        dist.barrier()
        zoo = Zoo.load(folder, must_exist=False)
        recorded = _check_spec(folder, zoo, specs, force)  # every process: they refuse together, before any write
        ckpts = {t: _task_checkpoints(cfg, t) for t in tasks}
        units = [Unit(t, r) for t in tasks for r in range(cfg.zoo.runs)]
        aside = None
        if dist.is_main:
            _clean_stale_temps(folder / "adapters")
            _clean_stale_temps(folder / STATE_DIR)
            _adopt_pending(zoo, specs)
            if force:  # the requested tasks are rebuilt as configured: no row of their earlier build stays
                aside = _set_aside_built(zoo, tasks)
            write_provenance(folder, provenance("zoo build", resolved.to_dict(), build_spec=build_spec(resolved),
                                                task_build_specs={**recorded, **{t: specs[t] for t in tasks}}))
        try:
            result = _build_units(resolved, folder, zoo, dist, units, ckpts, specs, force, progress, t_start, notes,
                                  model_and_tokenizer)
        except BaseException:
            if aside is not None:  # the earlier build of the forced tasks comes back
                _restore_built(folder, aside)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return result


def _build_units(resolved, folder: Path, zoo: Zoo, dist, units: list, ckpts: dict, specs: dict, force: bool,
                 progress, t_start: float, notes: list[str], model_and_tokenizer) -> BuildResult:
    """The training part of :func:`build_zoo`, under its lock."""
    cfg = resolved.config
    dist.barrier()
    zoo = Zoo.load(folder, must_exist=False)  # with the rows the main process adopted
    snapshot = list(zoo.entries)
    existing = {e.id: e for e in zoo.entries}
    done = {u: [False if force else _complete(zoo, existing.get(adapter_id(u.task, s, u.run)))
                for s in ckpts[u.task]] for u in units}
    for u in units:  # finished teachers of another task definition are refused, not silently kept
        _check_task_definition(resolved, zoo, u.task, [adapter_id(u.task, s, u.run) for s in ckpts[u.task]],
                               done[u], existing)
    todo = [u for u in units if not all(done[u])]
    loaded = [model_and_tokenizer]

    def base():  # loaded only when some checkpoint is left to train
        if loaded[0] is None:
            from ..models import load_base_model

            loaded[0] = load_base_model(cfg.model.base, dtype=cfg.model.dtype,
                                        device=dist.device(cfg.model.device))
        return loaded[0]

    new_rows: dict[str, ZooEntry] = {}

    def record(entry: ZooEntry) -> None:
        new_rows[entry.id] = entry
        if dist.is_main:
            zoo.upsert(entry)
            zoo.save()
        else:  # kept on disk too, so an interruption before the gather loses nothing
            _write_pending(folder / STATE_DIR, entry, specs[entry.task])

    mine = {u: _build_task(resolved, zoo, base, u, specs[u.task], done[u], progress, record)
            for u in dist.shard(todo)}
    gathered = dist.gather([(u, r, [new_rows[a] for a in r.built]) for u, r in mine.items()])
    if not dist.is_main:
        return BuildResult(str(folder), list(mine.values()), time.perf_counter() - t_start, dist.world, False)
    reports = {u: r for u, r, _ in gathered}
    rows = {e.id: e for _, _, es in gathered for e in es}
    for u in units:
        if u not in reports:
            reports[u] = TaskReport(task=u.task, seed=run_seed(cfg.project.seed, u.task, u.run), run=u.run,
                                    skipped=[adapter_id(u.task, s, u.run) for s in ckpts[u.task]])
    # The manifest as one process writes it: the rows found at the start, then every new row
    # upserted in task, run and step order, whichever process trained it.
    zoo.entries = snapshot
    for u in units:
        for aid in reports[u].built:
            zoo.upsert(rows[aid])
    zoo.save()
    _drop_pending(folder / STATE_DIR, [a for r in reports.values() for a in r.built])
    return BuildResult(str(folder), [reports[u] for u in units], time.perf_counter() - t_start, dist.world, True,
                   notes)


def _write_pending(state_dir: Path, entry: ZooEntry, spec: dict) -> None:
    atomic_write_json(state_dir / f"{entry.id}{PENDING_SUFFIX}", {"entry": asdict(entry), "build_spec": spec})


def _read_pending(state_dir: Path, specs: dict[str, dict]) -> list[ZooEntry]:
    """Rows other processes finished, in id order; rows of other build settings are ignored."""
    import json

    out = []
    for p in sorted(state_dir.glob(f"*{PENDING_SUFFIX}")) if state_dir.exists() else []:
        try:
            doc = json.loads(p.read_text())
            entry = ZooEntry(**doc["entry"])
            if doc.get("build_spec") == specs.get(entry.task):
                out.append(entry)
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("%s: unreadable pending row (%s); that checkpoint is retrained", p, e)
    return out


def _drop_pending(state_dir: Path, ids: list[str]) -> None:
    for aid in ids:
        (state_dir / f"{aid}{PENDING_SUFFIX}").unlink(missing_ok=True)


def _adopt_pending(zoo: Zoo, specs: dict[str, dict]) -> None:
    """Put into the manifest the finished checkpoints that non-main processes of an interrupted
    sharded run left behind (their folder and weights hash must check out), then drop the files."""
    state_dir = zoo.folder / STATE_DIR
    if not state_dir.exists():
        return
    rows = [e for e in _read_pending(state_dir, specs) if _complete(zoo, e)]
    for e in rows:
        zoo.upsert(e)
    if rows:
        zoo.save()
        log.info("%s: adopted %d checkpoint(s) finished by other processes of an earlier run", zoo.folder, len(rows))
    for p in state_dir.glob(f"*{PENDING_SUFFIX}"):
        p.unlink(missing_ok=True)


def recorded_specs(folder: Path, zoo: Zoo) -> dict[str, dict]:
    """The build settings of each task with built teachers, as the zoo folder records them (zoos from
    before per-task settings record one spec for every task)."""
    prov = read_provenance(folder) or {}
    per, common = prov.get("task_build_specs") or {}, prov.get("build_spec")
    out = {}
    for t in dict.fromkeys(e.task for e in zoo.entries if e.source == "built"):
        if per.get(t, common) is not None:
            out[t] = per.get(t, common)
    return out


def _check_spec(folder: Path, zoo: Zoo, specs: dict[str, dict], force: bool) -> dict[str, dict]:
    """The recorded specs; refuses (without ``force``) when a task to build or in ``[zoo] tasks`` has
    teachers built with other settings than its own now."""
    recorded = recorded_specs(folder, zoo)
    stale = [t for t, sp in specs.items() if t in recorded and recorded[t] != sp]
    if stale and not force:
        diff = sorted({k for t in stale for k in _diff_keys(recorded[t], specs[t])})
        raise InputError(
            f"{folder}: the teachers of {', '.join(stale)} were built with other settings ({', '.join(diff[:6])} "
            "differ); pass --force to rebuild the requested tasks, or set zoo.path to another folder"
        )
    return recorded


def _task_checkpoints(cfg, task: str) -> list[int]:
    """The steps at which ``task``'s trajectories keep a checkpoint (its own settings applied)."""
    z = cfg.zoo.for_task(task)
    return checkpoint_steps(z.steps, z.warmup_steps, z.checkpoints)


FORCED_SUFFIX = ".forced"  # .state/<pid>.forced/: a forced rebuild's earlier build, until it finishes


def _set_aside_built(zoo: Zoo, tasks: list[str]) -> Optional[Path]:
    """Move the built rows of ``tasks`` out of the manifest, with their folders and training states,
    into ``.state/<pid>.forced/`` (they are all retrained). :func:`_restore_built` puts them back if
    the rebuild does not finish (here on an error or Ctrl-C, at the next start after a kill); the
    folder is removed once it has. Returns it (None when the tasks had no built rows)."""
    drop = [e for e in zoo.entries if e.source == "built" and e.task in tasks]
    if not drop:
        return None
    aside = zoo.folder / STATE_DIR / f"{os.getpid()}{FORCED_SUFFIX}"
    shutil.rmtree(aside, ignore_errors=True)
    (aside / "adapters").mkdir(parents=True)
    (aside / "state").mkdir()
    # What to put back is recorded before anything moves: a kill at any point leaves a restorable state.
    atomic_write_json(aside / "rows.json", {"tasks": list(tasks), "order": [e.id for e in zoo.entries],
                                            "rows": [asdict(e) for e in drop],
                                            "provenance": read_provenance(zoo.folder)})
    for e in drop:
        folder, state = zoo.path_of(e), zoo.folder / STATE_DIR / f"{e.id}.pt"
        if folder.exists() and zoo.folder.resolve() in folder.resolve().parents:
            os.replace(folder, child(aside / "adapters", e.id, what="adapter id"))
        if state.exists():
            os.replace(state, child(aside / "state", f"{e.id}.pt", what="adapter id"))
    zoo.entries = [e for e in zoo.entries if e not in drop]
    zoo.save()
    log.info("%s: --force: %d checkpoint(s) of %s set aside until the rebuild finishes", zoo.folder, len(drop),
             ", ".join(tasks))
    return aside


def _restore_built(folder: Path, aside: Path) -> None:
    """Undo :func:`_set_aside_built` for a rebuild that did not finish: the rows, folders and training
    states of the earlier build come back; what the rebuild wrote for those tasks goes."""
    import json

    try:
        doc = json.loads((aside / "rows.json").read_text())
    except (OSError, ValueError):  # killed before the record was written: nothing had moved yet
        shutil.rmtree(aside, ignore_errors=True)
        return
    tasks = set(doc["tasks"])
    rows = [ZooEntry(**r) for r in doc["rows"]]
    zoo = Zoo.load(folder, must_exist=False)
    state_dir = folder / STATE_DIR
    for e in [e for e in zoo.entries if e.source == "built" and e.task in tasks]:
        _remove_inside(folder, zoo.path_of(e))
        (state_dir / f"{e.id}.pt").unlink(missing_ok=True)
    for p in state_dir.glob(f"*{PENDING_SUFFIX}"):  # rows other processes finished in the rebuild
        try:
            pending_task = json.loads(p.read_text())["entry"]["task"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pending_task in tasks:
            p.unlink(missing_ok=True)
    for e in rows:
        moved, home = aside / "adapters" / e.id, zoo.path_of(e)
        if moved.exists():
            _remove_inside(folder, home)
            home.parent.mkdir(parents=True, exist_ok=True)
            os.replace(moved, home)
        st = aside / "state" / f"{e.id}.pt"
        if st.exists():
            os.replace(st, state_dir / f"{e.id}.pt")
    kept = [e for e in zoo.entries if not (e.source == "built" and e.task in tasks)]
    rank = {aid: i for i, aid in enumerate(doc["order"])}
    zoo.entries = sorted(kept + rows, key=lambda e: rank.get(e.id, len(rank)))  # stable: new rows keep their order
    zoo.save()
    old = doc.get("provenance")
    if isinstance(old, dict):  # the tasks' recorded build settings are the earlier build's again
        now = read_provenance(folder) or {}
        specs = dict(now.get("task_build_specs") or {})
        before = old.get("task_build_specs") or {}
        for t in tasks:
            if t in before:
                specs[t] = before[t]
            elif old.get("build_spec") is not None:
                specs[t] = old["build_spec"]
        write_provenance(folder, {**now, "task_build_specs": specs} if now else old)
    shutil.rmtree(aside, ignore_errors=True)
    log.warning("%s: a forced rebuild of %s did not finish; the earlier build of %s is back", folder,
                ", ".join(sorted(tasks)), ", ".join(sorted(tasks)))


def _recover_forced(folder: Path) -> None:
    """Put back what forced rebuilds killed outright set aside (the zoo lock is held: any such folder
    belongs to a process that is gone)."""
    state_dir = folder / STATE_DIR
    for aside in sorted(state_dir.glob(f"*{FORCED_SUFFIX}")) if state_dir.is_dir() else []:
        if aside.is_dir():
            _restore_built(folder, aside)


def _remove_inside(parent: Path, path: Path) -> None:
    """Remove ``path`` (folder or file) if it lies inside ``parent``; a manifest row pointing
    elsewhere (an edited ``zoo.jsonl``) never makes the zoo delete anything outside it."""
    root, target = parent.resolve(), path.resolve()
    if root not in target.parents:
        log.warning("%s: outside %s; left in place", path, parent)
        return
    if target.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out.extend(_diff_keys(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return [prefix.rstrip(".")] if a != b else []


def _build_task(resolved, zoo: Zoo, base, unit: Unit, spec: dict, done: list[bool], progress, record) -> TaskReport:
    """Train one trajectory from its last finished checkpoint (:func:`llgbm_cli.training.teacher.train_trajectory`);
    each checkpoint becomes an adapter folder, and ``record`` stores its manifest row."""
    from ..adapters import save_adapter, weights_sha256
    from ..tasks.evaluate import form_for
    from ..tasks.registry import registry_for
    from ..training.teacher import train_trajectory

    cfg = resolved.config
    task = unit.task
    task_def = registry_for(resolved).get(task)
    form = form_for(resolved, task_def)
    zc, lc = cfg.zoo.for_task(task), cfg.lora
    seed = run_seed(cfg.project.seed, task, unit.run)
    ckpts = _task_checkpoints(cfg, task)
    ids = [adapter_id(task, s, unit.run) for s in ckpts]
    rep = TaskReport(task=task, seed=seed, run=unit.run)
    state_dir = zoo.folder / STATE_DIR
    for aid in ids:  # the adapter folders and training states stay inside the zoo, whatever the task name
        child(zoo.folder / "adapters", aid, what="adapter id")
        child(state_dir, f"{aid}.pt", what="adapter id")

    trained_on = _training_target(task_def, form)
    if all(done):
        rep.skipped = list(ids)
        return rep
    model, tok = base()
    # Teachers train on the target the task is scored on (label, option text or answer text).
    train = task_def.records("train")
    if zc.data_fraction < 1.0:  # the run's block of the task's seeded permutation (order kept)
        train = [train[i] for i in trajectory_subset(len(train), zc.data_fraction,
                                                     run_seed(cfg.project.seed, task, 0), unit.run)]
    examples = [form.training_example(tok, r, max_length=cfg.data.max_length) for r in train]

    def saved(step: int, k: int, mods: dict, loss: float) -> None:
        aid = ids[k]
        out = zoo.folder / "adapters" / aid
        prov = provenance("zoo build", resolved.to_dict(), task=task, run=unit.run, step=step, seed=seed,
                          loss=loss, build_spec=spec, task_definition=trained_on)
        save_adapter(out, mods, alpha=lc.alpha, base_model=cfg.model.base, provenance=prov, force=True)
        cond = [r.prompt for r in task_def.sample("train", zc.condition_prompts, seed=f"{seed}-{step}")]
        record(ZooEntry(id=aid, path=f"adapters/{aid}", task=task, step=step, seed=seed,
                        condition=cond, sha256=weights_sha256(out), source="built"))
        rep.built.append(aid)
        progress.log(f"{aid}: saved (loss {loss:.4f})")

    run = train_trajectory(model, tok, examples, task=task, zc=zc, lc=lc, seed=seed, checkpoints=ckpts, done=done,
                           states=[state_dir / f"{aid}.pt" for aid in ids], on_checkpoint=saved, progress=progress,
                           label=f"zoo {task}" + (f" r{unit.run}" if unit.run else ""))
    rep.steps_run, rep.resumed_from, rep.seconds = run.steps_run, run.resumed_from, run.seconds
    rep.skipped = [i for i, d in zip(ids, done) if d and i not in rep.built]
    return rep


def _check_task_definition(resolved, zoo: Zoo, task: str, ids: list[str], done: list[bool], existing: dict) -> None:
    from ..tasks.evaluate import form_for
    from ..tasks.registry import registry_for

    task_def = registry_for(resolved).get(task)
    trained_on = _training_target(task_def, form_for(resolved, task_def))
    for i, d in zip(ids, done):
        if d and i in existing:
            old = ((read_provenance(zoo.path_of(existing[i])) or {}).get("task_definition"))
            if old is not None and old != trained_on:
                diff = ", ".join(sorted(_diff_keys(old, trained_on))[:6])
                raise InputError(f"{zoo.path_of(existing[i])}: this teacher of {task} was trained on another task "
                                 f"definition ({diff} differ); pass --force to retrain {task}, or set zoo.path to "
                                 "another folder")


def _training_target(task_def, form) -> dict[str, Any]:
    """What a teacher's training depends on: the task's data and prompt form (not its description)."""
    from dataclasses import asdict

    d = {k: v for k, v in task_def.definition().items() if k != "description"}
    return {**d, "form": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(form).items()}}


# --------------------------------------------------------------------------- add


@dataclass
class AddResult:
    zoo: str
    added: list[dict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_adapters(resolved, paths: list[str], task: str, *, force: bool = False, model=None) -> AddResult:
    """Register existing PEFT adapters under ``task`` after checking they fit the base model.

    Adapters stay where they are (the manifest stores their absolute path); ids are the folder
    names. Every path is checked before the manifest changes, so a bad one adds nothing.
    """
    from ..adapters import load_adapter, validate_against, weights_sha256
    from ..tasks.registry import registry_for

    cfg = resolved.config
    task_def = registry_for(resolved).get(task)
    task = task_def.name
    named: dict[str, str] = {}
    for p in paths:  # every id and every repeat refused before anything is read
        path = Path(p).expanduser().resolve()
        check_name(path.name, f"{p}: adapter id", hint="an adapter's id is its folder's name: rename the folder")
        if path.name in named:
            same = "the same folder" if Path(named[path.name]).expanduser().resolve() == path else "another folder"
            raise InputError(f"{p}: adapter id {path.name!r} is also that of {named[path.name]} ({same}); "
                             "name each adapter once, and rename folders that share a name")
        named[path.name] = str(p)
    folder = zoo_dir(resolved)
    folder.mkdir(parents=True, exist_ok=True)
    zoo = Zoo.load(folder, must_exist=False)
    if model is None:
        from ..models import load_base_model

        model = load_base_model(cfg.model.base, dtype=cfg.model.dtype, device="cpu")[0]
    rows = []
    seen = {e.id for e in zoo.entries}
    for p in paths:
        path = Path(p).expanduser().resolve()
        ad = load_adapter(path)
        validate_against(ad, model)
        aid = path.name
        if aid in seen and not force:
            raise InputError(f"{path}: adapter id {aid!r} is already in {zoo.manifest_path}; pass --force to "
                             "replace that row, or rename the folder")
        seen.add(aid)
        seed = task_seed(cfg.project.seed, task)
        cond = [r.prompt for r in task_def.sample("train", cfg.zoo.condition_prompts, seed=f"{seed}-{aid}")]
        rows.append(ZooEntry(id=aid, path=str(path), task=task, step=None, seed=None, condition=cond,
                             sha256=weights_sha256(path), source="added"))
    with zoo.lock():
        zoo = Zoo.load(folder, must_exist=False)  # re-read under the lock: another writer may have added rows
        for r in rows:
            zoo.upsert(r)
        zoo.save()
    return AddResult(str(folder), [{"id": r.id, "path": r.path, "task": r.task} for r in rows])


# --------------------------------------------------------------------------- score


@dataclass
class ScoreReport:
    zoo: str
    test_sample: int
    seed: int
    tasks: dict[str, dict[str, Any]]
    split: str = "test"
    reused: int = 0  # scores (base or adapter x task) taken from the earlier report, not computed again

    def to_dict(self, questions: bool = False) -> dict[str, Any]:
        """The report; ``questions`` keeps every question's 0/1 score (written to scores.json)."""
        tasks = self.tasks if questions else {
            t: {k: v for k, v in r.items() if k not in ("questions", "question_ids", "score_key")}
            for t, r in self.tasks.items()}
        from ..evaluation.stats import holm, sign_test, t_interval, wilcoxon_across

        beats = [t for t, r in self.tasks.items() if r.get("best") is not None and r["best_accuracy"] > r["base"]]
        # The task's teacher (its last checkpoint) ahead of base by at least two paired standard errors.
        sig = [t for t, r in self.tasks.items()
               if r.get("last") and r.get("vs_base", {}).get(r["last"], {}).get("beats_base_2se")]
        # The same teacher against base by the exact paired test, Holm-adjusted over the tasks scored.
        last = {t: r["vs_base"][r["last"]] for t, r in self.tasks.items()
                if r.get("last") and "p" in r.get("vs_base", {}).get(r["last"], {})}
        adj = dict(zip(last, holm([v["p"] for v in last.values()])))
        exact = [t for t, v in last.items() if v["diff"] > 0 and adj[t] < 0.05]
        # The teachers as a group: their differences to base across the tasks (each task one value).
        diffs = [v["diff"] for v in last.values()]
        above = sum(d > 0 for d in diffs)
        across = {**t_interval(diffs), "wilcoxon_p": wilcoxon_across(diffs), "above": above,
                  "below": sum(d < 0 for d in diffs), "sign_p": sign_test(above, sum(d != 0 for d in diffs))}
        return {"zoo": self.zoo, "split": self.split, "reused": self.reused, "test_sample": self.test_sample,
                "seed": self.seed, "tasks": tasks,
                "beats_base": {"tasks": beats, "count": len(beats), "of": len(self.tasks)},
                "teacher_beats_base_2se": {"tasks": sig, "count": len(sig), "of": len(self.tasks)},
                "teacher_beats_base_exact": {"tasks": exact, "count": len(exact), "of": len(last),
                                             "p": {t: v["p"] for t, v in last.items()}, "p_holm": adj},
                "teacher_vs_base_across_tasks": across}


def _heldout_sample(task_def, fraction: float, entries, n: int, seed: int) -> list:
    """Up to n seeded train records outside run 0's training subset (every run-0 entry shares its seed)."""
    import random

    seeds = {e.seed for e in entries}
    if len(seeds) != 1:
        raise InputError(f"--split heldout: task {task_def.name} has no built run-0 teacher in the zoo" if not seeds
                         else f"--split heldout: run 0 of task {task_def.name} has checkpoints of several seeds")
    train = task_def.records("train")
    used = set(trajectory_subset(len(train), fraction, seeds.pop()))
    held = [r for i, r in enumerate(train) if i not in used]
    if n >= len(held):
        return held
    idx = sorted(random.Random(f"{seed}-{task_def.name}-heldout").sample(range(len(held)), n))
    return [held[i] for i in idx]


def score_zoo(resolved, *, tasks: Optional[list[str]] = None, test_sample: Optional[int] = None,
              checkpoints: str = "all", split: str = "test", progress=None,
              model_and_tokenizer=None) -> ScoreReport:
    """The headline metric of the base model and of each teacher on a seeded held-out sample of its
    own task (``accuracy``: acc, acc_norm, exact_match or number, by the task), with every metric of
    the task's kind under ``metrics``. The scoring mode of multiple-choice tasks is ``[data] scoring``
    when set, else each task's own.

    ``checkpoints``: ``all`` scores every checkpoint, ``last`` only each task's latest one.
    ``split``: ``test`` scores the task's test split; ``heldout`` scores the train records the task's
    first trajectory (run 0) did not train on (a zoo built with ``zoo.data_fraction`` < 1), a
    validation set for choosing teacher settings without touching a test question; only run 0's
    checkpoints are scored there (other runs trained on other subsets).
    The report is also written to ``<zoo>/scores.json`` (``scores-heldout.json``) for later commands.
    """
    from ..adapters import load_adapter, validate_against
    from ..progress import NULL_PROGRESS
    from ..evaluation.stats import paired_difference, paired_test
    from ..tasks.evaluate import form_for, score_records, score_records_many
    from ..tasks.overlap import scored_sample
    from ..tasks.registry import registry_for

    progress = progress or NULL_PROGRESS
    cfg = resolved.config
    folder = zoo_dir(resolved)
    zoo = Zoo.load(folder)
    reg = registry_for(resolved)
    tasks = [reg.check(t, "--tasks") for t in (tasks or zoo.tasks())]
    n = test_sample or cfg.data.test_sample
    if checkpoints not in ("all", "last"):
        raise InputError(f"--checkpoints {checkpoints!r}: use `all` or `last`")
    if split not in ("test", "heldout"):
        raise InputError(f"--split {split!r}: use `test` or `heldout`")
    if split == "heldout":
        recorded = recorded_specs(folder, zoo)
        fractions = {t: float(recorded.get(t, {}).get("zoo", {}).get("data_fraction", 1.0)) for t in tasks}
        whole = [t for t, f in fractions.items() if f >= 1.0]
        if whole:
            raise InputError(f"--split heldout: the teachers of {', '.join(whole)} in {folder} trained on their "
                             "whole train split (zoo.data_fraction = 1), so no train record is held out; build "
                             "them with zoo.data_fraction < 1")
    loaded = [model_and_tokenizer]

    def base_model():  # loaded only when some score is not in the earlier report
        if loaded[0] is None:
            from ..models import load_base_model

            loaded[0] = load_base_model(cfg.model.base, dtype=cfg.model.dtype, device=cfg.model.device)
        return loaded[0]

    kw = dict(batch_size=cfg.data.score_batch_size, generate_batch_size=cfg.data.generate_batch_size)
    file = folder / (SCORES_FILE if split == "test" else HELDOUT_SCORES_FILE)
    earlier = _earlier_scores(file)
    out: dict[str, dict[str, Any]] = {}
    reused = 0
    for task in tasks:
        entries = sorted(zoo.by_task(task), key=lambda e: (e.step is None, e.step or 0, e.id))
        if split == "heldout":  # run 0's built checkpoints: the held-out records are its complement
            entries = [e for e in entries if e.source == "built" and trajectory_of(e)[1] == "r0"]
        if checkpoints == "last" and entries:
            built = [e for e in entries if e.step is not None]
            entries = ([built[-1]] if built else []) + [e for e in entries if e.step is None]
        task_def = reg.get(task)
        form = form_for(resolved, task_def)
        contamination = None
        if split == "test":  # the teachers trained on the task's own train split: no scored question may be in it
            recs, contamination = scored_sample(resolved, task_def, [task], n)
        else:
            recs = _heldout_sample(task_def, fractions[task], entries, n, cfg.project.seed)
        qids = [r.id for r in recs]
        # What a score depends on besides the adapter: an earlier score with the same key is reused.
        key = {"form": repr(form), "base_model": cfg.model.base, "dtype": cfg.model.dtype,
               "max_length": cfg.data.max_length, "question_ids": qids}
        prev = earlier.get(task) if (earlier.get(task) or {}).get("score_key") == key else None
        bar = progress.add(f"score {task}", total=len(recs) * (1 + len(entries)))
        metrics: dict[str, dict[str, float]] = {}
        questions: dict[str, list] = {}
        accs: dict[str, float] = {}
        shas: dict[str, Optional[str]] = {}

        def take(name: str) -> bool:
            if prev is None or name not in prev["questions"]:
                return False
            metrics[name], questions[name] = prev["metrics"][name], prev["questions"][name]
            progress.advance(bar, len(recs))
            return True

        if take("base"):
            base_acc = prev["base"]
            reused += 1
        else:
            model, tok = base_model()
            sc = score_records(model, tok, form, recs, progress=progress, progress_task=bar, **kw)
            base_acc, metrics["base"], questions["base"] = sc.accuracy, sc.metrics, sc.values()
        todo = []
        for e in entries:
            shas[e.id] = e.sha256
            if e.sha256 is not None and (prev or {}).get("sha256", {}).get(e.id) == e.sha256 and take(e.id):
                accs[e.id] = prev["adapters"][e.id]
                reused += 1
            else:
                todo.append(e)
        # The checkpoints not reused are scored SCORE_GROUP at a time, sharing the base layers below them.
        for g in range(0, len(todo), SCORE_GROUP):
            model, tok = base_model()
            part = todo[g : g + SCORE_GROUP]
            ads = [load_adapter(zoo.path_of(e)) for e in part]
            for ad in ads:
                validate_against(ad, model)
            for e, sc in zip(part, score_records_many(model, tok, ads, form, recs, progress=progress,
                                                      progress_task=bar, **kw)):
                accs[e.id], metrics[e.id], questions[e.id] = sc.accuracy, sc.metrics, sc.values()
        accs = {e.id: accs[e.id] for e in entries}  # entry order (the best of equal accuracies is the earliest)
        vs_base: dict[str, dict[str, Any]] = {}
        for e in entries:
            pd = paired_difference(questions[e.id], questions["base"])
            ex = paired_test(questions[e.id], questions["base"], seed=cfg.project.seed)
            vs_base[e.id] = {**pd, "beats_base_2se": bool(pd["se"] > 0 and pd["diff"] >= 2 * pd["se"]),
                             "p": ex["p"], "test": ex["test"]}
        best = max(accs, key=lambda k: accs[k]) if accs else None
        out[task] = {"n": len(recs), "kind": form.kind, "metric": form.metric,
                     **({"scoring": form.scoring} if form.scoring else {}),
                     "base": base_acc, "adapters": accs, "best": best,
                     "best_accuracy": accs[best] if best else None,
                     "last": entries[-1].id if entries else None, "metrics": metrics, "vs_base": vs_base,
                     "question_ids": qids, "questions": questions, "sha256": shas, "score_key": key,
                     **({"contamination": contamination} if contamination else {})}
        # Saved after every task: a run stopped part-way keeps what it scored, and the rerun reuses it.
        # The file keeps the tasks scored earlier and not now, so a later run on other tasks reuses them too.
        kept = ScoreReport(str(folder), n, cfg.project.seed,
                           {**{t: r for t, r in earlier.items() if t not in out}, **out}, split, reused)
        atomic_write_json(file, {**kept.to_dict(questions=True),
                                 "provenance": provenance("zoo score", resolved.to_dict())})
    return ScoreReport(str(folder), n, cfg.project.seed, out, split, reused)


def _earlier_scores(path: Path) -> dict[str, dict[str, Any]]:
    """The tasks of an earlier report at ``path`` (nothing if absent or unreadable: scored again)."""
    import json

    try:
        doc = json.loads(path.read_text())
        return {t: r for t, r in doc.get("tasks", {}).items() if isinstance(r, dict) and "questions" in r}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as e:
        log.warning("%s: unreadable earlier scores (%s); every score is computed again", path, e)
        return {}
