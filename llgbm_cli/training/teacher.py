"""A teacher's training loop: one LoRA trajectory on the base model, as ``zoo build`` trains it.

The LoRA factors start as PEFT initializes them (A Kaiming-uniform, B zero: the adapter starts as a
no-op), seeded per trajectory; AdamW with a linear learning-rate warm-up; the answer-only loss, whose
output head runs only where a label is predicted; gradient clipping. Training runs through the
functional LoRA patch, so the base weights stay untouched and shared. With ``zoo.mixed_precision =
"bf16"`` the forward and backward passes run under bfloat16 autocast while the LoRA factors, their
gradients and AdamW's state stay float32. Each batch is a function of the
seed and the step alone (epochs are seeded permutations), so a trajectory resumed from a saved state
continues exactly as it would have run on.

:func:`train_trajectory` owns the loop and the training states (one ``.pt`` per checkpoint: the factors,
optimizer and scheduler); what a checkpoint becomes (an adapter folder, a manifest row) is the
caller's ``on_checkpoint``. :mod:`llgbm_cli.services.zoo` is the use case around it.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import InputError
from ..io import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class TrajectoryRun:
    steps_run: int = 0
    resumed_from: Optional[int] = None
    seconds: float = 0.0


def batch_indices(seed: int, step: int, bs: int, n: int) -> list[int]:
    """Rows of ``step``'s batch: epochs are seeded permutations, so any step is reproducible alone."""
    import torch

    out = []
    pos = step * bs
    while len(out) < bs:
        epoch, off = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        take = min(bs - len(out), n - off)
        out.extend(perm[off : off + take].tolist())
        pos += take
    return out


def train_trajectory(
    model,
    tok,
    examples: Sequence[Any],
    *,
    task: str,
    zc,
    lc,
    seed: int,
    checkpoints: Sequence[int],
    done: Sequence[bool],
    states: Sequence[Path],
    on_checkpoint: Callable[[int, int, dict[str, Any], float], None],
    progress,
    label: str,
) -> TrajectoryRun:
    """Train one trajectory of ``zc.steps`` steps (``zc``: the task's zoo settings, ``lc``: the LoRA
    layout) on ``examples``, from the last finished checkpoint whose training state (``states[k]``)
    reads back; at each unfinished checkpoint step save its state and call
    ``on_checkpoint(step, k, modules, loss)`` with the adapter's ``LoraModule``s."""
    import torch

    from ..adapters import LoraModule, lora_scaling, target_linears
    from ..lora.patch import LoraPatch, StackedLora
    from .task_loss import collate_examples

    run = TrajectoryRun()
    linears = target_linears(model, lc.target_modules, lc.last_layers)
    if not linears:
        raise InputError(f"lora.target_modules: no nn.Linear named {', '.join(lc.target_modules)} in the base model")
    names = sorted(linears)
    device = next(model.parameters()).device
    scaling = lora_scaling(lc.alpha, lc.rank)
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, tuple] = {}
    for n in names:  # PEFT's initialization: A Kaiming-uniform, B zero (the adapter starts as a no-op)
        lin = linears[n]
        A = torch.empty(lc.rank, lin.in_features)
        bound = 1.0 / math.sqrt(lin.in_features)  # kaiming_uniform_(a=sqrt(5)) on [r, in]
        A.uniform_(-bound, bound, generator=gen)
        B = torch.zeros(lin.out_features, lc.rank)
        params[n] = (A.to(device).requires_grad_(True), B.to(device).requires_grad_(True))
    flat = [p for n in names for p in params[n]]
    opt = torch.optim.AdamW(flat, lr=zc.learning_rate, weight_decay=zc.weight_decay)
    lr_warm = max(1, min(zc.lr_warmup_steps, zc.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / lr_warm))

    # Resume from the last checkpoint whose predecessors are all finished and whose state is saved.
    start = 0
    for k in range(len(checkpoints)):
        if not done[k]:
            break
        sp = states[k]
        if sp.exists():
            try:
                st = torch.load(sp, map_location=device, weights_only=True)
            except pickle.UnpicklingError as e:  # code or objects: refused, never run
                raise InputError(f"{sp}: refused to load (not plain tensors and numbers: "
                                 f"{str(e).splitlines()[0][:120]}); it may run code when unpickled. Remove it "
                                 f"to retrain {task} from its previous checkpoint")
            except (KeyError, RuntimeError, ValueError, EOFError, OSError) as e:
                log.warning("%s: unreadable training state (%s); retraining %s from its last good state", sp, e, task)
                break
            try:
                with torch.no_grad():
                    for n in names:
                        params[n][0].copy_(st["A"][n])
                        params[n][1].copy_(st["B"][n])
                opt.load_state_dict(st["optimizer"])
                sched.load_state_dict(st["scheduler"])
                start = checkpoints[k]
            except (KeyError, RuntimeError, ValueError, EOFError, OSError) as e:
                log.warning("%s: unreadable training state (%s); retraining %s from its last good state", sp, e, task)
                break
    run.resumed_from = start or None

    amp = zc.mixed_precision == "bf16"
    if amp:
        from ..models import require_bf16

        require_bf16(device, "zoo.mixed_precision")
    N, bs = len(examples), zc.batch_size
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    trunk = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    stacked = {n: StackedLora(params[n][0].unsqueeze(0), params[n][1].unsqueeze(0),
                              torch.full((1,), scaling, device=device)) for n in names}
    bar = progress.add(label, total=zc.steps)
    progress.advance(bar, start)
    t0 = time.perf_counter()
    with LoraPatch(model, stacked):
        for step in range(start, zc.steps):
            batch = [examples[i] for i in batch_indices(seed, step, bs, N)]
            ids_t, mask, labels = collate_examples(batch, pad_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                hidden = trunk(input_ids=ids_t, attention_mask=mask, use_cache=False).last_hidden_state
                # Answer-only loss: the head runs only where a label is predicted (a few tokens per row).
                tgt = labels[:, 1:]
                sel = tgt != -100
                logits = head(hidden[:, :-1][sel]).float()
            loss = torch.nn.functional.cross_entropy(logits, tgt[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flat, zc.max_grad_norm)
            opt.step()
            sched.step()
            run.steps_run += 1
            progress.advance(bar)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise InputError(f"zoo: training {task} diverged at step {step + 1} (loss {lv}); "
                                 "lower zoo.learning_rate")
            done_step = step + 1
            if done_step in checkpoints:
                k = checkpoints.index(done_step)
                if done[k]:
                    continue
                buf = io.BytesIO()
                torch.save({"step": done_step,
                            "A": {n: params[n][0].detach().cpu() for n in names},
                            "B": {n: params[n][1].detach().cpu() for n in names},
                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
                atomic_write_bytes(states[k], buf.getvalue())
                mods = {n: LoraModule(params[n][0].detach().cpu().clone(), params[n][1].detach().cpu().clone(),
                                      scaling) for n in names}
                on_checkpoint(done_step, k, mods, lv)
    run.seconds = time.perf_counter() - t0
    return run
