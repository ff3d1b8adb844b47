"""Batched greedy decoding for generative tasks, and their scoring.

Prompts of a batch are left-padded so that every prompt ends at the same position; one forward
over the batch fills the KV cache, then each step feeds one token per row over the cache (explicit
position ids keep padded rows right). A row stops at the end-of-turn/end-of-text token or when its
text contains a stop sequence (the text is cut there); the batch stops when every row has stopped
or after ``max_new_tokens``. ``batch_size=1`` decodes question by question (the reference the
benchmark compares against: ``benchmarks/generation.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .prompts import PromptForm


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's end-of-text and, for chat models, end-of-turn."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        i = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if i is not None:
            ids.add(int(i))
    return ids


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = [text.index(s) for s in stop if s and s in text]
    return (text[: min(cut)], True) if cut else (text, False)


def greedy_generate(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                    stop: Sequence[str] = (), batch_size: int = 16, progress=None, progress_task=None) -> list[str]:
    """Greedy continuations of tokenized ``prompts`` (text, cut at the first stop sequence)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ends = stop_ids(tokenizer)
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), max(1, batch_size)):
                chunk = prompts[i : i + max(1, batch_size)]
                out.extend(_decode_batch(model, tokenizer, chunk, max_new_tokens, stop, ends, pad_id, device))
                if progress is not None and progress_task is not None:
                    progress.advance(progress_task, len(chunk))
    finally:
        model.train(was_training)
    return out


def _left_pad(chunk, pad_id, device):
    """(ids, mask, position ids) of left-padded prompts: every prompt ends at the last position."""
    import torch

    B, L = len(chunk), max(len(p) for p in chunk)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for b, p in enumerate(chunk):
        ids[b, L - len(p):] = torch.tensor(list(p))
        mask[b, L - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)


def _decode_batch(model, tokenizer, chunk, max_new, stop, ends, pad_id, device, lower=None) -> list[str]:
    """Greedy continuations of one batch. With ``lower`` (the base model's prompt pass below
    ``lower.start``, :mod:`llgbm_cli.tasks.lower`) the prompt runs only from layer ``start`` up;
    every decoding step runs the whole model."""
    import torch

    from ..models import cache_arg, returned_cache
    from .lower import fill_cache, skipping

    B = len(chunk)
    ids, mask, pos = _left_pad(chunk, pad_id, device)
    with skipping(model, lower, "prompt_state"):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    if lower is not None:
        fill_cache(cache, lower.prompt_kv)
    nxt = out.logits[:, -1].argmax(-1)
    gen: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B
    done = [False] * B
    last_pos = pos[:, -1:]
    for step in range(max_new):
        for b in range(B):
            if done[b]:
                continue
            t = int(nxt[b])
            if t in ends:
                done[b] = True
                continue
            gen[b].append(t)
            if stop:
                texts[b] = tokenizer.decode(gen[b], skip_special_tokens=True)
                texts[b], hit = cut_at_stop(texts[b], stop)
                done[b] = hit
        if all(done) or step == max_new - 1:
            break
        feed = torch.tensor([pad_id if done[b] else int(nxt[b]) for b in range(B)], device=device).unsqueeze(1)
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=feed, attention_mask=mask, position_ids=last_pos, use_cache=True,
                    **cache_arg(model, cache))
        cache = returned_cache(out)
        nxt = out.logits[:, -1].argmax(-1)
    result = []
    for b in range(B):
        text = texts[b] if stop else tokenizer.decode(gen[b], skip_special_tokens=True)
        result.append(cut_at_stop(text, stop)[0].strip())
    return result


def greedy_generate_adapters(model, tokenizer, adapters: Sequence[Any], prompts: Sequence[Sequence[int]], *,
                             max_new_tokens: int = 64, stop: Sequence[str] = (), batch_size: int = 16,
                             progress=None, progress_task=None) -> list[list[str]]:
    """:func:`greedy_generate` of the same ``prompts`` under each of ``adapters`` (loaded LoRA
    adapters), one list of texts per adapter. The prompt pass of the decoder layers below the lowest
    one any adapter touches runs once per batch, with the base model, for all of them
    (:mod:`llgbm_cli.tasks.lower`); each adapter runs the prompt from there up and decodes as alone.
    ``progress`` advances once per question and adapter."""
    import torch

    from ..lora.patch import patch_adapters
    from .lower import LowerLayers, record_prompt, shared_start

    adapters = list(adapters)
    start = shared_start(model, adapters)
    if start <= 0 or len(adapters) < 2:
        out = []
        for a in adapters:
            with patch_adapters(model, [a]):
                out.append(greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop,
                                           batch_size=batch_size, progress=progress, progress_task=progress_task))
        return out
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ends = stop_ids(tokenizer)
    texts: list[list[str]] = [[] for _ in adapters]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), max(1, batch_size)):
                chunk = prompts[i : i + max(1, batch_size)]
                lower = LowerLayers(start)
                record_prompt(model, lower, *_left_pad(chunk, pad_id, device))
                for a, ad in enumerate(adapters):
                    with patch_adapters(model, [ad]):
                        texts[a].extend(_decode_batch(model, tokenizer, chunk, max_new_tokens, stop, ends, pad_id,
                                                      device, lower=lower))
                    if progress is not None and progress_task is not None:
                        progress.advance(progress_task, len(chunk))
    finally:
        model.train(was_training)
    return texts


@dataclass
class GenerationScore:
    """The metric over the scored records plus every question's output."""

    metric: str
    accuracy: float
    n: int
    outputs: list[dict] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return {self.metric: self.accuracy}

    def to_dict(self, per_question: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"accuracy": self.accuracy, "n": self.n, self.metric: self.accuracy}
        if per_question:
            d["per_question"] = list(self.outputs)
        return d


def score_generative(model, tokenizer, records, form: "PromptForm", *, batch_size: int = 16,
                     max_length: Optional[int] = None, progress=None, progress_task=None) -> GenerationScore:
    """Decode every record's answer and apply the form's metric (``exact_match`` or ``number``)."""
    prompts = [form.prompt_ids(tokenizer, r, max_length=max_length) for r in records]
    texts = greedy_generate(model, tokenizer, prompts, max_new_tokens=form.max_new_tokens, stop=form.stop,
                            batch_size=batch_size, progress=progress, progress_task=progress_task)
    return _score_texts(records, texts, form)


def score_generative_adapters(model, tokenizer, adapters: Sequence[Any], records, form: "PromptForm", *,
                              batch_size: int = 16, max_length: Optional[int] = None, progress=None,
                              progress_task=None) -> list[GenerationScore]:
    """:func:`score_generative` under each of ``adapters``, sharing the base layers below them
    (:func:`greedy_generate_adapters`); one score per adapter."""
    prompts = [form.prompt_ids(tokenizer, r, max_length=max_length) for r in records]
    texts = greedy_generate_adapters(model, tokenizer, adapters, prompts, max_new_tokens=form.max_new_tokens,
                                     stop=form.stop, batch_size=batch_size, progress=progress,
                                     progress_task=progress_task)
    return [_score_texts(records, t, form) for t in texts]


def _score_texts(records, texts, form: "PromptForm") -> GenerationScore:
    from .answer_metrics import score_text

    rows = []
    for r, t in zip(records, texts):
        rows.append({"id": r.id, "output": t, "reference": r.gold,
                     "correct": bool(score_text(form.metric, t, r.gold, form.tolerance))})
    n = len(rows)
    acc = sum(x["correct"] for x in rows) / n if n else float("nan")
    return GenerationScore(form.metric, acc, n, rows)


__all__ = ["GenerationScore", "greedy_generate", "greedy_generate_adapters", "score_generative",
           "score_generative_adapters", "asdict"]
