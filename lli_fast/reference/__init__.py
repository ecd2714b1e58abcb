"""THE semantics of every lli_fast op, in plain PyTorch: every kernel is tested against these."""

from lli_fast.reference.latent_step import SGD, ADAM, latent_step_ref

__all__ = ["SGD", "ADAM", "latent_step_ref"]
