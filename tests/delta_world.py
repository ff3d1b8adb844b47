"""A tiny world for delta-space tests: random LoRA adapters on tiny-llama, grouped by task,
with condition prompts in a zoo manifest and their deltas computed by `cache-deltas`."""

from __future__ import annotations

from pathlib import Path

TASK_PROMPTS = {
    "arc-easy": [
        "Which gas do plants take in from the air to make food?",
        "What causes the seasons on Earth?",
        "Which tool is best for measuring the mass of a rock?",
        "What happens to water when it freezes?",
        "Which part of a plant absorbs water from the soil?",
        "What form of energy does a battery store?",
    ],
    "boolq": [
        "Is the Amazon the longest river in the world?",
        "Does a tomato count as a fruit?",
        "Is it legal to drive without a license in France?",
        "Can penguins fly?",
        "Is the Eiffel Tower taller than the Statue of Liberty?",
        "Do all mammals give birth to live young?",
    ],
    "piqa": [
        "How do I remove a stripped screw from wood?",
        "To keep bread fresh longer, you should",
        "How can I clean a burnt pan?",
        "To open a stuck jar lid,",
        "How do you keep cut apples from turning brown?",
        "To dry wet shoes quickly,",
    ],
}


def build_tiny_world(project: Path, model, per_task: int = 3, std: float = 0.3):
    """Write adapters + zoo.jsonl under the project's workdir and fill the delta cache."""
    import torch

    from llgbm_cli.adapters import LoraAdapter, LoraModule, random_adapter, save_adapter
    from llgbm_cli.config import load_config
    from llgbm_cli.services.cache_deltas import run_cache_deltas
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    resolved = load_config(project, explicit=True)
    cfg = resolved.config
    zoo_dir = resolved.resolve_path(cfg.zoo.path)
    entries = []
    for ti, task in enumerate(TASK_PROMPTS):
        base = random_adapter(model, r=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules,
                              seed=100 + ti, std=std)
        for j in range(per_task):
            g = torch.Generator().manual_seed(1000 * ti + j)
            mods = {k: LoraModule(m.A + 0.1 * std * torch.randn(m.A.shape, generator=g),
                                  m.B + 0.1 * std * torch.randn(m.B.shape, generator=g), m.scaling)
                    for k, m in base.modules.items()}
            ad = LoraAdapter(mods, base.r, base.alpha, base.target_modules, base_model=cfg.model.base)
            aid = f"{task}-{j}"
            save_adapter(zoo_dir / "adapters" / aid, ad, base_model=cfg.model.base)
            entries.append(ZooEntry(id=aid, path=f"adapters/{aid}", task=task, step=j, seed=j,
                                    condition=list(TASK_PROMPTS[task])))
    Zoo(zoo_dir, entries).save()
    run_cache_deltas(resolved)
    return resolved
