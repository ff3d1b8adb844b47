"""Probe sets: the fixed prompts every delta is measured on.

Sources, by name (a registry, so an unknown name lists the valid ones):

* ``generic``: the built-in set of varied instruction prompts (``data/probes/generic.txt``);
* ``task:<dataset>``: a seeded sample of the prompts of a task's train split, from the task
  registry the caller passes (``tasks``; without one there are no task sets);
* a file path: ``.txt`` (one probe per line) or ``.jsonl`` (per line a JSON string, or an object
  with a ``text``, ``prompt`` or ``instruction`` field), read by the one prompt-file reader
  (:mod:`llgbm_cli.prompt_files`).

Probes are wrapped in the tokenizer's chat template when it has one (as a user turn followed by
the generation prompt), truncated to ``max_length`` tokens and fingerprinted: the fingerprint is a
hash of the final token ids, so two caches agree on their probes exactly when their fingerprints do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InputError
from ..prompt_files import read_prompt_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

PROBE_DIR = Path(__file__).resolve().parents[1] / "data" / "probes"
TASK_PREFIX = "task:"
TASK_PROBES = 16  # prompts drawn from a dataset when no count is given


def list_probe_sets(tasks=None) -> list[str]:
    """Names of the built-in probe sets: ``generic`` and ``task:<name>`` per task of ``tasks`` (a
    TaskRegistry; None: no task sets)."""
    builtin = sorted(p.stem for p in PROBE_DIR.glob("*.txt"))
    return builtin + ([f"{TASK_PREFIX}{d}" for d in tasks.names()] if tasks is not None else [])


@dataclass
class ProbeSet:
    """Tokenized probes, in two layouts.

    * padded: ``input_ids`` / ``attention_mask`` ``[P, T]`` (right padding), ``lengths`` ``[P]``;
    * packed: ``token_ids`` is the list of each probe's ids; ``prefix_len`` is the length of the
      prefix every probe shares (the chat template's system turn), which the packed forward runs
      once instead of once per probe.
    """

    texts: list[str]
    token_ids: list[list[int]]
    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    fingerprint: str
    source: str = "generic"
    chat_template: bool = True
    pad_token_id: int = 0
    _packed: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def lengths(self) -> "torch.Tensor":
        return self.attention_mask.sum(1)

    @property
    def prefix_len(self) -> int:
        """Tokens shared by every probe (never a whole probe: each keeps at least its last token)."""
        ids = self.token_ids
        n = min(len(t) for t in ids) - 1
        k = 0
        while k < n and all(t[k] == ids[0][k] for t in ids):
            k += 1
        return k

    @property
    def device(self):
        return self.input_ids.device

    def to(self, device) -> "ProbeSet":
        """A copy whose tensors live on ``device``."""
        return ProbeSet(
            self.texts, self.token_ids, self.input_ids.to(device), self.attention_mask.to(device),
            self.fingerprint, self.source, self.chat_template, self.pad_token_id,
        )

    def describe(self) -> dict[str, Any]:
        """What the cache header records about the probes."""
        return {
            "source": self.source,
            "count": len(self),
            "chat_template": self.chat_template,
            "fingerprint": self.fingerprint,
            "tokens": int(sum(len(t) for t in self.token_ids)),
            "shared_prefix": self.prefix_len,
        }


def probe_fingerprint(token_ids: list[list[int]]) -> str:
    """Hash of the final token ids (order matters)."""
    return hashlib.sha256(json.dumps(token_ids, separators=(",", ":")).encode()).hexdigest()[:16]


def probe_task_names(source: str) -> list[str]:
    """The task names of a ``task:<a>,<b>,...`` probe source (none for any other source)."""
    source = str(source).strip()
    if not source.startswith(TASK_PREFIX):
        return []
    return [n.strip() for n in source[len(TASK_PREFIX):].split(",") if n.strip()]


def read_probe_texts(source: str, *, count: Optional[int] = None, seed: int = 0, tasks=None) -> list[str]:
    """The raw probe texts of a built-in set name, ``task:<name>`` (prompts of any task that
    ``tasks``, a TaskRegistry, knows; None: no task is known), ``task:<a>,<b>,...`` (an equal share
    of each task's prompts, interleaved) or a file (no tokenizer needed)."""
    source = str(source).strip()
    if source.startswith(TASK_PREFIX):
        if tasks is None:
            raise InputError(_unknown(source, tasks))
        names = probe_task_names(source)
        want = count or TASK_PROBES
        per_task = []
        for name in names:  # `task:a,b,c`: the tasks' prompts interleaved, an equal share each
            try:
                task = tasks.get(name)
            except InputError:
                raise InputError(_unknown(f"{TASK_PREFIX}{name}", tasks))
            share = want if len(names) == 1 else -(-want // len(names))
            per_task.append([r.prompt for r in task.sample("train", share, seed=seed)])
        if not names:
            raise InputError(_unknown(source, tasks))
        texts = [t for group in zip(*per_task) for t in group] if len(per_task) > 1 else per_task[0]
    else:
        path = Path(source).expanduser()
        builtin = PROBE_DIR / f"{source}.txt"
        if "/" not in source and "." not in source and builtin.exists():
            path = builtin
        elif not path.exists():
            if path.suffix in (".txt", ".jsonl") or "/" in source:
                raise InputError(f"{source}: probe file not found")
            raise InputError(_unknown(source, tasks))
        texts = read_prompt_file(path)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"{source}: the probe set is empty; give at least one non-empty probe")
    return texts[:count] if count else texts


def _unknown(source: str, tasks=None) -> str:
    import difflib

    valid = list_probe_sets(tasks)
    guess = difflib.get_close_matches(source, valid, n=1)
    return (f"unknown probe set {source!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
            + f"; valid: {', '.join(valid)}, or a .txt/.jsonl file")


def load_probes(
    source: str,
    tokenizer,
    *,
    count: Optional[int] = None,
    chat_template: bool = True,
    max_length: int = 128,
    seed: int = 0,
    tasks=None,
) -> ProbeSet:
    """Read, template, tokenize and fingerprint a probe set.

    Truncation keeps each probe's *last* ``max_length`` tokens: the last token (the start of the
    model's answer under a chat template) is what ``last_token`` pooling reads.
    """
    texts = read_probe_texts(source, count=count, seed=seed, tasks=tasks)
    return probes_from_texts(texts, tokenizer, chat_template=chat_template, max_length=max_length, source=source)


def probes_from_texts(texts, tokenizer, *, chat_template: bool = True, max_length: int = 128,
                      source: str = "texts") -> ProbeSet:
    """A probe set of the given prompts (templated, truncated and fingerprinted as :func:`load_probes` does)."""
    import torch

    texts = list(texts)
    if not texts:
        raise InputError(f"{source}: no prompts to probe with")
    use_template = bool(chat_template and getattr(tokenizer, "chat_template", None))
    ids: list[list[int]] = []
    for t in texts:
        if use_template:
            enc = tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=True
            )
            row = list(enc["input_ids"])
        else:
            row = list(tokenizer(t, add_special_tokens=True)["input_ids"])
        if not row:
            raise InputError(f"{source}: probe {t[:40]!r} tokenizes to nothing")
        ids.append([int(x) for x in row[-max_length:]])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    T = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), T), int(pad), dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, r in enumerate(ids):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ProbeSet(texts, ids, input_ids, mask, probe_fingerprint(ids), str(source), use_template, int(pad))
