"""The work folder's layout: every output a command writes, where it lives and which command makes it.

One table (:data:`OUTPUTS`) names each output, and every trained method's run is one more (from
its descriptor, :mod:`llgbm_cli.training.methods`); :func:`path` resolves it for a project (config
paths such as ``zoo.path`` are taken relative to the work folder, absolute ones stay), :func:`made_by`
gives the command that makes it and :func:`hint` the "run `…` first" line that errors end with. A new
output is one row here, so every message that points at it stays in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .training.methods import FINAL, TRAINED


@dataclass(frozen=True)
class Output:
    key: str
    what: str  # a few words for messages: "the delta cache"
    command: str  # the command that makes it
    location: Callable[[object], str]  # config -> folder, relative to the work folder (or absolute)
    kind: Optional[str] = None  # its kind in the output-folder policy (io.OUTPUT_MARKERS)


OUTPUTS: dict[str, Output] = {o.key: o for o in (
    Output("zoo", "the adapter zoo", "llgbm zoo build", lambda c: c.zoo.path, "zoo"),
    Output("deltas", "the delta cache", "llgbm cache-deltas", lambda c: c.delta.cache, "delta cache"),
    Output("index", "the delta index", "llgbm index build", lambda c: c.index.path, "delta index"),
    Output("eval", "the evaluation", "llgbm eval", lambda c: c.eval.out, "evaluation"),
    Output("ablation", "the ablation grid", "llgbm ablate", lambda c: c.ablation.out),
    Output("merges", "merged adapters", "llgbm merge --out / llgbm retrieve --merge", lambda c: "merges"),
)}



def outputs() -> dict[str, Output]:
    """Every output, the trained methods' runs after the index (in the order ``config show`` lists them)."""
    rows = list(OUTPUTS.items())
    at = next(i for i, (k, _) in enumerate(rows) if k == "index") + 1
    runs = [(m.name, Output(m.name, m.what, m.command, lambda c, loc=m.location: loc, m.kind))
            for m in TRAINED.values() if m.name not in OUTPUTS]
    return dict(rows[:at] + runs + rows[at:])


def _output(key: str) -> Output:
    known = outputs()
    try:
        return known[key]
    except KeyError:
        raise KeyError(f"no work-folder output {key!r}; known: {', '.join(known)}") from None


def path(resolved, key: str) -> Path:
    """Where output ``key`` lives for this project (config paths resolved against the work folder)."""
    out = _output(key)
    return resolved.resolve_path(out.location(resolved.config))


def relative(key: str, config) -> str:
    """The configured location of ``key`` as written (relative to the work folder unless absolute)."""
    return str(_output(key).location(config))


def kind(key: str) -> str:
    """The kind of output ``key`` in the output-folder policy (what ``io.check_output`` is told)."""
    k = _output(key).kind
    if k is None:
        raise KeyError(f"work-folder output {key!r} has no output kind")
    return k


def made_by(key: str) -> str:
    """The command that makes output ``key``."""
    return _output(key).command


def hint(key: str, when: Optional[str] = "first") -> str:
    """``run `llgbm …` first``: the end of an error about a missing output."""
    return f"run `{made_by(key)}`" + (f" {when}" if when else "")


def final_checkpoint(resolved, key: str) -> Path:
    """The checkpoint eval reads from trained method ``key``'s run (a generator's ``final``)."""
    return TRAINED[key].checkpoint(path(resolved, key))


def layout(resolved) -> dict[str, dict[str, str]]:
    """Every output of this project: folder and the command that makes it (for ``config show``)."""
    return {k: {"path": str(path(resolved, k)), "made_by": o.command} for k, o in outputs().items()}
