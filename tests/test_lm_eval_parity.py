"""The choice (cloze) form against lm-evaluation-harness's (v0.4) multiple-choice definitions.

A small reference of lm-evaluation-harness written here from its rules: a request is
``(context, target_delimiter + choice)`` with the delimiter ``" "``; ``_encode_pair`` moves the
context's trailing whitespace to the continuation, tokenizes context and context + continuation,
and keeps the whole string's ids after the context's; ``acc`` is the argmax of the log-likelihoods
and ``acc_norm`` the argmax of log-likelihood / ``len(choice)`` (characters of the option text
alone). llgbm's encoding and predictions must equal the reference's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llgbm_cli.data import MCRecord
from llgbm_cli.tasks.prompts import PromptForm, encode_pair
from llgbm_cli.tasks.scoring import _result, score_multiple_choice

TARGET_DELIMITER = " "


# --------------------------------------------------------------------------- the reference


def _enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def ref_encode_pair(tok, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = _enc(tok, context + continuation)
    context_enc = _enc(tok, context)
    return context_enc, whole_enc[len(context_enc):]


def ref_requests(context, choices):
    return [(context, TARGET_DELIMITER + c) for c in choices]


def ref_predictions(lls, choices):
    """(acc's prediction, acc_norm's prediction), as process_results for multiple_choice picks them."""
    completion_len = np.array([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(np.array(lls) / completion_len))


def ref_loglik(model, context_enc, continuation_enc):
    ids = torch.tensor([context_enc + continuation_enc])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(context_enc)
    return sum(float(logp[n - 1 + j, t]) for j, t in enumerate(continuation_enc))


# --------------------------------------------------------------------------- fixtures


def _form(template="Question: {stem}\nAnswer:", chat=False):
    return PromptForm("quiz", "multiple_choice", "choice", template, chat, "acc_norm")


def _record(stem, choices, answer=0, rid="q0"):
    labels = tuple(f"answer{i + 1}" for i in range(len(choices)))
    return MCRecord(rid, "quiz", "test", stem, labels, answer, tuple(choices), stem=stem)


RECORDS = [
    _record("What is the capital of France?", ["Paris", "London", "the city of Berlin"], 0, "q0"),
    _record("How many legs does a spider have?", ["8", "six", "42 legs"], 0, "q1"),
    _record("Which one is a fruit (not a vegetable)?", ["apple", "a carrot", "(none)"], 0, "q2"),
]


def _check_against_reference(form, tok, rec):
    q = form.encode(tok, rec)
    context = form.context(tok, rec)
    refs = [ref_encode_pair(tok, ctx, cont) for ctx, cont in ref_requests(context, rec.choices)]
    for ctx_enc, cont_enc in refs:
        assert q.prefix == ctx_enc
    assert q.options == [cont for _, cont in refs]
    assert q.norms == tuple(len(c) for c in rec.choices)
    return q, refs


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.id)
def test_cloze_context_encodes_as_lm_eval(tiny, rec):
    _, tok = tiny
    form = _form()
    assert form.context(tok, rec) == f"Question: {rec.stem}\nAnswer:"
    q, _ = _check_against_reference(form, tok, rec)
    assert tok.decode(q.prefix + q.options[0]) == f"Question: {rec.stem}\nAnswer: {rec.choices[0]}"


def test_template_ending_in_a_space_moves_it_to_the_continuation(tiny):
    _, tok = tiny
    form = _form("Question: {stem}\nAnswer: ")
    rec = RECORDS[0]
    q, _ = _check_against_reference(form, tok, rec)
    assert tok.decode(q.prefix) == f"Question: {rec.stem}\nAnswer:"  # the space is no longer in the context
    for opt, choice in zip(q.options, rec.choices):
        assert tok.decode(opt) == "  " + choice  # moved space + target delimiter + option text
    # Tokenizing the context as written would leave a lone space token at its end: not lm-eval's ids.
    assert _enc(tok, form.context(tok, rec)) != q.prefix


def test_chat_context_moves_its_trailing_newline(tiny):
    _, tok = tiny
    assert getattr(tok, "chat_template", None)
    form = _form(chat=True)
    rec = RECORDS[1]
    context = form.context(tok, rec)
    assert context != context.rstrip()  # the assistant turn's header ends in whitespace
    q, _ = _check_against_reference(form, tok, rec)
    assert tok.decode(q.prefix) == context.rstrip()


def test_encode_pair_keeps_the_whole_strings_ids_at_the_seam(tiny):
    """Where the tokenizer merges across the seam, the continuation is the whole string's ids after
    the context's count, not the continuation tokenized alone (lm-eval's slice)."""
    _, tok = tiny
    cases = [("Question: x\nAnswer:", " Paris"), ("Answer: ", "Paris"), ("Answer:\n", "\n yes"),
             ("The answer is foot", "ball"), ("3.1", "4159"), ("", " alone")]
    merged = 0
    for context, cont in cases:
        got = encode_pair(tok, context, cont)
        if context:
            assert got == ref_encode_pair(tok, context, cont)
        else:  # lm-eval's empty context: the prefix token (BOS, else EOS), the continuation alone
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            assert got == ([start], _enc(tok, cont))
        head, tail = context.rstrip(), context[len(context.rstrip()):] + cont
        merged += bool(head) and _enc(tok, head) + _enc(tok, tail) != _enc(tok, head + tail)
    assert merged >= 1  # at least one case really merges across the seam


def test_training_example_is_the_scored_ids(tiny):
    _, tok = tiny
    form = _form("Question: {stem}\nAnswer: ")
    for rec in RECORDS:
        q = form.encode(tok, rec)
        ids, labels = form.training_example(tok, rec)
        ctx_enc, cont_enc = ref_encode_pair(tok, *ref_requests(form.context(tok, rec), rec.choices)[rec.answer])
        assert ids == ctx_enc + cont_enc == q.prefix + q.options[rec.answer]
        assert labels == [-100] * len(ctx_enc) + cont_enc


def test_max_length_cuts_the_context_from_the_left(tiny):
    _, tok = tiny
    form = _form()
    rec = RECORDS[0]
    full = form.encode(tok, rec)
    longest = max(len(o) for o in full.options)
    cut = form.encode(tok, rec, max_length=longest + 3)
    assert cut.prefix == full.prefix[-3:] and cut.options == full.options and cut.norms == full.norms


def test_builtin_records_in_the_choice_form_encode_as_lm_eval(tiny):
    from llgbm_cli.data import sample
    from llgbm_cli.tasks.registry import TaskRegistry

    _, tok = tiny
    for name in ("arc-easy", "piqa"):
        form = PromptForm.of(TaskRegistry().get(name), scoring="choice")
        for rec in sample(name, "test", 4, seed=3):
            if rec.choices:
                _check_against_reference(form, tok, rec)


# --------------------------------------------------------------------------- acc and acc_norm


def test_acc_norm_divides_by_the_option_text_alone():
    """Log-likelihoods for which dividing by len(" " + option) and by len(option) pick different
    options: llgbm picks lm-eval's."""
    rec = _record("Is it?", ["no", "maybe"], answer=1)
    lls = [-2.0, -4.5]
    # len(option): -2/2 = -1.0 < -4.5/5 = -0.9, "maybe"; len(" " + option): -2/3 > -4.5/6, "no".
    with_delim = int(np.argmax(np.array(lls) / np.array([len(TARGET_DELIMITER + c) for c in rec.choices])))
    assert with_delim == 0
    assert ref_predictions(lls, rec.choices) == (0, 1)
    q = _form().encode(_FakeTok(), rec)
    assert q.norms == (2, 5)
    res = _result([rec], [q], [lls])
    assert (res.per_question[0].pred, res.per_question[0].pred_norm) == ref_predictions(lls, rec.choices)
    assert res.accuracy == 0.0 and res.acc_norm == 1.0


def test_scores_and_predictions_equal_the_reference_on_the_tiny_model(tiny):
    model, tok = tiny
    records = RECORDS[:2]
    for template in ("Question: {stem}\nAnswer:", "Question: {stem}\nAnswer: "):
        form = _form(template)
        lls = [[ref_loglik(model, *ref_encode_pair(tok, ctx, cont))
                for ctx, cont in ref_requests(form.context(tok, rec), rec.choices)] for rec in records]
        preds = [ref_predictions(ll, rec.choices) for ll, rec in zip(lls, records)]
        res = score_multiple_choice(model, tok, records, form=form, batch_size=2)
        for got, ll, pred in zip(res.per_question, lls, preds):
            assert got.scores == pytest.approx(ll, abs=1e-4)
            assert (got.pred, got.pred_norm) == pred
        assert res.accuracy == np.mean([p[0] == r.answer for p, r in zip(preds, records)])
        assert res.acc_norm == np.mean([p[1] == r.answer for p, r in zip(preds, records)])


class _FakeTok:
    """A character tokenizer: enough for norms and predictions, which do not depend on the ids."""

    chat_template = None
    bos_token_id = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}
