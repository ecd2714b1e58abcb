"""Typed wrappers of the ring replay buffer ops, their Triton custom ops and fake kernels.

Semantics: lli_fast.reference.ring. Backends: cpp/cuda run torch.ops.lli_fast.ring_push /
ring_sample (which check their arguments in C++, csrc/common/ring.h); triton runs the custom ops
lli_fast::ring_push_triton / ring_sample_triton; reference runs the plain-PyTorch functions. The
Python checks below mirror the C++ ones message for message, so every backend rejects the same
inputs with the same exception type (ValueError for shapes/devices, TypeError for dtypes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lli_fast import _ext, backends
from lli_fast.reference.ring import ring_push_ref, ring_sample_ref

_RING_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(ok: bool, exc: type[Exception], message: str) -> None:
    if not ok:
        raise exc(f"lli_fast: {message}")


def _check_shape(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    _check(
        tuple(t.shape) == shape,
        ValueError,
        f"{name} must have shape {list(shape)}, got {list(t.shape)}",
    )


def _check_dtype(t: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    _check(t.dtype == dtype, TypeError, f"{name} must have dtype {dtype}, got {t.dtype}")


def _check_device(t: torch.Tensor, name: str, ref: torch.Tensor) -> None:
    _check(
        t.device == ref.device,
        ValueError,
        f"{name} must be on the device of ring_z ({ref.device}), got {t.device}",
    )


def _offsets(t: torch.Tensor) -> torch.Tensor:
    """Absolute byte address of every element of t (CPU int64, from metadata only)."""
    off = torch.zeros((), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride(), strict=True):
        off = off.unsqueeze(-1) + torch.arange(size) * stride
    return off.flatten() * t.element_size() + t.data_ptr()


def _elements_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether some byte lies in an element of both (exact; only called on the rare path where
    the address ranges of a and b intersect)."""
    if a.device != b.device:
        return False
    if a.is_contiguous() and b.is_contiguous():
        return True  # dense ranges that intersect share bytes
    starts = torch.sort(_offsets(a)).values
    b_starts = _offsets(b)
    # The last element of a starting before each element of b ends; overlap if it ends later.
    last = torch.searchsorted(starts, b_starts + b.element_size()) - 1
    hit = (last >= 0) & (starts[last.clamp(min=0)] + a.element_size() > b_starts)
    return bool(hit.any())


def check_no_overlap(args: tuple[tuple[str, torch.Tensor | None, bool], ...]) -> None:
    """Reject aliasing of in-place arguments: args are (name, tensor or None, written) in
    argument order. A written tensor must have no stride-0 dimension of size > 1 and must share
    no memory with any other argument (read-only ones may share memory with each other).

    Metadata only (addresses, sizes, strides): no host synchronisation, a few microseconds.
    The kernels write through raw pointers, so aliasing would race on a GPU or corrupt state.
    Skipped while tracing under torch.compile (fake tensors have no addresses); the compiled C++
    ops repeat these checks (csrc/common/latent_step_args.h, ring.h).
    """
    if torch.compiler.is_compiling():
        return
    spans = []
    for index, (name, t, written) in enumerate(args):
        if not isinstance(t, torch.Tensor):
            continue
        low = t.data_ptr()
        if t.is_contiguous():  # the hot path: no stride-0 dimension, a dense byte range
            high = low + t.nbytes
            if high > low:
                spans.append((low, high, index, name, t, written))
            continue
        if t.numel() == 0:
            continue
        item = t.element_size()
        high = low + item
        for size, stride in zip(t.shape, t.stride(), strict=True):
            if stride >= 0:
                high += (size - 1) * stride * item
            else:
                low += (size - 1) * stride * item
            if written and stride == 0 and size > 1:
                raise ValueError(
                    f"lli_fast: {name} must not have internal overlap (expanded/stride-0 views "
                    "cannot be updated in place)"
                )
        spans.append((low, high, index, name, t, written))
    spans.sort()
    reach = 0
    for low, high, *_ in spans:  # sorted by start: disjoint unless one starts before reach
        if low < reach:
            break
        reach = high
    else:
        return
    for i, (_, high, index, name, t, written) in enumerate(spans):  # rare: find the pair
        for low2, _, index2, name2, t2, written2 in spans[i + 1 :]:
            if low2 >= high:
                break
            if (written or written2) and _elements_overlap(t, t2):
                first, second = (name, name2) if index < index2 else (name2, name)
                raise ValueError(f"lli_fast: {second} must not overlap {first} (they share memory)")


def check_push_overlap(
    ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss
) -> None:
    """check_no_overlap for ring_push: the ring's tensors are written, the columns read."""
    check_no_overlap((
        ("ring_z", ring_z, True),
        ("ring_target", ring_target, True),
        ("ring_step", ring_step, True),
        ("ring_loss", ring_loss, True),
        ("cursor", cursor, True),
        ("z", z, False),
        ("target", target, False),
        ("step", step, False),
        ("loss", loss, False),
    ))  # fmt: skip


def check_ring_args(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
) -> tuple[int, int]:
    """Check the ring's own tensors (see reference.ring); returns (capacity, latent_dim)."""
    _check(ring_z.dim() == 2, ValueError, f"ring_z must be 2-D, got {ring_z.dim()}-D")
    _check(
        ring_z.dtype in _RING_FLOAT_DTYPES,
        TypeError,
        f"ring_z must be float16, bfloat16, float32 or float64, got {ring_z.dtype}",
    )
    capacity, dim = ring_z.shape
    _check(capacity > 0, ValueError, "ring_z must have at least one row (capacity > 0)")
    for t, name, dtype in (
        (ring_target, "ring_target", torch.int64),
        (ring_step, "ring_step", torch.int64),
        (ring_loss, "ring_loss", torch.float32),
    ):
        _check_shape(t, name, (capacity,))
        _check_dtype(t, name, dtype)
    _check_shape(cursor, "cursor", (2,))
    _check_dtype(cursor, "cursor", torch.int64)
    for t, name in (
        (ring_z, "ring_z"),
        (ring_target, "ring_target"),
        (ring_step, "ring_step"),
        (ring_loss, "ring_loss"),
        (cursor, "cursor"),
    ):
        _check_device(t, name, ring_z)
        # Kernels write the ring through raw pointers: a contiguous copy would drop the writes.
        _check(
            t.is_contiguous(), ValueError, f"{name} must be contiguous, got strides {t.stride()}"
        )
    return capacity, dim


def check_push_args(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    z: torch.Tensor | None,
    target: torch.Tensor,
    step: torch.Tensor,
    loss: torch.Tensor,
) -> int:
    """Check the arguments of ring_push; returns B."""
    capacity, dim = check_ring_args(ring_z, ring_target, ring_step, ring_loss, cursor)
    _check(target.dim() == 1, ValueError, f"target must be 1-D, got {target.dim()}-D")
    batch = target.shape[0]
    _check_shape(step, "step", (batch,))
    _check_shape(loss, "loss", (batch,))
    _check_dtype(target, "target", torch.int64)
    _check_dtype(step, "step", torch.int64)
    _check_dtype(loss, "loss", torch.float32)
    for t, name in ((target, "target"), (step, "step"), (loss, "loss")):
        _check_device(t, name, ring_z)
    if z is not None:
        _check_shape(z, "z", (batch, dim))
        _check(
            z.dtype == ring_z.dtype,
            TypeError,
            f"z must have the dtype of ring_z ({ring_z.dtype}), got {z.dtype}",
        )
        _check_device(z, "z", ring_z)
    else:
        _check(
            batch <= capacity,
            ValueError,
            "z=None (rows already written by latent_step) needs B <= capacity "
            f"{capacity}, got B = {batch}",
        )
    return batch


def check_sample_args(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    uniform: torch.Tensor,
) -> int:
    """Check the arguments of ring_sample; returns n."""
    check_ring_args(ring_z, ring_target, ring_step, ring_loss, cursor)
    _check(uniform.dim() == 1, ValueError, f"uniform must be 1-D, got {uniform.dim()}-D")
    _check_dtype(uniform, "uniform", torch.float32)
    _check_device(uniform, "uniform", ring_z)
    return uniform.shape[0]


_RING_MUTATES = ("ring_z", "ring_target", "ring_step", "ring_loss", "cursor")


@torch.library.custom_op("lli_fast::ring_push_triton", mutates_args=_RING_MUTATES)
def ring_push_triton(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    z: torch.Tensor | None,
    target: torch.Tensor,
    step: torch.Tensor,
    loss: torch.Tensor,
) -> None:
    """lli_fast::ring_push on the Triton kernels (see lli_fast.reference.ring.ring_push_ref)."""
    # Imported on first use: importing triton is slow, and TRITON_INTERPRET is read when the
    # kernels are decorated, so tests must be able to set it before this import happens.
    from lli_fast.triton_kernels.ring import launch_ring_push

    check_push_args(ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss)
    check_push_overlap(ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss)
    launch_ring_push(ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss)


@ring_push_triton.register_fake
def _ring_push_triton_fake(
    ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss
):
    check_push_args(ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss)


@torch.library.custom_op("lli_fast::ring_sample_triton", mutates_args=())
def ring_sample_triton(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    uniform: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """lli_fast::ring_sample on the Triton kernels (see reference.ring.ring_sample_ref)."""
    from lli_fast.triton_kernels.ring import launch_ring_sample

    check_sample_args(ring_z, ring_target, ring_step, ring_loss, cursor, uniform)
    return launch_ring_sample(ring_z, ring_target, ring_step, ring_loss, cursor, uniform)


def _ring_sample_fake(ring_z, ring_target, ring_step, ring_loss, cursor, uniform):
    n = check_sample_args(ring_z, ring_target, ring_step, ring_loss, cursor, uniform)
    return (
        ring_z.new_empty((n, ring_z.shape[1])),
        ring_target.new_empty((n,)),
        ring_step.new_empty((n,)),
        ring_loss.new_empty((n,)),
    )


ring_sample_triton.register_fake(_ring_sample_fake)

if _ext.C is not None:
    # The compiled ops get the same fakes, so torch.compile and opcheck can trace them too.
    torch.library.register_fake("lli_fast::ring_push")(_ring_push_triton_fake)
    torch.library.register_fake("lli_fast::ring_sample")(_ring_sample_fake)


def _push_reference(*args) -> None:
    check_push_args(*args)
    check_push_overlap(*args)
    ring_push_ref(*args)


def _sample_reference(*args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_sample_args(*args)
    return ring_sample_ref(*args)


def push_kernel(backend: str) -> Callable[..., None]:
    """The callable running ring_push on a resolved backend name (see backends.choose).

    For callers that resolve once and push many times (RingReplayBuffer): this skips the
    per-call backend choice; the callable takes ring_push's positional arguments.
    """
    if backend in ("cpp", "cuda"):
        return torch.ops.lli_fast.ring_push.default
    if backend == "triton":
        return torch.ops.lli_fast.ring_push_triton.default
    return _push_reference


def sample_kernel(backend: str) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The callable running ring_sample on a resolved backend name; see push_kernel."""
    if backend in ("cpp", "cuda"):
        return torch.ops.lli_fast.ring_sample.default
    if backend == "triton":
        return torch.ops.lli_fast.ring_sample_triton.default
    return _sample_reference


@torch.compiler.assume_constant_result
def _backend_for(op: str, device: torch.device, backend: str | None) -> str:
    # Constant while tracing: the choice reads the environment and the registry, which Dynamo
    # cannot trace, and it cannot change within a compiled graph anyway.
    return backends.choose(op, device, backend)


def ring_push(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    z: torch.Tensor | None,
    target: torch.Tensor,
    step: torch.Tensor,
    loss: torch.Tensor,
    *,
    backend: str | None = "auto",
) -> None:
    """Push B rows into a ring at its head, in place (semantics: reference.ring.ring_push_ref).

    Shapes: ring_z (C, D) float; ring_target, ring_step (C,) int64; ring_loss (C,) float32;
    cursor (2,) int64 [head, count]; z (B, D) of ring_z's dtype or None (rows already written by
    latent_step's fused ring write, B <= C); target, step (B,) int64; loss (B,) float32.
    The pushed tensors may have any strides; the ring tensors must be contiguous.
    `backend`: "auto", "cuda", "triton", "cpp" or "reference" (see lli_fast.backends).
    """
    kernel = push_kernel(_backend_for("ring_push", ring_z.device, backend))
    # Every backend (the reference and Triton ones check again for push_kernel's callers).
    check_push_overlap(ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss)
    kernel(ring_z, ring_target, ring_step, ring_loss, cursor, z, target, step, loss)


def ring_sample(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    uniform: torch.Tensor,
    *,
    backend: str | None = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather one filled row per draw (semantics: reference.ring.ring_sample_ref).

    Shapes: ring as in ring_push; uniform (n,) float32 in [0, 1), any stride. Returns new
    tensors z (n, D) of ring_z's dtype, target (n,) int64, step (n,) int64, loss (n,) float32.
    """
    kernel = sample_kernel(_backend_for("ring_sample", ring_z.device, backend))
    return tuple(kernel(ring_z, ring_target, ring_step, ring_loss, cursor, uniform))
