"""Typed public wrapper of the fused latent step, its Triton custom op and fake kernels.

Semantics: lli_fast.reference.latent_step. Backends: cpp/cuda run torch.ops.lli_fast.latent_step
(arguments checked in C++, csrc/common/latent_step_args.h); triton runs the custom op
lli_fast::latent_step_triton; reference runs latent_step_ref. The Python checks below mirror the
C++ ones (same argument named, same exception type: ValueError for shapes, values and devices,
TypeError for dtypes, IndexError for ring slots), so every backend rejects the same inputs. They
run only where C++ does not check: the compiled ops validate themselves, which keeps the hot path
short (the CUDA op cannot read lr or ring_slots without a sync; a float lr is checked here).
"""

from __future__ import annotations

import math
import numbers
import os

import torch

from lli_fast import _ext, backends
from lli_fast.ops.ring import check_no_overlap
from lli_fast.reference.latent_step import ADAM, SGD, latent_step_ref

OPTIMIZERS: dict[str, int] = {"sgd": SGD, "adam": ADAM}
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MUTATED = ("z", "exp_avg", "exp_avg_sq", "step", "active", "ring_z")


def optimizer_code(optimizer: str | int) -> int:
    """The op's integer code of an optimizer: "sgd" or 0 -> 0, "adam" or 1 -> 1."""
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, int) and not isinstance(optimizer, bool) and optimizer in (SGD, ADAM):
        return int(optimizer)
    raise ValueError(f"lli_fast: optimizer must be 'sgd' (0) or 'adam' (1), got {optimizer!r}")


# Python-float learning rates become (1,) float32 tensors on z's device. A loop calls with the
# same few values, so they are cached: no allocation per step, no host-to-device copy, and a
# CUDA graph captured with a cached rate keeps reading a tensor that is never freed (entries are
# never evicted; past the bound, new values are simply not cached).
_LR_CACHE: dict[tuple[torch.device, str], torch.Tensor] = {}
_LR_CACHE_MAX = 64


def _lr_tensor(lr: float, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return torch.full((1,), lr, dtype=torch.float32, device=device)
    key = (device, float(lr).hex())  # hex keeps -0.0 and 0.0 apart
    cached = _LR_CACHE.get(key)
    if cached is not None:
        return cached
    # torch.full launches a fill kernel instead of copying from pageable host memory.
    value = torch.full((1,), lr, dtype=torch.float32, device=device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if len(_LR_CACHE) < _LR_CACHE_MAX and not capturing:
        _LR_CACHE[key] = value
    return value


_CHOICES: dict[tuple[torch.device, str | None, str | None], str] = {}


@torch.compiler.assume_constant_result
def _choose(device: torch.device, backend: str | None, env: str | None) -> str:
    # Registration does not change after import, so a choice depends only on these arguments:
    # cached for the eager hot path, and a trace-time constant under torch.compile (which cannot
    # trace the dispatcher queries behind backends.choose).
    key = (device, backend, env)
    chosen = _CHOICES.get(key)
    if chosen is None:
        chosen = _CHOICES[key] = backends.choose("latent_step", device, backend)
    return chosen


def _fail(exc: type[Exception], message: str) -> None:
    raise exc(f"lli_fast: {message}")


def _check_like_z(t: torch.Tensor, name: str, z: torch.Tensor) -> None:
    if t.device != z.device:
        _fail(ValueError, f"{name} must be on the device of z ({z.device}), got {t.device}")
    if t.dtype != z.dtype:
        _fail(TypeError, f"{name} must have the dtype of z ({z.dtype}), got {t.dtype}")
    if t.shape != z.shape:
        _fail(ValueError, f"{name} must have shape {list(z.shape)}, got {list(t.shape)}")


def _check_vector(t: torch.Tensor, name: str, dtype: torch.dtype, z: torch.Tensor) -> None:
    if t.device != z.device:
        _fail(ValueError, f"{name} must be on the device of z ({z.device}), got {t.device}")
    if t.dtype != dtype:
        _fail(TypeError, f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.shape != (z.shape[0],):
        _fail(ValueError, f"{name} must have shape [{z.shape[0]}], got {list(t.shape)}")


def check_latent_step_args(
    z: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    active: torch.Tensor,
    lr: torch.Tensor,
    loss: torch.Tensor | None,
    optimizer: int,
    beta1: float,
    beta2: float,
    eps: float,
    max_grad_norm: float,
    stop_loss: float,
    ring_z: torch.Tensor | None,
    ring_slots: torch.Tensor | None,
) -> None:
    """The checks of csrc/common/latent_step_args.h, plus the value checks that need no device
    synchronisation (lr sign and ring slot range on CPU tensors)."""
    if optimizer not in (SGD, ADAM):
        _fail(ValueError, f"optimizer must be 0 (sgd) or 1 (adam), got {optimizer}")
    if optimizer == ADAM:
        if not 0.0 <= beta1 < 1.0:
            _fail(ValueError, f"beta1 must be in [0, 1) for adam, got {beta1}")
        if not 0.0 <= beta2 < 1.0:
            _fail(ValueError, f"beta2 must be in [0, 1) for adam, got {beta2}")
        if not (eps >= 0.0 and math.isfinite(eps)):
            _fail(ValueError, f"eps must be finite and >= 0, got {eps}")
    elif not (beta1 >= 0.0 and math.isfinite(beta1)):
        _fail(ValueError, f"beta1 (sgd momentum) must be finite and >= 0, got {beta1}")
    if not max_grad_norm >= 0.0:
        _fail(ValueError, f"max_grad_norm must be >= 0 (0 disables clipping), got {max_grad_norm}")
    if math.isnan(stop_loss):
        _fail(ValueError, "stop_loss must not be NaN")

    if z.dim() != 2:
        _fail(ValueError, f"z must be 2-D, got {z.dim()}-D with shape {list(z.shape)}")
    if z.dtype not in _FLOAT_DTYPES:
        _fail(TypeError, f"z must be float32, float64, float16 or bfloat16, got {z.dtype}")
    B = z.shape[0]
    _check_like_z(grad, "grad", z)
    if optimizer == ADAM or beta1 != 0.0:
        _check_like_z(exp_avg, "exp_avg", z)
    if optimizer == ADAM:
        _check_like_z(exp_avg_sq, "exp_avg_sq", z)
    _check_vector(step, "step", torch.int64, z)
    _check_vector(active, "active", torch.bool, z)

    if lr.device != z.device:
        _fail(ValueError, f"lr must be on the device of z ({z.device}), got {lr.device}")
    if lr.dtype not in _FLOAT_DTYPES:
        _fail(TypeError, f"lr must be float32, float64, float16 or bfloat16, got {lr.dtype}")
    if lr.dim() > 1 or lr.numel() not in (1, B):
        _fail(
            ValueError, f"lr must have shape [1] or [{B}] (one rate per row), got {list(lr.shape)}"
        )
    if loss is not None:
        if loss.device != z.device:
            _fail(ValueError, f"loss must be on the device of z ({z.device}), got {loss.device}")
        if loss.dtype not in _FLOAT_DTYPES:
            _fail(
                TypeError, f"loss must be float32, float64, float16 or bfloat16, got {loss.dtype}"
            )
        if loss.shape != (B,):
            _fail(ValueError, f"loss must have shape [{B}], got {list(loss.shape)}")

    if (ring_z is None) != (ring_slots is None):
        _fail(
            ValueError,
            "ring_z and ring_slots must be given together, got ring_z "
            f"{'None' if ring_z is None else 'set'} and ring_slots "
            f"{'None' if ring_slots is None else 'set'}",
        )
    if ring_z is not None:
        if ring_z.dim() != 2:
            _fail(
                ValueError,
                f"ring_z must be 2-D, got {ring_z.dim()}-D with shape {list(ring_z.shape)}",
            )
        if ring_z.device != z.device:
            _fail(
                ValueError, f"ring_z must be on the device of z ({z.device}), got {ring_z.device}"
            )
        if ring_z.dtype != z.dtype:
            _fail(TypeError, f"ring_z must have the dtype of z ({z.dtype}), got {ring_z.dtype}")
        if ring_z.shape[1] != z.shape[1]:
            _fail(
                ValueError,
                f"ring_z must have {z.shape[1]} columns (the latent size of z), got shape "
                f"{list(ring_z.shape)}",
            )
        _check_vector(ring_slots, "ring_slots", torch.int64, z)
        if B > 0 and ring_z.shape[0] == 0:
            _fail(ValueError, f"ring_z has no rows to write {B} slots into")

    if lr.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool((lr >= 0).all()):  # also rejects NaN
            _fail(ValueError, f"lr must be >= 0, got {lr.tolist()}")
        if ring_slots is not None and B > 0:
            low, high = int(ring_slots.min()), int(ring_slots.max())
            if low < 0 or high >= ring_z.shape[0]:
                _fail(
                    IndexError,
                    f"ring_slots must be in [0, {ring_z.shape[0]}) for ring_z with "
                    f"{ring_z.shape[0]} rows, got values in [{low}, {high}]",
                )


@torch.library.custom_op("lli_fast::latent_step_triton", mutates_args=_MUTATED)
def latent_step_triton(
    z: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    active: torch.Tensor,
    lr: torch.Tensor,
    loss: torch.Tensor | None,
    optimizer: int,
    beta1: float,
    beta2: float,
    eps: float,
    max_grad_norm: float,
    stop_loss: float,
    ring_z: torch.Tensor | None,
    ring_slots: torch.Tensor | None,
) -> None:
    """The Triton kernel as a custom op (same schema as lli_fast::latent_step)."""
    # Imported on first use: Triton reads TRITON_INTERPRET when the kernel is defined.
    from lli_fast.triton_kernels.latent_step import launch_latent_step

    launch_latent_step(
        z, grad, exp_avg, exp_avg_sq, step, active, lr, loss, optimizer, beta1, beta2, eps,
        max_grad_norm, stop_loss, ring_z, ring_slots,
    )  # fmt: skip


def _latent_step_fake(
    z, grad, exp_avg, exp_avg_sq, step, active, lr, loss, optimizer, beta1, beta2, eps,
    max_grad_norm, stop_loss, ring_z=None, ring_slots=None,
) -> None:  # fmt: skip
    # Mutations only, no outputs: nothing to describe beyond the schema's alias annotations.
    return None


latent_step_triton.register_fake(_latent_step_fake)
if _ext.C is not None:
    torch.library.register_fake("lli_fast::latent_step")(_latent_step_fake)


def latent_step(
    z: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    active: torch.Tensor,
    lr: float | torch.Tensor,
    loss: torch.Tensor | None = None,
    *,
    optimizer: str | int = "adam",
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float = 0.0,
    stop_loss: float = float("-inf"),
    ring_z: torch.Tensor | None = None,
    ring_slots: torch.Tensor | None = None,
    backend: str = "auto",
) -> None:
    """One optimizer step on every active row of a latent batch, in place, in one fused pass.

    Shapes: z, grad, exp_avg (B, D) (exp_avg unused, may be empty, for SGD with beta1 == 0);
    exp_avg_sq (B, D) for Adam (may be empty for SGD); step (B,) int64; active (B,) bool;
    lr a float or a (1,)/(B,) tensor on z's device; loss (B,) or None; ring_z (N, D) with
    ring_slots (B,) int64, both or neither. z may be float32/64, float16 or bfloat16 (math in
    float32 for the half types); every tensor may be a strided view.

    Per row b: ring_z[ring_slots[b]] = z[b] (before the update, every row); the row is skipped
    and deactivated (active[b] = False, nothing else changes) unless loss[b] is finite and
    > stop_loss and grad[b] is finite; g = grad[b] * min(1, max_grad_norm / (||grad[b]|| + 1e-6))
    when max_grad_norm > 0; step[b] += 1 = t; then
      sgd:  buf = g if t == 1 else beta1 buf + g;  z[b] -= lr[b] buf    (exp_avg holds buf)
      adam: m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
            z[b] -= lr[b] / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    which are torch.optim.SGD(momentum=beta1) and torch.optim.Adam numerics.

    `backend` is "auto", "cuda", "triton", "cpp" or "reference" (see lli_fast.backends).
    Raises ValueError/TypeError naming the offending argument, and RuntimeError when a forced
    backend cannot run here. No host synchronisation on CUDA tensors (a float lr is cached).
    """
    state = {"z": z, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "step": step}
    for name, t in {**state, "active": active}.items():
        if not isinstance(t, torch.Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    code = optimizer_code(optimizer)
    if isinstance(lr, torch.Tensor):
        rate = lr
    elif type(lr) is float or (isinstance(lr, numbers.Real) and not isinstance(lr, bool)):
        if not lr >= 0:
            _fail(ValueError, f"lr must be >= 0, got {lr}")
        rate = _lr_tensor(float(lr), z.device)
    else:
        _fail(TypeError, f"lr must be a float or a tensor, got {type(lr).__name__}")
    hyper = (code, float(beta1), float(beta2), float(eps), float(max_grad_norm), float(stop_loss))
    args = (z, grad, exp_avg, exp_avg_sq, step, active, rate, loss, *hyper, ring_z, ring_slots)

    # Aliasing, for every backend before dispatch (metadata only): the state is updated in place.
    # Unused optimizer state is neither read nor written, so it may alias anything.
    check_no_overlap((
        ("z", z, True),
        ("grad", grad, False),
        ("exp_avg", exp_avg if code == ADAM or beta1 != 0.0 else None, True),
        ("exp_avg_sq", exp_avg_sq if code == ADAM else None, True),
        ("step", step, True),
        ("active", active, True),
        ("lr", rate, False),
        ("loss", loss, False),
        ("ring_z", ring_z, True),
        ("ring_slots", ring_slots, False),
    ))  # fmt: skip
    chosen = _choose(z.device, backend, os.environ.get("LLI_FAST_BACKEND"))
    if chosen in ("cpp", "cuda"):
        torch.ops.lli_fast.latent_step(*args)
        return
    check_latent_step_args(*args)
    if chosen == "triton":
        latent_step_triton(*args)
    else:
        latent_step_ref(*args)
