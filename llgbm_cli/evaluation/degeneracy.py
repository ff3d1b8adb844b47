"""Degenerate solutions of delta-only training: generated adapters whose ΔW norm collapses toward
zero, or whose adapters for different tasks collapse together. Used by B1 training (every
``eval_interval`` steps and at the end)."""

from __future__ import annotations

from typing import Optional


def flat_delta_w(loras, scaling: float):
    """Per adapter, every module's ΔW = scaling·B·A flattened and concatenated: ``[n, P]``."""
    import torch

    return torch.cat([(scaling * torch.bmm(B.float(), A.float())).flatten(1) for A, B in loras.values()], dim=1)


def mean_pairwise_cosine(x) -> float:
    import torch

    n = x.shape[0]
    if n < 2:
        return float("nan")
    xn = torch.nn.functional.normalize(x.float(), dim=-1)
    sims = xn @ xn.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def degeneracy_report(gen_loras, teacher_loras, scaling: float, teacher_scaling: Optional[float] = None, *,
                      norm_ratio: float = 0.1, max_cosine: float = 0.99) -> tuple[dict[str, float], list[str]]:
    """Check generated adapters (one per task, same order as the teachers) for the degenerate
    solutions of delta-only training: ΔW norm collapsing toward zero against the teachers' mean
    norm, and adapters of different tasks collapsing together (mean pairwise ΔW cosine near 1
    while the teachers' is not). Returns ``(metrics, warnings)``; no warning means healthy."""
    import torch

    with torch.no_grad():
        g = flat_delta_w(gen_loras, scaling)
        t = flat_delta_w(teacher_loras, scaling if teacher_scaling is None else teacher_scaling)
        g_norm, t_norm = float(g.norm(dim=1).mean()), float(t.norm(dim=1).mean())
        ratio = g_norm / t_norm if t_norm > 0 else float("inf")
        g_cos, t_cos = mean_pairwise_cosine(g), mean_pairwise_cosine(t)
    metrics = {"gen_lora_norm": g_norm, "teacher_lora_norm": t_norm, "lora_norm_ratio": ratio,
               "gen_pairwise_cosine": g_cos, "teacher_pairwise_cosine": t_cos}
    warnings = []
    if ratio < norm_ratio:
        warnings.append(f"norm collapse: generated LoRAs have ‖ΔW‖ {g_norm:.3g}, {ratio:.1%} of the teachers' mean "
                        f"{t_norm:.3g} (threshold {norm_ratio:.0%}); raise norm_match_weight or lora_variance_weight, or lower "
                        "lora_norm_weight")
    if g_cos == g_cos and g_cos > max_cosine and not (t_cos > max_cosine):
        warnings.append(f"diversity collapse: generated LoRAs of different tasks have mean pairwise ΔW cosine "
                        f"{g_cos:.4f} (teachers {t_cos:.4f}, threshold {max_cosine}); the generator ignores its condition "
                        "(raise relational_weight)")
    metrics["degenerate_norm"] = float(ratio < norm_ratio)
    metrics["degenerate_diversity"] = float(any(w.startswith("diversity") for w in warnings))
    return metrics, warnings
