"""Multiple-choice scoring and the shared prompt format, on the tiny random Llama."""

from __future__ import annotations

import copy

import pytest
import torch

from llgbm_cli.data import MCRecord, sample
from llgbm_cli.tasks import encode_question, score_adapter, score_multiple_choice, training_example


def _records():
    # Mixed option counts (4 and 2) and prompt lengths, so padding and option grouping both matter.
    return sample("arc-easy", "test", 5, seed=1) + sample("boolq", "test", 4, seed=1) + sample("piqa", "test", 3, seed=1)


def test_batched_and_one_option_at_a_time_agree(tiny):
    model, tok = tiny
    recs = _records()
    fast = score_multiple_choice(model, tok, recs, batch_size=5)
    slow = score_multiple_choice(model, tok, recs, batched=False)
    assert [q.pred for q in fast.per_question] == [q.pred for q in slow.per_question]
    assert fast.accuracy == slow.accuracy
    for a, b in zip(fast.per_question, slow.per_question):
        assert len(a.scores) == len(b.scores) == len(recs[fast.per_question.index(a)].options)
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=0, atol=1e-4)


def test_batch_size_does_not_change_scores(tiny):
    model, tok = tiny
    recs = _records()
    a = score_multiple_choice(model, tok, recs, batch_size=1)
    b = score_multiple_choice(model, tok, recs, batch_size=12)
    torch.testing.assert_close(torch.tensor([s for q in a.per_question for s in q.scores]),
                               torch.tensor([s for q in b.per_question for s in q.scores]), rtol=0, atol=1e-4)


def _favouring(model, tok, text: str, bonus: float = 60.0):
    """A copy of ``model`` whose output head adds ``bonus`` to the logit of ``text``'s last token."""
    m = copy.deepcopy(model)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    old = m.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[ids[-1]] = bonus
    m.lm_head = head
    return m


def _handmade(n_options: int, labels, answer: int, k: int) -> MCRecord:
    return MCRecord(id=f"q{k}", dataset="hand", split="test", prompt=f"Question {k}: pick one.",
                    options=tuple(labels[:n_options]), answer=answer)


@pytest.mark.parametrize("batched", [True, False])
def test_known_answer_scores_correctly(tiny, batched):
    model, tok = tiny
    labels = ("answer1", "answer2", "answer3", "answer4")
    # The model strongly prefers the token "3", i.e. the second token of " answer3".
    biased = _favouring(model, tok, " answer3")
    right = [_handmade(4, labels, 2, k) for k in range(3)]
    wrong = [_handmade(4, labels, 0, k) for k in range(3)]
    assert score_multiple_choice(biased, tok, right, batched=batched).accuracy == 1.0
    res = score_multiple_choice(biased, tok, right + wrong, batched=batched, batch_size=4)
    assert res.accuracy == 0.5
    assert all(q.pred == 2 for q in res.per_question)
    # Single-token options (" true"/" false") take the no-second-forward path.
    tf = [_handmade(2, ("true", "false"), 1, k) for k in range(2)]
    assert score_multiple_choice(_favouring(model, tok, " false"), tok, tf, batched=batched).accuracy == 1.0


def test_score_adapter_matches_peft(tiny, tmp_path):
    from peft import PeftModel

    from llgbm_cli.adapters import random_adapter, save_adapter

    model, tok = tiny
    ad = random_adapter(model, r=4, seed=3, std=0.3)
    save_adapter(tmp_path / "ad", ad)
    recs = _records()[:6]
    ours = score_adapter(model, tok, ad, recs, batch_size=3)
    base = score_multiple_choice(model, tok, recs)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "ad")).eval()
    ref = score_multiple_choice(peft_model, tok, recs, batched=False)
    torch.testing.assert_close(torch.tensor([s for q in ours.per_question for s in q.scores]),
                               torch.tensor([s for q in ref.per_question for s in q.scores]), rtol=0, atol=1e-4)
    assert [s for q in ours.per_question for s in q.scores] != [s for q in base.per_question for s in q.scores]


def test_training_and_scoring_share_one_format(tiny):
    _, tok = tiny
    rec = sample("openbookqa", "train", 1, seed=0)[0]
    q = encode_question(tok, rec)
    ids, labels = training_example(tok, rec)
    target = q.options[q.answer]
    assert ids[: len(q.prefix)] == q.prefix
    assert labels[: len(q.prefix)] == [-100] * len(q.prefix)
    assert labels[len(q.prefix) : len(q.prefix) + len(target)] == target
    assert tok.decode(q.prefix).endswith("the correct answer is")
    assert "<|im_start|>assistant" in tok.decode(q.prefix)
    # Truncation keeps the end of the prompt (options and answer cue) and the whole target.
    ids_short, labels_short = training_example(tok, rec, max_length=24)
    assert len(ids_short) <= 24 and labels_short[-len(target) - 1 : -1] == target


def test_paired_difference_against_a_hand_computation():
    from llgbm_cli.evaluation.stats import paired_difference

    a, b = [1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 1, 1]
    d = [1, 0, 0, 1, 0, -1]  # mean 1/6, sample variance (sum (d - 1/6)^2) / 5
    var = sum((x - 1 / 6) ** 2 for x in d) / 5
    r = paired_difference(a, b)
    assert r["diff"] == pytest.approx(1 / 6) and r["se"] == pytest.approx((var / 6) ** 0.5) and r["n"] == 6
    assert paired_difference(a, a)["z"] is None
    with pytest.raises(ValueError):
        paired_difference([1], [1, 0])


@pytest.mark.parametrize("last_layers", [1, None])
def test_many_adapters_share_the_base_layers_below_them_and_score_as_each_alone(tiny, tmp_path, last_layers):
    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.tasks.prompts import PromptForm
    from llgbm_cli.tasks.registry import TaskRegistry
    from llgbm_cli.tasks.scoring import score_multiple_choice_adapters

    import llgbm_cli.tasks.scoring as scoring
    from llgbm_cli.anatomy import lowest_adapted_layer

    model, tok = tiny
    ads = [random_adapter(model, r=4, seed=s, std=0.3, last_layers=last_layers) for s in range(3)]
    start = lowest_adapted_layer(model, ads[0].modules)
    assert (start > 0) == (last_layers is not None)
    recs = _records()
    forms = [None, PromptForm.of(TaskRegistry().get("arc-easy"), scoring="choice")]  # one-token labels; option texts
    assert max(len(o) for q in recs for o in forms[1].encode(tok, q).options) > 1  # the tail pass runs too
    calls = []
    real = scoring.record_prompt
    for form in forms:
        scoring.record_prompt = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            many = score_multiple_choice_adapters(model, tok, ads, recs, batch_size=4, form=form)
        finally:
            scoring.record_prompt = real
        assert len(many) == 3
        for ad, got in zip(ads, many):
            alone = score_adapter(model, tok, ad, recs, batch_size=4, form=form)
            assert [q.pred for q in got.per_question] == [q.pred for q in alone.per_question]
            torch.testing.assert_close(torch.tensor([s for q in got.per_question for s in q.scores]),
                                       torch.tensor([s for q in alone.per_question for s in q.scores]),
                                       rtol=0, atol=1e-4)
            assert got.acc_norm == alone.acc_norm
        # the adapters score differently, so no block of work was shared that should not have been
        assert len({tuple(s for q in r.per_question for s in q.scores) for r in many}) == 3
    assert bool(calls) == (start > 0)  # the base layers below the adapters ran once per batch, not per adapter
