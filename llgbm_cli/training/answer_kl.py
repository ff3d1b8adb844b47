"""Answer-level matching: the ``kl`` delta loss of generator training.

The probe delta compares one pooled hidden state over generic prompts; an adapter can match it
without answering the task the way its teacher does. The ``kl`` loss compares behaviour where the
task is scored instead: for each adapter of the batch, ``kl_examples`` prompts of its own task's
*training* split (the context up to the answer, the answer itself is not used: no labels) run
through the base model twice, once with the teacher's LoRA (no gradient) and once with the
generated LoRA (with autograd, through :class:`~llgbm_cli.lora.patch.LoraPatch`), and the loss is

    KL(p_teacher,T ‖ p_generated,T) · T²

over the vocabulary at the answer position (the last context token, which predicts the answer's
first token), averaged over prompts; ``p_·,T`` is the softmax of the logits divided by the
temperature ``T`` (the ``T²`` keeps the gradient scale of knowledge distillation independent of
``T``). Test questions never enter: only ``records("train")`` is drawn from.
"""

from __future__ import annotations

from typing import Any, Sequence

from .task_loss import TaskLoss


def answer_context(ids: Sequence[int], labels: Sequence[int]) -> list[int]:
    """The tokens before the first answer token of a ``(ids, labels)`` training example."""
    first = next((i for i, v in enumerate(labels) if v != -100), len(ids))
    return list(ids[: max(1, first)])


def last_states(trunk, contexts: Sequence[Sequence[int]], pad_id: int, device):
    """The trunk's last hidden state at each context's final token (right-padded batch)."""
    import torch

    from .task_loss import collate_examples

    ids, mask, _ = collate_examples([(list(c), []) for c in contexts], pad_id, device)
    hidden = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = mask.sum(1) - 1
    return hidden[torch.arange(len(contexts), device=device), last]


def distillation_kl(student_logits, teacher_logits, temperature: float):
    """``KL(softmax(t/T) ‖ softmax(s/T)) · T²``, averaged over rows (float32)."""
    import torch.nn.functional as F

    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * (t * t)


class AnswerKL(TaskLoss):
    """The ``kl`` loss: ``n_examples`` training prompts per adapter, each adapter on its own task
    (row block ``i`` = adapter ``i``, as the patch splits the batch)."""

    def __init__(self, resolved, model, tokenizer, tasks: Sequence[str], n_examples: int, temperature: float = 1.0):
        super().__init__(resolved, model, tokenizer, tasks, n_examples)
        if not temperature > 0:
            raise ValueError(f"kl temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def contexts(self, tasks: Sequence[str], rng) -> list[list[int]]:
        """``n_examples`` answer contexts of each task in turn (the draw :meth:`TaskLoss.draw` makes)."""
        return [answer_context(ids, labels) for ids, labels in self.draw(tasks, rng)]

    def logits(self, stacked: dict, contexts: Sequence[Sequence[int]]):
        """Next-token logits at the answer position with ``stacked`` patched in."""
        from ..lora.patch import LoraPatch

        device = next(self.model.parameters()).device
        with LoraPatch(self.model, stacked):
            h = last_states(self.trunk, contexts, self.pad_id, device)
        return self.head(h)

    def __call__(self, student: dict, teacher: dict, tasks: Sequence[str], rng) -> Any:  # type: ignore[override]
        import torch

        ctx = self.contexts(tasks, rng)
        with torch.no_grad():
            t_logits = self.logits(teacher, ctx)
        s_logits = self.logits(student, ctx)
        return distillation_kl(s_logits, t_logits, self.temperature)


def teacher_stacked(teacher_ab: dict, idx, scaling: float) -> dict:
    """``{module: StackedLora}`` of the teachers ``idx`` (rows of ``teacher_ab``), for the patch."""
    from ..generators.base import GeneratedLora

    return GeneratedLora({k: (A[idx], B[idx]) for k, (A, B) in teacher_ab.items()}, scaling=scaling).stacked()
