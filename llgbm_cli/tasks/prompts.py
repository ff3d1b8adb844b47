"""One prompt format, shared by teacher training and scoring.

A question becomes: the instruction (options and ``Answer format: ...`` included), wrapped in the
tokenizer's chat template when it has one and ``[data] chat_template`` is on, followed by the start
of the assistant turn ``"the correct answer is"`` (the LLM-Adapters convention). The option label
(``" answer2"``, ``" true"``, ``" solution1"``) is the continuation that training teaches and that
scoring measures. Prefix and continuation are tokenized separately and concatenated, so training
and scoring see the very same token ids whatever the tokenizer's merge rules would do at the seam.
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


def continuation_text(label: str) -> str:
    """The scored continuation for an option label; the leading space keeps BPE words whole."""
    return " " + label


@dataclass(frozen=True)
class EncodedQuestion:
    """Token ids of one question: the shared prefix and one continuation per option."""

    prefix: list[int]
    options: list[list[int]]
    answer: int


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
