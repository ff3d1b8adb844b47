"""Benchmark tasks: the shared prompt format and multiple-choice scoring (used by `zoo score` and `eval`)."""

from .prompts import ANSWER_PREFIX, encode_question, prompt_text, training_example
from .scoring import QuestionScore, ScoreResult, score_adapter, score_multiple_choice

__all__ = [
    "ANSWER_PREFIX",
    "QuestionScore",
    "ScoreResult",
    "encode_question",
    "prompt_text",
    "score_adapter",
    "score_multiple_choice",
    "training_example",
]
