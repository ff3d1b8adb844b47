"""Print which torch and FAISS builds this Python environment holds (the last step of `make setup`).

    python scripts/setup_report.py          # one line per item
    python scripts/setup_report.py --json   # one JSON object

Sizes are the installed files of each distribution, so the numbers match `du` of site-packages.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata


def _size(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        try:
            total += f.locate().stat().st_size
        except OSError:
            pass
    return total


def report() -> dict:
    dists = {d.metadata["Name"].lower(): d for d in metadata.distributions()}
    out: dict = {}
    if "torch" in dists:
        import torch

        out["torch"] = torch.__version__
        out["torch_build"] = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    faiss = [n for n in ("faiss-cpu", "faiss-gpu") if n in dists]
    out["faiss"] = ", ".join(f"{n} {dists[n].version}" for n in faiss) or "missing"
    cuda = sorted(n for n in dists if n.startswith("nvidia-"))
    out["cuda_wheels"] = len(cuda)
    out["cuda_wheels_mb"] = round(sum(_size(dists[n]) for n in cuda) / 2**20)
    out["total_mb"] = round(sum(_size(d) for d in dists.values()) / 2**20)
    return out


def main() -> int:
    r = report()
    if "--json" in sys.argv[1:]:
        print(json.dumps(r))
        return 0
    print(f"torch: {r.get('torch', 'missing')} ({r.get('torch_build', '-')} build)")
    print(f"faiss: {r['faiss']}")
    print(f"CUDA wheels (nvidia-*): {r['cuda_wheels']}, {r['cuda_wheels_mb']} MB; "
          f"all installed packages: {r['total_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
