"""Checkpoints of the mapping network: safetensors weights + a JSON config, written atomically.

Loading never executes code from the file (safetensors holds only tensors; the config is JSON).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lli_fast._io import atomic_write
from lli_fast.mapping import SKIPS, MappingNetwork

__all__ = ["atomic_write", "load_mapping", "save_mapping"]

FORMAT = "lli_fast.mapping/1"
CONFIG_KEY = "lli_fast_config"


def _check_arch(path: str, arch, tensors: dict[str, torch.Tensor]) -> dict[str, int | str]:
    """The config's architecture must be positive ints (and a known skip) that agree with the
    stored tensors, checked before anything is allocated from them. latent_dim and skip are
    optional (files written before they existed have Z = X and the identity skip)."""
    keys = {"dim", "hidden", "depth"}
    if not isinstance(arch, dict) or not keys <= set(arch) <= keys | {"latent_dim", "skip"}:
        raise ValueError(
            f"checkpoint {path} has a damaged config: mapping must be {{dim, hidden, depth[, "
            f"latent_dim, skip]}}, got {arch!r}"
        )
    for key, value in arch.items():
        if key == "skip":
            if value not in SKIPS:
                raise ValueError(f"checkpoint {path} has a damaged config: skip={value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"checkpoint {path} has a damaged config: {key}={value!r}")
    inp, out = tensors.get("inp.weight"), tensors.get("out.weight")
    embed = tensors.get("embed.weight")
    latent = arch.get("latent_dim", arch["dim"])
    want_embed = (arch["dim"], latent) if arch.get("skip") == "linear" else None
    blocks = {k.split(".")[1] for k in tensors if k.startswith("blocks.")}
    if (
        inp is None
        or out is None
        or tuple(inp.shape) != (arch["hidden"], latent)
        or (None if embed is None else tuple(embed.shape)) != want_embed
        or tuple(out.shape) != (arch["dim"], arch["hidden"])
        or len(blocks) != arch["depth"]
    ):
        raise ValueError(
            f"checkpoint {path}: its tensors do not fit MappingNetwork({arch}); the file is "
            "damaged or was not written by save_mapping"
        )
    return arch


def save_mapping(
    path: str | os.PathLike, mapping: MappingNetwork, config: dict[str, Any] | None = None
) -> None:
    """Write theta's weights and `config` (JSON-serialisable: inner lr, steps, ...) to `path`."""
    if not isinstance(mapping, MappingNetwork):
        raise TypeError(f"mapping must be a MappingNetwork, got {type(mapping).__name__}")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    meta = {"format": FORMAT, "mapping": mapping.config(), "config": config or {}}
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config must be JSON-serialisable (finite numbers): {exc}") from exc
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in mapping.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={CONFIG_KEY: meta_json}))


def load_mapping(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expected_dim: int | None = None,
) -> tuple[MappingNetwork, dict[str, Any]]:
    """Load (theta, config) saved by save_mapping. theta is returned in eval mode.

    Raises FileNotFoundError for a missing file, ValueError for a damaged or foreign file, and
    ValueError when `expected_dim` (the forward model's input size) differs from the checkpoint's.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a directory, expected a .safetensors file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta_json = (fh.metadata() or {}).get(CONFIG_KEY)
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} is damaged or not a safetensors file: {exc}") from exc
    if meta_json is None:
        raise ValueError(f"checkpoint {path} has no lli_fast config: not an lli_fast mapping")
    try:
        meta = json.loads(meta_json)
        arch = meta["mapping"]
        fmt = meta["format"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {path} has a damaged config: {exc}") from exc
    if fmt != FORMAT:
        raise ValueError(f"checkpoint {path} has format {fmt!r}, expected {FORMAT!r}")
    arch = _check_arch(path, arch, tensors)
    if expected_dim is not None and arch.get("dim") != expected_dim:
        raise ValueError(
            f"checkpoint {path} maps into inputs of size {arch.get('dim')}, but the forward "
            f"model takes {expected_dim}"
        )
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"checkpoint {path} is damaged: tensor {name!r} holds NaN or Inf values"
            )
    mapping = MappingNetwork(**arch)
    try:
        mapping.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit MappingNetwork({arch}): {exc}") from exc
    return mapping.to(device).eval(), meta.get("config", {})
