"""Cached checkpoints: safetensors (no pickle), written atomically, keyed by their config."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lli_fast.checkpoint import atomic_write


def cache_dir() -> Path:
    """Where trained defense models are cached: $LLI_FAST_CACHE, else ~/.cache/lli_fast
    ($XDG_CACHE_HOME respected), with a `defense` subfolder. Created on demand."""
    root = os.environ.get("LLI_FAST_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lli_fast"
    path = base / "defense"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_key(config: dict) -> str:
    """A short, stable digest of a JSON-able config, used in cache file names."""
    blob = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` and the JSON `meta` to `path` so that readers never see a partial file
    (a temporary file beside it, fsynced, then renamed over it)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = json.dumps(meta, sort_keys=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"meta": blob}))


def load_checked(path: Path, expect_config: dict) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Load a checkpoint written by `save_atomic` if it exists and was made with `expect_config`
    (compared as JSON under meta["config"]). Returns (tensors, meta), or None when the file is
    missing, unreadable or stale, so the caller retrains instead of using the wrong weights."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            if json.dumps(meta.get("config"), sort_keys=True) != json.dumps(
                expect_config, sort_keys=True
            ):
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except (SafetensorError, OSError, ValueError):
        return None
    return tensors, meta
