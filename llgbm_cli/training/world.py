"""Set-up shared by the generator trainers (multitask and delta-only B1): the run folder and the
teacher adapters of the zoo, checked against the [lora] layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import InputError


def start_run_folder(out: Path, acc, *, force: bool, resume) -> Optional[Path]:
    """Create ``out`` for a new run. With ``force`` an existing run is moved aside (returned): the
    caller deletes it once the new run has finished (:func:`drop_old_run`), or puts it back if the
    new run fails or is interrupted (:func:`restore_run_folder`), so a failed run loses nothing."""
    from ..io import set_aside_name

    old = None
    if acc.is_main_process and force and not resume and out.exists():
        # named with this process's id: if it is killed, the next start puts the run back
        # (io.recover_leftovers)
        old = set_aside_name(out)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    acc.wait_for_everyone()
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    return old


def restore_run_folder(out: Path, old: Optional[Path]) -> None:
    """Undo :func:`start_run_folder` after a failure: the partial run goes, the earlier one is back."""
    if old is not None and old.exists():
        shutil.rmtree(out, ignore_errors=True)
        os.replace(old, out)


def drop_old_run(old: Optional[Path]) -> None:
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_teacher_adapters(zoo, entries, layout, lora_cfg, device):
    """Load the entries' adapters, each checked against the generator's module layout.

    Returns (adapters, scaling, teacher_ab) where teacher_ab maps a module name to the stacked
    (A [n, r, in], B [n, out, r]) of all entries, on ``device``."""
    import torch

    from ..adapters import load_adapter

    adapters = []
    for e in entries:
        ad = load_adapter(zoo.path_of(e))
        if ad.r != lora_cfg.rank or set(ad.modules) != set(layout.module_names):
            raise InputError(
                f"{zoo.path_of(e)}: adapter (rank {ad.r}, {len(ad.modules)} modules) does not match [lora] "
                f"(rank {lora_cfg.rank}, {len(layout.module_names)} modules on {', '.join(lora_cfg.target_modules)})"
            )
        adapters.append(ad)
    scaling = adapters[0].modules[layout.module_names[0]].scaling
    teacher_ab = {
        k: (torch.stack([a.modules[k].A for a in adapters]).to(device),
            torch.stack([a.modules[k].B for a in adapters]).to(device))
        for k in layout.module_names
    }
    return adapters, scaling, teacher_ab


def generator_meta(cfg, model, scaling, condition: dict, spec, probes, train_e, held_e, **extra) -> dict:
    """What a generator checkpoint records besides its weights, so `load_generator` needs nothing else."""
    from ..models import model_fingerprint

    return {
        **extra,
        "base_model": cfg.model.base,
        "base_fingerprint": model_fingerprint(model),
        "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "target_modules": list(cfg.lora.target_modules),
                 "last_layers": cfg.lora.last_layers, "scaling": scaling},
        "encoder": cfg.model.encoder,
        "condition": condition,
        "delta": {"spec": spec.to_dict(), "probes": probes.describe()},
        "trained_on": sorted({e.task for e in train_e}),
        "heldout": sorted({e.task for e in held_e}),
    }


def save_generator_meta(folder: Path, meta_common: dict, net, step: int) -> None:
    from ..generators.base import META
    from ..io import atomic_write_json

    full = dict(meta_common, step=step)
    full.update(generator=net.name, generator_options=net.options(), cond_dim=net.cond_dim,
                tokenizer=net.tokenizer.to_dict(), parameters=net.num_parameters())
    atomic_write_json(folder / META, full)
