"""The benchmarks' adapters: the first N of a built zoo, or N seeded random rank-8 q/v LoRAs."""

from __future__ import annotations

from pathlib import Path


def zoo_or_random(model, args) -> list:
    """``args.adapters`` adapters: the first of ``args.zoo``'s folders, or seeded random ones on the
    last ``args.last_layers`` layers (``args.seed`` + i)."""
    from llgbm_cli.adapters import load_adapter, random_adapter

    if args.zoo:
        folders = sorted(p.parent for p in Path(args.zoo, "adapters").glob("*/adapter_config.json"))[: args.adapters]
        if len(folders) < args.adapters:
            raise SystemExit(f"{args.zoo}: {len(folders)} adapters, --adapters asks for {args.adapters}")
        return [load_adapter(f) for f in folders]
    return [random_adapter(model, seed=args.seed + i, last_layers=args.last_layers or None, std=0.05)
            for i in range(args.adapters)]
