"""Every backend of lli_fast::latent_step against the reference: devices x dtypes x awkward
shapes, strided views, multi-step drift, torch.optim numerics, guard, clipping, ring write,
argument checks, opcheck, torch.compile and (on a GPU) a CUDA graph.

The Triton backend runs in the interpreter on CPU tensors here, so its cases use fewer steps.
"""

from __future__ import annotations

import pytest
import torch
from helpers import backends_on, cuda_kernel_built, tol

from lli_fast.ops.latent_step import latent_step, latent_step_triton
from lli_fast.reference.latent_step import latent_step_ref

OP = "latent_step"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF = (torch.float16, torch.bfloat16)
MUTATED = ("z", "exp_avg", "exp_avg_sq", "step", "active", "ring_z")
STATE = ("z", "grad", "exp_avg", "exp_avg_sq", "step", "active")  # leading op arguments
HYPER = {  # per optimizer: some rows get clipped (norm of a randn row is about sqrt(D))
    "adam": dict(optimizer="adam", beta1=0.9, beta2=0.99, eps=1e-6, stop_loss=-1.0),
    "sgd_momentum": dict(optimizer="sgd", beta1=0.8),
    "sgd": dict(optimizer="sgd", beta1=0.0, stop_loss=-1.0),
}


def cases(with_reference: bool = False) -> list:
    """(device, backend) pairs; CUDA ones skip unless the CUDA kernel was built and a GPU exists."""
    out = []
    for device in ("cpu", "cuda"):
        marks = []
        if device == "cuda":
            marks = [
                pytest.mark.gpu,
                pytest.mark.skipif(not cuda_kernel_built(OP), reason="no GPU"),
            ]
        names = backends_on(OP, device) + (["reference"] if with_reference else [])
        out += [pytest.param(device, b, id=f"{device}-{b}", marks=marks) for b in names]
    return out


def place(x: torch.Tensor, layout: str, device: str) -> torch.Tensor:
    """x with the same values in a given memory layout."""
    x = x.to(device)
    if layout == "sliced":  # rows of a wider buffer (odd row stride, unit column stride)
        if x.dim() == 1:
            return torch.zeros(2 * x.shape[0], dtype=x.dtype, device=device)[::2].copy_(x)
        wide = torch.zeros(x.shape[0], x.shape[1] + 3, dtype=x.dtype, device=device)
        return wide[:, 1 : x.shape[1] + 1].copy_(x)
    if layout == "transposed" and x.dim() == 2:  # column stride B, row stride 1
        return x.t().contiguous().t()
    return x


def make(B, D, dtype, device="cpu", *, seed=0, layout="contiguous", active_p=0.8, ring=True):
    g = torch.Generator().manual_seed(seed)
    s = dict(
        z=torch.randn(B, D, generator=g).to(dtype),
        grad=torch.randn(B, D, generator=g).to(dtype),
        exp_avg=(0.1 * torch.randn(B, D, generator=g)).to(dtype),
        exp_avg_sq=(0.1 * torch.rand(B, D, generator=g)).to(dtype),
        step=torch.randint(0, 3, (B,), generator=g),
        active=torch.rand(B, generator=g) < active_p,
        lr=0.01 + 0.05 * torch.rand(B, generator=g),
        loss=torch.randn(B, generator=g),
    )
    s = {k: place(v, layout, device) for k, v in s.items()}
    if ring:
        s["ring_z"] = torch.zeros(B + 5, D, dtype=dtype, device=device)
        s["ring_slots"] = torch.randperm(B + 5, generator=g)[:B].to(device)
    return s


def clone(s, dtype=None):
    """A deep copy; with dtype, the floating (B, D) tensors converted to it (values unchanged)."""
    out = {}
    for k, v in s.items():
        t = v.clone()
        if dtype is not None and k in ("z", "grad", "exp_avg", "exp_avg_sq", "ring_z"):
            t = t.to(dtype)
        out[k] = t
    return out


def run(s, backend, steps, hyper, *, max_grad_norm=0.0, seed=1, grad_dtype=None):
    """`steps` calls with fresh gradients (representable in grad_dtype, default grad's own) and
    losses; backend None runs the reference."""
    B, D = s["z"].shape
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        s["grad"].copy_(torch.randn(B, D, generator=g).to(grad_dtype or s["grad"].dtype))
        s["loss"].copy_(torch.randn(B, generator=g) + 1.0)
        args = [s[k] for k in (*STATE, "lr", "loss")]
        rings = (s.get("ring_z"), s.get("ring_slots"))
        if backend is None:
            h = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "stop_loss": float("-inf"), **hyper}
            opt = 1 if h["optimizer"] == "adam" else 0
            hyper_args = (opt, h["beta1"], h["beta2"], h["eps"], max_grad_norm, h["stop_loss"])
            latent_step_ref(*args, *hyper_args, *rings)
        else:
            latent_step(
                *args,
                ring_z=rings[0],
                ring_slots=rings[1],
                backend=backend,
                max_grad_norm=max_grad_norm,
                **hyper,
            )


def assert_matches(got, want, dtype):
    for name in MUTATED:
        if name not in want:
            continue
        if want[name].dtype in (torch.int64, torch.bool):
            assert torch.equal(got[name].cpu(), want[name].cpu()), name
        else:
            torch.testing.assert_close(got[name], want[name], **tol(dtype), msg=name)


def assert_half_within_twice_torch_error(got, want_half, want64):
    """Half types: the kernel's error against float64 is at most twice plain PyTorch's."""
    for name in ("z", "exp_avg", "exp_avg_sq", "ring_z"):
        err = (got[name].double() - want64[name].double()).abs().max().item()
        ref_err = (want_half[name].double() - want64[name].double()).abs().max().item()
        assert err <= 2 * ref_err + 1e-6, f"{name}: error {err} vs plain PyTorch {ref_err}"
    for name in ("step", "active"):
        assert torch.equal(got[name].cpu(), want_half[name].cpu()), name


def check_against_reference(device, backend, dtype, B, D, opt, steps, layout="contiguous"):
    s = make(B, D, dtype, device, layout=layout)
    want = clone(s)
    max_norm = 0.0 if opt == "sgd_momentum" else 0.7 * D**0.5
    run(s, backend, steps, HYPER[opt], max_grad_norm=max_norm)
    run(want, None, steps, HYPER[opt], max_grad_norm=max_norm)
    if dtype in HALF:
        want64 = clone(make(B, D, dtype, device, layout=layout), torch.float64)
        run(want64, None, steps, HYPER[opt], max_grad_norm=max_norm, grad_dtype=dtype)
        assert_half_within_twice_torch_error(s, want, want64)
    else:
        assert_matches(s, want, dtype)
    return s


@pytest.mark.parametrize("opt", list(HYPER))
@pytest.mark.parametrize("B, D", [(1, 100), (3, 129), (5, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device, backend", cases())
def test_matches_reference_over_many_steps(device, backend, dtype, B, D, opt):
    steps = 6 if backend == "triton" and device == "cpu" else 20  # the interpreter is slow
    s = check_against_reference(device, backend, dtype, B, D, opt, steps)
    assert int(s["step"].max()) > 0  # something was updated


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
@pytest.mark.parametrize("device, backend", cases())
def test_strided_views(device, backend, layout):
    check_against_reference(device, backend, torch.float32, 6, 37, "adam", 4, layout)


@pytest.mark.parametrize("device, backend", cases())
def test_257_rows(device, backend):
    s = check_against_reference(device, backend, torch.float32, 257, 100, "adam", 2)
    assert 0 < int(s["active"].sum()) < 257  # both kinds of rows were exercised


@pytest.mark.parametrize("device, backend", cases())
def test_no_active_rows_changes_nothing_but_the_ring(device, backend):
    s = make(4, 33, torch.float32, device, active_p=0.0)
    before = clone(s)
    run(s, backend, 1, HYPER["adam"], max_grad_norm=1.0)
    for name in ("z", "exp_avg", "exp_avg_sq", "step", "active"):
        assert torch.equal(s[name], before[name]), name
    assert torch.equal(s["ring_z"][s["ring_slots"]], before["z"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on inf/NaN
@pytest.mark.parametrize("device, backend", cases())
def test_non_finite_rows_are_frozen(device, backend):
    s = make(6, 20, torch.float32, device, active_p=1.0, ring=False)
    s["grad"][1, 7] = float("nan")
    s["grad"][2, 0] = float("inf")
    s["grad"][3] = 3e38  # finite, but the sum of squares overflows: must stay active
    s["loss"][4] = float("nan")
    s["loss"][5] = float("-inf")
    before = clone(s)
    latent_step(*[s[k] for k in STATE], s["lr"], s["loss"], max_grad_norm=1.0, backend=backend)
    assert s["active"].tolist() == [True, False, False, True, False, False]
    for row in (1, 2, 4, 5):
        for name in ("z", "exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s[name][row], before[name][row]), (name, row)
    want = clone(before)
    args = [want[k] for k in STATE]
    latent_step_ref(*args, want["lr"], want["loss"], 1, 0.9, 0.999, 1e-8, 1.0, float("-inf"))
    assert_matches(s, want, torch.float32)


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
@pytest.mark.parametrize("device, backend", cases())
def test_all_rows_on_without_clipping_is_torch_optim(device, backend, opt):
    B, D = 4, 50
    steps = 8 if backend == "triton" and device == "cpu" else 20
    s = make(B, D, torch.float32, device, active_p=1.0, ring=False)
    s["exp_avg"].zero_()
    s["exp_avg_sq"].zero_()
    s["step"].zero_()
    param = s["z"].clone().requires_grad_(True)
    if opt == "adam":
        ref = torch.optim.Adam([param], lr=0.05, betas=(0.9, 0.99), eps=1e-6, foreach=False)
    else:
        ref = torch.optim.SGD([param], lr=0.05, momentum=0.8, foreach=False)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        s["grad"].copy_(torch.randn(B, D, generator=g))
        param.grad = s["grad"].clone()
        ref.step()
        hyper = {**HYPER[opt], "stop_loss": float("-inf")}
        latent_step(*[s[k] for k in STATE], 0.05, backend=backend, **hyper)
    torch.testing.assert_close(s["z"], param.detach(), **tol(torch.float32))
    assert s["step"].tolist() == [steps] * B


@pytest.mark.parametrize("device, backend", cases(with_reference=True))
def test_lr_forms_agree_and_empty_unused_state(device, backend):
    outs = []
    for lr in (0.03, torch.tensor([0.03]), torch.tensor(0.03), torch.full((3,), 0.03)):
        s = make(3, 8, torch.float32, device, ring=False)
        empty = torch.empty(0, device=device)  # plain SGD reads neither moment
        lr = lr.to(device) if isinstance(lr, torch.Tensor) else lr
        z, grad, _, _, step, active = [s[k] for k in STATE]
        latent_step(
            z, grad, empty, empty, step, active, lr, optimizer="sgd", beta1=0.0, backend=backend
        )
        outs.append(s["z"])
    for z in outs[1:]:
        assert torch.equal(z, outs[0])


V, T = ValueError, TypeError
BAD = [  # (name, change to the state, change to the keywords, exception, message)
    ("grad shape", lambda s: dict(grad=s["grad"][:, :-1]), {}, V, "grad must have shape"),
    ("dtype mismatch", lambda s: dict(exp_avg=s["exp_avg"].double()), {}, T, "exp_avg must have"),
    ("mask dtype", lambda s: dict(active=s["active"].byte()), {}, T, "active must have dtype"),
    ("step dtype", lambda s: dict(step=s["step"].int()), {}, T, "step must have dtype"),
    ("z 1-D", lambda s: dict(z=s["z"][0]), {}, V, "z must be 2-D"),
    (
        "z integer",
        lambda s: {k: s[k].long() for k in ("z", "grad", "exp_avg", "exp_avg_sq")},
        {},
        T,
        "z must be float32, float64, float16 or bfloat16",
    ),
    ("negative lr", lambda s: dict(lr=-0.1), {}, V, "lr must be >= 0"),
    ("negative lr tensor", lambda s: dict(lr=torch.tensor([0.1, -0.1, 0.1])), {}, V, "lr must be"),
    ("lr shape", lambda s: dict(lr=torch.ones(2)), {}, V, "lr must have shape"),
    ("loss shape", lambda s: dict(loss=torch.ones(4)), {}, V, "loss must have shape"),
    ("unknown optimizer", lambda s: {}, dict(optimizer="adamw"), V, "optimizer must be"),
    ("beta2", lambda s: {}, dict(beta2=1.0), V, "beta2 must be in"),
    ("max_grad_norm", lambda s: {}, dict(max_grad_norm=-1.0), V, "max_grad_norm"),
    ("ring without slots", lambda s: dict(ring_slots=None), {}, V, "given together"),
    ("ring dtype", lambda s: dict(ring_z=s["ring_z"].double()), {}, T, "ring_z must have"),
    ("slot range", lambda s: dict(ring_slots=s["ring_slots"] + 8), {}, IndexError, "ring_slots"),
]


@pytest.mark.parametrize("name, state, keywords, exc, message", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("device, backend", cases(with_reference=True))
def test_invalid_arguments_are_named(device, backend, name, state, keywords, exc, message):
    if device == "cuda" and name in ("negative lr tensor", "slot range"):
        pytest.skip("value checks of device tensors would need a host sync")
    s = make(3, 5, torch.float32, device)
    s["lr"] = 0.1
    s.update(state(s))
    s = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
    before = s["z"].clone()
    rings = dict(ring_z=s["ring_z"], ring_slots=s["ring_slots"])
    with pytest.raises(exc, match=message):
        latent_step(
            *[s[k] for k in STATE], s["lr"], s["loss"], backend=backend, **rings, **keywords
        )
    assert torch.equal(s["z"], before)  # rejected before anything was written


def _expanded(t):
    return t[:1].expand(t.shape)  # stride 0 along the rows


ALIASED = {  # aliasing of in-place arguments: (change to the state, message)
    "grad is z": (lambda s: dict(grad=s["z"]), "grad must not overlap z"),
    "exp_avg_sq is exp_avg": (
        lambda s: dict(exp_avg_sq=s["exp_avg"]),
        "exp_avg_sq must not overlap exp_avg",
    ),
    "exp_avg shifted z": (lambda s: dict(exp_avg=s["wide"][1:], z=s["wide"][:-1]), "exp_avg must"),
    "z expanded": (lambda s: dict(z=_expanded(s["z"])), "z must not have internal overlap"),
    "step expanded": (lambda s: dict(step=_expanded(s["step"])), "step must not have internal"),
    "active expanded": (
        lambda s: dict(active=_expanded(s["active"])),
        r"active must not have internal overlap \(expanded/stride-0 views",
    ),
    "ring_z is z": (
        lambda s: dict(ring_z=s["z"], ring_slots=torch.arange(3, device=s["z"].device)),
        "ring_z must not overlap z",
    ),
    "ring_z is exp_avg": (
        lambda s: dict(ring_z=s["exp_avg"], ring_slots=torch.arange(3, device=s["z"].device)),
        "ring_z must not overlap exp_avg",
    ),
    "lr is a row of z": (lambda s: dict(lr=s["z"][0, :3]), "lr must not overlap z"),
}


@pytest.mark.parametrize("case", list(ALIASED))
@pytest.mark.parametrize("device, backend", cases(with_reference=True))
def test_aliased_in_place_arguments_are_named(device, backend, case):
    state, message = ALIASED[case]
    s = make(3, 5, torch.float32, device)
    s["wide"] = torch.randn(4, 5, device=device)
    s.update(state(s))
    names = (*STATE, "lr", "loss", "ring_z", "ring_slots")
    before = {k: s[k].clone() for k in names}
    with pytest.raises(ValueError, match=f"lli_fast: {message}"):
        latent_step(
            *[s[k] for k in (*STATE, "lr", "loss")],
            ring_z=s["ring_z"],
            ring_slots=s["ring_slots"],
            backend=backend,
        )
    for k in names:  # rejected before anything was written
        assert torch.equal(s[k], before[k]), k


@pytest.mark.parametrize("device, backend", cases(with_reference=True))
def test_interleaved_state_in_one_buffer_is_not_aliasing(device, backend):
    # exp_avg and exp_avg_sq as alternate rows of one buffer: address ranges intersect, no
    # element is shared, so it is accepted and matches separate buffers.
    s = make(3, 5, torch.float32, device)
    want = clone(s)
    both = torch.empty(3, 2, 5, device=device)
    both[:, 0], both[:, 1] = s["exp_avg"], s["exp_avg_sq"]
    s["exp_avg"], s["exp_avg_sq"] = both[:, 0], both[:, 1]
    run(s, backend, 2, HYPER["adam"])
    run(want, None, 2, HYPER["adam"])
    assert_matches(s, want, torch.float32)


@pytest.mark.skipif("cpp" not in backends_on(OP, "cpu"), reason="C++ extension not built")
@pytest.mark.parametrize(
    "case", ["grad is z", "exp_avg_sq is exp_avg", "z expanded", "ring_z is z"]
)
def test_compiled_op_names_aliased_arguments_too(case):
    state, message = ALIASED[case]
    s = make(3, 5, torch.float32)
    s.update(state(s))
    s["lr"] = s["lr"].float()
    with pytest.raises(ValueError, match=f"lli_fast: {message}"):
        torch.ops.lli_fast.latent_step(*_op_args(s))


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_kernel_built(OP), reason="no GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_device_mismatch_is_named(backend):
    s = make(3, 5, torch.float32, "cuda", ring=False)
    with pytest.raises(ValueError, match="grad must be on the device of z"):
        latent_step(s["z"], s["grad"].cpu(), *[s[k] for k in STATE[2:]], 0.1, backend=backend)


def test_forcing_cuda_on_cpu_lists_every_backend():
    s = make(2, 4, torch.float32, ring=False)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run") as info:
        latent_step(*[s[k] for k in STATE], 0.1, backend="cuda")
    for name in ("cuda:", "triton:", "cpp:", "reference:"):
        assert name in str(info.value)


def _op_for(backend):
    return latent_step_triton if backend == "triton" else torch.ops.lli_fast.latent_step.default


def _op_args(s):
    hyper = (1, 0.9, 0.999, 1e-8, 1.0, -1.0)  # adam, clipping, early stop
    return (*[s[k] for k in STATE], s["lr"], s["loss"], *hyper, s["ring_z"], s["ring_slots"])


@pytest.mark.parametrize("device, backend", cases())
def test_opcheck(device, backend):
    torch.library.opcheck(_op_for(backend), _op_args(make(4, 9, torch.float32, device)))


@pytest.mark.parametrize("device, backend", cases())
def test_torch_compile_fullgraph(device, backend):
    # aot_eager: Dynamo, fake tensors and functionalization of the in-place op, without paying
    # for Inductor's C++ compile on a 2-core machine.
    @torch.compile(fullgraph=True, backend="aot_eager")
    def two_steps(z, grad, m, v, step, active):
        latent_step(z, grad, m, v, step, active, 0.05, backend=backend)
        latent_step(z, grad * 0.5, m, v, step, active, 0.05, backend=backend)
        return z.sum()

    s = make(3, 16, torch.float32, device, active_p=1.0, ring=False)
    want = clone(s)
    total = two_steps(*[s[k] for k in STATE])
    for scale in (1.0, 0.5):
        z, grad, *rest = [want[k] for k in STATE]
        latent_step(z, grad * scale, *rest, 0.05, backend="reference")
    assert_matches(s, want, torch.float32)
    torch.testing.assert_close(total, want["z"].sum())


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_kernel_built(OP), reason="no GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_replays_steps_with_device_state(backend):
    s = make(64, 512, torch.float32, "cuda", ring=False)
    want = clone(s)
    args = [s[k] for k in (*STATE, "lr", "loss")]
    want_args = [want[k] for k in (*STATE, "lr", "loss")]
    latent_step(*args, backend=backend)  # warm up: Triton compiles outside the capture
    latent_step(*want_args, backend="reference")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(3):
            latent_step(*args, backend=backend)
    for _ in range(2):
        graph.replay()
        for _ in range(3):
            latent_step(*want_args, backend="reference")
    torch.cuda.synchronize()
    assert_matches(s, want, torch.float32)
