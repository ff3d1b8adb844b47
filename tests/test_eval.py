"""`llgbm eval`: delta metrics, result files, acceptance checks and bad input, on the tiny world."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import TINY_TOML

EVAL_TOML = TINY_TOML + """
[eval]
test_sample = 6
batch_size = 8
"""
TASKS = ["arc-easy", "boolq"]


def make_world(root: Path, model, per_task: int = 2, tasks=None) -> Path:
    """A project with a task-structured random zoo (shared direction + task direction + noise) and its delta cache."""
    from llgbm_cli.adapters import LoraModule, random_adapter, save_adapter
    from llgbm_cli.config import load_config
    from llgbm_cli.data import sample
    from llgbm_cli.services.cache_deltas import run_cache_deltas
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    root.mkdir(parents=True, exist_ok=True)
    project = root / "llgbm.toml"
    project.write_text(EVAL_TOML)
    zdir = root / "runs" / "zoo"
    zoo = Zoo(zdir)
    common = random_adapter(model, r=4, alpha=8.0, seed=7, std=0.2)
    for t, task in enumerate(tasks or TASKS):
        center = random_adapter(model, r=4, alpha=8.0, seed=100 + t, std=0.15)
        prompts = [r.prompt for r in sample(task, "train", 3, seed=t)]
        for k in range(per_task):
            noise = random_adapter(model, r=4, alpha=8.0, seed=1000 + 10 * t + k, std=0.03)
            mods = {n: LoraModule(m.A + center.modules[n].A + noise.modules[n].A,
                                  m.B + center.modules[n].B + noise.modules[n].B, m.scaling)
                    for n, m in common.modules.items()}
            aid = f"{task}-{k}"
            save_adapter(zdir / "adapters" / aid, mods, alpha=8.0, base_model="tiny-llama")
            zoo.upsert(ZooEntry(id=aid, path=f"adapters/{aid}", task=task, step=10 * (k + 1), seed=k,
                                condition=prompts))
    zoo.save()
    run_cache_deltas(load_config(project))
    return project


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny):
    return make_world(tmp_path_factory.mktemp("evalworld"), tiny[0])


@pytest.fixture(scope="module")
def evaluated(world):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.eval import run_eval

    res = run_eval(load_config(world), methods=["base", "teacher", "mean-delta", "merge:linear"])
    return world, res


# --------------------------------------------------------------------------- metrics


def test_metrics_pure_functions():
    from llgbm_cli.evaluation import delta_metrics as M

    g = torch.Generator().manual_seed(0)
    t = torch.randn(16, generator=g)
    mean = torch.randn(16, generator=g)
    assert M.delta_cosine(t, t) == pytest.approx(1.0)
    assert M.delta_mse(t, t) == 0.0
    assert M.norm_ratio(2 * t, t) == pytest.approx(2.0)
    assert M.delta_cosine(torch.zeros(16), t) == 0.0  # the base model's delta
    assert M.delta_mse(torch.zeros(16), t) == pytest.approx(float((t ** 2).mean()))
    # A method that returns the shared mean scores a high raw cosine but nothing once centered.
    target = mean + 0.1 * t
    assert M.delta_cosine(mean, target) > 0.9
    assert M.centered_cosine(mean, target, mean) == 0.0
    assert M.centered_cosine(target, target, mean) == pytest.approx(1.0)
    teachers = {"a": mean + t, "b": mean - t}
    assert M.nearest_task(mean + 0.5 * t, teachers) == "a"
    assert M.task_identification([("a", mean + 0.5 * t), ("b", mean + 0.2 * t)], teachers) == 0.5
    assert math.isnan(M.mean_of([None, float("nan")]))


# --------------------------------------------------------------------------- the eval run


def test_eval_writes_consistent_files(evaluated):
    project, res = evaluated
    out = Path(res.out)
    assert out == project.parent / "runs" / "eval"
    for f in ("results.json", "results.csv", "results.md", "llgbm.json", "plots/accuracy.png",
              "plots/delta_metrics.png", "plots/delta_metrics.pdf", "plots/accuracy.svg"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    data = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["task"]): r for r in data["rows"]}
    assert set(rows) == {(m, t) for m in ("base", "teacher", "mean-delta", "merge:linear") for t in TASKS}
    for t in TASKS:
        teacher = rows["teacher", t]
        assert teacher["delta_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert teacher["centered_cosine"] == pytest.approx(1.0, abs=1e-4)
        assert teacher["delta_mse"] == pytest.approx(0.0, abs=1e-8)
        assert teacher["norm_ratio"] == pytest.approx(1.0, abs=1e-4)
        assert teacher["identified"] and teacher["nearest_task"] == t
        base = rows["base", t]
        assert base["delta_cosine"] == 0.0 and base["norm_ratio"] == 0.0 and base["accuracy_vs_base"] == 0.0
        for m in ("teacher", "mean-delta", "merge:linear"):
            r = rows[m, t]
            assert r["accuracy_vs_base"] == pytest.approx(r["accuracy"] - base["accuracy"])
            assert r["n_questions"] == 6
        # merged and mean-delta adapters are written and load with PEFT's own layout
        assert (Path(rows["merge:linear", t]["adapter"]) / "adapter_model.safetensors").exists()
        assert rows["merge:linear", t]["heldout"] is True  # it merges the other task's teacher only
        assert rows["teacher", t]["heldout"] is False
    summary = {s["method"]: s for s in data["summary"]}
    assert summary["teacher"]["task_identification"] == 1.0
    assert summary["teacher"]["task_specific"] is True
    for m in summary:
        mean_cos = sum(rows[m, t]["delta_cosine"] for t in TASKS) / len(TASKS)
        assert summary[m]["delta_cosine"] == pytest.approx(mean_cos)
    # csv rows carry the same numbers
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(data["rows"])
    for r in csv_rows:
        assert float(r["delta_cosine"]) == pytest.approx(rows[r["method"], r["task"]]["delta_cosine"])
    md = (out / "results.md").read_text()
    assert md.index("llgbm --project") < md.index("| Method | Delta MSE | Delta Cosine | Task Accuracy | Δ vs base")
    assert res.command in md and "--method merge:linear" in res.command


def test_eval_is_deterministic_and_refuses_overwrite(evaluated):
    from llgbm_cli.config import load_config
    from llgbm_cli.errors import InputError
    from llgbm_cli.services.eval import run_eval

    project, res = evaluated
    with pytest.raises(InputError, match="--force"):
        run_eval(load_config(project), methods=["base", "teacher"])
    again = run_eval(load_config(project), methods=["base", "teacher", "mean-delta", "merge:linear"],
                     out=Path(res.out).parent / "eval-again")
    assert [r["delta_mse"] for r in again.rows] == pytest.approx([r["delta_mse"] for r in res.rows])
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in res.rows]


@pytest.mark.slow
def test_two_accelerate_processes_evaluate_as_one(world):
    """The scoring cells and delta batches dealt to two gloo processes give the one-process results
    (every row, bit for bit), written once by the main process."""
    import os

    from conftest import launch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = world.parent / "runs" / "eval-procs"
    got = {}
    for n in (1, 2):
        tail = ["llgbm_cli", "-p", world, "--quiet", "--json", "eval", "-m", "base", "-m", "teacher", "-m", "mean-delta",
                "-m", "merge:linear", "--out", out, "--force"]
        rc, stdout, stderr = launch(tail, n, env=env, cwd=world.parent, timeout=300)
        assert rc == 0, stderr[-3000:]
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1  # only the main process reports
        assert json.loads(lines[0])["rows"]
        assert json.loads((out / "llgbm.json").read_text())["processes"] == n
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".eval-procs")]  # no temporary folder left
        data = json.loads((out / "results.json").read_text())
        assert data.pop("seconds") > 0
        adapters = {p.relative_to(out): p.read_bytes() for p in sorted((out / "adapters").rglob("*.safetensors"))}
        got[n] = data, adapters
    assert len(got[1][0]["rows"]) == 8 and len(got[1][1]) == 4
    assert got[2] == got[1]


def test_eval_cli_json_and_holdout(world, cli):
    r = cli("--project", world, "--json", "--quiet", "eval", "-m", "base", "-m", "mean-delta",
            "--holdout", "boolq", "--out", world.parent / "runs" / "eval-cli")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["holdout"] == ["boolq"] and data["tasks"] == ["boolq"]
    assert "--holdout boolq" in data["command"]
    md = (world.parent / "runs" / "eval-cli" / "results.md").read_text()
    assert "Leave-one-out" in md
    assert not (world.parent / "runs" / "eval-cli" / "plots" / "folds.png").exists()  # one fold only


def test_eval_two_holdouts_draws_the_cross_fold_figure(tmp_path, tiny, cli):
    world = make_world(tmp_path, tiny[0], per_task=1, tasks=TASKS + ["openbookqa"])
    out = world.parent / "runs" / "eval-folds"
    r = cli("--project", world, "--json", "--quiet", "eval", "-m", "base", "-m", "mean-delta",
            "--holdout", "boolq", "--holdout", "arc-easy", "--out", out)
    assert r.exit_code == 0, r.stderr
    plots = json.loads(r.stdout)["plots"]
    for ext in ("png", "pdf", "svg"):
        assert str(out / "plots" / f"folds.{ext}") in plots and (out / "plots" / f"folds.{ext}").stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["chance"] for r in rows} == {0.25, 0.5}  # ARC-Easy 4 options, BoolQ 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,needle", [
    (["-m", "nonsense"], "unknown method"),
    (["-m", "merge:nope"], "unknown merge strategy"),
    (["-m", "base", "--task", "nonesuch"], "--task nonesuch: neither a task of the zoo nor a registered task"),
    (["-m", "multitask"], "llgbm train multitask"),
    (["-m", "b1"], "llgbm train delta-only --variant b1"),
    (["-m", "b2"], "llgbm train delta-only --variant b2"),
    (["-m", "base", "--holdout", "arc-easy", "--holdout", "boolq"], "every zoo task is held out"),
])
def test_eval_bad_input(world, cli, args, needle):
    r = cli("--project", world, "--quiet", "eval", *args, "--out", world.parent / "runs" / "eval-bad")
    assert r.exit_code == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (world.parent / "runs" / "eval-bad").exists()


def test_eval_refuses_adapter_of_another_base(world, cli, tmp_path):
    from llgbm_cli.adapters import LoraModule, save_adapter

    g = torch.Generator().manual_seed(0)
    mods = {f"model.layers.{i}.self_attn.q_proj": LoraModule(torch.randn(4, 576, generator=g),
                                                             torch.randn(576, 4, generator=g), 2.0)
            for i in range(2)}
    ad = save_adapter(tmp_path / "foreign", mods, alpha=8.0, base_model="smollm2-135m-instruct")
    r = cli("--project", world, "--quiet", "eval", "-m", "base", "-m", ad, "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "smollm2-135m-instruct" in r.stderr and "tiny-llama" in r.stderr


def test_holdout_seen_in_training_is_refused():
    from llgbm_cli.errors import InputError
    from llgbm_cli.services.eval_methods import refuse_seen as _refuse_seen

    with pytest.raises(InputError, match=r"--holdout boolq: method multitask saw it in training"):
        _refuse_seen("multitask", Path("ck"), ["arc-easy", "boolq"], ["boolq"], "multitask")
    _refuse_seen("multitask", Path("ck"), ["arc-easy"], ["boolq"], "multitask")
    with pytest.raises(InputError, match="cannot be called held out"):
        _refuse_seen("multitask", Path("ck"), None, ["boolq"], "multitask")


# --------------------------------------------------------------------------- acceptance checks


def _write_metrics(path: Path, rows) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _good_rows(n=10, lam=1.0, warm=4):
    from llgbm_cli.losses import lambda_at

    return [{"step": s, "loss_weights": 1.0 / s, "loss_delta": 2.0 / s, "delta_cosine_sim": 0.1 * s,
             "lambda_delta": lambda_at(s - 1, lam, "linear", warm), "loss_total": 3.0 / s} for s in range(1, n + 1)]


MT = {"lambda_delta": 1.0, "lambda_schedule": "linear", "lambda_warmup_steps": 4}


def test_checks_pass_on_a_healthy_log(tmp_path):
    from llgbm_cli.evaluation.checks import read_metrics_file, training_checks

    run = _write_metrics(tmp_path / "run", _good_rows())
    res = {c["name"]: c for c in training_checks("multitask", read_metrics_file(run / "metrics.jsonl"),
                                                 {"config": {"train": {"multitask": MT}}}, None)}
    assert res["multitask trains stably (no NaN/Inf)"]["status"] == "pass"
    assert res["multitask λ ramps as scheduled"]["status"] == "pass"
    assert res["multitask loss_weights decreases"]["status"] == "pass"
    assert res["multitask loss_delta decreases"]["status"] == "pass"
    assert res["multitask delta_cosine_sim improves"]["status"] == "pass"
    assert res["multitask checkpoints reload"]["status"] == "skip"


def test_checks_fail_on_nan_metrics_and_wrong_schedule(tmp_path):
    from llgbm_cli.evaluation.checks import read_metrics_file, training_checks

    rows = _good_rows()
    rows[6]["loss_delta"] = float("nan")
    rows[3]["lambda_delta"] = 0.9  # not what a linear ramp over 4 steps gives at step 4
    run = _write_metrics(tmp_path / "run", rows)
    text = (run / "metrics.jsonl").read_text()
    assert "NaN" in text
    res = {c["name"]: c for c in training_checks("multitask", read_metrics_file(run / "metrics.jsonl"),
                                                 {"config": {"train": {"multitask": MT}}}, None)}
    stable = res["multitask trains stably (no NaN/Inf)"]
    assert stable["status"] == "fail" and "loss_delta at step 7" in stable["detail"]
    assert res["multitask λ ramps as scheduled"]["status"] == "fail"
    # a flat or rising loss fails too
    flat = [dict(r, loss_weights=1.0 + 0.01 * r["step"]) for r in _good_rows()]
    res2 = {c["name"]: c for c in training_checks("multitask", flat, None, None)}
    assert res2["multitask loss_weights decreases"]["status"] == "fail"
    assert res2["multitask λ ramps as scheduled"]["status"] == "skip"


def test_eval_checks_and_degenerate():
    from llgbm_cli.evaluation.checks import beats_base, not_degenerate, retrieval_floor

    rows = [{"method": "multitask", "task": "a", "accuracy_vs_base": -0.1},
            {"method": "multitask", "task": "b", "accuracy_vs_base": 0.05}]
    # a raw difference alone shows nothing: without per-question scores the check cannot pass
    no_scores = beats_base(rows)
    assert no_scores["status"] == "skip" and "untested" in no_scores["detail"]
    assert beats_base([{"method": "teacher", "task": "a", "accuracy_vs_base": 0.5}])["status"] == "skip"
    v = torch.ones(8)
    assert not_degenerate("b1", {"a": v, "b": v * 2}, {"a": 1.0, "b": 1.0})["status"] == "fail"
    assert not_degenerate("b1", {"a": v, "b": -v}, {"a": 0.0, "b": 1.0})["status"] == "fail"
    assert not_degenerate("b1", {"a": v, "b": -v}, {"a": 1.0, "b": 1.0})["status"] == "pass"
    summ = [{"method": "base", "accuracy": 0.3, "delta_cosine": 0.0},
            {"method": "b2", "accuracy": 0.4, "delta_cosine": 0.5},
            {"method": "multitask", "accuracy": 0.5, "delta_cosine": 0.6}]
    assert retrieval_floor(summ, 0.05)["status"] == "fail"
    assert retrieval_floor(summ, 0.2)["status"] == "pass"


BASE = [0.0] * 20 + [1.0] * 20 + [1.0, 0.0] * 10  # base's 0/1 scores on one task's 60 questions


def _scores(wins, losses):
    """A method's 0/1 scores on BASE's questions: right on ``wins`` questions base gets wrong, wrong on
    ``losses`` questions base gets right, the same elsewhere."""
    mine = list(BASE)
    for i in range(wins):
        mine[i] = 1.0
    for i in range(losses):
        mine[20 + i] = 0.0
    return mine


def test_beats_base_needs_a_holm_adjusted_exact_test():
    from llgbm_cli.evaluation.checks import beats_base

    def run(cells):
        """cells: (method, task) -> (wins, losses) against base on that task."""
        rows, scores = [], {}
        for (m, t), (w, l) in cells.items():
            scores[m, t], scores[None, t] = _scores(w, l), BASE
            rows.append({"method": m, "task": t, "accuracy_vs_base": (w - l) / len(BASE)})
        return beats_base(rows, scores)

    # 7 discordant questions, all won: exact McNemar p = 2 / 2**7 = 0.0156 < 0.05 with one comparison
    shown = run({("b2", "openbookqa"): (7, 0)})
    assert shown["status"] == "pass"
    assert shown["detail"].startswith("shown: b2 on openbookqa +0.12 (p = 0.016, Holm-adjusted 0.016)")
    assert "exact McNemar" in shown["detail"] and shown["values"]["p"] == pytest.approx(0.015625)
    # 5 of 5 won: p = 0.0625, just above the threshold; a larger raw gain is not enough
    near = run({("b2", "openbookqa"): (5, 0)})
    assert near["status"] == "fail"
    assert near["detail"].startswith("not shown: best b2 on openbookqa +0.08 (p = 0.062, Holm-adjusted 0.062)")
    # Holm over the comparisons considered: 0.0156 on one task of four is 0.0625 adjusted
    four = run({("b2", "openbookqa"): (7, 0), ("b2", "boolq"): (1, 1), ("multitask", "openbookqa"): (0, 2),
                ("multitask", "boolq"): (2, 2)})
    assert four["status"] == "fail" and four["values"]["comparisons"] == 4
    assert "best b2 on openbookqa +0.12 (p = 0.016, Holm-adjusted 0.062)" in four["detail"]
    # a method without an adapter of its own scores as base (no difference)
    rows = [{"method": "b2", "task": "x", "accuracy_vs_base": 0.0}]
    flat = beats_base(rows, {(None, "x"): BASE})
    assert flat["status"] == "fail" and "p = 1" in flat["detail"]
    # a significant loss is not a win
    assert run({("b1", "boolq"): (0, 9)})["status"] == "fail"
    # eval hands over TaskScore objects: their .values() are the per-question scores
    from types import SimpleNamespace

    rows = [{"method": "multitask", "task": "x", "accuracy_vs_base": 7 / 60}]
    got = beats_base(rows, {(None, "x"): SimpleNamespace(values=lambda: BASE),
                            ("multitask", "x"): SimpleNamespace(values=lambda: _scores(7, 0))})
    assert got["status"] == "pass" and got["values"]["p_holm"] == pytest.approx(0.015625)


def test_b1_training_degeneracy_flags_are_a_check():
    from llgbm_cli.evaluation import checks as C

    healthy = [{"step": 5, "degenerate_norm": 0.0, "degenerate_diversity": 0.0, "lora_norm_ratio": 0.9}]
    collapsed = [{"step": 5, "degenerate_norm": 0.0, "degenerate_diversity": 1.0, "gen_pairwise_cosine": 0.9999,
                  "teacher_pairwise_cosine": 0.33}]
    assert C.training_degeneracy("b1", healthy)["status"] == C.PASS
    bad = C.training_degeneracy("b1", collapsed)
    assert bad["status"] == C.FAIL and "diversity collapse" in bad["detail"]
    assert C.training_degeneracy("b1", [{"step": 1, "loss_delta": 0.3}]) is None


def test_a_task_outside_the_zoo_is_scored_without_a_teacher(world):
    """`eval --task` on a registered task no teacher was trained on: every method with an adapter is
    scored on its questions, the teacher has no row, and no delta metric is made up against a teacher."""
    from llgbm_cli.config import load_config
    from llgbm_cli.services.eval import run_eval

    res = run_eval(load_config(world), methods=["base", "teacher", "mean-delta", "merge:linear"],
                   tasks=["openbookqa", "arc-easy"], out=world.parent / "eval-new-task", force=True)
    rows = {(r["method"], r["task"]): r for r in res.rows}
    assert ("teacher", "openbookqa") not in rows and ("teacher", "arc-easy") in rows
    assert res.no_teacher == ["openbookqa"]
    for m in ("base", "mean-delta", "merge:linear"):
        r = rows[m, "openbookqa"]
        assert r["n_questions"] == 6 and 0.0 <= r["accuracy"] <= 1.0
        assert r["delta_mse"] is None and r["centered_cosine"] is None and r["identified"] is None
        assert r["nearest_task"] in ("arc-easy", "boolq")
    assert rows["mean-delta", "openbookqa"]["heldout"] is True  # no teacher of it was merged
    assert rows["mean-delta", "arc-easy"]["heldout"] is False
    # Task ID counts only the tasks that have a teacher
    summ = {s["method"]: s for s in res.summary}
    assert summ["teacher"]["task_identification"] == 1.0 and summ["teacher"]["tasks"] == 1
    md = (world.parent / "eval-new-task" / "results.md").read_text()
    assert "Outside the zoo: openbookqa" in md
    assert json.loads((world.parent / "eval-new-task" / "results.json").read_text())["no_teacher"] == ["openbookqa"]


def test_an_unknown_task_is_refused_naming_the_flag(world):
    from llgbm_cli.config import load_config
    from llgbm_cli.errors import InputError
    from llgbm_cli.services.eval import run_eval

    with pytest.raises(InputError, match="--task no-such-task: neither a task of the zoo nor a registered task"):
        run_eval(load_config(world), methods=["base"], tasks=["no-such-task"], out=world.parent / "e2", force=True)
    with pytest.raises(InputError, match="--holdout openbookqa: not a task of the zoo"):
        run_eval(load_config(world), methods=["base"], holdout=["openbookqa"], out=world.parent / "e3", force=True)


def test_a_generator_is_conditioned_on_the_train_prompts_of_a_task_outside_the_zoo(world):
    """multitask, B1 and B2 condition on a task's text: for a task with no teacher (no zoo condition),
    prompts of its own train split, never its test questions."""
    from types import SimpleNamespace

    from llgbm_cli.config import load_config
    from llgbm_cli.services.eval_methods import condition_texts
    from llgbm_cli.tasks.registry import registry_for

    resolved = load_config(world)
    w = SimpleNamespace(teachers={}, resolved=resolved)
    texts = condition_texts(w, "openbookqa", "prompts", 8)
    task = registry_for(resolved).get("openbookqa")
    train = {r.prompt for r in task.sample("train", 10_000, seed=0)}
    test = {r.prompt for r in task.sample("test", 10_000, seed=0)}
    assert len(texts) == 8 and set(texts) <= train and not set(texts) & test
