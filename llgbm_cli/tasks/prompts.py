"""One prompt format per task and scoring mode, shared by teacher training and scoring.

Three forms (:class:`PromptForm`, resolved from a task and the project's data settings):

* ``label`` (multiple-choice, the LLM-Adapters convention, described below);
* ``choice`` (multiple-choice): the task's ``template`` (default the cloze form
  ``Question: {stem}\nAnswer:``, no chat template) as the context and `` <option text>`` (the
  target delimiter ``" "`` and the option text) as the continuation, encoded as lm-evaluation-harness
  (v0.4) does (see "Choice form" below); the summed log-likelihood of the continuation's tokens is
  ``acc``'s score, and ``acc_norm``'s is that divided by the length in characters of the option text
  alone (``len(option)``, without the delimiter), lm-evaluation-harness's definitions;
* ``generate``: the task's ``template`` (chat-wrapped by default) and the target text teachers
  train on; answers are decoded greedily (:mod:`llgbm_cli.tasks.generation`).

Label form:

A question becomes: the instruction (options and ``Answer format: ...`` included), wrapped in the
tokenizer's chat template when it has one and ``[data] chat_template`` is on, followed by the start
of the assistant turn ``"the correct answer is"`` (the LLM-Adapters convention). The option label
(``" answer2"``, ``" true"``, ``" solution1"``) is the continuation that training teaches and that
scoring measures. Prefix and continuation are tokenized separately and concatenated, so training
and scoring see the very same token ids whatever the tokenizer's merge rules would do at the seam.

Choice form:

Context and continuation are encoded as lm-evaluation-harness's ``_encode_pair`` does
(:func:`encode_pair`): whitespace at the end of the context is moved to the start of the
continuation (a template ending in ``"Answer: "`` scores ``"  <option text>"`` after
``"...Answer:"``); the context is tokenized alone, context and continuation are tokenized together
as one string, and the continuation's ids are those of the whole string after the context's first
``len(context ids)`` ids, so merges across the seam are whatever the tokenizer makes of the whole
string. The context's ids are the same for every option, and a context that is empty once its
trailing whitespace is moved becomes the beginning-of-text token, else the end-of-text token
(lm-evaluation-harness's rule for an empty context). Training examples in this form go through the
same encoding, so a teacher trains on exactly the ids that are scored. With ``max_length`` the
context is cut from the left so that it and the longest continuation fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ANSWER_PREFIX = "the correct answer is"


def prompt_text(tokenizer, instruction: str, *, chat_template: bool = True) -> str:
    """The text the model sees before the option label."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
        return head + ANSWER_PREFIX
    return f"{instruction}\n\n{ANSWER_PREFIX}"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness's ``_encode_pair`` makes them.

    Trailing whitespace of ``context`` moves to the start of ``continuation``; the context is
    tokenized alone and the two together, and the continuation's ids are the whole string's after the
    context's length in ids. An empty context (after the move) is the tokenizer's beginning-of-text
    token (its end-of-text token when it has none) and the continuation is then tokenized alone,
    lm-evaluation-harness's rule for an empty context.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("an empty context needs the tokenizer's beginning- or end-of-text token")
        return [int(start)], list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return list(ctx), list(whole[len(ctx):])


def continuation_text(label: str) -> str:
    """The scored continuation for an option label; the leading space keeps BPE words whole."""
    return " " + label


@dataclass(frozen=True)
class EncodedQuestion:
    """Token ids of one question: the shared prefix and one continuation per option."""

    prefix: list[int]
    options: list[list[int]]
    answer: int
    # acc_norm's divisors: characters of each option text, without the target delimiter (choice
    # form, lm-evaluation-harness's len(choice)); None in the label form
    norms: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class PromptForm:
    """How one task's records are prompted, scored and trained on (see the module doc)."""

    task: str
    kind: str  # multiple_choice | generate
    scoring: Optional[str]  # label | choice (multiple-choice only)
    template: str
    chat_template: bool
    metric: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 64
    tolerance: float = 1e-4

    @classmethod
    def of(cls, task, *, chat_default: bool = True, scoring: Optional[str] = None) -> "PromptForm":
        """The form of ``task`` (a registry Task); ``scoring`` overrides a multiple-choice task's mode."""
        mode = (scoring or task.scoring) if task.kind == "multiple_choice" else None
        metric = task.metric
        if task.kind == "multiple_choice" and metric not in ("acc", "acc_norm"):
            metric = "acc"
        return cls(task.name, task.kind, mode, task.template(mode), task.chat(chat_default, mode), metric,
                   tuple(task.spec.stop), task.spec.max_new_tokens, task.spec.tolerance)

    def context(self, tokenizer, record) -> str:
        """The text before the scored or generated continuation."""
        from ..errors import InputError
        from .formats import RecordError, render

        try:
            text = str(render(self.template, {"prompt": record.prompt, "stem": record.stem or record.prompt},
                              "template"))
        except RecordError as e:
            raise InputError(f"tasks.{self.task}.template: {e.message}")
        if self.scoring == "label" or self.scoring is None and self.kind == "multiple_choice":
            return prompt_text(tokenizer, text, chat_template=self.chat_template)
        if self.chat_template and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return text if self.kind == "multiple_choice" else text + "\n"

    def continuations(self, record) -> list[str]:
        if self.scoring == "choice":
            if not record.choices:
                from ..errors import InputError

                raise InputError(f"tasks.{self.task}: record {record.id} has no option texts; use scoring = \"label\"")
            return [" " + c for c in record.choices]
        return [continuation_text(o) for o in record.options]

    def encode(self, tokenizer, record, max_length: Optional[int] = None) -> EncodedQuestion:
        """Token ids of a multiple-choice record in this form."""
        if self.scoring == "label" and self.template == "{prompt}":
            return encode_question(tokenizer, record, chat_template=self.chat_template, max_length=max_length)
        context = self.context(tokenizer, record)
        conts = self.continuations(record)
        norms = None
        if self.scoring == "choice":
            pairs = [encode_pair(tokenizer, context, c) for c in conts]
            prefix = pairs[0][0]  # the context's ids do not depend on the continuation
            options = [cont for _, cont in pairs]
            norms = tuple(len(c) for c in record.choices)
        else:
            prefix = tokenizer(context, add_special_tokens=False)["input_ids"]
            options = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in conts]
        if any(len(o) == 0 for o in options):
            raise ValueError(f"{record.id}: an option tokenizes to nothing")
        if max_length is not None:
            keep = max(1, max_length - max(len(o) for o in options))
            prefix = prefix[-keep:]
        return EncodedQuestion(list(prefix), [list(o) for o in options], int(record.answer), norms)

    def prompt_ids(self, tokenizer, record, max_length: Optional[int] = None) -> list[int]:
        """Generative: the prompt's token ids (cut from the left to leave room for the answer)."""
        ids = tokenizer(self.context(tokenizer, record), add_special_tokens=False)["input_ids"]
        if max_length is not None:
            ids = ids[-max(1, max_length - self.max_new_tokens):]
        return list(ids)

    def training_example(self, tokenizer, record, max_length: Optional[int] = None):
        """(input_ids, labels) with the loss on the target this form scores: the option label (and the
        end-of-turn token), the option text, or the generative target text (and the end-of-turn token)."""
        if self.kind == "generate":
            prefix = tokenizer(self.context(tokenizer, record), add_special_tokens=False)["input_ids"]
            target = tokenizer(record.completion or record.gold or "", add_special_tokens=False)["input_ids"]
            if tokenizer.eos_token_id is not None:
                target = target + [int(tokenizer.eos_token_id)]
            if max_length is not None:
                target = target[: max(1, max_length // 2)]
                prefix = prefix[-max(1, max_length - len(target)):]
            return list(prefix) + list(target), [-100] * len(prefix) + list(target)
        if self.scoring == "label" and self.template == "{prompt}":
            return training_example(tokenizer, record, chat_template=self.chat_template, max_length=max_length)
        q = self.encode(tokenizer, record, max_length=max_length)
        target = list(q.options[q.answer])
        if self.scoring == "label" and tokenizer.eos_token_id is not None:
            target.append(int(tokenizer.eos_token_id))
        return q.prefix + target, [-100] * len(q.prefix) + target


def encode_question(
    tokenizer,
    record,
    *,
    chat_template: bool = True,
    max_length: Optional[int] = None,
) -> EncodedQuestion:
    """Tokenize a :class:`~llgbm_cli.data.MCRecord` for scoring or training.

    When ``max_length`` is given the prefix is cut from the left so that prefix plus the longest
    option fits: the end of the prompt (the options and the answer cue) matters most.
    """
    prefix = tokenizer(prompt_text(tokenizer, record.prompt, chat_template=chat_template),
                       add_special_tokens=False)["input_ids"]
    options = [tokenizer(continuation_text(o), add_special_tokens=False)["input_ids"] for o in record.options]
    if any(len(o) == 0 for o in options):
        raise ValueError(f"{record.id}: an option label tokenizes to nothing")
    if max_length is not None:
        keep = max(1, max_length - max(len(o) for o in options))
        prefix = prefix[-keep:]
    return EncodedQuestion(list(prefix), [list(o) for o in options], int(record.answer))


def training_example(tokenizer, record, *, chat_template: bool = True, max_length: Optional[int] = None):
    """(input_ids, labels) for answer-only loss: prompt tokens are masked with -100.

    The target is the right option's label followed by the end-of-turn token, so a teacher also
    learns to stop after answering.
    """
    q = encode_question(tokenizer, record, chat_template=chat_template,
                        max_length=None if max_length is None else max_length - 1)
    target = list(q.options[q.answer])
    if tokenizer.eos_token_id is not None:
        target.append(int(tokenizer.eos_token_id))
    ids = q.prefix + target
    labels = [-100] * len(q.prefix) + target
    return ids, labels
