"""PEFT LoRA adapter folders: load, validate against a base model, save atomically.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's own
layout, so ``peft.PeftModel.from_pretrained`` loads whatever llgbm writes). In memory an adapter
is a :class:`LoraAdapter`: per target module (named as in the base causal LM, e.g.
``model.layers.0.self_attn.q_proj``) its A ``[r, in]``, B ``[out, r]`` and scaling.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from .errors import InputError
from .io import atomic_dir, atomic_write_json, save_safetensors, sha256_file, write_provenance
from .models import base_model_name

if TYPE_CHECKING:  # pragma: no cover
    import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


@dataclass
class LoraModule:
    A: "torch.Tensor"  # [r, in]
    B: "torch.Tensor"  # [out, r]
    scaling: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta_weight(self) -> "torch.Tensor":
        """ΔW = scaling · B · A, shape [out, in]."""
        return self.scaling * (self.B.float() @ self.A.float())


@dataclass
class LoraAdapter:
    modules: dict[str, LoraModule]
    r: int
    alpha: float
    target_modules: list[str]
    use_rslora: bool = False
    base_model: Optional[str] = None
    path: Optional[Path] = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.path.name if self.path is not None else "<memory>"

    def sha256(self) -> str:
        if self.path is None:
            raise ValueError("adapter has no file")
        return sha256_file(self.path / WEIGHTS_FILE)

    def to(self, device=None, dtype=None) -> "LoraAdapter":
        mods = {
            k: LoraModule(m.A.to(device=device, dtype=dtype), m.B.to(device=device, dtype=dtype), m.scaling)
            for k, m in self.modules.items()
        }
        return LoraAdapter(mods, self.r, self.alpha, list(self.target_modules), self.use_rslora,
                           self.base_model, self.path, dict(self.config))

    def num_parameters(self) -> int:
        return sum(m.A.numel() + m.B.numel() for m in self.modules.values())


def weights_sha256(path: str | Path) -> str:
    """sha256 of an adapter folder's weights file."""
    return sha256_file(Path(path) / WEIGHTS_FILE)


def adapter_module_names(path: str | Path) -> list[str]:
    """Names of the modules an adapter folder adapts, read from its weights file's header only
    (no tensor is loaded). An unreadable file gives an empty list (loading it reports why)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(path) / WEIGHTS_FILE), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return []
    return sorted({m.group("module") for m in map(_KEY.match, keys) if m})


def _pattern_value(patterns: dict, module: str, default):
    for key, val in (patterns or {}).items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return val
    return default


def load_adapter(path: str | Path, *, device: str = "cpu") -> LoraAdapter:
    """Load and structurally check a PEFT LoRA folder. Errors name the file and the problem:
    a config rank (``r``/``rank_pattern``) that disagrees with the tensors, a non-positive or
    non-finite alpha, or NaN/Inf weights are refused with the module named."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: adapter folder not found")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; an adapter is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    missing = [p.name for p in (cfg_path, w_path) if not p.exists()]
    if missing:
        present = sorted(p.name for p in path.iterdir())[:8]
        raise InputError(
            f"{path}: missing {', '.join(missing)} (folder holds: {', '.join(present) or 'nothing'}); "
            "an adapter is a PEFT LoRA folder"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path}: corrupt JSON ({e})")
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type not in ("LORA", "PEFTTYPE.LORA"):
        raise InputError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}; llgbm handles LoRA adapters only")
    for key in ("r", "lora_alpha"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"{cfg_path}: `{key}` must be a positive finite number (got {v!r})")
    if cfg["r"] != int(cfg["r"]):
        raise InputError(f"{cfg_path}: `r` must be a whole number (got {cfg['r']!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        for name, v in (cfg.get(key) or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InputError(f"{cfg_path}: `{key}` entry {name!r} must be a positive finite number (got {v!r})")
    if cfg.get("use_dora"):
        raise InputError(f"{cfg_path}: DoRA adapters are not supported (use_dora = true)")
    try:
        tensors = load_file(str(w_path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{w_path}: corrupt or unreadable safetensors file ({str(e).splitlines()[0]})")
    parts: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            if "lora_" in key or key.endswith(".bias"):
                raise InputError(f"{w_path}: unsupported tensor {key!r} (llgbm reads lora_A/lora_B weights only)")
            continue
        parts.setdefault(m.group("module"), {})[m.group("which")] = t
    if not parts:
        raise InputError(f"{w_path}: no lora_A/lora_B tensors found")
    rslora = bool(cfg.get("use_rslora", False))
    modules = {}
    for name, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise InputError(f"{w_path}: module {name} has lora_{'A' if 'A' in ab else 'B'} but not its pair")
        A, B = ab["A"], ab["B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise InputError(
                f"{w_path}: module {name}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not form a LoRA pair"
            )
        r = int(A.shape[0])
        want_r = _pattern_value(cfg.get("rank_pattern"), name, cfg["r"])
        if r != int(want_r):
            src = "rank_pattern" if (cfg.get("rank_pattern") and want_r != cfg["r"]) else "r"
            raise InputError(
                f"{cfg_path}: `{src}` says rank {want_r} but module {name} has rank {r} in {w_path.name} "
                f"(lora_A {tuple(A.shape)}); fix `{src}` to {r} or re-export the adapter"
            )
        bad = [w for w, t in (("lora_A", A), ("lora_B", B)) if not bool(torch.isfinite(t).all())]
        if bad:
            raise InputError(f"{w_path}: module {name}: {' and '.join(bad)} hold NaN or Inf values; "
                             "the adapter is unusable (retrain or re-export it)")
        alpha = _pattern_value(cfg.get("alpha_pattern"), name, cfg["lora_alpha"])
        modules[name] = LoraModule(A.float(), B.float(), lora_scaling(alpha, r, rslora))
    targets = cfg.get("target_modules") or sorted({n.rsplit(".", 1)[-1] for n in modules})
    if isinstance(targets, str):
        targets = sorted({n.rsplit(".", 1)[-1] for n in modules})
    return LoraAdapter(
        modules=modules,
        r=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        target_modules=sorted(targets),
        use_rslora=rslora,
        base_model=base_model_name(cfg.get("base_model_name_or_path")),
        path=path,
        config=cfg,
    )


def validate_against(adapter: LoraAdapter, model) -> None:
    """Check every module exists in ``model`` as an nn.Linear with matching shapes; list all mismatches."""
    import torch.nn as nn

    named = dict(model.named_modules())
    problems = []
    for name, m in adapter.modules.items():
        mod = named.get(name)
        if mod is None:
            problems.append(f"{name}: no such module in the base model")
            continue
        if not isinstance(mod, nn.Linear):
            problems.append(f"{name}: base module is {type(mod).__name__}, not nn.Linear")
            continue
        if m.A.shape[1] != mod.in_features or m.B.shape[0] != mod.out_features:
            problems.append(
                f"{name}: adapter maps {m.A.shape[1]}->{m.B.shape[0]} (lora_A {tuple(m.A.shape)}, lora_B "
                f"{tuple(m.B.shape)}) but the base module is {mod.in_features}->{mod.out_features}"
            )
    if problems:
        where = adapter.path or "adapter"
        shown = problems[:6] + ([f"... and {len(problems) - 6} more"] if len(problems) > 6 else [])
        raise InputError(f"{where}: does not fit the base model: " + "; ".join(shown))


def peft_config_dict(
    r: int,
    alpha: float,
    target_modules: Iterable[str],
    base_model: Optional[str] = None,
    *,
    use_rslora: bool = False,
    layers_to_transform: Optional[list[int]] = None,
    layers_pattern: Optional[str] = None,
    rank_pattern: Optional[dict] = None,
    alpha_pattern: Optional[dict] = None,
) -> dict[str, Any]:
    """adapter_config.json contents, produced by PEFT's own LoraConfig so PEFT reads it back.

    ``base_model`` is recorded as a reference PEFT can load by itself (see
    :func:`~llgbm_cli.models.base_model_reference`)."""
    from peft import LoraConfig

    from .models import base_model_reference

    cfg = LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        target_modules=sorted(set(target_modules)),
        task_type="CAUSAL_LM",
        bias="none",
        lora_dropout=0.0,
        use_rslora=use_rslora,
        layers_to_transform=layers_to_transform,
        layers_pattern=layers_pattern if layers_to_transform is not None else None,
        rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {},
        base_model_name_or_path=base_model_reference(base_model),
    ).to_dict()
    return json.loads(json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def adapted_layers(modules: dict[str, Any], base_model: Optional[str] = None) -> tuple[Optional[list[int]], Optional[str]]:
    """``(layers_to_transform, layers_pattern)`` for an adapter of these modules: the decoder layers
    it adapts, unless it adapts every layer of its base model (``(None, None)``), so that PEFT adds
    LoRA to those layers only. When the base model's layer count cannot be read, the layers are
    written whenever the modules carry layer numbers (always right for PEFT)."""
    from .models import base_model_layers, base_model_reference

    found = [_layer_match(n) for n in modules]
    if not found or any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return None, None
    layers = sorted({f[1] for f in found})
    n = base_model_layers(base_model_reference(base_model))
    if n is not None and layers == list(range(n)):
        return None, None
    return layers, found[0][0]


def _layer_match(name: str) -> Optional[tuple[str, int]]:
    m = re.search(r"(?:^|\.)(layers|h|blocks|block|layer)\.(\d+)\.", name)
    return (m.group(1), int(m.group(2))) if m else None


def save_adapter(
    out: str | Path,
    modules: dict[str, LoraModule] | LoraAdapter,
    *,
    alpha: Optional[float] = None,
    base_model: Optional[str] = None,
    provenance: Optional[dict[str, Any]] = None,
    force: bool = False,
    use_rslora: bool = False,
) -> Path:
    """Write a PEFT LoRA folder atomically. Refuses an existing ``out`` unless ``force``.

    Modules with a different rank than the most common one get a ``rank_pattern`` entry; the
    scaling of every module is preserved exactly through ``alpha`` / ``alpha_pattern``.
    """
    import torch

    if isinstance(modules, LoraAdapter):
        ad = modules
        modules, alpha, use_rslora = ad.modules, ad.alpha if alpha is None else alpha, ad.use_rslora
        base_model = base_model or ad.base_model
    if not modules:
        raise InputError(f"{out}: refusing to save an adapter with no modules")
    ranks = [m.rank for m in modules.values()]
    r = max(set(ranks), key=ranks.count)
    if alpha is None:
        first = next(iter(modules.values()))
        alpha = first.scaling * (math.sqrt(first.rank) if use_rslora else first.rank)
    rank_pattern, alpha_pattern = {}, {}
    for name, m in modules.items():
        if m.rank != r:
            rank_pattern[name] = m.rank
        want = lora_scaling(alpha, m.rank, use_rslora)
        if not math.isclose(want, m.scaling, rel_tol=1e-6):
            alpha_pattern[name] = m.scaling * (math.sqrt(m.rank) if use_rslora else m.rank)
    targets = sorted({n.rsplit(".", 1)[-1] for n in modules})
    layers, pattern = adapted_layers(modules, base_model)
    cfg = peft_config_dict(r, alpha, targets, base_model, use_rslora=use_rslora, layers_to_transform=layers,
                           layers_pattern=pattern, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    tensors = {}
    for name, m in modules.items():
        if not (torch.isfinite(m.A).all() and torch.isfinite(m.B).all()):
            raise InputError(f"{out}: module {name} has NaN or Inf weights; refusing to save")
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = m.A.detach().float().contiguous().cpu()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = m.B.detach().float().contiguous().cpu()
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        save_safetensors(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        atomic_write_json(tmp / CONFIG_FILE, cfg)
        if provenance is not None:
            write_provenance(tmp, provenance)
    return out


def target_linears(model, target_modules: Iterable[str], last_layers: Optional[int] = None) -> dict[str, Any]:
    """Base-model nn.Linear modules a LoRA with these targets attaches to (name -> module)."""
    import torch.nn as nn

    targets = set(target_modules)
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets}
    if last_layers is not None:
        n_layers = int(model.config.num_hidden_layers)
        if last_layers > n_layers:
            raise InputError(f"lora.last_layers: {last_layers} is more than the base model's {n_layers} layers; "
                             f"set at most {n_layers} (or leave it unset: every layer)")
        keep = set(range(max(0, n_layers - last_layers), n_layers))
        found = {n: m for n, m in found.items() if _layer_index(n) in keep}
    return found


def _layer_index(name: str) -> Optional[int]:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def random_adapter(
    model,
    *,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
    seed: int = 0,
    std: float = 0.02,
    last_layers: Optional[int] = None,
) -> LoraAdapter:
    """A seeded random LoRA (non-zero A and B) fitting ``model``: for tests and benchmarks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mods = {}
    targets = sorted(set(target_modules))
    for name, lin in sorted(target_linears(model, targets, last_layers).items()):
        A = torch.randn(r, lin.in_features, generator=g) * std
        B = torch.randn(lin.out_features, r, generator=g) * std
        mods[name] = LoraModule(A, B, lora_scaling(alpha, r))
    if not mods:
        raise InputError(f"no nn.Linear modules named {', '.join(targets)} in the base model")
    return LoraAdapter(mods, r, alpha, targets, base_model=getattr(model.config, "llgbm_name", None))
