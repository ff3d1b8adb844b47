"""Shared fixtures: a tiny random Llama (2 layers, hidden 32) and a CLI runner.

The tiny model is the built-in `tiny-llama` (seeded, SmolLM2's tokenizer); the real built-in
models are used by tests marked `slow`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core), each worker gets its share of the
    cores for torch's threads, so that the workers do not oversubscribe them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def file_tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too), files with their sha256: two equal
    trees mean nothing was lost, changed or left behind."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny random Llama; do not mutate the model (use tiny_model_copy)."""
    from llgbm_cli.models import load_base_model

    return load_base_model("tiny-llama", device="cpu")


@pytest.fixture
def tiny_model_copy(tiny):
    return copy.deepcopy(tiny[0])


@pytest.fixture(scope="session")
def smollm2():
    from llgbm_cli.models import load_base_model

    return load_base_model("smollm2-135m-instruct", device="cpu")


def invoke(*args, **kw):
    """Invoke the llgbm app in-process: invoke(args...) -> click Result (stdout and stderr separate)."""
    from typer.testing import CliRunner

    from llgbm_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture
def cli():
    """The in-process llgbm app as a fixture: cli(args...) -> click Result."""
    return invoke


TINY_TOML = """
[project]
workdir = "runs"
seed = 0

[model]
base = "tiny-llama"
device = "cpu"

[lora]
rank = 4
alpha = 8.0
target_modules = ["q_proj", "v_proj"]

[data]
datasets = ["arc-easy", "boolq"]
test_sample = 8

[zoo]
tasks = ["arc-easy", "boolq"]
steps = 6
warmup_steps = 2
checkpoints = 2
batch_size = 2

[probes]
source = "generic"
count = 4

[delta]
adapters_per_batch = 4
"""


@pytest.fixture
def tiny_project(tmp_path):
    """A project folder whose llgbm.toml configures the tiny world; returns its path."""
    p = tmp_path / "llgbm.toml"
    p.write_text(TINY_TOML)
    return p


def launch(tail: list, processes: int, *, env: dict, cwd, timeout: int):
    """Run ``python -m <tail>`` (tail[0] is "llgbm_cli") as ``processes`` gloo processes under
    ``accelerate launch``, or, for one process, in this interpreter on one thread (what
    OMP_NUM_THREADS=1 gives the launched processes, so that float results can be compared bit for
    bit) without paying a fresh interpreter's imports. Returns (returncode, stdout, stderr)."""
    import subprocess

    if processes > 1:
        r = subprocess.run(launch_cmd(tail, processes), capture_output=True, text=True, env=env, cwd=cwd,
                           timeout=timeout)
        return r.returncode, r.stdout, r.stderr
    assert tail[0] == "llgbm_cli", tail
    import contextlib

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.chdir(cwd):
            r = invoke(*tail[1:])
    finally:
        torch.set_num_threads(threads)
    return r.exit_code, r.stdout, r.stderr


def launch_cmd(tail: list, processes: int) -> list:
    """``python -m <tail>`` as one process, or under ``accelerate launch`` as ``processes`` gloo
    processes on the CPU (accelerate's --cpu starts one process unless MPI is set up; --multi_gpu
    with no CUDA gives gloo processes)."""
    import sys

    tail = [str(a) for a in tail]
    if processes == 1:
        return [sys.executable, "-m", *tail]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *tail]
