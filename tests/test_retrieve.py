"""`index build` and `retrieve` end to end on the tiny world (real adapters, real cached deltas)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY_TOML
from delta_world import TASK_PROMPTS, build_tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny):
    """A tiny project with 3 tasks × 3 adapters, their deltas cached and a flat index built."""
    d = tmp_path_factory.mktemp("world")
    p = d / "llgbm.toml"
    p.write_text(TINY_TOML)
    build_tiny_world(p, tiny[0])
    return p


def _run(cli, project, *args):
    return cli("-p", project, "--json", *args)


@pytest.fixture(scope="module")
def indexed(world):
    from typer.testing import CliRunner

    from llgbm_cli.app import app

    r = CliRunner().invoke(app, ["-p", str(world), "--json", "index", "build"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return world, json.loads(r.stdout)


def test_index_build_summary_and_files(indexed):
    project, summary = indexed
    assert summary["kind"] == "flat" and summary["count"] == 9 and summary["dim"] == 32
    folder = project.parent / "runs" / "index"
    for f in ("index.faiss", "ids.json", "index.json", "llgbm.json"):
        assert (folder / f).exists()
    meta = json.loads((folder / "index.json").read_text())
    assert meta["source"]["spec"]["layers"] == [-1] and meta["source"]["base_fingerprint"]
    prov = json.loads((folder / "llgbm.json").read_text())
    assert prov["config"]["index"]["kind"] == "flat"


def test_rebuild_needs_force(cli, indexed):
    project, _ = indexed
    r = _run(cli, project, "index", "build")
    assert r.exit_code == 2 and "--force" in r.stderr
    r = _run(cli, project, "index", "build", "--force", "--kind", "hnsw")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "hnsw"
    r = _run(cli, project, "index", "build", "--force")  # back to flat for the other tests
    assert r.exit_code == 0


def test_retrieve_adapter_delta_returns_itself_first(cli, indexed):
    project, _ = indexed
    r = _run(cli, project, "retrieve", "--adapter-delta", "boolq-1", "-k", "3")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    hits = out["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "boolq-1" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(h["task"] == "boolq" for h in hits)  # same-task adapters are the nearest
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_retrieve_plain_output_lists_rank_id_task_score(cli, indexed):
    project, _ = indexed
    r = cli("-p", project, "--quiet", "retrieve", "--adapter-delta", "piqa-0")
    assert r.exit_code == 0, r.stderr
    assert "piqa-0" in r.stdout and "piqa" in r.stdout and "1.0000" in r.stdout


def test_k_larger_than_index_is_clamped_and_said(cli, indexed):
    project, _ = indexed
    out = json.loads(_run(cli, project, "retrieve", "--adapter-delta", "arc-easy-0", "-k", "50").stdout)
    assert len(out["hits"]) == 9 and out["k"] == 9
    assert any("larger than the index" in n for n in out["notes"])


def test_unknown_id_and_kind_and_missing_predictor(cli, indexed):
    project, _ = indexed
    r = _run(cli, project, "retrieve", "--adapter-delta", "nope")
    assert r.exit_code == 2 and "nope" in r.stderr
    r = _run(cli, project, "index", "build", "--force", "--kind", "annoy")
    assert r.exit_code == 2 and "flat, hnsw, ivf, ivfpq" in r.stderr
    r = _run(cli, project, "index", "build", "--force", "--kind", "ivfpq")
    assert r.exit_code == 2 and "at least 256 deltas" in r.stderr and "(there are 9)" in r.stderr
    r = _run(cli, project, "index", "build", "--force", "--set", "index.ivfpq_code_size=0")
    assert r.exit_code == 2 and "index.ivfpq_code_size" in r.stderr
    r = _run(cli, project, "retrieve", "Is the sky blue?")
    assert r.exit_code == 2 and "train delta-only --variant b2" in r.stderr
    assert "Traceback" not in r.stderr


def test_index_from_another_spec_is_refused(cli, indexed, tmp_path):
    project, _ = indexed
    copy = tmp_path / "copy"
    shutil.copytree(project.parent, copy)
    meta_p = copy / "runs" / "index" / "index.json"
    meta = json.loads(meta_p.read_text())
    meta["source"]["spec"] = dict(meta["source"]["spec"], pool="mean")
    meta_p.write_text(json.dumps(meta))
    r = _run(cli, copy / "llgbm.toml", "retrieve", "--adapter-delta", "boolq-0")
    assert r.exit_code == 2 and "delta spec" in r.stderr and "index build --force" in r.stderr


def test_empty_cache_is_refused(cli, tiny_project):
    from llgbm_cli.deltas.cache import DeltaCache

    folder = tiny_project.parent / "runs" / "deltas"
    DeltaCache(folder, {"spec": {"layers": [-1]}, "dim": 32}).save()
    r = _run(cli, tiny_project, "index", "build")
    assert r.exit_code == 2 and "empty" in r.stderr and "cache-deltas" in r.stderr
    r = _run(cli, tiny_project, "retrieve", "--adapter-delta", "x")
    assert r.exit_code == 2 and "index build" in r.stderr


def test_retrieve_merge_writes_a_peft_adapter_weighted_by_similarity(cli, indexed, tmp_path, tiny):
    import copy

    from peft import PeftModel

    project, _ = indexed
    out = tmp_path / "merged"
    r = _run(cli, project, "retrieve", "--adapter-delta", "arc-easy-1", "-k", "3", "--merge", "linear", "--out", out)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    w = res["merged"]["weights"]
    scores = [h["score"] for h in res["hits"]]
    assert sum(w) == pytest.approx(1.0) and w[0] == pytest.approx(scores[0] / sum(scores))
    PeftModel.from_pretrained(copy.deepcopy(tiny[0]), str(out))
    r = _run(cli, project, "retrieve", "--adapter-delta", "arc-easy-1", "--merge", "linear")
    assert r.exit_code == 2 and "--out" in r.stderr


def test_similarity_weights_clip_negatives():
    from llgbm_cli.services.retrieve import similarity_weights

    w, note = similarity_weights([0.6, 0.2, -0.1])
    assert w == pytest.approx([0.75, 0.25, 0.0]) and "clipped" in note
    w, note = similarity_weights([-0.5, -0.1])
    assert w == [0.5, 0.5] and "equal" in note


@pytest.mark.slow
def test_text_query_through_b2_finds_the_task(cli, indexed, tmp_path):
    """Real MiniLM encoder: B2 trained on the world, then a task's prompts retrieve that task."""
    project, _ = indexed
    sets = ["--set", "train.b2.hidden=64", "--set", "train.b2.epochs=60",
            "--set", "train.b2.val_fraction=0.0", "--set", "train.b2.dropout=0.0",
            "--set", "train.b2.learning_rate=0.003", "--set", "train.b2.condition_prompts=3"]
    r = _run(cli, project, "train", "delta-only", "--variant", "b2", "--force", *sets)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["train"] == 9 and res["last"]["loss"] < res["first"]["loss"]
    pf = tmp_path / "boolq.txt"
    pf.write_text("\n".join(TASK_PROMPTS["boolq"][:4]) + "\n")
    r = _run(cli, project, "retrieve", "--prompts-file", pf, "-k", "3")
    assert r.exit_code == 0, r.stderr
    hits = json.loads(r.stdout)["hits"]
    assert hits[0]["task"] == "boolq"
    r = _run(cli, project, "retrieve", TASK_PROMPTS["piqa"][0], "-k", "1")
    assert json.loads(r.stdout)["hits"][0]["task"] == "piqa"

    # behavioural re-ranking: the 8 best predicted hits, re-ranked by how each acts on the query prompts
    r = _run(cli, project, "retrieve", "--prompts-file", pf, "-k", "2", "--rank", "behaviour")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["rank"] == "behaviour" and len(res["considered"]) == 8 and len(res["hits"]) == 2
    scores = sorted((c["score"] for c in res["considered"]), reverse=True)
    assert [h["score"] for h in res["hits"]] == scores[:2] and [h["rank"] for h in res["hits"]] == [1, 2]
    assert [c["predicted_rank"] for c in res["considered"]] == list(range(1, 9))
    assert all(-1 <= c["score"] <= 1 for c in res["considered"])
    r = _run(cli, project, "retrieve", "--adapter-delta", res["hits"][0]["id"], "--rank", "behaviour")
    assert r.exit_code == 2 and "--rank behaviour" in r.stderr
    r = _run(cli, project, "retrieve", "--prompts-file", pf, "--rank", "nope")
    assert r.exit_code == 2 and "--rank" in r.stderr
    # the same re-ranking inside eval's b2 method (the base model handed over, not reloaded)
    r = _run(cli, project, "eval", "-m", "base", "-m", "b2", "--task", "boolq", "--set", "retrieve.rank=behaviour",
             "--set", "eval.test_sample=3", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)
    hits = ev["runs"]["b2"]["hits"]["boolq"]
    assert ev["runs"]["b2"]["rank"] == "behaviour" and len(hits) == 3
    assert all("predicted_rank" in h for h in hits) and [h["score"] for h in hits] == sorted(
        (h["score"] for h in hits), reverse=True)


def test_index_info_reports_source(cli, indexed):
    project, _ = indexed
    r = _run(cli, project, "index", "info")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["count"] == 9 and d["source"]["spec"]["pool"] == "last_token"
    assert d["tasks"] == ["arc-easy", "boolq", "piqa"]


def test_index_can_leave_a_task_out(cli, indexed, tmp_path):
    project, _ = indexed
    out = tmp_path / "loo-index"
    r = _run(cli, project, "index", "build", "--set", "index.exclude_tasks=[\"arc-easy\"]",
             "--set", f"index.path=\"{out}\"")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["count"] == 6
    tasks = set(json.loads((out / "ids.json").read_text())["tasks"])
    assert "arc-easy" not in tasks and "boolq" in tasks
    r = _run(cli, project, "index", "build", "--force", "--set", "index.exclude_tasks=[\"nope\"]",
             "--set", f"index.path=\"{out}\"")
    assert r.exit_code == 2 and "index.exclude_tasks" in r.stderr


def test_index_leaves_out_cached_deltas_of_adapters_the_zoo_no_longer_lists(cli, indexed, tmp_path):
    """A forced zoo rebuild drops checkpoints from the manifest while the delta cache keeps their
    deltas: the index must not offer them (a hit could not be merged)."""
    project, _ = indexed
    zoo = project.parent / "runs" / "zoo" / "zoo.jsonl"
    before = zoo.read_text()
    lines = [x for x in before.splitlines() if x.strip()]
    gone = json.loads(lines[0])["id"]
    out = tmp_path / "pruned-index"
    try:
        zoo.write_text("\n".join(lines[1:]) + "\n")
        r = _run(cli, project, "index", "build", "--set", f"index.path=\"{out}\"")
    finally:
        zoo.write_text(before)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["count"] == 8 and any(gone in n for n in d["notes"])
    assert gone not in json.loads((out / "ids.json").read_text())["ids"]
