"""`zoo build|add|score` on the tiny random Llama: manifest, PEFT loading, resume, bad input."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from llgbm_cli.adapters import LoraModule, load_adapter, random_adapter, save_adapter, weights_sha256
from llgbm_cli.config import load_config
from llgbm_cli.services.zoo import _write_pending, build_spec, build_zoo, checkpoint_steps, score_zoo
from llgbm_cli.zoo_manifest import Zoo

IDS = ["arc-easy-s00004", "arc-easy-s00006", "boolq-s00004", "boolq-s00006"]


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """A 2-task zoo (steps 6, warm-up 2, 2 checkpoints) built once for the module."""
    from conftest import TINY_TOML

    root = tmp_path_factory.mktemp("zoo")
    (root / "llgbm.toml").write_text(TINY_TOML)
    resolved = load_config(root / "llgbm.toml")
    result = build_zoo(resolved, model_and_tokenizer=tiny)
    return root, resolved, result


def _copy_project(built, tmp_path) -> Path:
    root = built[0]
    shutil.copytree(root, tmp_path / "p")
    return tmp_path / "p"


def test_checkpoint_steps_are_evenly_spaced_after_warmup():
    assert checkpoint_steps(200, 100, 5) == [120, 140, 160, 180, 200]
    assert checkpoint_steps(6, 2, 2) == [4, 6]
    assert checkpoint_steps(10, 9, 5) == [10]


def test_build_writes_manifest_and_peft_loadable_adapters(built, tiny):
    from peft import PeftModel

    root, resolved, result = built
    assert [i for t in result.tasks for i in t.built] == IDS
    zoo = Zoo.load(root / "runs" / "zoo")
    assert [e.id for e in zoo.entries] == IDS
    seeds = {e.task: e.seed for e in zoo.entries}
    assert seeds["arc-easy"] != seeds["boolq"]
    for e in zoo.entries:
        assert e.task == e.id.rsplit("-s", 1)[0] and e.step == int(e.id.rsplit("-s", 1)[1])
        assert e.source == "built" and e.sha256 == weights_sha256(zoo.path_of(e))
        assert len(e.condition) == 64 and all("Answer format" in c for c in e.condition)
        ad = load_adapter(zoo.path_of(e))
        assert ad.r == 4 and len(ad.modules) == 4  # 2 layers x (q_proj, v_proj)
        assert all(float(m.B.abs().sum()) > 0 for m in ad.modules.values()), "teacher did not train"
        peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny[0]), str(zoo.path_of(e)))
        assert peft_model.peft_config["default"].r == 4
    # Different checkpoints of one trajectory differ, and carry different condition samples.
    a, b = zoo.by_task("boolq")
    assert a.sha256 != b.sha256 and a.condition != b.condition
    prov = json.loads((root / "runs" / "zoo" / "llgbm.json").read_text())
    assert prov["build_spec"]["base"] == "tiny-llama" and prov["config"]["zoo"]["steps"] == 6


def test_rerun_skips_finished_work(built, tiny, tmp_path):
    root = _copy_project(built, tmp_path)
    resolved = load_config(root / "llgbm.toml")
    before = (root / "runs/zoo/zoo.jsonl").read_text()
    res = build_zoo(resolved, model_and_tokenizer=None)  # nothing to train: the model is not even loaded
    assert sum(len(t.built) for t in res.tasks) == 0
    assert [i for t in res.tasks for i in t.skipped] == IDS
    assert (root / "runs/zoo/zoo.jsonl").read_text() == before


def test_killed_mid_write_adapter_is_redone_identically(built, tiny, tmp_path):
    root = _copy_project(built, tmp_path)
    zdir = root / "runs" / "zoo"
    good = weights_sha256(zdir / "adapters" / "boolq-s00006")
    # What a kill leaves behind: the last checkpoint's folder half-written (truncated weights),
    # its manifest row missing, and a stray temporary folder of the atomic write.
    rows = (zdir / "zoo.jsonl").read_text().splitlines(keepends=True)
    (zdir / "zoo.jsonl").write_text("".join(rows[:-1]))
    w = zdir / "adapters" / "boolq-s00006" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    (zdir / "adapters" / ".boolq-s00006.abc.tmp").mkdir()
    res = build_zoo(load_config(root / "llgbm.toml"), model_and_tokenizer=tiny)
    boolq = next(t for t in res.tasks if t.task == "boolq")
    assert boolq.built == ["boolq-s00006"] and boolq.resumed_from == 4 and boolq.steps_run == 2
    assert next(t for t in res.tasks if t.task == "arc-easy").built == []
    assert weights_sha256(zdir / "adapters" / "boolq-s00006") == good  # resume is exact
    assert [e.id for e in Zoo.load(zdir).entries] == IDS
    assert not list((zdir / "adapters").glob(".*"))


def test_corrupt_weights_with_manifest_row_are_redone(built, tiny, tmp_path):
    root = _copy_project(built, tmp_path)
    zdir = root / "runs" / "zoo"
    w = zdir / "adapters" / "arc-easy-s00004" / "adapter_model.safetensors"
    w.write_bytes(b"broken")
    res = build_zoo(load_config(root / "llgbm.toml"), model_and_tokenizer=tiny)
    arc = next(t for t in res.tasks if t.task == "arc-easy")
    assert arc.built == ["arc-easy-s00004"]  # the later one stays: it was finished
    assert arc.skipped == ["arc-easy-s00006"]
    assert weights_sha256(w.parent) == Zoo.load(zdir).get("arc-easy-s00004").sha256


def test_other_settings_are_refused_without_force(built, cli, tmp_path):
    root = _copy_project(built, tmp_path)
    r = cli("--project", root / "llgbm.toml", "zoo", "build", "--steps", "8")
    assert r.exit_code == 2
    assert "built with other settings" in r.stderr and "zoo.steps" in r.stderr and "--force" in r.stderr


def test_a_task_table_rebuilds_only_its_own_teachers(built, tiny, cli, tmp_path):
    from llgbm_cli.services.zoo import recorded_specs

    root = _copy_project(built, tmp_path)
    zdir = root / "runs" / "zoo"
    before = {e.id: e.sha256 for e in Zoo.load(zdir).entries}
    text = (root / "llgbm.toml").read_text()
    (root / "llgbm.toml").write_text(text + "\n[zoo.per_task.boolq]\nsteps = 8\nlearning_rate = 0.003\n")
    resolved = load_config(root / "llgbm.toml")
    assert build_spec(resolved, "arc-easy") == build_spec(resolved)  # no table: [zoo]'s settings
    assert build_spec(resolved, "boolq")["zoo"]["steps"] == 8 and build_spec(resolved)["zoo"]["steps"] == 6
    r = cli("--project", root / "llgbm.toml", "zoo", "build")
    assert r.exit_code == 2, r.output
    assert "teachers of boolq were built with other settings" in r.stderr and "arc-easy" not in r.stderr
    assert "zoo.learning_rate, zoo.steps" in r.stderr and "--force" in r.stderr
    res = build_zoo(resolved, tasks=["boolq"], force=True, model_and_tokenizer=tiny)
    assert [i for t in res.tasks for i in t.built] == ["boolq-s00005", "boolq-s00008"]  # checkpoint_steps(8, 2, 2)
    zoo = Zoo.load(zdir)
    # boolq's earlier checkpoints are gone from the manifest and the disk; arc-easy's are untouched.
    assert [e.id for e in zoo.entries] == ["arc-easy-s00004", "arc-easy-s00006", "boolq-s00005", "boolq-s00008"]
    assert all(before[e.id] == e.sha256 for e in zoo.by_task("arc-easy"))
    assert not (zdir / "adapters" / "boolq-s00004").exists() and not (zdir / "adapters" / "boolq-s00006").exists()
    assert not (zdir / ".state" / "boolq-s00006.pt").exists()
    rec = recorded_specs(zdir, zoo)
    assert rec["boolq"]["zoo"]["steps"] == 8 and rec["arc-easy"] == build_spec(resolved)
    assert json.loads((zdir / "llgbm.json").read_text())["task_build_specs"]["boolq"]["zoo"]["learning_rate"] == 0.003
    assert build_zoo(resolved, model_and_tokenizer=None).to_dict()["built"] == 0  # both tasks match their settings
    # The table's keys are checked like [zoo]'s: its task must exist, its checkpoints must fit.
    for extra, msg in [("[zoo.per_task.bolq]\nsteps = 8", "zoo.per_task: unknown task 'bolq'"),
                       ("[zoo.per_task.boolq]\nsteps = 2", "zoo.per_task.boolq: zoo.warmup_steps: 2 must be below")]:
        (root / "llgbm.toml").write_text(text + "\n" + extra + "\n")
        r = cli("--project", root / "llgbm.toml", "config", "validate")
        assert r.exit_code == 2 and msg in r.output, r.output


def test_unknown_dataset_lists_valid_names(cli, tiny_project):
    r = cli("--project", tiny_project, "zoo", "build", "--tasks", "arc-easy,arc-eazy")
    assert r.exit_code == 2
    assert "arc-eazy" in r.stderr and "valid" in r.stderr and "openbookqa" in r.stderr
    r = cli("--project", tiny_project, "zoo", "add", str(tiny_project.parent), "--task", "nope")
    assert r.exit_code == 2 and "valid tasks" in r.stderr


def test_zoo_add_registers_and_rejects_foreign_adapter(cli, tiny, tiny_project, tmp_path):
    import torch

    model = tiny[0]
    save_adapter(tmp_path / "mine", random_adapter(model, r=4, seed=1))
    r = cli("--project", tiny_project, "--json", "zoo", "add", tmp_path / "mine", "--task", "boolq")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["added"][0]["id"] == "mine"
    zoo = Zoo.load(tiny_project.parent / "runs" / "zoo")
    e = zoo.get("mine")
    assert e.source == "added" and e.task == "boolq" and zoo.path_of(e) == (tmp_path / "mine").resolve()
    assert len(e.condition) == 64
    # An adapter made for a wider base model: q_proj 64 -> 64 instead of 32 -> 32.
    name = "model.layers.0.self_attn.q_proj"
    save_adapter(tmp_path / "foreign", {name: LoraModule(torch.randn(4, 64), torch.randn(64, 4), 2.0)})
    r = cli("--project", tiny_project, "zoo", "add", tmp_path / "foreign", "--task", "boolq")
    assert r.exit_code == 2
    assert name in r.stderr and "(4, 64)" in r.stderr and "32->32" in r.stderr
    assert [x.id for x in Zoo.load(tiny_project.parent / "runs" / "zoo").entries] == ["mine"]
    r = cli("--project", tiny_project, "zoo", "add", tmp_path / "mine", "--task", "boolq")
    assert r.exit_code == 2 and "already in" in r.stderr


def test_zoo_score_reports_base_and_every_teacher(built, tiny, tmp_path):
    root = _copy_project(built, tmp_path)
    resolved = load_config(root / "llgbm.toml")
    rep = score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny).to_dict()
    assert set(rep["tasks"]) == {"arc-easy", "boolq"}
    for task, t in rep["tasks"].items():
        assert t["n"] == 6 and 0 <= t["base"] <= 1
        assert sorted(t["adapters"]) == [i for i in IDS if i.startswith(task)]
        assert t["last"] == f"{task}-s00006"
    assert rep["beats_base"]["of"] == 2
    saved = json.loads((root / "runs/zoo/scores.json").read_text())
    assert {t: {k: v for k, v in r.items() if k not in ("questions", "question_ids", "score_key")}
            for t, r in saved["tasks"].items()} == rep["tasks"]
    for task, t in saved["tasks"].items():  # every question's score is kept: the accuracies are their means
        assert len(t["question_ids"]) == 6 and t["questions"]["base"] and set(t["questions"]) == {"base", *t["adapters"]}
        for aid, acc in t["adapters"].items():
            assert sum(t["questions"][aid]) / 6 == pytest.approx(acc)
            vb = t["vs_base"][aid]
            assert vb["diff"] == pytest.approx(acc - t["base"]) and vb["n"] == 6
            assert vb["beats_base_2se"] == (vb["se"] > 0 and vb["diff"] >= 2 * vb["se"])
            from scipy.stats import binomtest

            won = sum(x > y for x, y in zip(t["questions"][aid], t["questions"]["base"]))
            lost = sum(x < y for x, y in zip(t["questions"][aid], t["questions"]["base"]))
            assert vb["test"] == "mcnemar" and vb["p"] == pytest.approx(
                binomtest(won, won + lost, 0.5).pvalue if won + lost else 1.0)
    ex = rep["teacher_beats_base_exact"]
    assert ex["of"] == len(saved["tasks"]) and set(ex["p_holm"]) == set(saved["tasks"])
    assert all(ex["p_holm"][t] >= ex["p"][t] for t in ex["p"])  # the adjusted p is never smaller
    across = rep["teacher_vs_base_across_tasks"]  # the teachers as a group: one difference per task
    diffs = [saved["tasks"][t]["vs_base"][saved["tasks"][t]["last"]]["diff"] for t in ex["p"]]
    assert across["n"] == len(diffs) and across["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert across["above"] == sum(d > 0 for d in diffs) and across["below"] == sum(d < 0 for d in diffs)
    from llgbm_cli.commands.zoo import across_line

    assert across_line(across).startswith(f"across the {len(diffs)} tasks the last checkpoint is {across['mean']:+.3f} [")
    assert across_line({**across, "low": None}) is None  # one task: no interval, no line
    last = score_zoo(resolved, tasks=["boolq"], test_sample=6, checkpoints="last", model_and_tokenizer=tiny)
    assert list(last.to_dict()["tasks"]["boolq"]["adapters"]) == ["boolq-s00006"]
    assert last.reused == 2  # base and the last checkpoint: the same questions, adapters and form as before


def test_zoo_score_reuses_what_it_scored_before(built, tiny, tmp_path, monkeypatch):
    import llgbm_cli.tasks.evaluate as ev

    root = _copy_project(built, tmp_path)
    resolved = load_config(root / "llgbm.toml")
    first = score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny)
    assert first.reused == 0
    calls = []
    real = ev.score_records_many
    monkeypatch.setattr(ev, "score_records_many", lambda *a, **k: calls.extend(a[2]) or real(*a, **k))
    # Nothing changed: every score comes from scores.json and the base model is not even loaded.
    again = score_zoo(resolved, test_sample=6, model_and_tokenizer=None)
    assert again.reused == 6 and calls == [] and again.to_dict() == {**first.to_dict(), "reused": 6}
    # A rebuilt checkpoint (another weights hash) is scored again; another sample re-scores the task.
    zoo = Zoo.load(root / "runs/zoo")
    e = zoo.get("boolq-s00006")
    save_adapter(zoo.path_of(e), {n: LoraModule(m.A, m.B * 2, m.scaling) for n, m in load_adapter(zoo.path_of(e)).modules.items()},
                 alpha=8.0, base_model="tiny-llama", force=True)
    e.sha256 = weights_sha256(zoo.path_of(e))
    zoo.save()
    third = score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny)
    assert third.reused == 5 and len(calls) == 1
    assert third.tasks["boolq"]["sha256"]["boolq-s00006"] == e.sha256
    fourth = score_zoo(resolved, tasks=["arc-easy"], test_sample=5, model_and_tokenizer=tiny)
    assert fourth.reused == 0 and len(calls) == 3
    saved = json.loads((root / "runs/zoo/scores.json").read_text())["tasks"]
    assert saved["arc-easy"]["n"] == 5 and saved["boolq"]["n"] == 6  # the task not scored now is kept


def test_zoo_score_stopped_part_way_keeps_the_tasks_it_finished(built, tiny, tmp_path, monkeypatch):
    """Each task's scores are saved when it finishes: a run stopped in its second task leaves the first
    in scores.json, and the rerun scores only what is missing."""
    import llgbm_cli.tasks.evaluate as ev

    root = _copy_project(built, tmp_path)
    resolved = load_config(root / "llgbm.toml")
    real = ev.score_records_many

    def stop_in_boolq(model, tok, ads, form, recs, **k):
        if any("boolq" in str(getattr(a, "path", "")) or "boolq" in r.id for a in ads for r in recs[:1]):
            raise KeyboardInterrupt
        return real(model, tok, ads, form, recs, **k)

    monkeypatch.setattr(ev, "score_records_many", stop_in_boolq)
    with pytest.raises(KeyboardInterrupt):
        score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny)
    saved = json.loads((root / "runs/zoo/scores.json").read_text())["tasks"]
    assert list(saved) == ["arc-easy"] and len(saved["arc-easy"]["question_ids"]) == 6
    monkeypatch.setattr(ev, "score_records_many", real)
    rerun = score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny)
    assert rerun.reused == 3 and set(rerun.tasks) == {"arc-easy", "boolq"}  # arc-easy's base and two teachers


def test_zoo_score_scores_a_tasks_checkpoints_together_as_each_alone(built, tiny, tmp_path, monkeypatch):
    import llgbm_cli.services.zoo as zoo_service
    import llgbm_cli.tasks.scoring as scoring

    root = _copy_project(built, tmp_path)
    resolved = load_config(root / "llgbm.toml")
    zoo = Zoo.load(root / "runs/zoo")
    for e in zoo.entries:  # teachers on the upper layer only, so the layer below is shared
        ad = load_adapter(zoo.path_of(e))
        save_adapter(zoo.path_of(e), {n: m for n, m in ad.modules.items() if ".layers.1." in n},
                     alpha=8.0, base_model="tiny-llama", force=True)
        e.sha256 = weights_sha256(zoo.path_of(e))
    zoo.save()
    calls = []
    real = scoring.record_prompt
    monkeypatch.setattr(scoring, "record_prompt", lambda *a, **k: calls.append(1) or real(*a, **k))
    together = score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny).to_dict()
    assert calls  # the base layer ran once per batch for both checkpoints of a task
    (root / "runs/zoo/scores.json").unlink()
    calls.clear()
    monkeypatch.setattr(zoo_service, "SCORE_GROUP", 1)
    alone = score_zoo(resolved, test_sample=6, model_and_tokenizer=tiny).to_dict()
    assert not calls and alone == together
    assert {len(t["adapters"]) for t in alone["tasks"].values()} == {2}


def test_heldout_split_scores_run_zero_on_the_train_records_it_did_not_see(built, tiny, tmp_path):
    from conftest import TINY_TOML

    from llgbm_cli.errors import InputError
    from llgbm_cli.services.zoo import run_seed, trajectory_subset
    from llgbm_cli.tasks.registry import registry_for

    # A zoo whose teachers trained on their whole train split holds nothing out: a clear refusal.
    with pytest.raises(InputError, match="--split heldout.*zoo.data_fraction < 1"):
        score_zoo(built[1], split="heldout", model_and_tokenizer=tiny)
    root = tmp_path / "p"
    root.mkdir()
    (root / "llgbm.toml").write_text(TINY_TOML.replace(
        'tasks = ["arc-easy", "boolq"]\nsteps = 6', 'tasks = ["boolq"]\nruns = 2\ndata_fraction = 0.5\nsteps = 6'))
    resolved = load_config(root / "llgbm.toml")
    build_zoo(resolved, model_and_tokenizer=tiny)
    rep = score_zoo(resolved, split="heldout", test_sample=1000, model_and_tokenizer=tiny)
    t = json.loads((root / "runs/zoo/scores-heldout.json").read_text())["tasks"]["boolq"]
    assert rep.to_dict()["split"] == "heldout" and sorted(t["adapters"]) == ["boolq-s00004", "boolq-s00006"]
    train = registry_for(resolved).get("boolq").records("train")
    seen = {train[i].id for i in trajectory_subset(len(train), 0.5, run_seed(0, "boolq", 0))}
    assert len(seen) == len(train) // 2
    assert set(t["question_ids"]) == {r.id for r in train} - seen  # exactly the half run 0 never saw
    assert not (root / "runs/zoo/scores.json").exists()  # the test-split report is not overwritten
    some = score_zoo(resolved, split="heldout", test_sample=3, model_and_tokenizer=tiny).tasks["boolq"]
    assert len(some["question_ids"]) == 3 and set(some["question_ids"]) < set(t["question_ids"])


def test_trajectories_train_on_disjoint_blocks_while_runs_times_fraction_is_at_most_one():
    from llgbm_cli.services.zoo import trajectory_overlap, trajectory_subset

    for n in (7, 100, 1001):
        halves = [set(trajectory_subset(n, 0.5, 123, r)) for r in range(2)]
        assert not halves[0] & halves[1] and len(halves[0]) == n // 2
        thirds = [set(trajectory_subset(n, 0.3, 9, r)) for r in range(3)]
        assert all(not a & b for i, a in enumerate(thirds) for b in thirds[i + 1:])
        assert trajectory_overlap(n, 0.5, 2) is None and trajectory_overlap(n, 0.3, 3) is None
    # run 0 is the first block of the permutation: the records an earlier single-run build trained on
    assert trajectory_subset(10, 0.5, 5, 0) == trajectory_subset(10, 0.5, 5)
    # above 1 the blocks wrap around, and the overlap is stated
    a, b = (set(trajectory_subset(100, 0.6, 1, r)) for r in range(2))
    assert len(a & b) == 20
    assert "share up to 20 of their 60" in trajectory_overlap(100, 0.6, 2)


def test_rows_left_by_other_processes_are_adopted_on_resume(built, tiny, tmp_path):
    # What an interrupted sharded build leaves: a non-main process's finished checkpoints are
    # folders plus `.state/<id>.row.json`, not yet in zoo.jsonl (only the main process writes it).
    root = _copy_project(built, tmp_path)
    zdir = root / "runs" / "zoo"
    full = (zdir / "zoo.jsonl").read_text()
    resolved = load_config(root / "llgbm.toml")
    spec = build_spec(resolved)
    zoo = Zoo.load(zdir)
    boolq = zoo.by_task("boolq")
    zoo.entries = [e for e in zoo.entries if e.task != "boolq"]
    zoo.save()
    _write_pending(zdir / ".state", boolq[0], spec)
    _write_pending(zdir / ".state", boolq[1], {**spec, "seed": 99})  # other settings: not adopted
    res = build_zoo(resolved, model_and_tokenizer=tiny)
    by_task = {t.task: t for t in res.tasks}
    assert by_task["arc-easy"].steps_run == 0 and by_task["arc-easy"].built == []
    assert by_task["boolq"].built == ["boolq-s00006"] and by_task["boolq"].resumed_from == 4
    assert (zdir / "zoo.jsonl").read_text() == full  # same rows, same order, same weights
    assert not list((zdir / ".state").glob("*.row.json"))


@pytest.mark.slow
def test_two_accelerate_processes_build_the_same_zoo_as_one(tmp_path):
    from conftest import TINY_TOML, launch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    zoos = {}
    for n in (1, 2):
        root = tmp_path / f"p{n}"
        root.mkdir()
        (root / "llgbm.toml").write_text(TINY_TOML)
        tail = ["llgbm_cli", "-p", root / "llgbm.toml", "--quiet", "--json", "zoo", "build", "--tasks", "arc-easy,boolq,piqa"]
        rc, stdout, stderr = launch(tail, n, env=env, cwd=root, timeout=300)
        assert rc == 0, stderr[-3000:]
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1  # only the main process reports
        rep = json.loads(lines[0])
        assert rep["processes"] == n and rep["built"] == 6
        assert [t["task"] for t in rep["tasks"]] == ["arc-easy", "boolq", "piqa"]
        zoos[n] = root / "runs" / "zoo"
    assert (zoos[2] / "zoo.jsonl").read_bytes() == (zoos[1] / "zoo.jsonl").read_bytes()
    for e in Zoo.load(zoos[1]).entries:
        one = (zoos[1] / e.path / "adapter_model.safetensors").read_bytes()
        assert (zoos[2] / e.path / "adapter_model.safetensors").read_bytes() == one
    assert not list((zoos[2] / ".state").glob("*.row.json"))


def test_runs_add_independent_trajectories_on_data_subsets(built, tiny, tmp_path):
    """`zoo.runs = 2` adds a second trajectory per task with its own seed and data subset; run 0 is
    the zoo built without the key (same ids, same bytes), and a rerun skips every checkpoint."""
    import torch

    root = _copy_project(built, tmp_path)
    text = (root / "llgbm.toml").read_text()
    assert "[zoo]" in text
    (root / "llgbm.toml").write_text(text.replace("[zoo]", "[zoo]\nruns = 2", 1))
    resolved = load_config(root / "llgbm.toml")
    res = build_zoo(resolved, model_and_tokenizer=tiny).to_dict()
    new = [b for t in res["tasks"] for b in t["built"]]
    assert sorted(new) == ["arc-easy-r1-s00004", "arc-easy-r1-s00006", "boolq-r1-s00004", "boolq-r1-s00006"]
    assert res["skipped"] == 4  # run 0 is the existing zoo, untouched
    zoo = Zoo.load(root / "runs" / "zoo")
    by = {e.id: e for e in zoo.entries}
    assert by["arc-easy-r1-s00006"].task == "arc-easy" and by["arc-easy-r1-s00006"].seed != by["arc-easy-s00006"].seed
    a0 = load_adapter(zoo.path_of(by["arc-easy-s00006"])).modules
    a1 = load_adapter(zoo.path_of(by["arc-easy-r1-s00006"])).modules
    assert any(not torch.equal(a0[n].B, a1[n].B) for n in a0)
    assert build_zoo(resolved, model_and_tokenizer=tiny).to_dict()["built"] == 0

    # A data subset per run changes what each trajectory trains on, so it is a different build.
    (root / "llgbm.toml").write_text(text.replace("[zoo]", "[zoo]\nruns = 2\ndata_fraction = 0.5", 1))
    sub = load_config(root / "llgbm.toml")
    assert build_spec(sub) != build_spec(resolved) and build_spec(resolved)["zoo"].get("data_fraction") is None


def test_loo_nearest_task_by_hand():
    import torch

    from llgbm_cli.evaluation.delta_metrics import loo_nearest_task

    X = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.2]])
    tasks = ["a", "a", "b", "b", "b"]  # the last "b" row sits among the "a" rows
    r = loo_nearest_task(X, tasks)
    assert r["per_task"] == {"a": 1.0, "b": pytest.approx(2 / 3)} and r["accuracy"] == pytest.approx(4 / 5)
    # Leaving out each row's whole group: rows 0/1 (group a0) must find a neighbour elsewhere.
    g = loo_nearest_task(X, tasks, ["a0", "a0", "b0", "b1", "b1"])
    assert g["per_task"]["a"] == 0.0 and g["n"] == 5
    assert r["within_task_cosine"] > 0 and r["between_task_cosine"] > 0


def test_zoo_separation_reads_the_cache(built, tiny, cli, tmp_path):
    from llgbm_cli.services.cache_deltas import run_cache_deltas

    root = _copy_project(built, tmp_path)
    run_cache_deltas(load_config(root / "llgbm.toml"))
    r = cli("-p", root / "llgbm.toml", "--json", "zoo", "separation")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["adapters"] == 4 and d["tasks"] == 2
    lo = d["raw"]["leave_one_checkpoint_out"]
    assert lo["n"] == 4 and 0 <= lo["accuracy"] <= 1 and set(lo["per_task"]) == {"arc-easy", "boolq"}
    assert d["raw"]["leave_one_trajectory_out"]["n"] == 4


def test_bf16_mixed_teachers_keep_float32_weights_and_land_near_float32_ones(tiny_project, tiny, monkeypatch):
    """zoo.mixed_precision = bf16: the passes run under bfloat16 autocast, the saved LoRA factors are
    float32, training still lowers nothing to NaN, and the teachers end close to the float32 ones
    (same seed, same batches); the setting is part of the build spec (a zoo of the other precision is
    not mixed in) while the default leaves the spec as it was."""
    import torch

    from llgbm_cli.models import native_bf16

    monkeypatch.chdir(tiny_project.parent)
    fp = load_config(tiny_project)
    bf = load_config(tiny_project, {"zoo.mixed_precision": "bf16", "zoo.path": "zoo-bf16"})
    assert "mixed_precision" not in build_spec(fp, "boolq")["zoo"]
    assert build_spec(bf, "boolq")["zoo"]["mixed_precision"] == "bf16"
    for r in (fp, bf):
        build_zoo(r, tasks=["boolq"], model_and_tokenizer=tiny)
    a = load_adapter(tiny_project.parent / "runs" / "zoo" / "adapters" / "boolq-s00006")
    b = load_adapter(tiny_project.parent / "runs" / "zoo-bf16" / "adapters" / "boolq-s00006")
    for k, m in b.modules.items():
        assert m.A.dtype == torch.float32 and torch.isfinite(m.A).all() and torch.isfinite(m.B).all()
        wa, wb = a.modules[k].delta_weight().flatten(), m.delta_weight().flatten()
        assert torch.nn.functional.cosine_similarity(wa, wb, dim=0) > 0.9, k
    assert isinstance(native_bf16(torch.device("cpu")), bool)


def test_bf16_on_a_device_without_it_is_refused_naming_the_key(monkeypatch):
    import torch

    from llgbm_cli import models
    from llgbm_cli.errors import InputError

    monkeypatch.setattr(models, "native_bf16", lambda device: False)
    with pytest.raises(InputError, match=r"zoo.mixed_precision = bf16: cuda:0 has no bfloat16 support; set "
                                         r"zoo.mixed_precision = no \(float32\)"):
        models.require_bf16(torch.device("cuda:0"), "zoo.mixed_precision")
    with pytest.raises(InputError, match=r"model.dtype = bfloat16: .* set model.dtype = float32"):
        models.require_bf16(torch.device("cuda:0"), "model.dtype", "bfloat16", "float32")
    models.require_bf16(torch.device("cpu"), "zoo.mixed_precision")  # emulated on a CPU: a notice, no error
