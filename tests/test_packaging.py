"""The install stays lean by default: no CUDA libraries unless asked for (pyproject + Makefile)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_default_dependencies_are_cpu_only(project):
    names = [_name(r) for r in project["dependencies"]]
    assert "faiss-cpu" in names
    gpu_only = [n for n in names if n == "faiss-gpu" or n.startswith("faiss-gpu-") or n.startswith("nvidia-")]
    assert not gpu_only, f"default install pulls CUDA packages: {gpu_only}"
    # torch is pinned by the Makefile (TORCH), never to a CUDA-only variant here.
    assert not any(n.startswith("torch") and n != "torch" for n in names)


def test_gpu_extra_adds_faiss_gpu(project):
    extras = project["optional-dependencies"]
    assert [_name(r) for r in extras["gpu"]] == ["faiss-gpu"]
    for name, reqs in extras.items():
        if name != "gpu":
            assert not any("gpu" in _name(r) or _name(r).startswith("nvidia-") for r in reqs), name


def _make_n(tmp_path, *args: str) -> str:
    # Dry run of `make setup` in a fresh venv path; PATH without nvidia-smi = a machine without CUDA.
    env = {k: v for k, v in os.environ.items() if k not in ("GPU", "TORCH", "TORCH_PIP_ARGS", "MAKEFLAGS")}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", *args], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_setup_default_is_cpu(tmp_path):
    if any(os.access(os.path.join(d, "nvidia-smi"), os.X_OK) for d in ("/usr/bin", "/bin")):
        pytest.skip("nvidia-smi on the default PATH: GPU=1 is the default here")
    out = _make_n(tmp_path)
    assert 'pip install -q  "torch==2.13.0"' in out
    assert '-e ".[dev]"' in out
    assert "faiss-gpu" not in out and "gpu]" not in out


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_setup_gpu_switch(tmp_path):
    url = "https://download.pytorch.org/whl/cu128"
    out = _make_n(tmp_path, "GPU=1", f"TORCH_PIP_ARGS=--index-url {url}")
    assert f'pip install -q --index-url {url} "torch==2.13.0"' in out
    assert '-e ".[dev,gpu]"' in out
    assert "uninstall -q -y faiss-cpu" in out and "--no-deps \"faiss-gpu" in out


def test_license_and_citation_match_the_package(project):
    lic = (REPO / "LICENSE").read_text()
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in lic and "Version 2.0, January 2004" in lic and "END OF TERMS AND CONDITIONS" in lic
    cff = (REPO / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M)
    assert re.search(rf"^version: {re.escape(project['version'])}$", cff, re.M)
    assert re.search(r"^license: Apache-2\.0$", cff, re.M)
