"""The training loop shared by generator trainers. See the package docstring."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import InputError, LlgbmError
from ..io import atomic_dir, atomic_write_text, provenance, write_provenance

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
STATE = "trainer_state.json"  # step, optimizer hyper-parameters, scheduler (JSON)
STATE_TENSORS = "trainer_state.safetensors"  # optimizer moments and the RNG state
LEGACY_STATE = "trainer_state.pt"  # older runs: read with weights_only=True, never with full pickle
WEIGHTS = "generator.safetensors"
AUX = "loss_balance.safetensors"  # learned loss-balance parameters (train.multitask.loss_balance = "uncertainty")
from ..workdir import FINAL  # noqa: E402,F401  (the folder name is part of the work-folder layout)


class NonFiniteLoss(LlgbmError):
    """A loss or the gradient norm became NaN/Inf: the run stops, the last good checkpoint stays."""

    exit_code = 1


@dataclass
class LoopConfig:
    """The optimizer and bookkeeping settings of a run (filled from a train config section)."""

    total_steps: int
    learning_rate: float
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_schedule: str = "linear"
    max_grad_norm: float = 1.0
    log_interval: int = 10
    save_interval: int = 500
    eval_interval: int = 100
    mixed_precision: str = "no"
    seed: int = 0


@dataclass
class TrainResult:
    out_dir: Path
    final_checkpoint: Path
    steps: int
    resumed_from: Optional[int]
    first: dict[str, float] = field(default_factory=dict)  # first logged metrics
    last: dict[str, float] = field(default_factory=dict)  # last logged metrics
    eval: dict[str, float] = field(default_factory=dict)  # last evaluation
    seconds: float = 0.0
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "out_dir": str(self.out_dir), "final_checkpoint": str(self.final_checkpoint), "steps": self.steps,
            "resumed_from": self.resumed_from, "first": self.first, "last": self.last, "eval": self.eval,
            "seconds": round(self.seconds, 2),
        }


def make_accelerator(mixed_precision: str = "no", device: str = "auto"):
    """An Accelerator; under ``accelerate launch`` it joins the process group (DDP)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ..distributed import leave_group_at_exit

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed_precision)) != mixed_precision:
        # an earlier run of this process chose another precision: its settings go, the process group stays
        AcceleratorState._reset_state()
    acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    if acc.num_processes > 1:
        leave_group_at_exit()
    return acc


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warm-up, then decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def step_rng(seed: int, step: int, rank: int = 0):
    """The sampling RNG of one step: a pure function of (seed, step, rank), so a resumed run draws
    exactly what the uninterrupted one would have, with no sampler state to save."""
    import numpy as np

    return np.random.default_rng([int(seed), int(step), int(rank)])


def is_checkpoint(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / STATE).exists() or (folder / LEGACY_STATE).exists()


def find_latest_checkpoint(out_dir: Path) -> Optional[Path]:
    ck = Path(out_dir) / CHECKPOINTS
    steps = sorted(p for p in ck.glob("step-*") if is_checkpoint(p)) if ck.is_dir() else []
    return steps[-1] if steps else None


def save_trainer_state(folder: Path, step: int, optimizer_state: dict, scheduler_state: dict,
                       rng_state: torch.Tensor) -> None:
    """Write the resumable state without pickle: tensors to safetensors, everything else to JSON."""
    from ..io import save_safetensors as save_file

    from ..io import atomic_write_json

    tensors: dict[str, torch.Tensor] = {"torch_rng": rng_state.detach().cpu().contiguous()}
    state_json: dict[str, dict[str, Any]] = {}
    for pid, st in optimizer_state["state"].items():
        plain = {}
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                plain[name] = v
        state_json[str(pid)] = plain
    save_file(tensors, str(folder / STATE_TENSORS))
    atomic_write_json(folder / STATE, {
        "format": 1, "step": int(step), "optimizer": {"param_groups": optimizer_state["param_groups"],
                                                      "state": state_json},
        "scheduler": scheduler_state,
    })


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """Read what :func:`save_trainer_state` wrote: ``{step, optimizer, scheduler, torch_rng}``.

    Nothing is unpickled: a checkpoint from an older run (``trainer_state.pt``) is read with
    ``torch.load(weights_only=True)``, which refuses code and objects, with an error naming the file.
    """
    folder = Path(folder)
    js, ts, legacy = folder / STATE, folder / STATE_TENSORS, folder / LEGACY_STATE
    if not js.exists() and legacy.exists():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{legacy}: refused to load (not plain tensors and numbers: "
                             f"{str(e).splitlines()[0][:120]}); it may run code when unpickled. Start afresh "
                             "with --force, or resume from a checkpoint written by this version")
        if not isinstance(state, dict) or not {"step", "optimizer", "scheduler", "torch_rng"} <= set(state):
            raise InputError(f"{legacy}: not a training state (expected step, optimizer, scheduler, torch_rng)")
        return state
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
        tensors = load_file(str(ts))
        opt_state: dict[int, dict[str, Any]] = {}
        for pid, plain in doc["optimizer"]["state"].items():
            opt_state[int(pid)] = dict(plain)
        for key, t in tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = t
        groups = doc["optimizer"]["param_groups"]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        return {"step": int(doc["step"]), "optimizer": {"state": opt_state, "param_groups": groups},
                "scheduler": doc["scheduler"], "torch_rng": tensors["torch_rng"]}
    except FileNotFoundError as e:
        raise InputError(f"{e.filename}: missing from the checkpoint; resume from another one or start afresh with --force")
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, KeyError, ValueError, TypeError) as e:
        raise InputError(f"{folder}: corrupt training state in {STATE} / {STATE_TENSORS} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''}); resume from another checkpoint or "
                         "start afresh with --force")


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    p = Path(out_dir) / METRICS
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]


class _Logger:
    """metrics.jsonl (append, flushed per line), optional TensorBoard; main process only."""

    def __init__(self, out_dir: Path, enabled: bool, keep_until: Optional[int]):
        self.enabled = enabled
        self.path = out_dir / METRICS
        self.tb = None
        if not enabled:
            return
        if keep_until is not None and self.path.exists():
            # A resumed run rewrites what came after its checkpoint: the log stays one clean series.
            rows = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= keep_until]
            atomic_write_text(self.path, "".join(r + "\n" for r in rows))
        elif keep_until is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None
        self.fh = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.tb is not None:
                self.tb.close()


def _to_float(v: Any) -> float:
    return float(v.detach().float().item()) if torch.is_tensor(v) else float(v)


def run_training(
    model: torch.nn.Module,
    step_fn: Callable[[int, torch.nn.Module], dict[str, Any]],
    cfg: LoopConfig,
    out_dir: Path,
    *,
    accelerator,
    save_meta: Callable[[Path, torch.nn.Module, int], None],
    config_dict: Optional[dict] = None,
    command: str = "train",
    resume_from: Optional[Path] = None,
    eval_fn: Optional[Callable[[int, torch.nn.Module], dict[str, float]]] = None,
    progress=None,
    aux: Optional[torch.nn.Module] = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.total_steps`` optimizer steps.

    ``step_fn(step, model)`` runs one step's forward (``step`` = completed steps, 0-based) and
    returns a dict with ``loss`` (the tensor to minimize) plus any other metrics (tensors or
    floats); every value whose name starts with ``loss`` is checked for NaN/Inf.
    ``save_meta(folder, unwrapped_model, step)`` writes the model's description next to its
    weights, so a checkpoint folder is self-describing. ``resume_from`` is a checkpoint folder.
    ``aux`` holds parameters of the loss (learned loss weights) that ``step_fn`` uses: they join
    the optimizer in a group of their own without weight decay or clipping, and are saved to and
    restored from ``loss_balance.safetensors`` beside the generator's weights.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    main = accelerator.is_main_process
    torch.manual_seed(cfg.seed)
    aux_params = [p for p in aux.parameters() if p.requires_grad] if aux is not None else []
    if aux_params:
        opt = torch.optim.AdamW(
            [{"params": [p for p in model.parameters() if p.requires_grad]}, {"params": aux_params, "weight_decay": 0.0}],
            lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
    # The scheduler stays outside accelerate.prepare: prepared schedulers step once per process.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.total_steps, cfg.warmup_steps, cfg.lr_schedule)
    )
    start = 0
    resumed = None
    if resume_from is not None:
        from safetensors.torch import load_file

        state = load_trainer_state(Path(resume_from))
        try:
            model.load_state_dict(load_file(str(Path(resume_from) / WEIGHTS)))
            if aux is not None:
                aux.load_state_dict(load_file(str(Path(resume_from) / AUX)))
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
        except Exception as e:
            raise InputError(f"{resume_from}: checkpoint does not fit this run ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); start afresh with --force")
        start = resumed = int(state["step"])
    model, opt = accelerator.prepare(model, opt)
    model.train()
    unwrapped = accelerator.unwrap_model(model)
    logger = _Logger(out_dir, main, resumed)
    ck_dir = out_dir / CHECKPOINTS
    last_good: Optional[Path] = Path(resume_from) if resume_from is not None else None
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    task = progress.add("training", total=cfg.total_steps) if (progress is not None and main) else None
    if task is not None and start:
        progress.advance(task, start)

    def save(folder: Path, step: int, force: bool) -> None:
        if main:
            from ..io import save_safetensors as save_file

            with atomic_dir(folder, force=force) as tmp:
                sd = {k: v.detach().contiguous().cpu() for k, v in unwrapped.state_dict().items()}
                save_file(sd, str(tmp / WEIGHTS))
                if aux is not None:
                    save_file({k: v.detach().contiguous().cpu() for k, v in aux.state_dict().items()}, str(tmp / AUX))
                save_trainer_state(tmp, step, opt.state_dict(), sched.state_dict(), torch.get_rng_state())
                save_meta(tmp, unwrapped, step)
                write_provenance(tmp, provenance(command, config_dict, step=step))
        accelerator.wait_for_everyone()

    try:
        for step in range(start, cfg.total_steps):
            with accelerator.autocast():
                out = step_fn(step, model)
            bad = [k for k, v in out.items() if k.startswith("loss") and v is not None and not math.isfinite(_to_float(v))]
            _check_finite(accelerator, bad, step, "loss", last_good)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(out["loss"])
            if aux_params and accelerator.num_processes > 1:  # the loss's own parameters stay in step across processes
                for p in aux_params:
                    if p.grad is not None:
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
            gn = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            gn = _to_float(gn)
            _check_finite(accelerator, [] if math.isfinite(gn) else ["grad_norm"], step, "gradient", last_good)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            done = step + 1
            if task is not None:
                progress.advance(task)
            if done % cfg.log_interval == 0 or done == cfg.total_steps or done == start + 1:
                metrics = {k: _to_float(v) for k, v in out.items() if v is not None and k != "loss"}
                metrics.update(loss_total=_to_float(out["loss"]), learning_rate=lr, grad_norm=gn)
                if eval_fn is not None and (done % cfg.eval_interval == 0 or done == cfg.total_steps):
                    model.eval()
                    last_eval = eval_fn(done, unwrapped) or {}
                    model.train()
                    metrics.update(last_eval)
                logger.log(done, metrics)
                first = first or dict(metrics)
                last = dict(metrics)
                if task is not None:
                    shown = ", ".join(f"{k.replace('loss_', '')} {metrics[k]:.4g}" for k in
                                      ("loss_total", "loss_weights", "loss_delta", "delta_cosine_sim") if k in metrics)
                    progress.update(task, description=f"step {done}: {shown}")
            if done % cfg.save_interval == 0 and done != cfg.total_steps:
                last_good = ck_dir / f"step-{done:06d}"
                save(last_good, done, force=True)
        final_step = cfg.total_steps
        save(ck_dir / f"step-{final_step:06d}", final_step, force=True)
        save(out_dir / FINAL, final_step, force=True)
    finally:
        logger.close()
    return TrainResult(out_dir, out_dir / FINAL, cfg.total_steps, resumed, first, last, last_eval,
                       time.perf_counter() - t0, accelerator.num_processes)


def _check_finite(accelerator, bad: list[str], step: int, what: str, last_good: Optional[Path]) -> None:
    flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if flag.item() > 0:
        names = ", ".join(bad) or f"a {what} on another process"
        kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
        raise NonFiniteLoss(
            f"{names} became NaN/Inf at step {step + 1}; stopped, {kept}",
            hint="lower train.multitask.learning_rate or lambda_delta, or check the teacher deltas",
        )
