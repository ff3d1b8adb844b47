"""`llgbm compose`: few-shot composition of zoo adapters for a task (:mod:`llgbm_cli.composition`).

The task's k labelled examples are a seeded sample of its *train* split (``compose.examples``);
its test questions are never read. The candidates are the zoo's adapters (by default the latest
teacher of every other task: the task's own adapters, if the zoo has any, are left out, so the
result is comparable to a held-out evaluation), optionally narrowed to the ``top_n`` with the
lowest loss alone on the examples. CMA-ES searches their merge weights; the composed adapter
(exact, rank Σ rᵢ) is written as a PEFT folder. This is a *few-shot* result: it read k labels of
the task, which no zero-shot method does, and eval reports it apart from them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import workdir
from ..errors import InputError
from ..progress import NULL_PROGRESS


@dataclass
class ComposeResult:
    task: str
    out: Optional[str]
    candidates: list[dict[str, Any]]  # id, task, loss alone, chosen, weight (chosen ones)
    examples: list[str]  # ids of the labelled train examples searched on
    budget: int
    evaluations: int  # the search's loss evaluations (at most budget); ranking the candidates took one each more
    generations: int
    loss: float
    cross_entropy: float
    start_loss: float
    zero_loss: float
    rank: int
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    regime: str = "few-shot"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def few_shot_records(resolved, task: str, k: Optional[int] = None) -> list[Any]:
    """The k labelled examples of ``task``: a seeded sample of its train split (never test)."""
    from ..tasks.registry import registry_for

    t = registry_for(resolved).get(task)
    k = int(k or resolved.config.compose.examples)
    try:
        recs = t.sample("train", k, seed=f"{resolved.config.project.seed}-compose")
    except InputError:
        recs = []
    if not recs:
        raise InputError(f"compose: task {task} has no train records to draw labelled examples from; give [tasks.{task}] "
                         "a train split (a `train` file in its `path` folder, or `train_split`) or compose for another task")
    return recs


def compose_for(resolved, model, tokenizer, task: str, entries: Sequence[Any], zoo, *, k: Optional[int] = None,
                top_n: Optional[int] = None, budget: Optional[int] = None, progress=NULL_PROGRESS):
    """(composed LoraAdapter, ComposeResult without ``out``) of ``entries`` (zoo entries) for ``task``."""
    import numpy as np

    from ..adapters import load_adapter
    from ..composition import FewShotLoss, compose_adapter, search_weights
    from ..tasks.evaluate import form_for
    from ..tasks.registry import registry_for

    cfg = resolved.config
    c = cfg.compose
    t0 = time.perf_counter()
    if not entries:
        raise InputError(f"compose: no zoo adapter of a task other than {task} to compose; build the zoo first "
                         f"(`{workdir.made_by('zoo')}`)")
    recs = few_shot_records(resolved, task, k)
    form = form_for(resolved, registry_for(resolved).get(task))
    examples = [form.training_example(tokenizer, r, max_length=cfg.data.max_length) for r in recs]
    adapters = [load_adapter(zoo.path_of(e)) for e in entries]
    n_keep = int(top_n if top_n is not None else c.top_n) or len(adapters)
    loss = FewShotLoss(model, tokenizer, adapters, examples, members=c.members)
    alone = loss(np.eye(len(adapters)))  # each candidate with weight 1, the others 0
    order = sorted(range(len(adapters)), key=lambda i: (alone[i], entries[i].id))
    keep = sorted(order[: min(n_keep, len(adapters))])
    if len(keep) < len(adapters):
        loss = FewShotLoss(model, tokenizer, [adapters[i] for i in keep], examples, members=c.members)
    known = [(np.eye(len(keep))[j], alone[i]) for j, i in enumerate(keep)]  # each kept candidate alone
    res = search_weights(loss, budget=int(budget or c.budget), popsize=c.popsize, sigma0=c.sigma0, l1=c.l1,
                         bounds=(c.bounds[0], c.bounds[1]), seed=cfg.project.seed, known=known, progress=progress)
    composed = compose_adapter([adapters[i] for i in keep], res.weights, base_model=cfg.model.base)
    weight = dict(zip(keep, res.weights))
    cands = [{"id": e.id, "task": e.task, "loss_alone": float(alone[i]), "chosen": i in weight,
              "weight": weight.get(i)} for i, e in enumerate(entries)]
    out = ComposeResult(task=task, out=None, candidates=cands, examples=[r.id for r in recs],
                        budget=int(budget or c.budget), evaluations=res.evaluations,
                        generations=res.generations, loss=res.loss, cross_entropy=res.cross_entropy,
                        start_loss=res.start_loss, zero_loss=res.zero_loss, rank=composed.r, history=res.history,
                        seconds=time.perf_counter() - t0)
    if res.loss >= min(res.start_loss, *(f + c.l1 / len(keep) for _, f in known)):
        out.notes.append("the search found nothing better than its start (the uniform weights or one candidate alone)")
    return composed, out


def run_compose(resolved, *, task: str, out: str | Path, adapters: Optional[Sequence[str]] = None,
                k: Optional[int] = None, top_n: Optional[int] = None, budget: Optional[int] = None,
                force: bool = False, progress=NULL_PROGRESS) -> ComposeResult:
    """Compose zoo adapters for ``task`` and write the result to ``out`` (see the module doc).
    ``adapters``: zoo ids to compose (default: the latest teacher of every other task)."""
    from ..adapters import save_adapter
    from ..models import load_base_model
    from ..tasks.registry import registry_for
    from ..zoo_manifest import Zoo

    cfg = resolved.config
    registry_for(resolved).get(task)  # an unknown task fails here, with the registered ones
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise InputError(f"--out {out}: already exists; pass --force to replace it")
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    if adapters:
        entries = [zoo.get(i) for i in adapters]
    else:
        from .eval_methods import teacher_of

        entries = [teacher_of(zoo, t) for t in sorted(zoo.tasks()) if t != task]
    model, tok = load_base_model(cfg.model.base, cfg.model.dtype, cfg.model.device)
    composed, res = compose_for(resolved, model, tok, task, entries, zoo, k=k, top_n=top_n, budget=budget,
                                progress=progress)
    prov = {"command": "compose", "task": task, "regime": res.regime, "examples": res.examples,
            "candidates": res.candidates, "loss": res.loss, "start_loss": res.start_loss,
            "zero_loss": res.zero_loss, "config": {"compose": cfg.compose.model_dump(mode="json")}}
    save_adapter(out, composed, provenance=prov, force=force)
    res.out = str(out)
    return res
