"""Multiple-choice scoring by the log-likelihood of each option after the prompt.

The score of an option is the summed log-probability of its continuation tokens given the prompt:
the option label (``" answer2"``) in the ``label`` form, the option text in the ``choice`` form (see
:mod:`llgbm_cli.tasks.prompts`); the prediction is the best-scoring option (``acc``). In the
``choice`` form ``acc_norm`` also divides each score by the option text's length in characters
(:attr:`EncodedQuestion.norms`, without the leading space, as lm-evaluation-harness does). Because
every option of a question shares the whole prompt, the prompt runs once: a batch of left-padded
prompts goes through the model with the KV cache on, the first label token is read from the last
prompt position, and only the remaining label tokens (usually one) run as a second, tiny forward
over the cache repeated once per option. ``batched=False`` is the naive reference: one full forward
per option, no padding, no cache; the two agree to float tolerance (tested) and the benchmark in
``benchmarks/scoring.py`` measures the speed-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .lower import LowerLayers, cache_of, fill_cache, lower_forward, record_prompt, shared_start, skipping
from .prompts import EncodedQuestion, encode_question

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters import LoraAdapter
    from ..data import MCRecord


@dataclass
class QuestionScore:
    id: str
    answer: int
    pred: int
    scores: list[float]  # summed log-prob per option
    pred_norm: Optional[int] = None  # best option by log-prob per character (choice form)

    @property
    def correct(self) -> bool:
        return self.pred == self.answer


@dataclass
class ScoreResult:
    """Accuracy over the scored records plus every question's option scores."""

    accuracy: float
    n: int
    per_question: list[QuestionScore] = field(default_factory=list)
    acc_norm: Optional[float] = None  # the choice form's length-normalised accuracy

    @property
    def metrics(self) -> dict[str, float]:
        """``acc`` and, where defined, ``acc_norm``."""
        return {"acc": self.accuracy, **({"acc_norm": self.acc_norm} if self.acc_norm is not None else {})}

    def to_dict(self, per_question: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"accuracy": self.accuracy, "n": self.n, **self.metrics}
        if per_question:
            d["per_question"] = [asdict(q) for q in self.per_question]
        return d


def score_multiple_choice(
    model,
    tokenizer,
    records: Sequence["MCRecord"],
    *,
    batch_size: int = 16,
    chat_template: bool = True,
    max_length: Optional[int] = None,
    batched: bool = True,
    progress=None,
    progress_task: Optional[int] = None,
    form=None,
) -> ScoreResult:
    """Score multiple-choice records with ``model`` as it is (wrap it in a LoraPatch to score an
    adapter, or use :func:`score_adapter`). ``progress`` (a ProgressReporter) advances once per
    question on ``progress_task``. ``form`` (a PromptForm) picks the prompt and continuations;
    without it the label form with ``chat_template``."""
    import torch

    encoded = _encode(tokenizer, records, form, chat_template, max_length)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[list[float]] = []
    step = max(1, batch_size) if batched else 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(encoded), step):
                chunk = encoded[i : i + step]
                if batched:
                    scores.extend(_score_batch(model, chunk, pad_id, device))
                else:
                    scores.extend(_score_naive(model, q, device) for q in chunk)
                if progress is not None and progress_task is not None:
                    progress.advance(progress_task, len(chunk))
    finally:
        model.train(was_training)
    return _result(records, encoded, scores)


def _encode(tokenizer, records, form, chat_template: bool, max_length: Optional[int]) -> list[EncodedQuestion]:
    """Each record's prompt and option continuations: the ``form``'s, else the label form."""
    if form is not None:
        return [form.encode(tokenizer, r, max_length=max_length) for r in records]
    return [encode_question(tokenizer, r, chat_template=chat_template, max_length=max_length) for r in records]


def _result(records, encoded, scores) -> ScoreResult:
    per_q = []
    for rec, q, s in zip(records, encoded, scores):
        pred = max(range(len(s)), key=lambda k: s[k])  # first best on ties: deterministic
        pred_norm = None
        if q.norms is not None:
            pred_norm = max(range(len(s)), key=lambda k: s[k] / max(1, q.norms[k]))
        per_q.append(QuestionScore(rec.id, q.answer, pred, s, pred_norm))
    n = len(per_q)
    acc = sum(q.correct for q in per_q) / n if n else float("nan")
    acc_norm = None
    if per_q and all(q.pred_norm is not None for q in per_q):
        acc_norm = sum(q.pred_norm == q.answer for q in per_q) / n
    return ScoreResult(acc, n, per_q, acc_norm)


def score_adapter(model, tokenizer, adapter: "LoraAdapter", records: Sequence["MCRecord"], **kw) -> ScoreResult:
    """Score ``records`` with ``adapter`` applied through the functional LoRA patch (the base
    model is not wrapped or modified)."""
    from ..lora.patch import patch_adapters

    with patch_adapters(model, [adapter]):
        return score_multiple_choice(model, tokenizer, records, **kw)


def _score_naive(model, q: EncodedQuestion, device) -> list[float]:
    import torch

    out = []
    for opt in q.options:
        ids = torch.tensor([q.prefix + opt], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, len(q.prefix) - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(float(logp.gather(1, torch.tensor(opt, device=device).unsqueeze(1)).sum()))
    return out


def _score_batch(model, chunk: Sequence[EncodedQuestion], pad_id: int, device, lower: Optional["LowerLayers"] = None,
                 record: Optional["LowerLayers"] = None) -> list[list[float]]:
    """The option scores of one batch. With ``lower`` (the base model's layers below ``lower.start``
    for this batch, from a ``record`` pass) those layers are not computed again: their hidden state
    enters layer ``start`` and their keys and values are put in the cache."""
    import torch

    from ..models import cache_arg, returned_cache

    B = len(chunk)
    L = max(len(q.prefix) for q in chunk)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for b, q in enumerate(chunk):  # left padding: every prompt ends at position L-1
        ids[b, L - len(q.prefix) :] = torch.tensor(q.prefix)
        mask[b, L - len(q.prefix) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    if record is not None:  # the base model's layers below record.start only: states and keys/values
        record_prompt(model, record, ids, mask, pos)
    else:
        with skipping(model, lower, "prompt_state"):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        if lower is not None:  # the skipped layers' keys and values, the base model's
            fill_cache(returned_cache(out), lower.prompt_kv)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]

    pairs = [(b, k) for b, q in enumerate(chunk) for k in range(len(q.options))]
    conts = [chunk[b].options[k] for b, k in pairs]
    totals = [] if record is not None else [float(first[b, c[0]]) for (b, _), c in zip(pairs, conts)]
    M = max(len(c) for c in conts)
    if M > 1:
        # The rest of each label runs over the prompt's cache, repeated once per option.
        P = len(pairs)
        rows = torch.tensor([b for b, _ in pairs], device=device)
        cache = None if record is not None else returned_cache(out)
        if cache is not None:
            cache.reorder_cache(rows)
        tail = torch.full((P, M - 1), pad_id, dtype=torch.long)
        tmask = torch.zeros((P, M - 1), dtype=torch.long)
        for p, c in enumerate(conts):
            if len(c) > 1:
                tail[p, : len(c) - 1] = torch.tensor(c[:-1])
            tmask[p, : len(c) - 1] = 1
        tail, tmask = tail.to(device), tmask.to(device)
        full_mask = torch.cat([mask[rows], torch.ones_like(tmask)], dim=1)
        tpos = mask[rows].sum(1, keepdim=True) + torch.arange(M - 1, device=device).unsqueeze(0)
        if record is not None:
            rcache = cache_of([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in record.prompt_kv])
            record.tail_state, _ = lower_forward(model, record, tail, full_mask, tpos, rcache)
            return []
        with skipping(model, lower, "tail_state"):
            logits = model(input_ids=tail, attention_mask=full_mask, position_ids=tpos,
                           use_cache=True, **cache_arg(model, cache)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # [P, M-1, V]
        for p, c in enumerate(conts):
            for j in range(1, len(c)):
                totals[p] += float(logp[p, j - 1, c[j]])
    if record is not None:
        return []
    result: list[list[float]] = [[] for _ in chunk]
    for (b, _), s in zip(pairs, totals):
        result[b].append(s)
    return result


# --------------------------------------------------------------------------- many adapters, one base pass

def score_multiple_choice_adapters(
    model,
    tokenizer,
    adapters: Sequence["LoraAdapter"],
    records: Sequence["MCRecord"],
    *,
    batch_size: int = 16,
    chat_template: bool = True,
    max_length: Optional[int] = None,
    form=None,
    progress=None,
    progress_task: Optional[int] = None,
) -> list[ScoreResult]:
    """:func:`score_adapter` of the same ``records`` under each of ``adapters``, one result per adapter.

    Every decoder layer below the lowest one any adapter touches computes the same thing for every
    adapter, so each batch runs those layers once, with the base model, and keeps the hidden state
    that enters the first adapted layer and the keys and values below it; each adapter then runs only
    the layers from there up (and the head). The scores equal scoring each adapter alone to float
    tolerance (tested); with adapters on every layer this is that loop. ``progress`` advances once per
    question and adapter."""
    import torch

    from ..lora.patch import patch_adapters

    adapters = list(adapters)
    start = shared_start(model, adapters)
    if start <= 0 or len(adapters) < 2:
        kw = dict(batch_size=batch_size, chat_template=chat_template, max_length=max_length, form=form,
                  progress=progress, progress_task=progress_task)
        return [score_adapter(model, tokenizer, a, records, **kw) for a in adapters]
    encoded = _encode(tokenizer, records, form, chat_template, max_length)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[list[list[float]]] = [[] for _ in adapters]
    step = max(1, batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(encoded), step):
                chunk = encoded[i : i + step]
                lower = LowerLayers(start)
                _score_batch(model, chunk, pad_id, device, record=lower)
                for a, ad in enumerate(adapters):
                    with patch_adapters(model, [ad]):
                        scores[a].extend(_score_batch(model, chunk, pad_id, device, lower=lower))
                    if progress is not None and progress_task is not None:
                        progress.advance(progress_task, len(chunk))
    finally:
        model.train(was_training)
    return [_result(records, encoded, s) for s in scores]
