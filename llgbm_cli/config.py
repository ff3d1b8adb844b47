"""Typed project configuration read from ``llgbm.toml``.

Every section is a pydantic model with ``extra="forbid"``; each field carries its help text
(used to generate docs/config.md). Defaults are the original plans' values; the shipped
``llgbm.toml`` is the CPU-sized profile of the built-in world, so a plan value is always one
key away. Validation runs once on every load (field rules, task names, merge options, cross-field
rules, ablation values, and the names checked against their registries: see ``registries.py``) and
reports every problem as ``section.key: message``, or under the flag that gave the value.
"""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError, InputError
from .merging import OPTIONS as MERGE_OPTIONS  # torch-free: the merge options' one declaration
from .training.methods import TRAINED  # torch-free: the trained methods' one declaration
from .tasks.registry import TaskSpec

DEFAULT_PROJECT_FILE = "llgbm.toml"
DEFAULT_TASKS = ["arc-easy", "arc-challenge", "boolq", "openbookqa", "piqa"]


class Section(BaseModel):
    # inf and nan are refused in every number (a learning rate of inf would pass `gt=0`).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- sections


class ProjectSection(Section):
    name: str = Field("llgbm-project", description="A name for the project, recorded in provenance.")
    workdir: str = Field(
        "runs",
        description="Folder where every output goes (relative paths are relative to the project file).",
    )
    seed: int = Field(0, description="Global seed; every command is deterministic given it.")


class ModelSection(Section):
    base: str = Field(
        "smollm2-135m-instruct",
        description="Base causal LM: a built-in name (`smollm2-135m-instruct`, `tiny-llama`), a local "
        "Hugging Face folder, or a hub id written `hf:org/name` where a hub is reachable.",
    )
    encoder: str = Field(
        "minilm-l6",
        description="Frozen condition encoder: built-in `minilm-l6`, a local Hugging Face folder, or `hf:org/name`.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for the base model (`auto`: bfloat16 on CUDA, float32 on CPU)."
    )
    device: str = Field("auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`.")


class LoraSection(Section):
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r of teachers and generated adapters.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; scaling = alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout used while training teachers.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Names of the base model's nn.Linear modules that carry LoRA.",
    )
    last_layers: Optional[int] = Field(
        None, ge=1, description="Restrict LoRA to the last L transformer layers (None: all layers)."
    )


class DataSection(Section):
    datasets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASKS),
        description="Tasks this project uses: shipped presets or `[tasks.NAME]` tables (see `llgbm data list`).",
    )
    max_length: int = Field(256, ge=16, description="Truncate training sequences to this many tokens.")
    test_sample: int = Field(200, ge=1, description="Held-out questions scored per task (seeded sample).")
    chat_template: bool = Field(
        True, description="Wrap prompts in the tokenizer's chat template when it has one."
    )
    score_batch_size: int = Field(
        16, ge=1, description="Questions per forward pass when scoring multiple-choice tasks."
    )
    scoring: Optional[Literal["label", "choice"]] = Field(
        None, description="Scoring mode of every multiple-choice task, for teacher training and scoring alike "
        "(None: each task's own `scoring`; `zoo score --scoring` sets it)."
    )
    generate_batch_size: int = Field(16, ge=1, description="Questions decoded together for generative tasks.")
    overlap_ngram: int = Field(
        13, ge=1, description="Word n-gram length of the contamination check (`data overlap`, `eval`): a test "
        "question shares n-grams of this length with a train split (13, as lm-evaluation-harness's decontamination).")
    overlap_threshold: float = Field(
        0.0, ge=0, lt=1, description="A test question is contaminated when more than this share of its n-grams occur "
        "in a train split (0: any shared n-gram), or when its normalised text equals a train record's.")


class ZooTaskSettings(Section):
    """One task's teacher settings that differ from ``[zoo]``'s (a key left out keeps ``[zoo]``'s)."""

    steps: Optional[int] = Field(None, ge=1, description="Optimizer steps per teacher of this task.")
    warmup_steps: Optional[int] = Field(None, ge=0, description="Steps before this task's first kept checkpoint.")
    checkpoints: Optional[int] = Field(None, ge=1, description="Checkpoints kept per trajectory of this task.")
    learning_rate: Optional[float] = Field(None, gt=0, description="AdamW learning rate of this task's teachers.")
    batch_size: Optional[int] = Field(None, ge=1, description="Training batch size of this task's teachers.")
    lr_warmup_steps: Optional[int] = Field(None, ge=0, description="Learning-rate warm-up steps of this task's teachers.")
    weight_decay: Optional[float] = Field(None, ge=0, description="AdamW weight decay of this task's teachers.")
    max_grad_norm: Optional[float] = Field(None, gt=0, description="Gradient clipping norm of this task's teachers.")
    data_fraction: Optional[float] = Field(None, gt=0, le=1, description="Share of this task's train split per trajectory.")


class ZooSection(Section):
    path: str = Field("zoo", description="Zoo folder (relative to workdir) holding adapters and zoo.jsonl.")
    tasks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASKS), description="One teacher trajectory per task."
    )
    steps: int = Field(200, ge=1, description="Optimizer steps per teacher.")
    warmup_steps: int = Field(100, ge=0, description="Steps before the first kept checkpoint.")
    checkpoints: int = Field(5, ge=1, description="Checkpoints kept per teacher after warm-up (Drag-and-Drop LLMs used 50).")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate for teachers.")
    batch_size: int = Field(8, ge=1, description="Training batch size for teachers.")
    condition_prompts: int = Field(
        64, ge=1, description="Unlabeled prompts from the task's train split stored with each adapter."
    )
    lr_warmup_steps: int = Field(10, ge=0, description="Linear learning-rate warm-up steps of teachers (then constant).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay for teachers.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm for teachers.")
    runs: int = Field(
        1, ge=1, description="Independent trajectories per task, each with its own seed (initialisation, data order "
        "and data subset); run r > 0 names its checkpoints `<task>-r<r>-s<step>`.")
    data_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of the task's train split each trajectory trains on: run r takes block r "
        "of one seeded permutation of the split, so the runs' records are disjoint while runs x data_fraction <= 1 "
        "(above that the blocks wrap around and `zoo build` says how many records two runs share); 1: all of it.")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="Teacher training precision: `bf16` runs the forward and backward passes under bfloat16 "
        "autocast with float32 LoRA weights and optimizer state (the device must support bfloat16); `no`: float32.")
    per_task: dict[str, ZooTaskSettings] = Field(
        default_factory=dict, description="`[zoo.per_task.NAME]`: settings of one task's teachers that differ from "
        "these (steps, warmup_steps, checkpoints, learning_rate, batch_size, lr_warmup_steps, weight_decay, "
        "max_grad_norm, data_fraction); a task's teachers are rebuilt only when its own settings change.")

    def for_task(self, task: str) -> "ZooSection":
        """The settings ``task``'s teachers are built with: these, with its ``per_task`` table applied."""
        own = self.per_task.get(task)
        update = {"per_task": {}, **(own.model_dump(exclude_none=True) if own is not None else {})}
        return self.model_copy(update=update)


class ProbesSection(Section):
    source: str = Field(
        "generic",
        description="Built-in probe set name (`generic`, `task:<name>` for any registered task, `task:<a>,<b>,...` for an equal share of several tasks' prompts) or a .txt/.jsonl file path.",
    )
    count: Optional[int] = Field(None, ge=1, description="Use only the first N probes (None: all).")
    chat_template: bool = Field(True, description="Apply the tokenizer's chat template to probes.")
    max_length: int = Field(128, ge=4, description="Truncate each probe to this many tokens.")


class DeltaSection(Section):
    layers: list[int] = Field(
        default_factory=lambda: [-1],
        min_length=1,
        description="Hidden-state layers to read (negative counts from the end; several are concatenated).",
    )
    pool: Literal["last_token", "mean"] = Field("last_token", description="Pooling over each probe's tokens.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Compute dtype for delta forwards (the cache is always float32)."
    )
    adapters_per_batch: int = Field(
        8, ge=1, description="How many adapters share one forward pass (bounds peak memory on any zoo size)."
    )
    cache: str = Field("deltas", description="Cache folder (relative to workdir).")
    pack: bool = Field(
        True,
        description="Pack the probes into one sequence that computes their shared prefix once (exact; "
        "less work than a padded batch). False runs the plain padded batch.",
    )
    flush_seconds: float = Field(
        10.0, ge=0, description="Commit the cache at most this often while computing (0: after every batch); "
        "an interrupted run keeps every committed row.",
    )


class MultitaskSection(Section):
    generator: str = Field("hyperconv", description="Generator name (`hyperconv`, `hypernet`).")
    generator_preset: Literal["compact", "small", "paper"] = Field(
        "compact", description="Generator size and blocks: `compact` (the original blocks), `small` (the reference "
        "design at CPU size), `paper` (the reference's published shapes); see docs/concepts.md."
    )
    learning_rate: float = Field(3e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(4, ge=1, description="Adapters per step for the weight loss.")
    delta_batch_size: int = Field(2, ge=0, description="Adapters per step that also get the delta loss.")
    total_steps: int = Field(5000, ge=1, description="Optimizer steps.")
    warmup_steps: int = Field(100, ge=0, description="Learning-rate warm-up steps.")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="LR decay after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lambda_delta: float = Field(1.0, ge=0, description="Maximum weight λ of the delta loss.")
    lambda_schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="λ schedule over lambda_warmup_steps (constant: 0 during warm-up, then λ)."
    )
    lambda_warmup_steps: int = Field(500, ge=0, description="Steps over which λ ramps to lambda_delta.")
    delta_loss_type: Literal["mse", "cosine", "combined", "kl"] = Field(
        "mse", description="Delta loss form: `mse`, `cosine`, `combined` compare probe deltas; `kl` is answer-level "
        "matching: KL(teacher ‖ generated) of the next-token distributions at the answer position of kl_examples "
        "training prompts of the adapter's own task (no labels; docs/concepts.md)."
    )
    delta_normalize: bool = Field(False, description="L2-normalize deltas before the delta loss.")
    kl_temperature: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="delta_loss_type = \"kl\": softmax temperature T of both "
        "distributions (the loss is scaled by T²)."
    )
    kl_examples: int = Field(
        4, ge=1, description="delta_loss_type = \"kl\": training prompts of its task drawn per adapter per step."
    )
    delta_probes: Literal["generic", "own-task"] = Field(
        "generic", description="Prompts the delta loss measures both deltas on: `generic`, the project's probes (the "
        "cached teacher deltas); `own-task`, own_task_probes prompts of each adapter's own task (train split), the "
        "teacher's delta there computed once at the start, so generated and teacher deltas are compared on the "
        "task's inputs."
    )
    delta_per_probe: bool = Field(
        False, description="Compare the deltas probe by probe (the [P, D] deltas flattened) instead of their mean "
        "over probes."
    )
    own_task_probes: int = Field(16, ge=1, description="delta_probes = \"own-task\": prompts per task.")
    weight_loss: Literal["tokens", "delta_w", "factors"] = Field(
        "tokens", description="Weight loss: on the normalized token grid (as in Drag-and-Drop LLMs), on ΔW = B·A, or on the factors A "
        "and B z-scored per element with the training teachers' mean and std (Text-to-LoRA's reconstruction target)."
    )
    weight_loss_norm: Literal["mse", "l1"] = Field(
        "mse", description="Error of the `tokens` and `factors` weight losses: squared (mse) or absolute (l1, as in Text-to-LoRA)."
    )
    token_weighting: Literal["none", "spread"] = Field(
        "none", description="`tokens` loss: `spread` weights each token by how much it varies across the training "
        "teachers (Drag-and-Drop LLMs' per-token criterion weight, mean 1); none: every real cell counts the same."
    )
    condition_noise: float = Field(
        0.0, ge=0, description="Std of Gaussian noise added to every sampled condition, and a tenth of it to the "
        "weight-loss targets (Drag-and-Drop LLMs' noise augmentation uses 1e-4); 0: none."
    )
    condition: Literal["prompts", "description"] = Field(
        "prompts", description="Condition text: sampled task prompts (as in Drag-and-Drop LLMs) or one of several task descriptions, "
        "drawn afresh every step (as in Text-to-LoRA)."
    )
    condition_prompts: int = Field(8, ge=1, description="Prompts sampled per adapter per step (Drag-and-Drop LLMs uses 128).")
    condition_pooling: Literal["mean", "none"] = Field(
        "mean", description="Condition encoding: `mean`: one pooled, L2-normalized vector per text; `none`: the "
        "encoder's token states of each text (its first condition_tokens; Drag-and-Drop LLMs' input)."
    )
    condition_tokens: int = Field(
        32, ge=1, le=512, description="Token states kept per condition text with condition_pooling = \"none\"."
    )
    descriptions: dict[str, list[str]] = Field(
        default_factory=dict, description="condition = \"description\": task -> your descriptions of it (one is "
        "drawn per step); tasks not listed use the shipped ones (five per shipped task)."
    )
    max_text_length: int = Field(512, ge=8, description="Condition text truncation (encoder tokens).")
    log_interval: int = Field(10, ge=1, description="Steps between metric logs.")
    save_interval: int = Field(500, ge=1, description="Steps between checkpoints.")
    eval_interval: int = Field(
        100, ge=1, description="Steps between held-out evaluations: delta cosine, norm ratio ‖generated delta‖ / "
        "‖teacher delta‖ (and centered cosine with delta_centered) of the held-out and the first training adapters."
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Training precision (accelerate): `bf16` runs the passes under bfloat16 autocast with float32 "
        "weights and optimizer state; `fp16` with loss scaling (CUDA); `no`: float32.")
    holdout_tasks: list[str] = Field(default_factory=list, description="Tasks whose adapters are not trained on.")
    generator_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the chosen generator (sizes, depth)."
    )
    loss_balance: Literal["none", "gradnorm", "uncertainty"] = Field(
        "none", description="Balancing of the weight and delta losses: `none`: loss_weights + λ·loss_delta; "
        "`gradnorm`: the delta term is rescaled every step so its gradient norm on the generator's parameters "
        "equals the weight term's (λ is then its share); `uncertainty`: learned homoscedastic weights "
        "exp(-s)·L + s per term (Kendall et al.). Formulas in docs/concepts.md (levers)."
    )
    delta_centered: bool = Field(
        False, description="Centered delta loss: subtract the mean training teacher delta from the generated and the "
        "teacher delta before comparing them, so only the task-specific part is learned (the mean is saved with "
        "every checkpoint)."
    )
    task_weight: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Weight of the task loss: answer-only cross-entropy of the adapter's task's training "
        "examples through the base model with the generated LoRA applied (as Text-to-LoRA trains); 0: off."
    )
    task_examples: int = Field(
        4, ge=1, description="Training examples of its task drawn per adapter per step for the task loss "
        "(task_weight > 0; the task loss uses the first max(1, delta_batch_size) adapters of the batch)."
    )


class DeltaOnlySection(Section):
    variant: Literal["b1", "b2"] = Field("b1", description="b1: generator on delta only; b2: delta predictor.")
    generator: str = Field("hyperconv", description="Generator for B1.")
    generator_preset: Literal["compact", "small", "paper"] = Field(
        "compact", description="Generator preset for B1 (as train.multitask.generator_preset)."
    )
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate (B1).")
    epochs: int = Field(10, ge=1, description="Epochs over the zoo (B1).")
    batch_size: int = Field(4, ge=1, description="Adapters per step (B1).")
    delta_loss_type: Literal["mse", "cosine", "combined", "kl"] = Field(
        "mse", description="Delta loss form (as train.multitask.delta_loss_type; `kl`: answer-level KL to the "
        "teacher on training prompts of the adapter's task)."
    )
    delta_normalize: bool = Field(False, description="L2-normalize deltas before the delta loss.")
    kl_temperature: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="delta_loss_type = \"kl\": softmax temperature (B1)."
    )
    kl_examples: int = Field(4, ge=1, description="delta_loss_type = \"kl\": training prompts per adapter per step (B1).")
    lora_norm_weight: float = Field(0.01, ge=0, description="Weight of the LoRA norm penalty.")
    lora_variance_weight: float = Field(
        0.001, ge=0, description="Weight of the negative-variance term (rewards spread, against collapse)."
    )
    logit_kl_weight: float = Field(0.0, ge=0, description="Weight of the KL tether on probe logits.")
    relational_weight: float = Field(
        0.0, ge=0, description="Weight of the relational term (B1): the generated adapters' pairwise cosines within a "
        "batch are pulled toward the teachers' (mean squared difference of sin(θ/2)), against diversity collapse; 0: off."
    )
    norm_match_weight: float = Field(
        0.0, ge=0, description="Weight of the norm-match term (B1): mean (log‖generated‖ − log‖teacher‖)² per adapter, "
        "against norm collapse; 0: off."
    )
    match_space: Literal["delta", "delta_w"] = Field(
        "delta", description="What the relational and norm-match terms compare (B1): `delta` the probe deltas (the "
        "teachers' cached ones), `delta_w` the flattened ΔW = scaling·B·A (the teachers' adapters)."
    )
    batch_sampling: Literal["auto", "uniform", "tasks"] = Field(
        "auto", description="How B1 draws a batch of training adapters: `uniform` at random, `tasks` spread over as "
        "many tasks as possible (one per task while tasks last), `auto` `tasks` when relational_weight > 0, else `uniform`."
    )
    delta_centered: bool = Field(
        False, description="Subtract the mean training teacher delta from generated and teacher deltas before the "
        "delta loss and the delta-space terms (B1)."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    log_interval: int = Field(10, ge=1, description="Steps between metric logs.")
    save_interval: int = Field(500, ge=1, description="Steps between checkpoints.")
    holdout_tasks: list[str] = Field(default_factory=list, description="Tasks left out of training.")
    generator_options: dict[str, Any] = Field(default_factory=dict, description="Generator keyword arguments.")
    condition_prompts: int = Field(8, ge=1, description="Condition prompts sampled per adapter per step (B1).")
    eval_interval: int = Field(50, ge=1, description="Steps between held-out and degeneracy checks (B1).")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="B1's training precision: `bf16` runs the generator and the probes' forward passes under "
        "bfloat16 autocast (accelerate), float32 weights and optimizer state; `no`: float32.")
    init_from_teachers: bool = Field(
        True, description="Start the generator's output at the teachers' mean adapter, as multitask does (B1); "
        "false: the generator's own initialization."
    )
    collapse_norm_ratio: float = Field(
        0.1, ge=0, description="Flag norm collapse when the generated ‖ΔW‖ falls below this share of the teachers' mean (B1)."
    )
    collapse_cosine: float = Field(
        0.99, gt=0, le=1, description="Flag diversity collapse when generated adapters of different tasks have a mean "
        "pairwise ΔW cosine above this, while the teachers' is below it (B1)."
    )


class B2Section(Section):
    """The B2 delta predictor's training (`train delta-only --variant b2`); which tasks it is not trained
    on is ``train.delta_only.holdout_tasks``, shared with B1."""

    hidden: int = Field(2048, ge=1, description="DeltaPredictor MLP hidden width (3 linear layers, GELU).")
    dropout: float = Field(0.1, ge=0, lt=1, description="DeltaPredictor dropout.")
    learning_rate: float = Field(1e-3, gt=0, description="DeltaPredictor learning rate (B2).")
    epochs: int = Field(200, ge=1, description="DeltaPredictor epochs (B2).")
    loss: Literal["mse", "cosine"] = Field("mse", description="DeltaPredictor loss (B2).")
    batch_size: int = Field(32, ge=1, description="Adapters per DeltaPredictor step (B2).")
    condition_prompts: int = Field(
        8, ge=1, description="Condition prompts averaged per adapter per step (B2; a fresh subset every epoch)."
    )
    val_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of adapters held out for validation when holdout_tasks is empty (B2)."
    )


class TrainSection(Section):
    multitask: MultitaskSection = Field(default_factory=MultitaskSection)
    delta_only: DeltaOnlySection = Field(default_factory=DeltaOnlySection)
    b2: B2Section = Field(default_factory=B2Section)


class IndexSection(Section):
    kind: str = Field("flat", description="FAISS index kind: `flat` (exact), `hnsw`, `ivf`, `ivfpq` (compressed).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Build/search on a GPU when `cuda` and one is present.")
    hnsw_m: int = Field(32, ge=2, description="HNSW graph degree M.")
    hnsw_ef_construction: int = Field(200, ge=1, description="HNSW efConstruction.")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW efSearch.")
    ivf_nlist: int = Field(100, ge=1, description="IVF / IVF-PQ number of lists (k-means cells).")
    ivf_nprobe: int = Field(10, ge=1, description="IVF / IVF-PQ lists probed per query.")
    ivfpq_code_size: int = Field(
        64, ge=1, description="IVF-PQ bytes stored per vector (8-bit sub-quantizers; must divide the delta dimension)."
    )
    train_rows: int = Field(
        0, ge=0, description="IVF kinds: train on a seeded sample of at most this many deltas (0: all of them)."
    )
    shard_rows: int = Field(
        0, ge=0, description="IVF kinds: encode the deltas in shards of this many rows and merge them (0: one shard)."
    )
    path: str = Field("index", description="Index folder (relative to workdir).")
    exclude_tasks: list[str] = Field(
        default_factory=list,
        description="Leave these tasks' adapters out of the index (leave-one-out evaluation of retrieval).",
    )


class RetrieveSection(Section):
    top_k: int = Field(3, ge=1, description="Adapters returned per query.")
    merge_strategy: str = Field("ties", description="Strategy used by `retrieve --merge` when none is named.")
    rank: Literal["predicted", "behaviour"] = Field(
        "predicted", description="How the adapters returned are chosen: `predicted`, by the cosine of their cached "
        "delta to the delta B2 predicts from the query text; `behaviour`, the `candidates` best by that cosine "
        "re-ranked by how each acts on the query prompts themselves (its per-prompt delta there against its mean "
        "delta on its own task's prompts; docs/concepts.md), the merge weighted by that score."
    )
    candidates: int = Field(8, ge=1, description="rank = \"behaviour\": adapters taken from the predicted ranking to re-rank.")
    own_prompts: int = Field(
        8, ge=1, description="rank = \"behaviour\": prompts of each candidate's own task (the first of its zoo "
        "condition prompts, else its task's train prompts) its mean delta is measured on; computed once per "
        "adapter and run.")


class ComposeSection(Section):
    examples: int = Field(
        16, ge=1, description="Labelled examples of the task, drawn (seeded) from its train split, never its test "
        "questions: what the weights are searched on."
    )
    top_n: int = Field(
        0, ge=0, description="Candidates: the top_n zoo adapters by their own loss on the examples (0: all of them). "
        "The zoo adapters are the latest teacher of every other training task (eval.merge_adapters when set)."
    )
    budget: int = Field(40, ge=3, description="Loss evaluations of the search (the uniform start and the base included).")
    popsize: int = Field(0, ge=0, description="CMA-ES population per generation (0: cma's default, 4 + 3·ln n).")
    sigma0: float = Field(0.5, gt=0, allow_inf_nan=False, description="CMA-ES initial step size around the uniform start 1/n.")
    l1: float = Field(0.05, ge=0, allow_inf_nan=False, description="Weight of the mean |wᵢ| penalty added to the cross-entropy.")
    bounds: list[float] = Field(default_factory=lambda: [-1.5, 1.5], min_length=2, max_length=2,
                                description="Lowest and highest weight of one adapter.")
    members: int = Field(8, ge=1, description="Weightings evaluated per forward pass (bounds peak memory).")


# [merge]: the merge options that are keys, as merging.MergeOptions declares them (type, default,
# description, order), then what `llgbm merge` writes besides the adapter.
class MergeSection(create_model(  # type: ignore[misc]
    "MergeOptionKeys",
    __base__=Section,
    __module__=__name__,
    **{name: (o.type, Field(o.default, description=o.help)) for name, o in MERGE_OPTIONS.items() if o.key},
)):
    full_model: bool = Field(
        False, description="`llgbm merge` also writes the base model with the merge added to its weights "
        "(`merged-model/` inside the output folder; safetensors, sharded like the base)."
    )


class EvalSection(Section):
    methods: list[str] = Field(
        default_factory=lambda: ["base", "teacher", "mean-delta", *TRAINED],
        description="Methods to compare (base, teacher, mean-delta, multitask, b1, b2, merge:<strategy>, or a folder).",
    )
    tasks: list[str] = Field(default_factory=list, description="Held-out tasks (empty: every zoo task).")
    test_sample: int = Field(200, ge=1, description="Questions scored per task.")
    strict: bool = Field(False, description="Exit 1 when an acceptance check fails.")
    holdout: list[str] = Field(
        default_factory=list,
        description="Leave-one-out tasks: evaluated as held out; a generator or index that saw them is refused.",
    )
    merge_adapters: list[str] = Field(
        default_factory=list,
        description="Zoo ids merged by `merge:<strategy>` methods (empty: the latest teacher of every other "
        "training task).",
    )
    batch_size: int = Field(16, ge=1, description="Questions per scoring forward.")
    floor_tolerance: float = Field(
        0.05, ge=0, description="Accuracy gap to multitask within which retrieval still counts as a competitive floor."
    )
    out: str = Field("eval", description="Output folder (relative to workdir).")
    oracle_candidates: Literal["last", "all", "none"] = Field(
        "last",
        description="Cross-validation (`eval --folds`): the training adapters the `oracle-best` reference picks from "
        "in each fold: each trajectory's last checkpoint, every zoo adapter of the other tasks, or none (no oracle).",
    )
    task_probes: int = Field(
        0, ge=0, description="Also measure every delta on this many prompts of the evaluated task's own train split "
        "(its condition prompts; 0: off): the method's, its teacher's and the training teachers' mean there, giving "
        "`task_probe_cosine` and `task_probe_centered_cosine` beside the generic-probe metrics."
    )
    contamination: Literal["drop", "refuse", "allow"] = Field(
        "drop",
        description="Scored questions that occur in a train split of a task whose adapters, deltas or generators the "
        "evaluation uses (`data overlap`'s rules): `drop` leaves them out and counts them in the results, `refuse` "
        "stops with exit 2 naming the pair of tasks, `allow` scores them and flags the count.",
    )


class AblationCell(Section):
    set: dict[str, Any] = Field(default_factory=dict, description="The cell's config overrides: dotted key -> value "
                                "(e.g. { \"train.multitask.lambda_delta\" = 0.0 }).")
    methods: list[str] = Field(default_factory=list, description="Methods the cell evaluates (empty: ablation.methods).")
    help: str = Field("", description="One line on what the cell changes.")


class AblationSection(Section):
    lambda_delta: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0, 2.0], description="λ values.")
    delta_loss_type: list[str] = Field(default_factory=lambda: ["mse", "cosine", "combined"], description="Loss types.")
    probe_count: list[int] = Field(default_factory=lambda: [3, 5, 10], description="Probe counts.")
    lambda_schedule: list[str] = Field(
        default_factory=lambda: ["constant", "linear", "cosine"], description="λ schedules."
    )
    interaction_lambda: list[float] = Field(default_factory=lambda: [0.1, 1.0], description="λ of the interaction grid.")
    interaction_loss: list[str] = Field(default_factory=lambda: ["mse", "cosine"], description="Loss types of the interaction grid.")
    loss_balance: list[Literal["none", "gradnorm", "uncertainty"]] = Field(
        default_factory=list, description="train.multitask.loss_balance values, one cell each (e.g. [\"none\", "
        "\"gradnorm\"]); empty: no such cells."
    )
    delta_centered: list[bool] = Field(
        default_factory=list, description="train.multitask.delta_centered values, one cell each (e.g. [false, true]); "
        "empty: no such cells."
    )
    task_weight: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=list, description="train.multitask.task_weight values, one cell each (e.g. [0.0, 0.1]); "
        "empty: no such cells."
    )
    total_steps: Optional[int] = Field(None, ge=1, description="Override train steps per cell (None: the train section's).")
    methods: list[str] = Field(
        default_factory=lambda: ["base", "mean-delta", "multitask"],
        description="Methods evaluated per cell (the cell's generator is `multitask`).",
    )
    out: str = Field("ablation", description="Output folder (relative to workdir); one subfolder per cell.")
    cells: dict[str, AblationCell] = Field(
        default_factory=dict, description="Cells of `ablate --folds`, [ablation.cells.NAME] with `set`, `methods`, "
        "`help`: each cross-validated and compared with the base cell.")
    base_cv: Optional[str] = Field(
        None, description="`ablate --folds`: a finished `eval --folds` output (relative to workdir) read as the "
        "base cell instead of running it.")


class LlgbmConfig(Section):
    project: ProjectSection = Field(default_factory=ProjectSection)
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    zoo: ZooSection = Field(default_factory=ZooSection)
    probes: ProbesSection = Field(default_factory=ProbesSection)
    delta: DeltaSection = Field(default_factory=DeltaSection)
    train: TrainSection = Field(default_factory=TrainSection)
    index: IndexSection = Field(default_factory=IndexSection)
    retrieve: RetrieveSection = Field(default_factory=RetrieveSection)
    merge: MergeSection = Field(default_factory=MergeSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    compose: ComposeSection = Field(default_factory=ComposeSection)
    ablation: AblationSection = Field(default_factory=AblationSection)
    tasks: dict[str, TaskSpec] = Field(
        default_factory=dict, description="The project's own tasks, one `[tasks.NAME]` table each (see below)."
    )


# --------------------------------------------------------------------------- loading


@dataclass
class ResolvedConfig:
    """The validated config plus where it came from."""

    config: LlgbmConfig
    path: Optional[Path]  # None when no project file exists and defaults are used
    root: Path  # folder that relative paths in the config are resolved against
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> default | file | flag
    labels: dict[str, str] = field(default_factory=dict)  # dotted key -> how the user gave it, where not the file
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the project file's data as read (and extended)
    files: dict[str, Path] = field(default_factory=dict, repr=False)  # dotted key -> the file that set it

    def with_overrides(self, overrides: dict[str, Any]) -> "ResolvedConfig":
        """The same project with ``overrides`` (dotted key -> value, the whole set, as ``load_config``
        takes them), validated again from the data read at load time: the file is not read again, so
        a command that resolves many variants (folds, ablation cells) sees one version of it even if
        it is edited meanwhile."""
        where = self.path or (self.root / DEFAULT_PROJECT_FILE)
        return _resolve(self.raw, self.path, where, overrides, files=self.files)

    def origin(self, key: str) -> str:
        """How the value of ``key`` was given, as the user would look for it: its flag (``--density``),
        ``--set merge.density=0.3``, ``llgbm.toml: merge.density``, or ``merge.density (default)``."""
        if key in self.labels:
            return self.labels[key]
        src = self.sources.get(key)
        if src == "file" and self.path is not None:
            return f"{self.files.get(key, self.path).name}: {key}"
        return key if src != "default" else f"{key} (default)"

    @property
    def workdir(self) -> Path:
        return (self.root / self.config.project.workdir).resolve()

    def resolve_path(self, p: str | Path, base: Optional[Path] = None) -> Path:
        """Resolve a config path: absolute stays, relative is taken from ``base`` (default workdir)."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else ((base or self.workdir) / p).resolve()

    def to_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


def _leaf_keys(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model_cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_leaf_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def all_keys() -> list[str]:
    """Every dotted config key, e.g. ``train.multitask.lambda_delta``."""
    return _leaf_keys(LlgbmConfig)


def _model_at(loc: tuple) -> Optional[type[BaseModel]]:
    cls: type[BaseModel] = LlgbmConfig
    for part in loc:
        f = cls.model_fields.get(str(part))
        if f is None:
            return None
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return None
    return cls


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(str(x) for x in e["loc"])
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            names = list(parent.model_fields) if parent else []
            guess = difflib.get_close_matches(loc[-1], names, n=1)
            hint = f" (did you mean `{'.'.join(loc[:-1] + (guess[0],))}`?)" if guess else ""
            valid = f"; valid keys: {', '.join(names)}" if names and not guess else ""
            problems.append(f"{key}: unknown key{hint}{valid}")
        else:
            msg = e["msg"]
            if "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
            problems.append(f"{key}: {msg}")
    return problems


# Keys whose values are user dicts (their inner keys are not config keys).
_FREE_DICTS = ("generator_options", "descriptions", "cells")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith(_FREE_DICTS):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set ``key`` (dotted: ``section.key``) in the nested dict ``d``, making the sections it passes through."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (value in TOML syntax, bare strings allowed)."""
    if "=" not in text:
        raise ConfigError([f"--set {text}: expected section.key=value"])
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found; create one (see docs/config.md) or pass --project PATH"], source=str(path))
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror}"], source=str(path))
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text (byte {e.start}); a project file is TOML"], source=str(path))
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], source=str(path))


def load_config(
    path: Optional[str | Path] = None,
    overrides: Optional[dict[str, Any]] = None,
    *,
    explicit: bool = False,
    flags: Optional[dict[str, str]] = None,
) -> ResolvedConfig:
    """Read, merge flag overrides, validate once; raise ConfigError listing every problem.

    ``path`` None means ``./llgbm.toml``; when that default file is absent and ``explicit`` is
    False the built-in defaults are used. ``overrides`` maps dotted keys to values (flags win).
    Overrides whose value is None are ignored (an unset flag). ``flags`` names the command-line flag
    that set a key (``{"merge.density": "--density"}``); other overrides came from ``--set``. A
    problem with an overridden value is reported under that flag, not under the file.
    """
    p = Path(path) if path is not None else Path(DEFAULT_PROJECT_FILE)
    raw: dict[str, Any] = {}
    used_path: Optional[Path] = None
    files: dict[str, Path] = {}
    if p.exists() or explicit or path is not None:
        raw, files = read_project(p)
        used_path = p.resolve()
    return _resolve(raw, used_path, p, overrides, flags, files)


EXTENDS = "extends"
MAX_EXTENDS = 8


def read_project(path: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """A project file's data with the files it ``extends`` merged under it, and the file that set
    each dotted key. ``extends = "other.toml"`` (a path relative to the file that names it) takes
    every value of that file; this file's tables then merge into it key by key, and any other value
    (an array included) replaces the inherited one. A base file may itself extend another."""
    chain: list[Path] = []
    layers: list[tuple[Path, dict[str, Any]]] = []
    cur = Path(path)
    while True:
        here = cur.resolve() if cur.exists() else cur
        if here in chain:
            loop = " -> ".join(f.name for f in chain + [here])
            raise ConfigError([f"extends: {loop} is a cycle; remove `extends` from one of them"], source=str(chain[-1]))
        if len(chain) > MAX_EXTENDS:
            raise ConfigError([f"extends: more than {MAX_EXTENDS} files deep; flatten some of them into one"],
                              source=str(chain[0]))
        data = read_toml(cur)
        chain.append(here)
        base = data.pop(EXTENDS, None)
        layers.append((here, data))
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ConfigError([f"extends: expected the path of another project file (a string, relative to "
                               f"this file), got {base!r}"], source=str(cur))
        nxt = here.parent / Path(base).expanduser()
        if not nxt.is_file():
            raise ConfigError([f"extends: {base!r}: no such file ({nxt}); give a path relative to this file"],
                              source=str(cur))
        cur = nxt
    merged: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for where, data in reversed(layers):  # the deepest base first, the named file last
        merged = _merge_tables(merged, data)
        for k in _flatten(data):
            files[k] = where
    return merged, files


def _merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, every other value replaces."""
    out = _deep_copy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_tables(out[k], v)
        else:
            out[k] = _deep_copy(v)
    return out


# B2's keys before [train.b2] held them: still read, as the new key, with a one-line notice.
B2_LEGACY = {f"train.delta_only.predictor_{k}": f"train.b2.{k}" for k in B2Section.model_fields}
_noticed: set[tuple[str, str]] = set()


def _notice_legacy(old: str, where: str) -> None:
    if (old, where) not in _noticed:  # once per key and source in a process (folds re-resolve the config)
        _noticed.add((old, where))
        logging.getLogger(__name__).warning("%s: %s is read as %s; rename it there", where, old, B2_LEGACY[old])


def _legacy_moved(data: dict[str, Any], where: str) -> list[str]:
    """Move ``train.delta_only.predictor_*`` of the file's data to ``[train.b2]``; problems where both are given."""
    do = (data.get("train") or {}).get("delta_only")
    problems = []
    if not isinstance(do, dict):
        return problems
    for old, new in B2_LEGACY.items():
        key = old.rsplit(".", 1)[1]
        if key in do:
            b2 = data["train"].setdefault("b2", {})
            if isinstance(b2, dict) and new.rsplit(".", 1)[1] in b2:
                problems.append(f"{old}: also given as {new}; keep {new} only")
            elif isinstance(b2, dict):
                b2[new.rsplit(".", 1)[1]] = do.pop(key)
                _notice_legacy(old, where)
    return problems


# Keys added after runs were first fingerprinted, with the value every earlier run had: at that
# value they are left out of fingerprints, so that the runs made before them are still recognised.
ADDED_KEYS: dict[str, Any] = {"zoo.mixed_precision": "no", "train.delta_only.mixed_precision": "no",
                              "ablation.cells": {}, "ablation.base_cv": None,
                              "train.multitask.kl_temperature": 1.0, "train.multitask.kl_examples": 4,
                              "train.delta_only.kl_temperature": 1.0, "train.delta_only.kl_examples": 4,
                              "compose": ComposeSection().model_dump(mode="json"),
                              "retrieve.rank": "predicted", "retrieve.candidates": 8, "retrieve.own_prompts": 8,
                              "train.multitask.delta_probes": "generic", "train.multitask.delta_per_probe": False,
                              "train.multitask.own_task_probes": 16, "eval.task_probes": 0}


def fingerprint_view(d: dict[str, Any]) -> dict[str, Any]:
    """A config dump as run fingerprints have always read it: ``[train.b2]`` inside ``train.delta_only``
    as its ``predictor_*`` keys (where they lived when the first runs were fingerprinted), and the
    :data:`ADDED_KEYS` left out at their earlier value, so that a run made then is still recognised."""
    d = _deep_copy(d)
    train = d.get("train") or {}
    if isinstance(train.get("b2"), dict) and isinstance(train.get("delta_only"), dict):
        train["delta_only"].update({f"predictor_{k}": v for k, v in train.pop("b2").items()})
    for key, earlier in ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        sec = d
        for part in parents:
            sec = sec.get(part) if isinstance(sec, dict) else None
        if isinstance(sec, dict) and sec.get(leaf, earlier) == earlier:
            sec.pop(leaf, None)
    return d


def _resolve(raw: dict[str, Any], used_path: Optional[Path], p: Path, overrides: Optional[dict[str, Any]],
             flags: Optional[dict[str, str]] = None, files: Optional[dict[str, Path]] = None) -> ResolvedConfig:
    """Validate the file's data ``raw`` with ``overrides`` (see ``load_config``); ``files`` names the
    file that set each key of ``raw`` (see ``read_project``)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    typed = {}  # new key -> the legacy key the user typed
    for old in [k for k in overrides if k in B2_LEGACY]:
        typed[B2_LEGACY[old]] = old
        overrides[B2_LEGACY[old]] = overrides.pop(old)
        if flags and old in flags:
            flags = {**flags, B2_LEGACY[old]: flags[old]}
        _notice_legacy(old, (flags or {}).get(old) or "--set")
    data = _deep_copy(raw)
    legacy_problems = _legacy_moved(data, str(used_path or p))
    file_keys = set(_flatten(data))
    known = set(all_keys())
    bad_flags = []
    for k, v in overrides.items():
        if (k not in known and not any(k.split(".")[-1] == f or f".{f}." in k for f in _FREE_DICTS)
                and not k.startswith("tasks.")
                and not (k.startswith("zoo.per_task.") and k.count(".") == 3
                         and k.rsplit(".", 1)[1] in ZooTaskSettings.model_fields)):
            guess = difflib.get_close_matches(k, sorted(known), n=1)
            bad_flags.append(f"{k}: unknown key" + (f" (did you mean `{guess[0]}`?)" if guess else ""))
            continue
        set_dotted(data, k, v)
    problems = list(bad_flags) + legacy_problems
    cfg = None
    refused: list[str] = []  # the dotted keys pydantic refused
    try:
        cfg = LlgbmConfig.model_validate(data)
    except ValidationError as e:
        problems.extend(_format_errors(e))
        refused = [".".join(str(x) for x in err["loc"]) for err in e.errors()]
    problems.extend(_dataset_checks(data, cfg, used_path or p))
    problems.extend(_merge_checks(data))
    if cfg is not None:
        problems.extend(_semantic_checks(cfg))
        problems.extend(_ablation_checks(cfg))
    problems.extend(_registry_checks(data, refused))
    labels = {k: (flags or {}).get(k) or f"--set {typed.get(k, k)}={_toml_value(v)}" for k, v in overrides.items()}
    inherited = {k: f.name for k, f in (files or {}).items() if used_path is not None and f != used_path}
    if problems:
        raise _config_error(problems, labels, str(used_path or p), inherited)
    sources = {}
    for k in all_keys():
        if k in overrides:
            sources[k] = "flag"
        elif k in file_keys:
            sources[k] = "file"
        else:
            sources[k] = "default"
    for k in overrides:  # keys of per-task tables set by a flag
        if k.startswith("zoo.per_task."):
            sources[k] = "flag"
    root = used_path.parent if used_path else Path.cwd().resolve()
    return ResolvedConfig(config=cfg, path=used_path, root=root, sources=sources, labels=labels,
                          raw=_deep_copy(raw), files=dict(files or {}))


def _toml_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _config_error(problems: list[str], labels: dict[str, str], source: str,
                  inherited: Optional[dict[str, str]] = None) -> ConfigError:
    """Name each problem by where its value came from: a flag, ``--set``, the file, or the file it
    extends (``inherited``: dotted key -> that file's name)."""
    from_flags, from_file = [], []
    for prob in problems:
        key, _, msg = prob.partition(": ")
        if key in labels:
            from_flags.append(f"{labels[key]}: {msg}")
        elif key in (inherited or {}):
            from_file.append(f"{key} (set in {inherited[key]}, which this file extends): {msg}")
        else:
            from_file.append(prob)
    if not from_file:
        return ConfigError(from_flags)
    return ConfigError(from_file + from_flags, source=source)


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _dataset_checks(data: dict, cfg: Optional[LlgbmConfig], path: Path) -> list[str]:
    """Task names are checked on the raw values, so they are reported with type errors too."""
    from .tasks.registry import TaskRegistry  # light: no torch

    problems = []
    try:
        reg = TaskRegistry(cfg.tasks if cfg is not None else {}, Path(path).resolve().parent)
    except InputError as e:
        return [e.message]
    valid = reg.names()
    for key in ("data.datasets", "zoo.tasks", "zoo.per_task"):
        sec, name = key.split(".")
        names = (data.get(sec) or {}).get(name) if isinstance(data.get(sec), dict) else None
        if isinstance(names, dict):  # a table per task: its keys are the names
            names = list(names)
        if not isinstance(names, list):
            continue
        for n in names:
            try:
                ok = isinstance(n, str) and bool(reg.check(n))
            except InputError:
                ok = False
            if isinstance(n, str) and not ok:
                guess = difflib.get_close_matches(n, valid, n=1)
                problems.append(
                    f"{key}: unknown task {n!r}"
                    + (f" (did you mean {guess[0]!r}?)" if guess else "")
                    + f"; valid: {', '.join(valid)}"
                )
    return problems


def _merge_checks(data: dict) -> list[str]:
    """The merge options' ranges, by the rule the merge itself applies (checked on the raw section, so
    they are reported with the other sections' problems; type errors are pydantic's)."""
    from .merging import option_problems  # the registry is torch-free

    try:
        section = MergeSection.model_validate(data.get("merge") or {})
    except (ValidationError, TypeError):
        return []
    return [f"merge.{k}: {m}" for k, m in option_problems(section.model_dump())]


def _registry_checks(data: dict, refused: list[str]) -> list[str]:
    """The names the config gives (generators, index kind, merge strategy, eval methods), checked
    against their registries (``registries.py``) on the values as given, so they are reported beside
    pydantic's errors; a value pydantic refused is not checked again."""
    from . import registries  # imported on load, not with this module; no registry it reads imports torch

    def value(key: str) -> Any:
        if any(r == key or r.startswith(key + ".") or key.startswith(r + ".") for r in refused):
            return None
        cur: Any = data
        for part in key.split("."):
            if not isinstance(cur, dict):
                return None
            if part not in cur:  # left out: its default
                *parents, leaf = key.split(".")
                return _model_at(tuple(parents)).model_fields[leaf].get_default(call_default_factory=True)
            cur = cur[part]
        return cur

    return registries.problems(value)


def _semantic_checks(cfg: LlgbmConfig) -> list[str]:
    """Cross-field checks that pydantic field constraints cannot express."""
    problems = []
    mt = cfg.train.multitask
    if mt.delta_batch_size > mt.batch_size:
        problems.append(
            f"train.multitask.delta_batch_size: {mt.delta_batch_size} exceeds batch_size {mt.batch_size}; "
            "lower it or raise batch_size"
        )
    if mt.warmup_steps >= mt.total_steps:
        problems.append(
            f"train.multitask.warmup_steps: {mt.warmup_steps} must be below total_steps {mt.total_steps}"
        )
    if cfg.lora.last_layers is not None:  # against the base model's config.json, where it is on disk already
        from .models import base_model_layers, base_model_reference

        n = base_model_layers(base_model_reference(cfg.model.base))
        if n is not None and cfg.lora.last_layers > n:
            problems.append(f"lora.last_layers: {cfg.lora.last_layers} is more than the base model's {n} layers "
                            f"({cfg.model.base}); set at most {n} (or leave it unset: every layer)")
    for task in [None, *cfg.zoo.per_task]:
        z = cfg.zoo if task is None else cfg.zoo.for_task(task)
        where = "zoo." if task is None else f"zoo.per_task.{task}: zoo."
        if z.warmup_steps >= z.steps:
            problems.append(f"{where}warmup_steps: {z.warmup_steps} must be below zoo.steps {z.steps}")
        elif z.checkpoints > z.steps - z.warmup_steps:
            problems.append(f"{where}checkpoints: {z.checkpoints} checkpoints do not fit in the "
                            f"{z.steps - z.warmup_steps} steps after warm-up (zoo.steps {z.steps} - "
                            f"zoo.warmup_steps {z.warmup_steps}); lower it or raise zoo.steps")
    return problems


# Each `[ablation]` list -> the setting its values take in a cell (section path, key).
ABLATION_TARGETS: dict[str, tuple[str, str]] = {
    "lambda_delta": ("train.multitask", "lambda_delta"),
    "delta_loss_type": ("train.multitask", "delta_loss_type"),
    "probe_count": ("probes", "count"),
    "lambda_schedule": ("train.multitask", "lambda_schedule"),
    "interaction_lambda": ("train.multitask", "lambda_delta"),
    "interaction_loss": ("train.multitask", "delta_loss_type"),
    "loss_balance": ("train.multitask", "loss_balance"),
    "delta_centered": ("train.multitask", "delta_centered"),
    "task_weight": ("train.multitask", "task_weight"),
}


def _ablation_checks(cfg: LlgbmConfig) -> list[str]:
    """Every `[ablation]` value checked by the rule of the setting it takes in its cell, when the
    project loads (not when the cell runs, hours into the grid)."""
    problems = []
    ab = cfg.ablation
    for key, (where, name) in ABLATION_TARGETS.items():
        section: Section = cfg
        for part in where.split("."):
            section = getattr(section, part)
        base = section.model_dump()
        for value in getattr(ab, key):
            try:
                type(section).model_validate({**base, name: value})
            except ValidationError as e:
                msg = e.errors()[0]["msg"]
                problems.append(f"ablation.{key}: {value!r} is not a valid {where}.{name} ({msg})")
    known = set(all_keys())
    base = cfg.model_dump(mode="json")
    for name, cell in ab.cells.items():
        where = f"ablation.cells.{name}"
        if not name or any(c in name for c in "/\\") or name in (".", "..", "base"):
            problems.append(f"{where}: not a cell name (a folder name other than `base`); rename the table")
        bad = [k for k in cell.set if k not in known or k.startswith("ablation.")]
        for k in bad:
            guess = difflib.get_close_matches(k, sorted(known), n=1)
            problems.append(f"{where}.set: {k}: not a config key a cell can set"
                            + (f" (did you mean `{guess[0]}`?)" if guess else ""))
        if not bad and cell.set:
            data = _deep_copy(base)
            for k, v in cell.set.items():
                set_dotted(data, k, v)
            try:
                LlgbmConfig.model_validate(data)
            except ValidationError as e:
                problems.extend(f"{where}.set: {p}" for p in _format_errors(e))
    mt = cfg.train.multitask
    if ab.total_steps is not None and mt.warmup_steps >= ab.total_steps:
        problems.append(f"ablation.total_steps: {ab.total_steps} must be above train.multitask.warmup_steps "
                        f"{mt.warmup_steps}")
    return problems


def describe_schema() -> list[dict[str, Any]]:
    """Rows (key, type, default, help) for docs/config.md."""
    rows = []

    def walk(cls: type[BaseModel], prefix: str):
        for name, f in cls.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            if name == "tasks" and not prefix:  # one table per task: document the table's keys
                walk(TaskSpec, "tasks.<NAME>.")
                continue
            if name == "per_task" and prefix == "zoo.":
                walk(ZooTaskSettings, "zoo.per_task.<NAME>.")
                continue
            default = f.get_default(call_default_factory=True)
            rows.append(
                {
                    "key": f"{prefix}{name}",
                    "type": _type_name(ann),
                    "default": default,
                    "help": f.description or "",
                }
            )

    walk(LlgbmConfig, "")
    return rows


def _type_name(ann: Any) -> str:
    s = str(ann).replace("typing.", "")
    if isinstance(ann, type):
        s = ann.__name__
    return s
