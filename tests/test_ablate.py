"""`llgbm ablate`: the grid, a two-cell run on the tiny world, and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from test_eval import make_world

# the first built-in world: the plans' λ schedule (λ 1, mse, linear), which the grid's duplicates assume
FIVE = REPO / "profiles" / "five-task.toml"

ABLATE_TOML = """
[train.multitask]
generator = "hyperconv"
learning_rate = 3e-3
batch_size = 2
delta_batch_size = 1
total_steps = 3
warmup_steps = 1
lambda_warmup_steps = 2
condition_prompts = 2
max_text_length = 64
log_interval = 1
save_interval = 2
eval_interval = 3
generator_options = { channels = 8, latent_height = 4, latent_width = 8, depth = 1 }

[ablation]
methods = ["base", "mean-delta", "multitask"]
"""

GRID = [
    "lambda_delta=0", "lambda_delta=0.1", "lambda_delta=0.5", "lambda_delta=1", "lambda_delta=2",
    "delta_loss_type=mse", "delta_loss_type=cosine", "delta_loss_type=combined",
    "probe_count=3", "probe_count=5", "probe_count=10",
    "lambda_schedule=constant", "lambda_schedule=linear", "lambda_schedule=cosine",
    "lambda_delta=0.1+delta_loss_type=mse", "lambda_delta=0.1+delta_loss_type=cosine",
    "lambda_delta=1+delta_loss_type=mse", "lambda_delta=1+delta_loss_type=cosine",
]


def test_dry_run_lists_exactly_the_grid(cli, tmp_path):
    r = cli("--project", tmp_path / "none.toml", "--json", "ablate", "--dry-run")
    assert r.exit_code == 2  # an explicit project file that does not exist
    r = cli("--project", FIVE, "--json", "ablate", "--dry-run")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert [c["cell"] for c in data["cells"]] == GRID
    assert len(data["cells"]) == 18
    inter = [c for c in data["cells"] if c["group"] == "interaction"]
    assert {(c["overrides"]["train.multitask.lambda_delta"], c["overrides"]["train.multitask.delta_loss_type"])
            for c in inter} == {(0.1, "mse"), (0.1, "cosine"), (1.0, "mse"), (1.0, "cosine")}
    # identical settings are listed once as run and the rest point at it (defaults: λ 1, mse, linear)
    same = {c["cell"]: c["same_as"] for c in data["cells"] if c["same_as"]}
    assert same == {"delta_loss_type=mse": "lambda_delta=1", "lambda_schedule=linear": "lambda_delta=1",
                    "lambda_delta=0.1+delta_loss_type=mse": "lambda_delta=0.1",
                    "lambda_delta=1+delta_loss_type=mse": "lambda_delta=1",
                    "lambda_delta=1+delta_loss_type=cosine": "delta_loss_type=cosine"}
    assert data["same_as"] == same
    r = cli("--project", FIVE, "ablate", "--dry-run")
    assert "13 distinct settings" in r.stdout and "not run" in r.stdout
    r = cli("--project", FIVE, "ablate", "--dry-run", "--cell", "lambda_delta=7")
    assert r.exit_code == 2 and "not a cell of the grid" in r.stderr


def test_duplicates_follow_the_project_setting():
    from llgbm_cli.config import load_config
    from llgbm_cli.services.ablate import ablation_grid, duplicate_cells

    cfg = load_config(None, {"train.multitask.lambda_delta": 0.5, "train.multitask.lambda_schedule": "cosine"}).config
    same = duplicate_cells(cfg, ablation_grid(cfg.ablation))
    assert same == {"delta_loss_type=mse": "lambda_delta=0.5", "lambda_schedule=cosine": "lambda_delta=0.5",
                    "lambda_delta=0.1+delta_loss_type=mse": "lambda_delta=0.1",
                    "lambda_delta=1+delta_loss_type=mse": "lambda_delta=1"}  # λ=1+cosine is new here


@pytest.mark.slow
def test_two_cells_run_and_resume(tmp_path, tiny):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.ablate import run_ablate

    project = make_world(tmp_path / "w", tiny[0])
    project.write_text(project.read_text() + ABLATE_TOML)
    cells = ["lambda_delta=0", "probe_count=3"]
    res = run_ablate(load_config(project), cells=cells)
    assert res.ran == cells and res.skipped == []
    out = Path(res.out)
    for c in cells:
        assert (out / c / "done.json").exists()
        assert (out / c / "train" / "final" / "generator.safetensors").exists()
        ev = json.loads((out / c / "eval" / "results.json").read_text())
        assert {r["method"] for r in ev["rows"]} == {"base", "mean-delta", "multitask"}
    # the probe-count cell measured on 3 probes, in a cache of its own
    assert json.loads((out / "deltas-probes-3" / "manifest.json").read_text())["header"]["probes"]["count"] == 3
    for f in ("summary.json", "summary.csv", "summary.md", "ablation.png"):
        assert (out / f).stat().st_size > 0
    rows = {r["cell"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert rows["lambda_delta=0"]["lambda_delta"] == 0.0 and rows["probe_count=3"]["probe_count"] == 3
    assert isinstance(rows["probe_count=3"]["beats_weights_only_cosine"], bool)
    # resume: finished cells are skipped with the same numbers
    again = run_ablate(load_config(project), cells=cells)
    assert again.ran == [] and again.skipped == cells
    assert [r["delta_cosine"] for r in again.rows] == [r["delta_cosine"] for r in res.rows]
    # a cell whose eval did not finish reruns the eval only; its finished training is reused
    (out / "probe_count=3" / "done.json").unlink()
    mtime = (out / "probe_count=3" / "train" / "final" / "generator.safetensors").stat().st_mtime
    third = run_ablate(load_config(project), cells=cells)
    assert third.ran == ["probe_count=3"] and third.skipped == ["lambda_delta=0"]
    assert (out / "probe_count=3" / "train" / "final" / "generator.safetensors").stat().st_mtime == mtime
    assert third.rows[1]["delta_cosine"] == pytest.approx(res.rows[1]["delta_cosine"])


def test_lever_cells_sit_next_to_the_grid():
    from llgbm_cli.config import load_config
    from llgbm_cli.services.ablate import ablation_grid, duplicate_cells

    default = load_config(FIVE).config
    assert [c.name for c in ablation_grid(default.ablation)] == GRID  # no lever cells unless asked for
    cfg = load_config(FIVE, {"ablation.loss_balance": ["none", "gradnorm", "uncertainty"],
                             "ablation.delta_centered": [False, True], "ablation.task_weight": [0, 0.1]}).config
    cells = ablation_grid(cfg.ablation)
    assert [c.name for c in cells[:18]] == GRID
    lever = {c.name: c for c in cells[18:]}
    assert list(lever) == ["loss_balance=none", "loss_balance=gradnorm", "loss_balance=uncertainty",
                           "delta_centered=false", "delta_centered=true", "task_weight=0", "task_weight=0.1"]
    assert lever["delta_centered=true"].overrides == {"train.multitask.delta_centered": True}
    assert lever["task_weight=0.1"].overrides == {"train.multitask.task_weight": 0.1}
    assert {c.group for c in lever.values()} == {"loss_balance", "delta_centered", "task_weight"}
    # a lever's off value is the project's own setting: run once, under λ=1's name
    same = duplicate_cells(cfg, cells)
    for off in ("loss_balance=none", "delta_centered=false", "task_weight=0"):
        assert same[off] == "lambda_delta=1"
    for on in ("loss_balance=gradnorm", "loss_balance=uncertainty", "delta_centered=true", "task_weight=0.1"):
        assert on not in same
    # with the lever on in the project, its off cell is new and its on cell is the project's setting
    cfg2 = load_config(FIVE, {"train.multitask.delta_centered": True, "ablation.delta_centered": [False, True]}).config
    same2 = duplicate_cells(cfg2, ablation_grid(cfg2.ablation))
    assert "delta_centered=false" not in same2 and same2["delta_centered=true"] == "lambda_delta=1"


def test_lever_cells_run_with_their_overrides(tmp_path):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.ablate import Cell, cell_overrides

    res = load_config(None, {"ablation.total_steps": 50})
    ov = cell_overrides(res, Cell("task_weight=0.1", "task_weight", {"train.multitask.task_weight": 0.1}), {})
    assert ov == {"train.multitask.total_steps": 50, "train.multitask.task_weight": 0.1}
    assert load_config(None, ov).config.train.multitask.task_weight == 0.1


@pytest.mark.slow
def test_two_accelerate_processes_run_the_cells_as_one(tmp_path, tiny):
    """Two gloo processes, a cell each (trained and evaluated alone), give the one-process summary,
    cell results and generators; a second run skips both cells."""
    import os

    from conftest import launch

    project = make_world(tmp_path / "w", tiny[0])
    project.write_text(project.read_text() + ABLATE_TOML)
    cells = ["lambda_delta=0", "probe_count=3"]
    runs = project.parent / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def ablate(n: int) -> dict:
        tail = ["llgbm_cli", "-p", project, "--quiet", "--json", "ablate", "--cell", cells[0], "--cell", cells[1]]
        rc, stdout, stderr = launch(tail, n, env=env, cwd=project.parent, timeout=600)
        assert rc == 0, stderr[-3000:]
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1  # only the main process reports
        rep = json.loads(lines[0])
        assert rep["processes"] == n
        return rep

    def snapshot() -> dict:
        out = runs / "ablation"
        got = {"summary": (out / "summary.json").read_text()}
        for c in cells:
            ev = json.loads((out / c / "eval" / "results.json").read_text())
            assert ev.pop("seconds") > 0
            got[c] = ev, (out / c / "train" / "final" / "generator.safetensors").read_bytes()
            assert json.loads((out / c / "eval" / "llgbm.json").read_text())["processes"] == 1  # the cell ran alone
        return got

    assert ablate(1)["ran"] == cells
    one = snapshot()
    os.replace(runs / "ablation", runs / "ablation-1")
    rep = ablate(2)
    assert rep["ran"] == cells and rep["skipped"] == []
    assert snapshot() == one
    again = ablate(2)
    assert again["ran"] == [] and again["skipped"] == cells and again["rows"] == rep["rows"]


def test_independent_processes_deal_and_hide_the_launch(monkeypatch):
    """Rank 1 of 3 gets every third item from the second; while it works alone the launcher's
    variables are hidden (so trainers and evals see one process), and they are back afterwards."""
    import os

    from llgbm_cli.distributed import IndependentProcesses, ProcessGroup

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    procs = IndependentProcesses()
    assert (procs.rank, procs.world, procs.is_main) == (1, 3, False)
    assert procs.shard(list(range(8))) == [1, 4, 7]
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with procs.alone():
        assert not any(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))
        inner = ProcessGroup("cpu")
        assert (inner.world, inner.is_main, inner.gather([5])) == (1, True, [5])
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("3", "1", "1")


def test_cells_are_dealt_and_gathered_into_the_one_process_summary(tmp_path, monkeypatch):
    """The dealing and gathering of `ablate` under a launch, in one process with a stand-in cell
    runner: rank 1 of 2 runs exactly its cells and writes no summary; rank 0, given rank 1's rows
    at the gather, writes the summary of a one-process run, byte for byte."""
    import contextlib

    import llgbm_cli.distributed as D
    from conftest import TINY_TOML
    from llgbm_cli.config import load_config
    from llgbm_cli.services import ablate as A

    cells = ["lambda_delta=0", "lambda_delta=0.1", "probe_count=3", "lambda_schedule=constant", "lambda_delta=2"]
    ran: list = []

    def fake_cell(cres, cell, cdir, ov, progress):
        ran.append(cell.name)
        k = cells.index(cell.name)
        return {"cell": cell.name, "group": cell.group, "delta_cosine": 0.1 * k, "centered_cosine": 0.05 * k,
                "task_identification": 0.5, "accuracy": 0.2 + 0.01 * k, "accuracy_vs_base": 0.01 * k}

    monkeypatch.setattr(A, "_run_cell", fake_cell)
    passed: dict = {}

    class Fake(D.IndependentProcesses):  # the real dealing (shard, each); a stand-in meeting
        def __init__(self, rank):
            self.rank, self.world, self.local_rank = rank, 2, rank

        def alone(self):
            return contextlib.nullcontext()

        def gather(self, mine):
            passed[self.rank] = mine
            return passed.get(0, []) + passed.get(1, [])

    def project(name):
        (tmp_path / name).mkdir()
        (tmp_path / name / "llgbm.toml").write_text(TINY_TOML)
        return load_config(tmp_path / name / "llgbm.toml")

    one = A.run_ablate(project("one"), cells=cells)
    assert one.ran == cells and ran == cells
    two = project("two")
    ran.clear()
    monkeypatch.setattr(D, "IndependentProcesses", lambda: Fake(1))
    r1 = A.run_ablate(two, cells=cells)
    assert not r1.is_main and ran == cells[1::2] and r1.rows == []
    out = Path(r1.out)
    assert not (out / "summary.json").exists()
    ran.clear()
    monkeypatch.setattr(D, "IndependentProcesses", lambda: Fake(0))
    r0 = A.run_ablate(two, cells=cells)
    assert r0.is_main and ran == cells[0::2] and r0.ran == cells
    assert r0.rows == one.rows
    for f in ("summary.json", "summary.csv", "summary.md"):
        assert (out / f).read_bytes() == (Path(one.out) / f).read_bytes(), f
    # resume: every cell is done, whichever rank ran it, and each rank skips its own
    ran.clear()
    passed.clear()
    monkeypatch.setattr(D, "IndependentProcesses", lambda: Fake(1))
    A.run_ablate(two, cells=cells)
    monkeypatch.setattr(D, "IndependentProcesses", lambda: Fake(0))
    again = A.run_ablate(two, cells=cells)
    assert ran == [] and again.ran == [] and again.skipped == cells and again.rows == one.rows


# --------------------------------------------------------------------------- ablate --folds

FOLD_CELLS = """
[ablation]
methods = ["base", "mean-delta", "multitask"]

[ablation.cells.lam0]
help = "the delta loss off"
set = { "train.multitask.lambda_delta" = 0.0 }

[ablation.cells.lr]
set = { "train.multitask.learning_rate" = 1e-2 }
methods = ["multitask"]
"""


def test_ablate_folds_runs_cells_beside_the_base_cell_and_tests_them_on_the_same_questions(cli, tmp_path, tiny):
    """Each declared cell is cross-validated like `eval --folds`, the base cell (the project's own config)
    beside it; the comparison pairs each cell's method with the base cell's on the same questions of
    each fold (exact McNemar, Holm over the run), and a rerun reuses every fold."""
    from scipy.stats import binomtest

    from test_cv import CV_TOML
    from test_eval import make_world

    project = make_world(tmp_path / "w", tiny[0], per_task=2, tasks=["arc-easy", "boolq", "openbookqa"])
    project.write_text(project.read_text() + CV_TOML + FOLD_CELLS)
    out = tmp_path / "abl"
    args = ("--project", project, "--quiet", "--json", "ablate", "--folds", "boolq,arc-easy", "--set",
            "eval.test_sample=4", "--out", out)
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert [c["cell"] for c in res["cells"]] == ["base", "lam0", "lr"]
    assert sorted(res["ran"]) == sorted(f"{c}/{k}" for c in ("base", "lam0", "lr") for k in ("boolq", "arc-easy"))
    assert {(x["cell"], x["fold"]) for x in res["rows"]} == {(c, k) for c in ("lam0", "lr") for k in ("boolq", "arc-easy")}
    holm_n = len(res["rows"])
    for x in res["rows"]:
        q = json.loads((out / x["cell"] / "folds" / x["fold"] / "questions.json").read_text())
        qb = json.loads((out / "base" / "folds" / x["fold"] / "questions.json").read_text())
        assert q["question_ids"] == qb["question_ids"] and x["n_questions"] == 4
        a, b = q["methods"]["multitask"], qb["methods"]["multitask"]
        win, lose = sum(u > v for u, v in zip(a, b)), sum(u < v for u, v in zip(a, b))
        assert x["p"] == pytest.approx(1.0 if win + lose == 0 else binomtest(win, win + lose, 0.5).pvalue)
        assert x["diff"] == pytest.approx(sum(a) / 4 - sum(b) / 4) and x["p"] <= x["p_holm"] <= min(1, x["p"] * holm_n)
    # each cell ran with its own setting: the lam0 cell's generator trained without the delta loss
    prov = json.loads((out / "lam0" / "folds" / "boolq" / "runs" / "multitask" / "final" / "generator.json").read_text())
    assert "boolq" not in prov["trained_on"]
    cv_cfg = json.loads((out / "lam0" / "llgbm.json").read_text())["config"]
    assert cv_cfg["train"]["multitask"]["lambda_delta"] == 0.0
    md = (out / "comparison.md").read_text()
    assert "| lam0 |" in md and "Holm" in md and "Wilcoxon" in md
    assert {s["cell"] for s in res["summary"]} == {"lam0", "lr"}
    # delta space: the cell's centered cosine to the held-out teacher against the base cell's, sign test
    base_rows = json.loads((out / "base" / "results.json").read_text())["rows"]
    for s in res["summary"]:
        mine = {r["fold"]: r["centered_cosine"] for r in json.loads((out / s["cell"] / "results.json").read_text())["rows"]
                if r["method"] == s["method"]}
        ref = {r["fold"]: r["centered_cosine"] for r in base_rows if r["method"] == s["method"]}
        above = sum(mine[k] > ref[k] for k in mine)
        assert (s["centered_above"], s["centered_folds"]) == (above, 2)
        assert s["centered_sign_p"] == pytest.approx(binomtest(above, 2, 0.5).pvalue)
        assert s["centered_sign_p"] <= s["centered_sign_p_holm"] <= 1
    # rerun: every fold reused
    r = cli(*args)
    assert r.exit_code == 0 and json.loads(r.stdout)["ran"] == []
    # the base cell may be a finished cross-validation (it is read, not run)
    r = cli(*args[:-1], tmp_path / "abl2", "--cell", "lam0", "--set", f"ablation.base_cv={out / 'base'}")
    assert r.exit_code == 0, r.stderr
    res2 = json.loads(r.stdout)
    assert res2["ran"] == ["lam0/boolq", "lam0/arc-easy"] and [c["cell"] for c in res2["cells"]] == ["base", "lam0"]
    assert res2["cells"][0]["folder"] == str(out / "base")


def test_ablate_folds_bad_input(cli, tiny_project):
    def run(*a):
        return cli("--project", tiny_project, "--quiet", "ablate", *a)

    r = run("--folds", "all")
    assert r.exit_code == 2 and "no cell to run" in r.stderr and "[ablation.cells.NAME]" in r.stderr
    r = run("--folds", "all", "--cell", "base")
    assert r.exit_code == 2 and "--cell base" in r.stderr
    r = run("--method", "multitask")
    assert r.exit_code == 2 and "only with --folds" in r.stderr
    r = run("--folds", "all", "--dry-run")
    assert r.exit_code == 2 and "--dry-run" in r.stderr
    tiny_project.write_text(tiny_project.read_text() + '\n[ablation.cells.bad]\nset = { "train.multitask.nope" = 1 }\n')
    r = run("--folds", "all")
    assert r.exit_code == 2 and "ablation.cells.bad" in r.stderr and "train.multitask.nope" in r.stderr


def test_fold_fingerprints_do_not_read_the_ablation_section(tmp_path, monkeypatch):
    """No fold reads [ablation]: declaring cells or a base cell leaves every fold's fingerprint as it
    was before those keys existed (the section at its defaults), so finished folds stay valid."""
    from llgbm_cli.config import fingerprint_view, load_config
    from llgbm_cli.services.cv import fold_config

    monkeypatch.chdir(tmp_path)
    plain = load_config(None, {})
    d = fold_config(plain)
    full = plain.to_dict()
    full["ablation"].pop("cells"), full["ablation"].pop("base_cv")
    assert d == fingerprint_view(full)  # the section as it was before it could hold cells
    other = load_config(None, {"ablation.base_cv": "cv", "ablation.methods": ["multitask"]})
    assert fold_config(other) == d
    assert fold_config(load_config(None, {"train.multitask.lambda_delta": 0.0})) != d


def test_ablate_folds_cell_that_measures_deltas_otherwise_gets_its_own_cache(cli, tmp_path, tiny):
    """A cell that changes the probes (or the delta spec) measures the teachers' deltas its own way, in a
    cache of its own beside the cells; the project's cache is not touched."""
    from test_eval import make_world

    project = make_world(tmp_path / "w", tiny[0], per_task=2, tasks=["arc-easy", "boolq", "openbookqa"])
    project.write_text(project.read_text() + '\n[ablation.cells.probes2]\nset = { "probes.count" = 2 }\n'
                       'methods = ["base"]\n')
    cache = tmp_path / "w" / "runs" / "deltas"
    before = sorted(p.name for p in cache.iterdir())
    out = tmp_path / "abl"
    r = cli("--project", project, "--quiet", "--json", "ablate", "--folds", "boolq", "--set", "eval.test_sample=4",
            "--out", out)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert [c["cell"] for c in res["cells"]] == ["base", "probes2"] and res["rows"] == []
    manifest = json.loads((out / "deltas-probes2" / "manifest.json").read_text())
    assert manifest["header"]["probes"]["count"] == 2 and manifest["header"]["rows"] == 6
    assert sorted(p.name for p in cache.iterdir()) == before
    ev = json.loads((out / "probes2" / "folds" / "boolq" / "eval" / "results.json").read_text())
    assert "deltas-probes2" in ev["command"]


def two_cell_project(tmp_path, tiny):
    """A three-task world with the multitask generator and two cells: lam0 (trains its own generator) and
    probes-eval (changes only what evaluation reads)."""
    from test_cv import CV_TOML
    from test_eval import make_world

    project = make_world(tmp_path / "w", tiny[0], per_task=2, tasks=["arc-easy", "boolq", "openbookqa"])
    project.write_text(project.read_text() + CV_TOML + """
[ablation]
methods = ["multitask"]

[ablation.cells.lam0]
set = { "train.multitask.lambda_delta" = 0.0 }

[ablation.cells.probes-eval]
set = { "eval.task_probes" = 2 }
""")
    return project


def test_ablate_folds_keeps_finished_cells_and_copies_the_runs_a_cell_shares(cli, tmp_path, tiny, monkeypatch):
    """A cell that changes only what evaluation reads copies the base cell's finished training run
    instead of training again (its marker names the source); a call naming one cell keeps every cell
    already finished in the folder in the comparison and its Holm family, and leaves out, with a note,
    one whose folds ran under another config. A cell scores only the adapters it changes: the base model
    and `mean-delta` (the same files, form, model and questions) are read back from the base cell's score
    cache with the very same per-question values, and the copied generator's adapter is not scored again."""
    import llgbm_cli.tasks.evaluate as E

    project = two_cell_project(tmp_path, tiny)
    out = tmp_path / "abl"
    scored: list = []  # (task, adapters) of every scoring call
    one, many = E.score_records, E.score_records_many
    monkeypatch.setattr(E, "score_records", lambda m, t, form, *a, **k: scored.append((form.task, 0)) or one(m, t, form, *a, **k))
    monkeypatch.setattr(E, "score_records_many", lambda m, t, ads, form, *a, **k:
                        scored.append((form.task, len(ads))) or many(m, t, ads, form, *a, **k))

    def run(*cells):
        scored.clear()
        r = cli("--project", project, "--quiet", "--json", "ablate", "--folds", "boolq", "--set", "eval.test_sample=4",
                "--out", out, *[a for c in cells for a in ("--cell", c)])
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)

    res = run("lam0")
    assert [c["cell"] for c in res["cells"]] == ["base", "lam0"]
    # the base cell: the base model, then mean-delta and multitask together, then the oracle's 4 candidates;
    # the cell: its own multitask alone (and the oracle's candidates, scored in its own cache)
    assert scored == [("boolq", 0), ("boolq", 2), ("boolq", 4), ("boolq", 1), ("boolq", 4)]
    q = {c: json.loads((out / c / "folds" / "boolq" / "questions.json").read_text()) for c in ("base", "lam0")}
    assert q["lam0"]["question_ids"] == q["base"]["question_ids"]
    assert all(q["lam0"]["methods"][m] == q["base"]["methods"][m] for m in ("base", "mean-delta"))
    runs = out / "base" / "folds" / "boolq" / "runs"
    mine = out / "probes-eval" / "folds" / "boolq" / "runs"
    res = run("probes-eval")
    assert res["ran"] == ["probes-eval/boolq"]
    assert scored == [("boolq", 4)]  # the oracle's candidates only: its adapters' files are the base cell's
    assert [c["cell"] for c in res["cells"]] == ["base", "lam0", "probes-eval"]  # lam0 kept, in the profile's order
    assert {(x["cell"], x["fold"]) for x in res["rows"]} == {("lam0", "boolq"), ("probes-eval", "boolq")}
    assert all(x["p"] <= x["p_holm"] <= min(1.0, 2 * x["p"]) for x in res["rows"])  # Holm over both cells' rows
    marker = json.loads((mine / "multitask.json").read_text())
    assert marker["finished"] and marker["copied_from"] == str(runs / "multitask")
    assert marker["fingerprint"] == json.loads((runs / "multitask.json").read_text())["fingerprint"]
    gen = "final/generator.safetensors"
    assert (mine / "multitask" / gen).read_bytes() == (runs / "multitask" / gen).read_bytes()
    assert not (mine / "multitask" / "checkpoints").exists()
    # the same questions and the same generator: the copied run scores exactly as the base cell's
    row = next(x for x in res["rows"] if x["cell"] == "probes-eval")
    assert row["diff"] == 0 and row["p"] == 1.0
    # a lam0 fold of another config is not compared, and the note says how to bring it back
    done = out / "lam0" / "folds" / "boolq" / "done.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "fingerprint": "stale"}))
    res = run("probes-eval")
    assert res["ran"] == [] and [c["cell"] for c in res["cells"]] == ["base", "probes-eval"]
    assert any(n.startswith("lam0: not compared") and "--cell lam0" in n for n in res["notes"])

