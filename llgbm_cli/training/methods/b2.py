"""B2's engine: the DeltaPredictor (frozen encoder -> MLP -> delta) fitted on (condition prompts, cached
delta) pairs, the held-out loss and cosine logged per epoch (:func:`llgbm_cli.generators.predictor.fit_predictor`).
``llgbm_cli.services.train_delta_only`` is the use case around it (the pairs, the split, the output).
"""

from __future__ import annotations

import time
from typing import Any


def fit(resolved, entries, train, val, cache, encoder, progress) -> tuple[Any, list[dict], float]:
    """Encode every entry's condition prompts, fit the predictor on ``train`` (``val`` measured only);
    returns the fit, the epoch log and the seconds it took."""
    import torch

    from ...generators.predictor import encode_conditions, fit_predictor

    cfg = resolved.config
    b2, do = cfg.train.b2, cfg.train.delta_only
    task = progress.add("b2: encoding condition prompts", total=None)
    max_len = cfg.train.multitask.max_text_length
    embs = encode_conditions(encoder, [e.condition for e in entries], max_length=min(max_len, 512))
    by_id = {e.id: emb for e, emb in zip(entries, embs)}
    targets = lambda es: torch.stack([cache.row(e.id) for e in es]).float()  # noqa: E731
    progress.update(task, description="b2: training the delta predictor", total=b2.epochs, completed=0)
    log: list[dict] = []

    def on_epoch(epoch: int, rec: dict) -> None:
        log.append(rec)
        progress.update(task, completed=epoch)

    t0 = time.perf_counter()
    res = fit_predictor(
        [by_id[e.id] for e in train], targets(train),
        val_embs=[by_id[e.id] for e in val], val_targets=targets(val) if val else None,
        hidden=b2.hidden, dropout=b2.dropout, learning_rate=b2.learning_rate,
        epochs=b2.epochs, batch_size=b2.batch_size,
        prompts_per_condition=b2.condition_prompts, loss=b2.loss, seed=cfg.project.seed,
        log_interval=max(1, min(do.log_interval, b2.epochs)), on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - t0
    progress.update(task, completed=b2.epochs)
    return res, log, seconds
