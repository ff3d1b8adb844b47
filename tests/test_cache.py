import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from llgbm_cli.adapters import WEIGHTS_FILE, random_adapter, save_adapter
from llgbm_cli.config import load_config
from llgbm_cli.deltas.cache import DeltaCache, cache_lock
from llgbm_cli.errors import InputError, LlgbmError
from llgbm_cli.services.cache_deltas import run_cache_deltas
from llgbm_cli.zoo_manifest import Zoo, ZooEntry


@pytest.fixture
def world(tiny, tiny_project):
    """A tiny project with a 5-adapter zoo; returns (project file, zoo folder)."""
    model = tiny[0]
    zoo_dir = tiny_project.parent / "runs" / "zoo"
    entries = []
    for i in range(5):
        ad = random_adapter(model, r=4, alpha=8.0, seed=i, std=0.05)
        save_adapter(zoo_dir / "adapters" / f"z{i}", ad)
        entries.append(ZooEntry(id=f"z{i}", path=f"adapters/z{i}", task="arc-easy" if i % 2 else "boolq"))
    Zoo(zoo_dir, entries).save()
    return tiny_project, zoo_dir


def _cfg(project, **over):
    return load_config(project, {"delta.flush_seconds": 0, **over}, explicit=True)


def _cache(project):
    return DeltaCache.open(project.parent / "runs" / "deltas")


def test_incremental_reuse_and_changed_weights(world, tiny):
    project, zoo_dir = world
    r1 = run_cache_deltas(_cfg(project))
    assert (r1.computed, r1.reused, r1.failed, r1.rows, r1.dim) == (5, 0, [], 5, 32)
    c1 = _cache(project)
    assert c1.ids == [f"z{i}" for i in range(5)] and c1.matrix().shape == (5, 32)
    assert c1.header["probe_fingerprint"] and c1.header["spec"]["layers"] == [-1]
    assert json.loads((c1.folder / "llgbm.json").read_text())["config"]["model"]["base"] == "tiny-llama"
    r2 = run_cache_deltas(_cfg(project))
    assert (r2.computed, r2.reused) == (0, 5)
    assert torch.equal(_cache(project).matrix(), c1.matrix())
    save_adapter(zoo_dir / "adapters" / "z2", random_adapter(tiny[0], r=4, seed=99, std=0.05), force=True)
    r3 = run_cache_deltas(_cfg(project))
    assert (r3.computed, r3.reused) == (1, 4)
    c3 = _cache(project)
    assert not torch.equal(c3.row("z2"), c1.row("z2")) and torch.equal(c3.row("z1"), c1.row("z1"))


def test_mismatched_spec_or_probes_refused_then_rebuilt(world):
    project, _ = world
    run_cache_deltas(_cfg(project))
    for over in ({"delta.pool": "mean"}, {"probes.count": 3}):
        with pytest.raises(InputError, match="--rebuild"):
            run_cache_deltas(_cfg(project, **over))
    r = run_cache_deltas(_cfg(project, **{"delta.pool": "mean"}), rebuild=True)
    assert (r.computed, r.rows) == (5, 5) and _cache(project).header["spec"]["pool"] == "mean"


def test_interrupted_run_keeps_rows_and_resumes(world):
    project, _ = world
    with pytest.raises(KeyboardInterrupt):
        run_cache_deltas(_cfg(project, **{"delta.adapters_per_batch": 2}), stop_after=1)
    assert _cache(project).ids == ["z0", "z1"]
    r = run_cache_deltas(_cfg(project, **{"delta.adapters_per_batch": 2}))
    assert (r.computed, r.reused, r.rows) == (3, 2, 5)


def test_second_writer_locked_out(world):
    project, _ = world
    with cache_lock(project.parent / "runs" / "deltas"):
        with pytest.raises(LlgbmError, match="another llgbm process is writing"):
            run_cache_deltas(_cfg(project))


def test_bad_adapters_skipped_and_reported(world, tiny, cli, tmp_path):
    project, _ = world
    other = tmp_path / "ads"
    model = tiny[0]
    save_adapter(other / "good", random_adapter(model, r=2, seed=7))
    bad = random_adapter(model, r=2, seed=8)
    for m in bad.modules.values():
        m.A = torch.zeros(2, 16)  # in_features 16, the base has 32
    save_adapter(other / "misfit", bad)
    save_adapter(other / "corrupt", random_adapter(model, r=2, seed=9))
    (other / "corrupt" / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    r = cli("-p", project, "--json", "cache-deltas", "--adapters", str(other / "*"), "--set", "delta.flush_seconds=0")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["computed"] == 1 and out["rows"] == 1
    failed = {f["id"]: f["error"] for f in out["failed"]}
    assert set(failed) == {"misfit", "corrupt"}
    assert "does not fit the base model" in failed["misfit"] and "corrupt" in failed["corrupt"]
    assert "could not be cached" in r.stderr and "Traceback" not in r.stderr
    assert _cache(project).ids == ["good"]


def test_cli_errors_are_one_line(world, cli, tmp_path):
    project, _ = world
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for args, msg in [(["--probes", "nope"], "valid: generic"), (["--probes", str(empty)], "empty"),
                      (["--adapters", str(tmp_path / "none*")], "matches no adapter")]:
        r = cli("-p", project, "cache-deltas", *args)
        assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_accelerate_two_processes_match_one(world, tmp_path):
    project, _ = world
    run_cache_deltas(_cfg(project, **{"delta.adapters_per_batch": 2}))
    one = _cache(project)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llgbm_cli", "-p", str(project), "--json",
           "cache-deltas", "--adapters-per-batch", "2", "--set", "delta.cache=deltas2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1  # only the main process reports
    res = json.loads(lines[0])
    assert res["processes"] == 2 and res["computed"] == 5
    two = DeltaCache.open(project.parent / "runs" / "deltas2")
    assert sorted(two.ids) == sorted(one.ids)
    for id_ in one.ids:
        assert torch.allclose(two.row(id_), one.row(id_), rtol=1e-5, atol=1e-6)
    assert two.header["base_fingerprint"] == one.header["base_fingerprint"]
