"""Few-shot composition: merge weights over zoo adapters searched on k labelled examples.

Given n candidate adapters and k labelled *training* examples of a task, find weights ``w`` so
that the adapter ``ΔW(w) = Σᵢ wᵢ·ΔWᵢ`` does the task best, as LoraHub composes LoRA modules. The
composed adapter is exact: the candidates concatenated along the rank (A stacked, ``wᵢ·sᵢ·Bᵢ``
side by side, scaling 1), so ``B·A = Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ`` at rank ``Σ rᵢ``.

The search is gradient-free: CMA-ES (the ``cma`` package) minimizes

    f(w) = CE_k(w) + l1 · mean|wᵢ|

where ``CE_k`` is the answer-only cross-entropy of the k examples (the target the zoo's teachers
train on: option text, option label or answer text) with ``ΔW(w)`` applied. Every evaluation of a
CMA-ES generation runs in one patched forward pass (row block ``p`` = candidate weights ``p``), and
only through the layers the adapters touch: the base model's layers below them run once for the
whole search (:mod:`llgbm_cli.tasks.lower`), since the k examples never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .errors import InputError


def concat_factors(adapters: Sequence[Any]) -> dict[str, tuple[Any, Any, list[int]]]:
    """Per module ``(A_cat [Σr, in], B_blocks [n, out, r_max], ranks)``; every adapter must have
    the module (candidates of one zoo share their layout)."""
    import torch

    names = sorted(adapters[0].modules)
    for a in adapters[1:]:
        if sorted(a.modules) != names:
            raise InputError(f"compose: adapter {a.id} adapts other modules than {adapters[0].id}; "
                             "compose adapters of one zoo (the same [lora] target modules and layers)")
    out = {}
    for k in names:
        mods = [a.modules[k] for a in adapters]
        ranks = [m.rank for m in mods]
        A = torch.cat([m.A.float() for m in mods], 0)
        r_max = max(ranks)
        B = torch.zeros(len(mods), mods[0].B.shape[0], r_max)
        for i, m in enumerate(mods):
            B[i, :, : m.rank] = m.B.float() * float(m.scaling)
        out[k] = (A, B, ranks)
    return out


def weighted_B(B_blocks, ranks: list[int], W):
    """``[P, out, Σr]``: for each weight row of ``W [P, n]``, the blocks ``wᵢ·sᵢ·Bᵢ`` side by side."""
    import torch

    return torch.cat([W[:, i, None, None] * B_blocks[i, :, :r][None] for i, r in enumerate(ranks)], dim=2)


def compose_adapter(adapters: Sequence[Any], weights: Sequence[float], base_model: Optional[str] = None):
    """The exact composition ``Σᵢ wᵢ·ΔWᵢ`` as a :class:`~llgbm_cli.adapters.LoraAdapter` (rank Σ rᵢ, scaling 1)."""
    import torch

    from .adapters import LoraAdapter, LoraModule

    W = torch.tensor([list(map(float, weights))])
    factors = concat_factors(adapters)
    mods = {k: LoraModule(A.clone(), weighted_B(B, ranks, W)[0].contiguous(), 1.0) for k, (A, B, ranks) in factors.items()}
    rank = sum(next(iter(factors.values()))[2])
    targets = sorted({t for a in adapters for t in a.target_modules})
    return LoraAdapter(mods, rank, float(rank), targets, base_model=base_model or adapters[0].base_model)


class FewShotLoss:
    """Answer-only cross-entropy of fixed examples under many weightings of fixed candidates.

    ``examples``: ``(input_ids, labels)`` pairs (``PromptForm.training_example``). The hidden state
    entering the lowest adapted layer is computed once, with the base model; :meth:`__call__` takes
    ``W [P, n]`` and returns the P mean cross-entropies, ``members`` weightings per forward pass."""

    def __init__(self, model, tokenizer, adapters: Sequence[Any], examples: Sequence[tuple[list[int], list[int]]],
                 members: int = 8):
        import torch

        from .tasks.lower import LowerLayers, lower_forward, shared_start
        from .training.task_loss import collate_examples

        if not examples:
            raise InputError("compose: no labelled examples to search the weights on")
        self.model, self.members = model, max(1, int(members))
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids, self.mask, labels = collate_examples(list(examples), pad, self.device)
        self.tgt = labels[:, 1:]
        self.sel = self.tgt != -100
        self.factors = {k: (A.to(self.device), B.to(self.device), r) for k, (A, B, r) in concat_factors(adapters).items()}
        self.n = len(adapters)
        self.head = model.get_output_embeddings()
        self.trunk = getattr(model, model.base_model_prefix)
        self.lower = None
        start = shared_start(model, adapters)
        if start > 0:
            self.lower = LowerLayers(start)
            with torch.no_grad():
                self.state, _ = lower_forward(model, self.lower, self.ids, self.mask, None, None)
        self.evaluations = 0

    def __call__(self, W) -> list[float]:
        import torch

        W = torch.as_tensor(W, dtype=torch.float32, device=self.device).reshape(-1, self.n)
        out: list[float] = []
        for s in range(0, W.shape[0], self.members):
            out += self._chunk(W[s : s + self.members])
        self.evaluations += int(W.shape[0])
        return out

    def _chunk(self, W) -> list[float]:
        import torch

        from .lora.patch import LoraPatch, StackedLora
        from .tasks.lower import skipping

        P, b = W.shape[0], self.ids.shape[0]
        stacked = {k: StackedLora(A[None].expand(P, -1, -1), weighted_B(B, r, W), torch.ones(P, device=self.device))
                   for k, (A, B, r) in self.factors.items()}
        ids, mask = self.ids.repeat(P, 1), self.mask.repeat(P, 1)
        with torch.no_grad():
            if self.lower is not None:
                self.lower.prompt_state = self.state.repeat(P, 1, 1)
            with skipping(self.model, self.lower, "prompt_state"), LoraPatch(self.model, stacked):
                hidden = self.trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            sel = self.sel.repeat(P, 1)
            logits = self.head(hidden[:, :-1][sel]).float()
            ce = torch.nn.functional.cross_entropy(logits, self.tgt.repeat(P, 1)[sel], reduction="none")
            member = torch.arange(P, device=self.device).repeat_interleave(b)[:, None].expand(-1, sel.shape[1])[sel]
            per = torch.zeros(P, device=self.device).index_add_(0, member, ce)
            count = torch.zeros(P, device=self.device).index_add_(0, member, torch.ones_like(ce))
        return (per / count.clamp_min(1)).tolist()


@dataclass
class SearchResult:
    weights: list[float]
    loss: float  # f at the best weights (cross-entropy + l1 term)
    cross_entropy: float  # its cross-entropy alone
    start_loss: float  # f at the start (uniform weights 1/n)
    zero_loss: float  # cross-entropy of the base model (every weight 0)
    evaluations: int
    generations: int
    history: list[float] = field(default_factory=list)  # the best f after each generation


def search_weights(loss: FewShotLoss, *, budget: int = 40, popsize: int = 0, sigma0: float = 0.5, l1: float = 0.05,
                   bounds: tuple[float, float] = (-1.5, 1.5), seed: int = 0, known=None,
                   progress=None) -> SearchResult:
    """CMA-ES over the weights (see the module doc); the best weights evaluated. ``known``: weight
    vectors already evaluated with their cross-entropy (each candidate alone, from the ranking);
    the search starts from the best of them and the uniform ``1/n`` (by f), and they count as
    evaluated points. ``popsize`` 0: cma's default (4 + 3·ln n); ``budget``: the search's own
    evaluations (the base model's and the uniform start's included)."""
    import cma
    import numpy as np

    n = loss.n
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise InputError(f"compose.bounds: {list(bounds)} is not an interval [low, high] with low < high")

    def f_of(ws, ces):
        return [ce + l1 * float(np.mean(np.abs(w))) for w, ce in zip(ws, ces)]

    x0 = np.full(n, 1.0 / n)
    before = loss.evaluations  # the search's own evaluations are counted against the budget
    zero_ce, start_ce = loss(np.stack([np.zeros(n), x0]))
    best_w, best_ce = x0.copy(), start_ce
    best_f = start_f = f_of([x0], [start_ce])[0]
    for w, ce in known or []:
        w = np.asarray(w, dtype=float)
        if (w < lo).any() or (w > hi).any():  # measured outside the bounds: not a point of this search
            continue
        f = f_of([w], [ce])[0]
        if f < best_f:
            best_w, best_ce, best_f = w, ce, f
    x0 = best_w.copy()
    if n == 1:  # one candidate: a one-dimensional search is a line search; CMA-ES needs two
        grid = np.linspace(lo, hi, max(2, budget - 2))[:, None]
        ces = loss(grid)
        fs = f_of(grid, ces)
        i = int(np.argmin(fs))
        if fs[i] < best_f:
            best_w, best_ce, best_f = grid[i], ces[i], fs[i]
        return SearchResult([float(v) for v in best_w], float(best_f), float(best_ce), float(start_f),
                            float(zero_ce), loss.evaluations - before, 1, [float(best_f)])
    opts = {"bounds": [lo, hi], "seed": int(seed) + 1, "verbose": -9, "maxfevals": max(1, budget - 2)}
    if popsize:
        opts["popsize"] = int(popsize)
    es = cma.CMAEvolutionStrategy(x0.tolist(), float(sigma0), opts)
    history, gens = [], 0
    task = progress.add("compose: searching the weights", total=max(1, budget - 2)) if progress else None
    while not es.stop() and loss.evaluations - before < budget:
        X = es.ask()
        X = X[: max(1, budget - (loss.evaluations - before))]
        ces = loss(np.stack(X))
        fs = f_of(X, ces)
        if len(X) == es.popsize:
            es.tell(X, fs)
        gens += 1
        i = int(np.argmin(fs))
        if fs[i] < best_f:
            best_w, best_ce, best_f = np.asarray(X[i]), ces[i], fs[i]
        history.append(float(best_f))
        if task is not None:
            progress.update(task, completed=loss.evaluations - before - 2)
        if len(X) < es.popsize:
            break
    return SearchResult([float(v) for v in best_w], float(best_f), float(best_ce), float(start_f), float(zero_ce),
                        loss.evaluations - before, gens, history)
