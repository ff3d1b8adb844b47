"""The task loss of generator training: what the generated adapter does on its task's own data.

As Text-to-LoRA trains: for each generated adapter, a few of its task's training examples run
through the frozen base model with the generated LoRA applied by the functional patch
(:class:`~llgbm_cli.lora.patch.LoraPatch`, with autograd, so the gradient reaches the generator),
and the loss is the answer-only cross-entropy the zoo's teachers train on: the target the task is
scored on (option label, option text or answer text, from ``PromptForm.training_example``), the
output head applied only at answer positions.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import InputError


def collate_examples(batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device):
    """Right-padded ``(input_ids, attention_mask, labels)`` of ``(ids, labels)`` examples."""
    import torch

    T = max(len(ids) for ids, _ in batch)
    ids_t = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for b, (ids, lab) in enumerate(batch):
        ids_t[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
        labels[b, : len(lab)] = torch.tensor(lab)
    return ids_t.to(device), mask.to(device), labels.to(device)


class TaskLoss:
    """Answer-only cross-entropy of ``n_examples`` training examples per adapter, each adapter on
    its own task, with the generated LoRAs patched into ``model`` (row block ``i`` = adapter ``i``)."""

    def __init__(self, resolved, model, tokenizer, tasks: Sequence[str], n_examples: int):
        from ..tasks.evaluate import form_for
        from ..tasks.registry import registry_for

        reg = registry_for(resolved)
        self.model, self.tok, self.n = model, tokenizer, int(n_examples)
        self.max_length = resolved.config.data.max_length
        self.records: dict[str, list] = {}
        self.forms: dict[str, Any] = {}
        for t in dict.fromkeys(tasks):
            task_def = reg.get(t)
            self.records[t] = task_def.records("train")
            if not self.records[t]:
                raise InputError(f"task {t}: its train split is empty, and the task loss (or the kl delta loss) draws "
                                 "training examples of each adapter's task from it; give the task a train split")
            self.forms[t] = form_for(resolved, task_def)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.trunk = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self._cache: dict[tuple[str, int], tuple[list[int], list[int]]] = {}

    def example(self, task: str, i: int) -> tuple[list[int], list[int]]:
        key = (task, i)
        if key not in self._cache:
            self._cache[key] = self.forms[task].training_example(self.tok, self.records[task][i],
                                                                 max_length=self.max_length)
        return self._cache[key]

    def draw(self, tasks: Sequence[str], rng) -> list[tuple[list[int], list[int]]]:
        """``n_examples`` examples of each task in turn (``rng``: numpy Generator; with replacement
        only where a task has fewer training records)."""
        batch = []
        for t in tasks:
            n = len(self.records[t])
            pick = rng.choice(n, size=self.n, replace=n < self.n)
            batch += [self.example(t, int(i)) for i in pick]
        return batch

    def __call__(self, stacked: dict, tasks: Sequence[str], rng):
        import torch

        from ..lora.patch import LoraPatch

        device = next(self.model.parameters()).device
        ids, mask, labels = collate_examples(self.draw(tasks, rng), self.pad_id, device)
        with LoraPatch(self.model, stacked):
            hidden = self.trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        tgt = labels[:, 1:]
        sel = tgt != -100
        logits = self.head(hidden[:, :-1][sel]).float()
        return torch.nn.functional.cross_entropy(logits, tgt[sel])
