"""Conditions: the text a generator sees, embedded once by the frozen sentence encoder.

``prompts`` (Drag-and-Drop LLMs): N unlabeled prompts sampled per step from the adapter's stored
condition; ``description`` (Text-to-LoRA): one of several descriptions of the adapter's task,
drawn afresh every step. The encoder is frozen, so every text is embedded once up front and steps
only sample rows.

Two pooling modes: ``mean`` keeps one L2-normalized, mask-weighted mean of the encoder's token
states per text (a condition is ``[n, N, d]``); ``none`` keeps the token states themselves
(``last_hidden_state``, the first ``tokens`` of each text; a condition is ``[n, N, L, d]``), as
DnD feeds its decoder. Token states past a text's end are exactly zero, so a generator recovers
the mask from the tensor alone (:func:`token_mask`).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from ..errors import InputError

POOLINGS = ("mean", "none")

# Descriptions of the shipped tasks, for the `description` condition: several phrasings each, so
# a description-conditioned generator learns the task rather than one sentence (the first is the
# one evaluation and `describe_task` use).
TASK_DESCRIPTIONS = {
    "arc-easy": [
        "Answer grade-school science questions by choosing the correct option among several answers.",
        "Pick the right answer to an elementary-level science multiple-choice question.",
        "Given a simple science question and four candidate answers, select the one that is correct.",
        "Solve easy school science quizzes: read the question and choose the matching option letter.",
        "Multiple-choice science questions from primary and middle school exams; reply with the correct choice.",
    ],
    "arc-challenge": [
        "Answer difficult grade-school science questions that need reasoning, by choosing the correct option.",
        "Choose the correct answer to hard science exam questions that simple lookup cannot solve.",
        "Reason through challenging school science multiple-choice questions and select the right option.",
        "Science questions that need several steps of inference; pick the one correct answer among the choices.",
        "Select the answer to tricky grade-school science problems, thinking about cause and effect.",
    ],
    "boolq": [
        "Read a passage and answer a yes/no question about it with true or false.",
        "Decide whether a statement about a short text is true or false, using only the passage.",
        "Reading comprehension with yes-or-no questions: answer each question from the given paragraph.",
        "Given a Wikipedia-style passage and a question, reply yes or no.",
        "Judge from the passage whether the answer to the question is true or false.",
    ],
    "openbookqa": [
        "Answer elementary science questions that combine a core science fact with common knowledge, choosing one option.",
        "Open-book science quiz: apply a basic science fact to a new situation and pick the right answer.",
        "Choose the correct option for science questions that need a known fact plus everyday reasoning.",
        "Multiple-choice questions testing how well basic science facts transfer to unfamiliar settings.",
        "Use elementary science knowledge and common sense to select the answer among four choices.",
    ],
    "piqa": [
        "Choose the more sensible of two solutions to achieve a physical, everyday goal.",
        "Physical commonsense: given a goal, pick which of two methods would actually work.",
        "Select the better way to do an everyday task from two proposed solutions.",
        "Decide which of two instructions is physically plausible for reaching the stated goal.",
        "Everyday physical reasoning about objects and actions: pick solution 1 or 2.",
    ],
    "mawps": [
        "Solve short arithmetic word problems: write the equation and give the numeric answer.",
        "Turn a one- or two-step word problem into an equation and compute the number it asks for.",
        "Elementary math word problems: set up the arithmetic and report the result.",
        "Read a short story about quantities and answer with the number the question asks for.",
        "Compute the answer of a simple word problem with addition, subtraction, multiplication or division.",
    ],
    "addsub": [
        "Solve word problems that need only addition and subtraction, answering with a number.",
        "Add and subtract the quantities in a short story to find the number asked for.",
        "Elementary addition and subtraction word problems; reply with the numeric answer.",
        "Read about items gained or lost and compute how many there are.",
        "One-step arithmetic stories about totals and differences; give the final number.",
    ],
    "multiarith": [
        "Solve multi-step arithmetic word problems that chain two operations, answering with a number.",
        "Word problems needing two steps of addition, subtraction, multiplication or division; give the result.",
        "Compute the answer to a short story that combines several arithmetic operations.",
        "Multi-step grade-school math problems: work through the operations and report the number.",
        "Answer arithmetic questions where one result feeds the next operation.",
    ],
    "singleeq": [
        "Solve word problems that reduce to a single linear equation, answering with a number.",
        "Set up one equation from a short story and solve it for the unknown quantity.",
        "Algebra word problems with one equation; give the value of the unknown.",
        "Find the number a word problem asks for by writing and solving one equation.",
        "Single-equation arithmetic and algebra stories; reply with the numeric answer.",
    ],
    "svamp": [
        "Solve simple arithmetic word problems with small variations that test whether the question was read.",
        "Answer elementary math stories whose question may ask about a different quantity than expected.",
        "Robust one-step arithmetic word problems; compute the number the question really asks for.",
        "Read a varied arithmetic story carefully and report the requested number.",
        "Grade-school word problems with distractors; give the correct numeric answer.",
    ],
    "gsm8k": [
        "Solve grade-school math word problems that take several reasoning steps, answering with a number.",
        "Multi-step math problems about money, time and quantities; report the final number.",
        "Work through a longer word problem with several operations and give the numeric result.",
        "Grade-school math reasoning: combine the facts of the story to compute the answer.",
        "Answer math questions from everyday situations that need two to eight steps.",
    ],
    "aqua": [
        "Solve algebra and arithmetic word problems by choosing the correct option among five answers.",
        "Pick the right numeric answer, A to E, for a quantitative reasoning problem.",
        "Multiple-choice math word problems on rates, ratios, percentages and algebra.",
        "Given a math problem and five candidate answers, select the one that is correct.",
        "Quantitative aptitude questions: compute the result and choose the matching option.",
    ],
    "mathqa": [
        "Solve math word problems on gains, rates, geometry and probability by choosing one of five options.",
        "Pick the correct answer among five choices for a quantitative word problem.",
        "Multiple-choice math problems from aptitude tests: compute and select the option.",
        "Given a word problem about percentages, speeds or areas, choose the right numeric answer.",
        "Five-option math questions covering arithmetic, algebra and geometry.",
    ],
}


def task_descriptions(task: str, custom: Optional[Mapping[str, Sequence[str]]] = None) -> list[str]:
    """Descriptions of ``task``: the user's (``custom``, e.g. ``train.multitask.descriptions``) when
    given, else the shipped ones, else one generic sentence."""
    if custom and custom.get(task):
        return [str(t) for t in custom[task]]
    return list(TASK_DESCRIPTIONS.get(task) or [f"Solve the task {task.replace('-', ' ')}."])


def describe_task(task: str, custom: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """The first (canonical) description of ``task``."""
    return task_descriptions(task, custom)[0]


def token_mask(cond: torch.Tensor) -> torch.Tensor:
    """``[..., L, d]`` token states -> ``[..., L]`` bool: True on real tokens (padding is exactly 0)."""
    return cond.abs().amax(-1) > 0


def pool_tokens(cond: torch.Tensor) -> torch.Tensor:
    """Token-level ``[n, N, L, d]`` -> ``[n, N, d]``: mean of the real tokens, L2-normalized, as
    ``pooling = "mean"`` encodes (exactly that for unperturbed states); ``[n, N, d]`` passes."""
    if cond.dim() < 4:
        return cond
    m = token_mask(cond).to(cond.dtype).unsqueeze(-1)
    e = (cond * m).sum(-2) / m.sum(-2).clamp_min(1.0)
    return torch.nn.functional.normalize(e, dim=-1)


def _encode(encoder, texts: list[str], pooling: str, tokens: int, max_length: int, batch_size: int = 64) -> torch.Tensor:
    if pooling == "mean":
        return encoder.encode(texts, max_length=min(max_length, 512))
    if pooling != "none":
        raise InputError(f"condition pooling {pooling!r}: valid values are {', '.join(POOLINGS)}")
    out = torch.zeros(len(texts), tokens, encoder.dim)
    for i in range(0, len(texts), batch_size):
        h, m = encoder.encode_tokens(texts[i : i + batch_size], max_length=min(tokens, max_length, 512))
        h = (h * m.unsqueeze(-1).to(h.dtype)).float().cpu()
        out[i : i + h.shape[0], : h.shape[1]] = h
    return out


class ConditionBank:
    """Embeddings of each adapter's condition texts: ``embs[i]`` is ``[k_i, d]`` (mean pooling) or
    ``[k_i, L, d]`` (token states). ``noise`` adds Gaussian noise of that std to every sampled
    condition (DnD's input-noise augmentation; 0: none)."""

    def __init__(self, embs: list[torch.Tensor], n_prompts: int, noise: float = 0.0):
        self.embs = embs
        self.n_prompts = int(n_prompts)
        self.noise = float(noise)

    @classmethod
    def build(cls, encoder, texts: Sequence[Sequence[str]], n_prompts: int, max_length: int = 512,
              pooling: str = "mean", tokens: int = 32, noise: float = 0.0) -> "ConditionBank":
        flat = [t for ts in texts for t in ts]
        if any(len(ts) == 0 for ts in texts):
            raise InputError("an adapter in the zoo has no condition texts; rebuild the zoo or use condition = \"description\"")
        e = _encode(encoder, flat, pooling, tokens, max_length)
        out, i = [], 0
        for ts in texts:
            out.append(e[i : i + len(ts)])
            i += len(ts)
        return cls(out, n_prompts, noise)

    @property
    def dim(self) -> int:
        return int(self.embs[0].shape[-1])

    @property
    def tokens(self) -> Optional[int]:
        """Token states kept per text (pooling none), or None (mean pooling)."""
        return int(self.embs[0].shape[1]) if self.embs[0].dim() == 3 else None

    def sample(self, idx: Sequence[int], rng, device=None) -> torch.Tensor:
        """``[len(idx), n_prompts, (L,) d]``: for each adapter, n_prompts of its texts drawn by ``rng``
        (numpy Generator), without replacement when it has enough."""
        rows = []
        for i in idx:
            e = self.embs[i]
            k = e.shape[0]
            pick = rng.choice(k, size=self.n_prompts, replace=k < self.n_prompts)
            rows.append(e[torch.as_tensor(pick)])
        out = torch.stack(rows)
        if self.noise > 0:
            noise = torch.from_numpy(rng.standard_normal(out.shape)).to(out.dtype) * self.noise
            if out.dim() == 4:  # padding stays exactly zero, so the token mask survives
                noise = noise * token_mask(out).unsqueeze(-1).to(out.dtype)
            out = out + noise
        return out.to(device)

    def fixed(self, idx: Sequence[int], device=None) -> torch.Tensor:
        """A deterministic condition (the first n_prompts texts, cycled): for evaluation."""
        rows = []
        for i in idx:
            e = self.embs[i]
            rows.append(e[torch.arange(self.n_prompts) % e.shape[0]])
        return torch.stack(rows).to(device)


def fit_prompts(embs: torch.Tensor, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[k, d] prompt embeddings -> exactly [n, d]: a seeded subset when k > n, repeats when k < n."""
    k = embs.shape[0]
    if k == 0:
        raise InputError("the condition is empty: give at least one prompt or a description")
    if k == n:
        return embs
    if k > n:
        idx = torch.randperm(k, generator=generator)[:n]
    else:
        idx = torch.arange(n) % k
    return embs[idx]


def encode_condition(encoder, texts: Sequence[str], n_prompts: int, max_length: int = 512, seed: int = 0,
                     pooling: str = "mean", tokens: int = 32) -> torch.Tensor:
    """User texts -> ``[1, n_prompts, (L,) d]`` for generation (a seeded subset, or repeats)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError("no condition text given: pass prompts, --prompts-file or --description")
    e = _encode(encoder, list(texts), pooling, tokens, max_length)
    g = torch.Generator().manual_seed(seed)
    return fit_prompts(e, n_prompts, g).unsqueeze(0)
