"""The task registry: built-in presets (the shipped pack) plus the project's ``[tasks.NAME]`` tables.

A task says where its data is, how a record becomes a prompt, whether it is multiple-choice or
generative, and how it is scored. Field names follow the lm-evaluation-harness task schema where
it fits (``dataset_name``, ``train_split``/``test_split``, templates over the record's fields,
``metric``). A project table named like a preset overrides only the keys it sets, so
``[tasks.arc-easy] scoring = "choice"`` is enough to score ARC-Easy by option text.

This module is torch-free (config validation imports it); records are loaded lazily, once per
task definition, by :mod:`llgbm_cli.tasks.loaders`.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InputError
from ..names import check_name
from .loaders import PACK_PREFIX, SplitInfo, load_task_records

if TYPE_CHECKING:  # pragma: no cover
    from ..data import MCRecord

CLOZE = "Question: {stem}\nAnswer:"

PRESET_DESCRIPTIONS = {
    "arc-easy": "Answer grade-school science questions by choosing the correct option among several answers.",
    "arc-challenge": "Answer difficult grade-school science questions that need reasoning, by choosing the correct option.",
    "boolq": "Read a passage and answer a yes/no question about it with true or false.",
    "openbookqa": "Answer elementary science questions that combine a core science fact with common knowledge, choosing one option.",
    "piqa": "Choose the more sensible of two solutions to achieve a physical, everyday goal.",
    "mawps": "Solve short arithmetic word problems: write the equation and give the numeric answer.",
    "addsub": "Solve word problems that need only addition and subtraction, answering with a number.",
    "multiarith": "Solve multi-step arithmetic word problems that chain two operations, answering with a number.",
    "singleeq": "Solve word problems that reduce to a single linear equation, answering with a number.",
    "svamp": "Solve simple arithmetic word problems with small variations that test whether the question was read.",
    "gsm8k": "Solve grade-school math word problems that take several reasoning steps, answering with a number.",
    "aqua": "Solve algebra and arithmetic word problems by choosing the correct option among five answers.",
    "mathqa": "Solve math word problems on gains, rates, geometry and probability by choosing one of five options.",
}
# Generative presets: MAWPS trains on a worked equation; the other arithmetic sets on the answer sentence.
GENERATE_TEMPLATES = {
    "mawps": "Solve the math word problem. Write the equation, then end with \"The answer is N.\"\n\n{prompt}",
}
ANSWER_ONLY_TEMPLATE = "Solve the math word problem. Answer with \"The answer is N.\"\n\n{prompt}"


class TaskSpec(BaseModel):
    """One ``[tasks.NAME]`` table. Unset keys take the preset's value (for a preset's name) or the
    defaults described in docs/config.md."""

    model_config = ConfigDict(extra="forbid")

    path: Optional[str] = Field(
        None, description="Where the data is: a `.json`/`.jsonl`/`.csv`/`.parquet` file, a folder of "
        "`<split>.<ext>` files, a `save_to_disk` folder, or a Hugging Face hub dataset id (relative paths "
        "are relative to the project file).")
    dataset_name: Optional[str] = Field(None, description="Hub dataset configuration name (e.g. `ARC-Easy`).")
    train_split: str = Field("train", description="Split whose records train teachers and give condition prompts.")
    test_split: str = Field("test", description="Split that scoring samples from.")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="When the data has a single split: share of records held out as the test "
        "split (a seeded, deterministic split, recorded by `llgbm data show`).")
    split_seed: int = Field(0, description="Seed of that deterministic split.")
    format: Optional[Literal["llm-adapters", "alpaca", "fields"]] = Field(
        None, description="How a record becomes a prompt: `llm-adapters` (instruction/answer with `Answer format:`), "
        "`alpaca` (instruction/input/output; generative), `fields` (the templates below). Default: `fields` when "
        "`prompt` is set, else `llm-adapters`.")
    prompt: Optional[str] = Field(None, description="Template of the question, e.g. `\"{question}\"` (`fields`).")
    choices: Optional[Union[str, list[str]]] = Field(
        None, description="Option texts: a template naming a list field (`\"{choices.text}\"`) or a list of "
        "templates (`[\"{A}\", \"{B}\"]`) (`fields`, multiple-choice).")
    labels: Optional[Union[str, list[str]]] = Field(
        None, description="Option labels the answer may name (`\"{choices.label}\"`); default answer1..answerN.")
    answer: Optional[str] = Field(
        None, description="Template of the answer: a label, an option text, a 0-based index or a letter A-Z "
        "(multiple-choice); the reference answer (generate).")
    target: Optional[str] = Field(
        None, description="Template of the text teachers train on for a generative task (default: the answer).")
    kind: Optional[Literal["multiple_choice", "generate"]] = Field(
        None, description="`multiple_choice` or `generate` (default: `generate` for `alpaca`, else multiple_choice).")
    metric: Optional[Literal["acc", "acc_norm", "exact_match", "number"]] = Field(
        None, description="Headline metric: `acc`, `acc_norm` (multiple-choice; both are always reported), "
        "`exact_match` or `number` (generate). Default: `acc` / `exact_match`.")
    scoring: Optional[Literal["label", "choice"]] = Field(
        None, description="Multiple-choice scoring: `label` (log-likelihood of the option label after the "
        "instruction listing the options) or `choice` (of each option's text after `template`). Default: `label` "
        "for `llm-adapters` data and the shipped sets, `choice` for `fields`.")
    template: Optional[str] = Field(
        None, description="The model's input, from `{prompt}` (the instruction), `{stem}` (the question alone). "
        "Default: `{prompt}` (label, generate), `Question: {stem}\\nAnswer:` (choice, the cloze form).")
    chat_template: Optional[bool] = Field(
        None, description="Wrap the input in the tokenizer's chat template. Default: `[data] chat_template` for "
        "label and generate, false for choice (the cloze form).")
    description: Optional[str] = Field(None, description="One sentence describing the task (the `description` condition).")
    stop: list[str] = Field(default_factory=list, description="Stop sequences for generation (the end-of-turn token always stops).")
    max_new_tokens: int = Field(64, ge=1, description="Most tokens generated per question.")
    tolerance: float = Field(1e-4, ge=0, description="Relative tolerance of the `number` metric.")
    skip_bad: bool = Field(
        False, description="Skip records that cannot be read (counted and reported) instead of stopping at the first.")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, v):
        return [v] if isinstance(v, str) else v


# --------------------------------------------------------------------------- presets


def _pack_manifest() -> dict:
    from ..data import pack_manifest

    return pack_manifest()["datasets"]


def preset_specs() -> dict[str, dict[str, Any]]:
    """The built-in presets (one per shipped dataset), as the keys a ``[tasks.NAME]`` table would set."""
    out = {}
    for name, info in _pack_manifest().items():
        if info.get("kind", "multiple_choice") == "generate":
            out[name] = dict(
                path=PACK_PREFIX + name, kind="generate", metric="number", chat_template=True,
                template=GENERATE_TEMPLATES.get(name, ANSWER_ONLY_TEMPLATE),
                stop=["\n\n"], max_new_tokens=48 if name in GENERATE_TEMPLATES else 16,
                description=PRESET_DESCRIPTIONS.get(name))
        else:
            out[name] = dict(path=PACK_PREFIX + name, kind="multiple_choice", metric="acc", scoring="label",
                             description=PRESET_DESCRIPTIONS.get(name))
    return out


# --------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """A resolved task: its name, where it came from and its full definition."""

    name: str
    spec: TaskSpec
    origin: str  # "built-in", "project" or "built-in, overridden"
    root: Path  # relative paths are resolved against it

    # ---- resolved defaults
    @property
    def kind(self) -> str:
        return self.spec.kind or ("generate" if self.format == "alpaca" else "multiple_choice")

    @property
    def format(self) -> str:
        if self.spec.path and self.spec.path.startswith(PACK_PREFIX):
            return "pack"
        return self.spec.format or ("fields" if self.spec.prompt is not None else "llm-adapters")

    @property
    def scoring(self) -> Optional[str]:
        if self.kind != "multiple_choice":
            return None
        return self.spec.scoring or ("choice" if self.format == "fields" else "label")

    @property
    def metric(self) -> str:
        return self.spec.metric or ("acc" if self.kind == "multiple_choice" else "exact_match")

    @property
    def description(self) -> str:
        return self.spec.description or f"Solve the task {self.name.replace('-', ' ')}."

    def template(self, scoring: Optional[str] = None) -> str:
        if self.spec.template is not None and (scoring is None or scoring == self.scoring):
            return self.spec.template
        return CLOZE if (scoring or self.scoring) == "choice" else "{prompt}"

    def chat(self, default: bool, scoring: Optional[str] = None) -> bool:
        if self.spec.chat_template is not None and (scoring is None or scoring == self.scoring):
            return self.spec.chat_template
        return False if (scoring or self.scoring) == "choice" else default

    @property
    def source(self) -> str:
        p = self.spec.path or ""
        if p.startswith(PACK_PREFIX):
            return "pack"
        return p + (f" [{self.spec.dataset_name}]" if self.spec.dataset_name else "")

    # ---- records
    def _loaded(self):
        key = json.dumps({"spec": self.spec.model_dump(mode="json"), "root": str(self.root), "name": self.name},
                         sort_keys=True)
        if key not in _CACHE:
            recs, info, _ = load_task_records(self, collect=False)
            _CACHE[key] = (recs, info)
        return _CACHE[key]

    def records(self, split: str = "train") -> list["MCRecord"]:
        """All records of ``train`` or ``test`` (the splits the definition maps them to)."""
        if split not in ("train", "test"):
            raise InputError(f"unknown split {split!r}; valid splits: train, test")
        return list(self._loaded()[0][split])

    def split_info(self) -> SplitInfo:
        return self._loaded()[1]

    def sample(self, split: str, n: int, seed: Any = 0) -> list["MCRecord"]:
        """A seeded sample of n records (all of them when n exceeds the split), in a stable order."""
        recs = self.records(split)
        if n >= len(recs):
            return recs
        idx = sorted(random.Random(f"{seed}-{self.name}-{split}").sample(range(len(recs)), n))
        return [recs[i] for i in idx]

    def check(self) -> dict[str, Any]:
        """Load every record; return sizes and every bad record (nothing raised for bad records)."""
        recs, info, bad = load_task_records(self, collect=True)
        return {"task": self.name, "sizes": {k: len(v) for k, v in recs.items()}, "bad": bad, "note": info.note}

    def describe(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "metric": self.metric, "scoring": self.scoring,
             "format": self.format, "source": self.source, "origin": self.origin}
        return d

    def definition(self) -> dict[str, Any]:
        """The resolved definition recorded in provenance (defaults filled in)."""
        d = self.spec.model_dump(mode="json", exclude_none=True)
        d.update(kind=self.kind, format=self.format, metric=self.metric, template=self.template(),
                 **({"scoring": self.scoring} if self.scoring else {}))
        return d


_CACHE: dict[str, tuple] = {}  # loaded records per task definition (a process reads each once)


def _canon(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


class TaskRegistry:
    """Presets plus project tables; names are case-insensitive and ``_`` equals ``-``."""

    def __init__(self, project: Optional[dict[str, Any]] = None, root: Optional[Path] = None):
        self.root = Path(root or Path.cwd())
        presets = preset_specs()
        self._tasks: dict[str, Task] = {}
        for name, d in presets.items():
            self._tasks[name] = Task(name, TaskSpec(**d), "built-in", self.root)
        seen: dict[str, str] = {}
        for name, spec in (project or {}).items():
            # A task name becomes folder and file names (adapters, training states, eval folders).
            check_name(name, f"tasks.{name}", hint="rename the [tasks.NAME] table")
            c = _canon(name)
            if c in seen:
                raise InputError(f"tasks.{name}: the task name is used twice (also as tasks.{seen[c]}); rename one")
            seen[c] = name
            raw = spec.model_dump(exclude_unset=True) if isinstance(spec, TaskSpec) else dict(spec)
            base = presets.get(c)
            if base is not None:
                merged = {**base, **raw}
                if "path" in raw:  # a new data source: the preset's pack-specific defaults do not apply
                    merged = {**{k: v for k, v in base.items() if k in ("description",)}, **raw}
                self._tasks[c] = Task(c, TaskSpec(**merged), "built-in, overridden", self.root)
            else:
                if "path" not in raw:
                    raise InputError(f"tasks.{name}.path: missing; say where the data is (a file, a folder or a hub id)")
                self._tasks[name] = Task(name, TaskSpec(**raw), "project", self.root)

    def names(self) -> list[str]:
        return list(self._tasks)

    def check(self, name: str, flag: str = "task") -> str:
        """The registered name of ``name`` or an InputError listing the valid ones."""
        if name in self._tasks:
            return name
        c = _canon(name)
        for n in self._tasks:
            if _canon(n) == c:
                return n
        for n, info in _pack_manifest().items():  # the pack's source folder names (ARC-Easy)
            if c == info["source_folder"].lower() and n in self._tasks:
                return n
        valid = self.names()
        guess = difflib.get_close_matches(c, valid, n=1)
        raise InputError(f"unknown {flag} {name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                         + f"; valid tasks: {', '.join(valid)} (declare others as [tasks.NAME] in llgbm.toml)")

    def get(self, name: str) -> Task:
        return self._tasks[self.check(name)]

    def __iter__(self):
        return iter(self._tasks.values())


def registry_for(resolved) -> TaskRegistry:
    """The registry of a resolved project config (built-in presets when ``resolved`` is None)."""
    if resolved is None:
        return TaskRegistry()
    tasks = getattr(resolved.config, "tasks", None) or {}
    return TaskRegistry(tasks, resolved.root)


def descriptions_for(resolved) -> dict[str, list[str]]:
    """The descriptions the project's ``[tasks.NAME]`` tables give (for the `description` condition)."""
    tasks = getattr(getattr(resolved, "config", None), "tasks", None) or {}
    return {name: [spec.description] for name, spec in tasks.items() if spec.description}


def builtin_registry() -> TaskRegistry:
    return TaskRegistry()
