"""Figures: intervals, baselines, warm-up shading, and PNG + PDF + SVG for each."""

from __future__ import annotations

import math

import pytest

from llgbm_cli.evaluation import plots as P


def test_wilson_interval_matches_the_formula():
    lo, hi = P.wilson_interval(0.2, 100)
    assert lo == pytest.approx(0.1333, abs=1e-4) and hi == pytest.approx(0.2888, abs=1e-4)
    assert P.wilson_interval(0.0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in P.wilson_interval(0.5, 0))


def test_accuracy_plot_at_the_edges(tmp_path):
    rows = [{"method": m, "task": "boolq", "accuracy": a, "n_questions": n, "chance": 0.5}
            for m, a, n in (("base", 1.0, 7), ("teacher", 0.0, 7), ("b2", 0.4, 0))]
    assert len(P.accuracy_plot(rows, tmp_path / "a.png")) == 3


def test_warmup_span_from_logged_lambda():
    rows = [{"step": s, "lambda_delta": min(1.0, s / 30)} for s in range(0, 80, 10)]
    assert P._warmup_span(rows, "step") == (0.0, 30.0)
    assert P._warmup_span([{"step": 1, "lambda_delta": 1.0}, {"step": 2, "lambda_delta": 1.0}], "step") is None
    assert P._warmup_span([{"step": 1}], "step") is None


def _rows():
    rows = []
    for m, acc, cc in (("base", 0.19, -0.08), ("mean-delta", 0.21, 0.06), ("b2", 0.24, 0.54)):
        for t in ("openbookqa", "boolq"):
            rows.append({"method": m, "task": t, "accuracy": acc, "n_questions": 100, "chance": 0.25,
                         "delta_mse": 0.1, "delta_cosine": 0.9, "centered_cosine": cc, "norm_ratio": 0.8})
    summary = [{"method": m, "delta_mse": 0.1, "delta_cosine": 0.9, "centered_cosine": cc, "norm_ratio": 0.8}
               for m, cc in (("base", -0.08), ("mean-delta", 0.06), ("b2", 0.54))]
    return rows, summary


def test_every_figure_written_in_three_formats(tmp_path):
    rows, summary = _rows()
    curves = {"multitask": [{"step": s, "loss_weights": 1 / s, "loss_delta": 0.1 / s, "lambda_delta": min(1, s / 3),
                             "heldout_delta_cosine": 0.5, "heldout_mean_delta_cosine": 0.4} for s in range(1, 7)],
              "b2": [{"epoch": e, "loss": 1 / e, "val_cosine": 0.3, "val_mean_delta_cosine": 0.29} for e in (10, 20)]}
    made = (P.accuracy_plot(rows, tmp_path / "accuracy.png") + P.delta_plot(rows, summary, tmp_path / "delta.png")
            + P.curves_plot(curves, tmp_path / "curves.png")
            + P.crossfold_plot({"fold0": summary, "fold1": summary}, tmp_path / "folds.png"))
    assert sorted(p.suffix for p in made) == sorted([".png", ".pdf", ".svg"] * 4)
    for p in made:
        assert p.exists() and p.stat().st_size > 1000
    assert (tmp_path / "accuracy.pdf").read_bytes().startswith(b"%PDF")
    svg = (tmp_path / "accuracy.svg").read_text()
    assert "chance 0.25" in svg  # the chance level is drawn (fonts stay text in the SVG)
    assert "mean-delta" in (tmp_path / "delta.svg").read_text()
    assert "λ warm-up" in (tmp_path / "curves.svg").read_text()


def test_one_fold_plot_shows_the_exact_interval_of_each_accuracy(tmp_path):
    _, summary = _rows()
    rows = [{**s, "n_questions": 200} for s in summary]
    made = P.crossfold_plot({"only": rows}, tmp_path / "f.png")
    assert sorted(p.suffix for p in made) == [".pdf", ".png", ".svg"]
    svg = (tmp_path / "f.svg").read_text()
    assert "Held-out fold only" in svg and "n = 200" in svg
    assert P.crossfold_plot({}, tmp_path / "g.png") is None
    assert P._t95(5) == pytest.approx(2.7764, abs=1e-4)  # t(4), as the results tables use


def test_eval_results_md_states_chance():
    from llgbm_cli.evaluation.reports import _chance_line

    rows, _ = _rows()
    assert _chance_line(rows) == ("Chance accuracy (1 / options; in brackets the 95% interval half-width of an "
                                  "accuracy at that level): openbookqa 0.25 (±0.08 at n = 100), boolq 0.25 "
                                  "(±0.08 at n = 100).")
    assert _chance_line([{"task": "t", "accuracy": 0.5}]) == ""
