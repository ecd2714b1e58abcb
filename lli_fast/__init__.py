"""lli_fast: fast neural-network inversion with learned loss landscapes.

Landscape Learning for Neural Network Inversion (Liu, Mao, Tendulkar, Wang, Vondrick, ICCV 2023):
a mapping network theta: Z -> X is trained so that a few gradient steps on z (x = theta(z)) invert a
frozen forward model F. The inner step is one fused op (C++ CPU, CUDA, Triton); trajectories go to
a device-resident ring replay buffer.

    import lli_fast
    result = lli_fast.invert(F, y, mapping=theta, steps=10)   # result.x, .loss, .loss_curve

Public names are imported on first use, so `import lli_fast` stays light.
"""

from __future__ import annotations

import importlib

# _ext loads lli_fast._C (registering the C++ ops) or warns once; ops registers the Triton ops
# and the fake (meta) kernels of the C++ ops, which torch.compile and opcheck need.
from lli_fast import _ext, backends, ops  # noqa: F401

__version__ = "0.1.0"

_EXPORTS = {
    "invert": "lli_fast.invert",
    "InversionResult": "lli_fast.invert",
    "MappingNetwork": "lli_fast.mapping",
    "LandscapeTrainer": "lli_fast.trainer",
    "TrainHistory": "lli_fast.trainer",
    "RingReplayBuffer": "lli_fast.replay",
    "LatentOptimizer": "lli_fast.latent_opt",
    "save_mapping": "lli_fast.checkpoint",
    "load_mapping": "lli_fast.checkpoint",
    "latent_step": "lli_fast.ops.latent_step",
    "ring_push": "lli_fast.ops.ring",
    "ring_sample": "lli_fast.ops.ring",
}

__all__ = sorted(_EXPORTS) + ["backends", "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lli_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
