"""scripts/device_check.sh: the GPU check runs its every step on the CPU with --dry-run (tiny sizes), one
JSON line per check, and refuses to run for real where there is no GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_runs_every_check_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--dry-run"], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    checks = {x["check"]: x for x in lines}
    assert list(checks) == ["device", "precision", "cache_deltas", "index", "launch"]
    for name, x in checks.items():
        assert x["device"] == "cpu" and "error" not in x["result"], (name, x)
    p = checks["precision"]["result"]
    assert p["teacher_fp32_s_per_step"] > 0 and p["teacher_bf16_s_per_step"] > 0 and p["delta_cosine_min"] > 0.99
    assert checks["cache_deltas"]["result"]["max_rel_diff"] < 1e-3
    assert checks["launch"]["result"]["processes"] == 1 and checks["launch"]["result"]["folds"] == ["boolq"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_without_a_gpu_it_says_so_and_exits_2():
    r = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh")], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=60)
    assert r.returncode == 2 and "no nvidia-smi here" in r.stderr and r.stdout == ""
