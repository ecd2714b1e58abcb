"""Typed public wrappers of the lli_fast ops, with backend choice (see lli_fast.backends)."""

from lli_fast.ops.latent_step import latent_step, optimizer_code  # noqa: F401
from lli_fast.ops.ring import ring_push, ring_sample  # noqa: F401
