"""Conditions: the text a generator sees, embedded once by the frozen sentence encoder.

``prompts`` (Drag-and-Drop LLMs): N unlabeled prompts sampled per step from the adapter's stored
condition; ``description`` (Text-to-LoRA): one description of the adapter's task. The encoder is
frozen, so every text is embedded once up front and steps only sample rows.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import InputError

# Descriptions of the shipped tasks, for the `description` condition (project tasks carry their own).
from ..tasks.registry import PRESET_DESCRIPTIONS as TASK_DESCRIPTIONS  # noqa: E402


def describe_task(task: str, tasks=None) -> str:
    """The task's description: its `[tasks.NAME] description` when ``tasks`` (a TaskRegistry) knows it."""
    if tasks is not None:
        try:
            return tasks.get(task).description
        except InputError:
            pass
    return TASK_DESCRIPTIONS.get(task, f"Solve the task {task.replace('-', ' ')}.")


class ConditionBank:
    """Embeddings of each adapter's condition texts: ``embs[i]`` is ``[k_i, d]``."""

    def __init__(self, embs: list[torch.Tensor], n_prompts: int):
        self.embs = embs
        self.n_prompts = int(n_prompts)

    @classmethod
    def build(cls, encoder, texts: Sequence[Sequence[str]], n_prompts: int, max_length: int = 512) -> "ConditionBank":
        flat = [t for ts in texts for t in ts]
        if any(len(ts) == 0 for ts in texts):
            raise InputError("an adapter in the zoo has no condition texts; rebuild the zoo or use condition = \"description\"")
        e = encoder.encode(flat, max_length=min(max_length, 512))
        out, i = [], 0
        for ts in texts:
            out.append(e[i : i + len(ts)])
            i += len(ts)
        return cls(out, n_prompts)

    @property
    def dim(self) -> int:
        return int(self.embs[0].shape[-1])

    def sample(self, idx: Sequence[int], rng, device=None) -> torch.Tensor:
        """``[len(idx), n_prompts, d]``: for each adapter, n_prompts of its texts drawn by ``rng``
        (numpy Generator), without replacement when it has enough."""
        rows = []
        for i in idx:
            e = self.embs[i]
            k = e.shape[0]
            pick = rng.choice(k, size=self.n_prompts, replace=k < self.n_prompts)
            rows.append(e[torch.as_tensor(pick)])
        return torch.stack(rows).to(device)

    def fixed(self, idx: Sequence[int], device=None) -> torch.Tensor:
        """A deterministic condition (the first n_prompts texts, cycled): for evaluation."""
        rows = []
        for i in idx:
            e = self.embs[i]
            rows.append(e[torch.arange(self.n_prompts) % e.shape[0]])
        return torch.stack(rows).to(device)


def encode_condition(encoder, texts: Sequence[str], n_prompts: int, max_length: int = 512, seed: int = 0) -> torch.Tensor:
    """User texts -> ``[1, n_prompts, d]`` for generation (a seeded subset, or repeats)."""
    from .base import fit_prompts

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError("no condition text given: pass prompts, --prompts-file or --description")
    e = encoder.encode(list(texts), max_length=min(max_length, 512))
    g = torch.Generator().manual_seed(seed)
    return fit_prompts(e, n_prompts, g).unsqueeze(0)
