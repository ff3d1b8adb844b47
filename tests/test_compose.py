"""Few-shot composition (`llgbm compose`, eval method `compose`) on the tiny model and a tiny zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_eval import make_world


def _adapters(model, n=3, last_layers=1):
    from llgbm_cli.adapters import random_adapter

    return [random_adapter(model, r=4, alpha=8.0, seed=10 + i, std=0.3, last_layers=last_layers) for i in range(n)]


def _examples(tok, task="boolq", k=4):
    from llgbm_cli.config import load_config
    from llgbm_cli.tasks.evaluate import form_for
    from llgbm_cli.tasks.registry import registry_for

    r = load_config(None)
    t = registry_for(r).get(task)
    form = form_for(r, t)
    return [form.training_example(tok, rec, max_length=128) for rec in t.sample("train", k, seed=0)]


def test_composed_adapter_is_the_exact_weighted_sum(tiny):
    from llgbm_cli.composition import compose_adapter

    ads = _adapters(tiny[0])
    w = [0.7, -0.2, 1.3]
    out = compose_adapter(ads, w)
    assert out.r == 12
    for name, m in out.modules.items():
        want = sum(wi * a.modules[name].delta_weight() for wi, a in zip(w, ads))
        assert torch.allclose(m.delta_weight(), want, atol=1e-6)


def test_few_shot_loss_equals_the_whole_model_cross_entropy(tiny):
    """The search's loss (upper layers only, many weightings per pass) equals the answer-only
    cross-entropy of the full model with the composed adapter applied."""
    from llgbm_cli.composition import FewShotLoss, compose_adapter
    from llgbm_cli.lora.patch import LoraPatch, stack_adapters
    from llgbm_cli.training.task_loss import collate_examples

    model, tok = tiny
    ads = _adapters(model)
    ex = _examples(tok)
    loss = FewShotLoss(model, tok, ads, ex, members=2)
    assert loss.lower is not None and loss.lower.start > 0  # the layers below the adapters are skipped
    W = np.array([[1.0, 0.0, 0.0], [0.3, -0.5, 0.9], [0.0, 0.0, 0.0]])
    got = loss(W)  # two forward passes: members=2
    ids, mask, labels = collate_examples(ex, tok.pad_token_id or 0, "cpu")
    for w, g in zip(W, got):
        stacked = stack_adapters([compose_adapter(ads, w)])
        with torch.no_grad(), LoraPatch(model, stacked):
            logits = model(input_ids=ids, attention_mask=mask).logits
        tgt = labels[:, 1:]
        sel = tgt != -100
        want = torch.nn.functional.cross_entropy(logits[:, :-1][sel].float(), tgt[sel])
        assert g == pytest.approx(float(want), rel=1e-4)
    assert loss.evaluations == 3


def test_search_improves_on_its_start_deterministically(tiny):
    """A candidate set holding the adapter that fits the examples: the search finds weights at least
    as good as the uniform start, inside the bounds and the budget, the same on a rerun."""
    from llgbm_cli.composition import FewShotLoss, search_weights

    model, tok = tiny
    ex = _examples(tok)
    ads = _adapters(model, n=3)
    runs = []
    for _ in range(2):
        loss = FewShotLoss(model, tok, ads, ex, members=8)
        runs.append(search_weights(loss, budget=20, popsize=6, l1=0.0, bounds=(-1.0, 2.0), seed=3))
    a, b = runs
    assert a.weights == b.weights and a.history == b.history
    assert a.loss <= a.start_loss and a.history == sorted(a.history, reverse=True)
    assert all(-1.0 <= w <= 2.0 for w in a.weights) and a.evaluations <= 20
    assert a.cross_entropy == pytest.approx(a.loss)  # l1 = 0


def test_search_skips_known_points_outside_its_bounds(tiny):
    """A candidate alone (weight 1) is not a start point of a search bounded below 1."""
    from llgbm_cli.composition import FewShotLoss, search_weights

    model, tok = tiny
    loss = FewShotLoss(model, tok, _adapters(model, n=2), _examples(tok), members=4)
    res = search_weights(loss, budget=6, popsize=4, bounds=(-0.5, 0.5), known=[([1.0, 0.0], -100.0)], seed=0)
    assert all(-0.5 <= w <= 0.5 for w in res.weights) and res.cross_entropy > 0


def test_compose_cli_writes_a_loadable_adapter(tmp_path, tiny, cli):
    from llgbm_cli.adapters import load_adapter

    project = make_world(tmp_path / "w", tiny[0], per_task=2)
    out = tmp_path / "composed"
    r = cli("-p", project, "--json", "compose", "--task", "boolq", "--out", out, "-k", "3", "--budget", "12")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["regime"] == "few-shot" and len(res["examples"]) == 3
    # boolq's own adapters are not candidates: the latest teacher of every other task is
    assert [c["id"] for c in res["candidates"]] == ["arc-easy-1"]
    assert res["evaluations"] <= 12 and res["loss"] <= res["start_loss"]
    assert all(res["loss"] <= c["loss_alone"] + 0.05 / 1 + 1e-9 for c in res["candidates"])  # never worse than one alone
    ad = load_adapter(out)
    assert ad.r == 4 and set(ad.modules) == set(load_adapter(tmp_path / "w" / "runs" / "zoo" / "adapters" /
                                                             "arc-easy-1").modules)
    # the examples are train records of boolq, never test
    from llgbm_cli.config import load_config
    from llgbm_cli.tasks.registry import registry_for

    t = registry_for(load_config(project)).get("boolq")
    train, test = {x.id for x in t.records("train")}, {x.id for x in t.records("test")}
    assert set(res["examples"]) <= train and not set(res["examples"]) & test
    from llgbm_cli.services.eval_methods import regime_of

    assert regime_of(str(out)) == "few-shot"  # evaluated as a folder, it stays in the few-shot regime
    assert regime_of(str(tmp_path / "w" / "runs" / "zoo" / "adapters" / "arc-easy-1")) == "zero-shot"
    r = cli("-p", project, "compose", "--task", "boolq", "--out", out)
    assert r.exit_code == 2 and "--force" in r.stderr
    r = cli("-p", project, "compose", "--task", "nope", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "nope" in r.stderr


def test_eval_reports_compose_as_its_own_regime(tmp_path, tiny):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.eval import run_eval

    project = make_world(tmp_path / "w", tiny[0], per_task=1, tasks=["arc-easy", "boolq", "piqa"])
    res = run_eval(load_config(project, {"compose.budget": 8, "compose.examples": 2}),
                   methods=["base", "mean-delta", "compose"], tasks=["boolq"])
    row = next(r for r in res.rows if r["method"] == "compose")
    assert row["regime"] == "few-shot" and row["heldout"] is True
    info = res.runs["compose"]["tasks"]["boolq"]
    assert {c["task"] for c in info["candidates"]} == {"arc-easy", "piqa"}
    md = (Path(res.out) / "results.md").read_text()
    zero_shot, few = md.split("## Few-shot")
    assert "| compose |" not in zero_shot and "| compose |" in few and "2 labelled examples" in few


def test_compose_under_cross_validation(cli, tmp_path, tiny):
    """eval --folds -m compose: each fold composes the other tasks' teachers on the held-out task's train
    examples; the rows are few-shot, in their own Holm family and results.md section."""
    project = make_world(tmp_path / "w", tiny[0], per_task=1, tasks=["arc-easy", "boolq", "piqa"])
    r = cli("--project", project, "--quiet", "--json", "eval", "--folds", "arc-easy,boolq", "-m", "compose",
            "--test-sample", "4", "--set", "compose.budget=6", "--set", "compose.examples=2",
            "--set", "eval.oracle_candidates=none", "--out", tmp_path / "cv")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    rows = [x for x in res["rows"] if x["method"] == "compose"]
    assert len(rows) == 2 and all(x["regime"] == "few-shot" for x in rows)
    assert all(x["regime"] == "zero-shot" for x in res["rows"] if x["method"] != "compose")
    for k in ("arc-easy", "boolq"):
        ev = json.loads((tmp_path / "cv" / "folds" / k / "eval" / "results.json").read_text())
        assert {c["task"] for c in ev["runs"]["compose"]["tasks"][k]["candidates"]} == {"arc-easy", "boolq",
                                                                                     "piqa"} - {k}
    md = (tmp_path / "cv" / "results.md").read_text()
    assert "## Few-shot (a separate regime)" in md and "| arc-easy | compose (few-shot) |" in md
