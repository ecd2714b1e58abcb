"""Checkpoints of the mapping network: safetensors weights + a JSON config, written atomically.

Loading never executes code from the file (safetensors holds only tensors; the config is JSON).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lli_fast.mapping import MappingNetwork

FORMAT = "lli_fast.mapping/1"
CONFIG_KEY = "lli_fast_config"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it over `path`.

    A crash mid-write leaves the old file (or nothing), never a truncated checkpoint.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_mapping(
    path: str | os.PathLike, mapping: MappingNetwork, config: dict[str, Any] | None = None
) -> None:
    """Write theta's weights and `config` (JSON-serialisable: inner lr, steps, ...) to `path`."""
    if not isinstance(mapping, MappingNetwork):
        raise TypeError(f"mapping must be a MappingNetwork, got {type(mapping).__name__}")
    meta = {"format": FORMAT, "mapping": mapping.config(), "config": config or {}}
    try:
        meta_json = json.dumps(meta)
    except TypeError as exc:
        raise TypeError(f"config must be JSON-serialisable: {exc}") from exc
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
    if expected_dim is not None and arch.get("dim") != expected_dim:
        raise ValueError(
            f"checkpoint {path} is for latent size {arch.get('dim')}, but the forward model "
            f"takes {expected_dim}"
        )
    mapping = MappingNetwork(**arch)
    try:
        mapping.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit MappingNetwork({arch}): {exc}") from exc
    return mapping.to(device).eval(), meta.get("config", {})
