"""Behavioural retrieval's pieces: per-probe deltas and the consistency score (tiny random Llama)."""

import pytest
import torch


def _adapters(model, n=3):
    from llgbm_cli.adapters import random_adapter

    return [random_adapter(model, r=4, alpha=8.0, seed=40 + i, std=0.3, last_layers=1) for i in range(n)]


PROMPTS = ["What is the capital of France?", "Add 3 and 4.", "Is the sky blue?", "Name a mammal that swims."]
OTHER = ["Translate 'cat' into French.", "Which is heavier, iron or wood?", "Count to five."]


def test_per_probe_deltas_average_to_the_cached_delta(tiny):
    from llgbm_cli.deltas.compute import DeltaSpec, compute_deltas, per_probe_deltas
    from llgbm_cli.deltas.probes import probes_from_texts

    model, tok = tiny
    ads = _adapters(model)
    probes = probes_from_texts(PROMPTS, tok)
    for spec in (DeltaSpec(), DeltaSpec(layers=[-1, -2], pool="mean")):
        per = per_probe_deltas(model, probes, spec, ads, adapters_per_batch=2)
        assert per.shape == (3, len(PROMPTS), spec.dim(model))
        want = torch.stack(list(compute_deltas(model, ads, probes, spec)))
        assert torch.allclose(per.mean(1), want, atol=1e-5)
        assert not torch.allclose(per[:, 0], per[:, 1])  # one row per probe, not a copy of the mean


def test_consistency_score_is_the_mean_cosine_to_the_own_task_shift(tiny):
    from llgbm_cli.deltas.behaviour import consistency_scores
    from llgbm_cli.deltas.compute import DeltaSpec, per_probe_deltas
    from llgbm_cli.deltas.probes import probes_from_texts

    model, tok = tiny
    ads = _adapters(model)
    spec = DeltaSpec()
    own = [PROMPTS, PROMPTS, OTHER]
    got = consistency_scores(model, tok, ads, own, OTHER, spec)
    q = per_probe_deltas(model, probes_from_texts(OTHER, tok), spec, ads)
    for i, a in enumerate(ads):
        mu = per_probe_deltas(model, probes_from_texts(own[i], tok), spec, [a]).mean(1)[0]
        want = torch.nn.functional.cosine_similarity(q[i], mu[None].expand_as(q[i]), dim=-1).mean()
        assert got[i] == pytest.approx(float(want), abs=1e-5)
    assert all(-1 <= g <= 1 for g in got)


def test_eval_measures_deltas_on_the_tasks_own_prompts(tmp_path, tiny):
    from pathlib import Path

    from test_eval import make_world

    from llgbm_cli.config import load_config
    from llgbm_cli.services.eval import run_eval

    project = make_world(tmp_path / "w", tiny[0], per_task=1)
    res = run_eval(load_config(project, {"eval.task_probes": 3}), methods=["base", "teacher", "mean-delta"])
    rows = {(r["method"], r["task"]): r for r in res.rows}
    for t in ("arc-easy", "boolq"):
        assert rows["teacher", t]["task_probe_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert rows["teacher", t]["task_probe_centered_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert rows["base", t]["task_probe_cosine"] is None  # the base model moves nothing
        assert -1 <= rows["mean-delta", t]["task_probe_centered_cosine"] <= 1
        # not the generic-probe figure under another name
        assert rows["mean-delta", t]["task_probe_cosine"] != pytest.approx(rows["mean-delta", t]["delta_cosine"])
    md = (Path(res.out) / "results.md").read_text()
    assert "## Delta metrics on each task's own prompts" in md
    plain = run_eval(load_config(project), methods=["base", "teacher"], out=tmp_path / "plain")
    assert all("task_probe_cosine" not in r for r in plain.rows)  # off by default


def test_consistency_scores_measure_each_adapters_own_shift_once_per_key(tiny, monkeypatch):
    """μ_a does not depend on the query: under a key it is measured once, and a second query only
    measures its own deltas; the scores are those measured afresh."""
    import llgbm_cli.deltas.compute as compute
    from llgbm_cli.deltas.behaviour import consistency_scores
    from llgbm_cli.deltas.compute import DeltaSpec

    model, tok = tiny
    ads = _adapters(model)
    own = [PROMPTS, PROMPTS[:2], OTHER]
    fresh = consistency_scores(model, tok, ads, own, OTHER, DeltaSpec())
    calls = []
    real = compute.per_probe_deltas
    monkeypatch.setattr(compute, "per_probe_deltas", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    keys = ["a:1", "b:1", "c:1"]
    assert consistency_scores(model, tok, ads, own, OTHER, DeltaSpec(), keys=keys) == pytest.approx(fresh, abs=1e-6)
    assert calls == [3, 1, 1, 1]  # the query for all three, then each adapter's own prompts
    calls.clear()
    again = consistency_scores(model, tok, ads, own, PROMPTS, DeltaSpec(), keys=keys)
    assert calls == [3]  # a new query: its deltas only
    assert again == pytest.approx(consistency_scores(model, tok, ads, own, PROMPTS, DeltaSpec()), abs=1e-6)
    calls.clear()
    consistency_scores(model, tok, ads, own, OTHER, DeltaSpec(), keys=["a:2", "b:1", "c:1"])
    assert calls == [3, 1]  # other weights under the id: measured again


def test_long_prompt_sets_run_padded_and_the_base_runs_once(tiny):
    """Many long prompts cost less as a padded batch than as one packed sequence (its attention is
    quadratic in the packed length); both give the same deltas, and the base states every batch
    starts from come from one base forward."""
    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.deltas.compute import DeltaSpec, base_activations, compute_deltas, pack_pays
    from llgbm_cli.deltas.probes import probes_from_texts

    model, tok = tiny
    short = probes_from_texts(PROMPTS, tok, chat_template=False)
    long = probes_from_texts([" ".join(f"word{i}x{j}" for j in range(60)) for i in range(48)], tok, max_length=128,
                             chat_template=False)
    assert pack_pays(short) and not pack_pays(long) and not pack_pays(short, pack=False)
    ads = [random_adapter(model, r=4, alpha=8.0, seed=7, std=0.3, last_layers=1)]
    spec = DeltaSpec()
    packed = compute_deltas(model, ads, long, spec, pack=True, average=False)
    padded = compute_deltas(model, ads, long, spec, pack=False, average=False)
    assert torch.allclose(packed, padded, atol=1e-4)
    acts = base_activations(model, long, pack=False, dtype=spec.dtype)
    before = acts.forwards
    fresh = probes_from_texts(OTHER, tok)
    compute_deltas(model, ads, fresh, spec, pack=False)
    assert base_activations(model, fresh, pack=False, dtype=spec.dtype).forwards == 1
    assert acts.forwards == before
