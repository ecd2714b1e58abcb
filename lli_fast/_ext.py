"""Loading of the compiled extension lli_fast._C (registers torch.ops.lli_fast.*).

If the extension is missing or fails to load, lli_fast still works on its reference backends and
warns once; the reason is kept for error messages of forced backends.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which lli_fast._C links against)

C = None
LOAD_ERROR: str | None = None

try:
    from lli_fast import _C as C  # noqa: F401  (import registers the ops)
except Exception as exc:  # any load failure must leave the pure-PyTorch path usable
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "lli_fast: the compiled extension lli_fast._C could not be loaded "
        f"({LOAD_ERROR}); using the pure-PyTorch reference backends. "
        "Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether torch.ops.lli_fast.<op> has a kernel registered for `dispatch_key` ("CPU"/"CUDA")."""
    if C is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"lli_fast::{op}", dispatch_key)
    except RuntimeError:
        return False
