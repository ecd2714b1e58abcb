"""THE semantics of every lli_fast op, in plain PyTorch: every kernel is tested against these."""

from lli_fast.reference.latent_step import ADAM, SGD, latent_step_ref
from lli_fast.reference.ring import ring_push_ref, ring_sample_ref

__all__ = ["SGD", "ADAM", "latent_step_ref", "ring_push_ref", "ring_sample_ref"]
