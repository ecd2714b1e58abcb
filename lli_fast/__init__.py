"""lli_fast: fast neural-network inversion with learned loss landscapes.

Landscape Learning for Neural Network Inversion (Liu, Mao, Tendulkar, Wang, Vondrick, ICCV 2023):
a mapping network theta: Z -> X is trained so that a few gradient steps on z (x = theta(z)) invert a
frozen forward model F. The inner step is one fused op (C++ CPU, CUDA, Triton); trajectories go to
a device-resident ring replay buffer.

    import lli_fast
    result = lli_fast.invert(F, y, mapping=theta, steps=10)   # result.x, .loss, .loss_curve
"""

from __future__ import annotations

# _ext loads lli_fast._C (registering the C++ ops) or warns once; ops registers the Triton ops
# and the fake (meta) kernels of the C++ ops, which torch.compile and opcheck need.
from lli_fast import _ext, backends, ops  # noqa: F401
from lli_fast.checkpoint import load_mapping, save_mapping
from lli_fast.invert import InversionResult, invert
from lli_fast.latent_opt import LatentOptimizer
from lli_fast.mapping import MappingNetwork
from lli_fast.ops import latent_step, ring_push, ring_sample
from lli_fast.replay import RingReplayBuffer
from lli_fast.trainer import LandscapeTrainer, TrainHistory

__version__ = "0.1.0"

__all__ = [
    "InversionResult",
    "LandscapeTrainer",
    "LatentOptimizer",
    "MappingNetwork",
    "RingReplayBuffer",
    "TrainHistory",
    "backends",
    "invert",
    "latent_step",
    "load_mapping",
    "ring_push",
    "ring_sample",
    "save_mapping",
]
