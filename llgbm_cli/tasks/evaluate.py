"""Score any registered task: multiple-choice through the shared-prefix scorer, generative through
batched greedy decoding. Used by ``zoo score`` and ``eval``; returns an object with ``accuracy`` (the
task's headline metric) and ``metrics`` (every metric of its kind)."""

from __future__ import annotations

from typing import Optional, Sequence

from .prompts import PromptForm


class TaskScore:
    """Headline ``accuracy`` (the form's metric), all ``metrics``, and the underlying result."""

    def __init__(self, form: PromptForm, result):
        self.form = form
        self.result = result
        self.metrics = dict(result.metrics)
        self.accuracy = float(self.metrics.get(form.metric, result.accuracy))
        self.n = result.n

    def to_dict(self) -> dict:
        return {"metric": self.form.metric, "accuracy": self.accuracy, "n": self.n, **self.metrics}

    def values(self) -> list[int]:
        """Each question's headline metric (1 right, 0 wrong), in record order: ``accuracy`` is their mean."""
        res = self.result
        if hasattr(res, "outputs"):  # generative
            return [int(bool(o["correct"])) for o in res.outputs]
        if self.form.metric == "acc_norm":
            return [int(q.pred_norm == q.answer) for q in res.per_question]
        return [int(q.correct) for q in res.per_question]


class StoredScore:
    """A :class:`TaskScore` read back from a score cache (:mod:`llgbm_cli.evaluation.score_cache`): the
    headline metric and each question's value, in record order; the other metrics and the per-question
    outputs are not kept there."""

    def __init__(self, form: PromptForm, values: Sequence[float]):
        self.form = form
        self.result = None
        self._values = [int(v) for v in values]
        self.n = len(self._values)
        self.accuracy = sum(self._values) / self.n if self.n else 0.0
        self.metrics = {form.metric: self.accuracy}

    def to_dict(self) -> dict:
        return {"metric": self.form.metric, "accuracy": self.accuracy, "n": self.n, "cached": True}

    def values(self) -> list[int]:
        return list(self._values)


def score_records(model, tokenizer, form: PromptForm, records: Sequence, *, batch_size: int = 16,
                  generate_batch_size: int = 16, max_length: Optional[int] = None, progress=None,
                  progress_task=None) -> TaskScore:
    """Score ``records`` of one task with ``model`` as it is."""
    if form.kind == "generate":
        from .generation import score_generative

        res = score_generative(model, tokenizer, records, form, batch_size=generate_batch_size,
                               max_length=max_length, progress=progress, progress_task=progress_task)
    else:
        from .scoring import score_multiple_choice

        res = score_multiple_choice(model, tokenizer, records, batch_size=batch_size, max_length=max_length,
                                    form=form, progress=progress, progress_task=progress_task)
    return TaskScore(form, res)


def score_records_with(model, tokenizer, adapter, form: PromptForm, records: Sequence, **kw) -> TaskScore:
    """Score with ``adapter`` applied through the functional LoRA patch (``adapter`` None: the base)."""
    if adapter is None:
        return score_records(model, tokenizer, form, records, **kw)
    from ..lora.patch import patch_adapters

    with patch_adapters(model, [adapter]):
        return score_records(model, tokenizer, form, records, **kw)


def score_records_many(model, tokenizer, adapters: Sequence, form: PromptForm, records: Sequence, *,
                       batch_size: int = 16, generate_batch_size: int = 16, max_length: Optional[int] = None,
                       progress=None, progress_task=None) -> list[TaskScore]:
    """:func:`score_records_with` of each of ``adapters`` (loaded LoRA adapters) on the same
    ``records``, one score per adapter, in order. Each batch runs the base layers below the lowest
    adapted layer once for all of them (:mod:`llgbm_cli.tasks.lower`); the scores equal scoring each
    adapter alone (tested). ``progress`` advances once per question and adapter."""
    if form.kind == "generate":
        from .generation import score_generative_adapters

        results = score_generative_adapters(model, tokenizer, adapters, records, form, batch_size=generate_batch_size,
                                            max_length=max_length, progress=progress, progress_task=progress_task)
    else:
        from .scoring import score_multiple_choice_adapters

        results = score_multiple_choice_adapters(model, tokenizer, adapters, records, batch_size=batch_size,
                                                 max_length=max_length, form=form, progress=progress,
                                                 progress_task=progress_task)
    return [TaskScore(form, r) for r in results]


def form_for(resolved, task, scoring: Optional[str] = None) -> PromptForm:
    """The prompt form of ``task`` (a Task) under a project's ``[data]`` settings."""
    data = resolved.config.data
    return PromptForm.of(task, chat_default=data.chat_template, scoring=scoring or data.scoring)
