"""RingReplayBuffer: contents, uniform seeded sampling, the fused-write path, constant memory,
state_dict / safetensors round trips and every documented error."""

from __future__ import annotations

import os
import tracemalloc

import pytest
import torch
from helpers import backends_on

from lli_fast.replay import RingReplayBuffer

# chi2.ppf(0.999, df) (scipy.stats), for the uniformity tests below.
CHI2_CRITICAL_0999 = {36: 67.98516762602424, 49: 85.35056460859305}


def filled(capacity=4, dim=3, rows=3, **kwargs) -> RingReplayBuffer:
    """A buffer whose row with target t has z = [t, t + 0.5, ...], step 10 t, loss t / 4."""
    buf = RingReplayBuffer(capacity, dim, seed=0, **kwargs)
    if rows:
        t = torch.arange(rows)
        z = t[:, None].to(buf.dtype) + 0.5 * torch.arange(dim).to(buf.dtype)
        buf.push(z, t, 10 * t, t.float() / 4)
    return buf


def assert_rows_consistent(batch, dim):
    t = batch.target_index
    assert torch.equal(batch.step, 10 * t) and torch.equal(batch.loss, t.float() / 4)
    assert torch.equal(batch.z.double(), t[:, None].double() + 0.5 * torch.arange(dim).double())


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum().item() / counts.numel()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def test_push_sample_len_and_wrap_around():
    buf = filled(capacity=4, dim=3, rows=3)
    assert (len(buf), buf.is_full, buf.capacity, buf.latent_dim) == (3, False, 4, 3)
    batch = buf.sample(200)
    assert batch.z.shape == (200, 3) and batch.z.dtype == torch.float32
    assert set(batch.target_index.tolist()) == {0, 1, 2}
    assert_rows_consistent(batch, 3)
    t = torch.arange(3, 6)
    buf.push(t[:, None].float() + 0.5 * torch.arange(3), t, 10 * t, t.float() / 4)
    assert (len(buf), buf.is_full, buf.total_pushed) == (4, True, 6)
    assert buf.target_index.tolist() == [4, 5, 2, 3] and buf.cursor.tolist() == [2, 4]
    assert set(buf.sample(200).target_index.tolist()) == {2, 3, 4, 5}


def test_scalar_columns_broadcast_and_loss_is_stored_as_float32():
    buf = RingReplayBuffer(5, 2, seed=0)
    buf.push(
        torch.ones(3, 2), 7, torch.tensor(4, dtype=torch.int32), torch.ones(3, dtype=torch.float64)
    )
    assert buf.target_index[:3].tolist() == [7, 7, 7] and buf.step[:3].tolist() == [4, 4, 4]
    assert buf.loss.dtype == torch.float32 and buf.loss[:3].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_other_dtypes(dtype):
    batch = filled(capacity=6, dim=4, rows=5, dtype=dtype).sample(50)
    assert batch.z.dtype == dtype
    assert_rows_consistent(batch, 4)


def test_reserve_slots_then_fused_push():
    buf = filled(capacity=4, dim=2, rows=3)
    slots = buf.reserve_slots(3)
    assert slots.tolist() == [3, 0, 1] and slots.dtype == torch.int64
    t = torch.tensor([3, 4, 5])
    buf.z[slots] = t[:, None].float() + 0.5 * torch.arange(2)  # what latent_step's ring write does
    buf.push(None, t, 10 * t, t.float() / 4)
    assert buf.target_index.tolist() == [4, 5, 2, 3] and len(buf) == 4
    assert_rows_consistent(buf.sample(100), 2)
    assert buf.cursor.tolist() == [2, 4]  # full: the slots follow head, not count
    assert buf.reserve_slots(3).tolist() == [2, 3, 0]
    with pytest.raises(ValueError, match="B <= capacity 4, got B = 5"):
        buf.reserve_slots(5)
    with pytest.raises(ValueError, match="B <= capacity 4, got B = 5"):
        buf.push(None, 0, 0, torch.zeros(5))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("pushed,capacity", [(37, 64), (123, 50)], ids=["partial", "wrapped"])
def test_sampling_is_uniform_over_the_filled_rows(backend, pushed, capacity):
    buf = RingReplayBuffer(capacity, 2, seed=1234, backend=backend)
    t = torch.arange(pushed)
    buf.push(torch.zeros(pushed, 2), t, t, torch.zeros(pushed))
    kept = torch.arange(max(0, pushed - capacity), pushed)  # the rows still in the ring
    counts = torch.zeros(pushed, dtype=torch.int64)
    for _ in range(8):
        counts += torch.bincount(buf.sample(25_000).target_index, minlength=pushed)
    assert counts.sum() == 200_000
    assert counts[kept].sum() == 200_000  # never an unfilled or overwritten row
    statistic = chi_square(counts[kept])
    assert statistic < CHI2_CRITICAL_0999[len(kept) - 1], statistic


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    a = RingReplayBuffer(16, 2, seed=7)
    b = RingReplayBuffer(16, 2, generator=torch.Generator().manual_seed(7))
    c = RingReplayBuffer(16, 2, seed=8)
    t = torch.arange(16)
    for buf in (a, b, c):
        buf.push(torch.zeros(16, 2), t, t, torch.zeros(16))
    first = [torch.cat([buf.sample(32).target_index for _ in range(3)]) for buf in (a, b, c)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], first[2])


def test_every_backend_gives_the_same_buffer_and_draws():
    # Triton runs on CPU tensors only in the interpreter (set by conftest when there is no GPU).
    bufs = {
        b: RingReplayBuffer(6, 3, seed=3, backend=b)
        for b in ["reference", *backends_on("ring_push", "cpu")]
    }
    g = torch.Generator().manual_seed(0)
    for batch in (4, 1, 9):
        z, t = torch.randn(batch, 3, generator=g), torch.randint(0, 99, (batch,), generator=g)
        loss = torch.rand(batch, generator=g)
        for buf in bufs.values():
            buf.push(z, t, 2, loss)
    want = bufs["reference"]
    assert want.cursor.tolist() == [(4 + 1 + 9) % 6, 6]
    draws = {name: buf.sample(20) for name, buf in bufs.items()}
    for name, buf in bufs.items():
        for got, expected in zip(draws[name], draws["reference"], strict=True):
            assert torch.equal(got, expected), name
        for got, expected in zip(
            buf.state_dict().values(), want.state_dict().values(), strict=True
        ):
            assert torch.equal(got, expected), name


def test_storage_and_memory_stay_constant_over_100k_pushes():
    buf = RingReplayBuffer(1000, 8, seed=0)
    ptrs = [t.data_ptr() for t in (buf.z, buf.target_index, buf.step, buf.loss, buf.cursor)]
    z, step, loss = torch.randn(1, 8), torch.tensor([3]), torch.rand(1)
    for i in range(1000):  # warm up allocator caches and Python's free lists
        buf.push(z, i, step, loss)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rss_before = _rss_bytes()
    for i in range(100_000):
        buf.push(z, i, step, loss)
        if i % 1000 == 0:
            buf.sample(64)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, f"Python heap grew by {grown} bytes"
    assert _rss_bytes() - rss_before < 16 * 2**20
    assert [t.data_ptr() for t in (buf.z, buf.target_index, buf.step, buf.loss, buf.cursor)] == ptrs
    assert buf.total_pushed == 101_000 and buf.cursor.tolist() == [0, 1000]
    assert buf.target_index.max().item() == 99_999


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_state_dict_round_trip_continues_the_same_stream():
    src = filled(capacity=5, dim=3, rows=7)
    src.sample(10)
    dst = RingReplayBuffer(5, 3, seed=99)
    ptr = dst.z.data_ptr()
    dst.load_state_dict(src.state_dict())
    assert dst.z.data_ptr() == ptr  # loaded in place: captured graphs stay valid
    assert (len(dst), dst.total_pushed, dst.cursor.tolist()) == (5, 7, [2, 5])
    for got, want in zip(dst.state_dict().values(), src.state_dict().values(), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(dst.sample(30).target_index, src.sample(30).target_index)


def test_save_load_round_trip_is_atomic(tmp_path):
    src = filled(capacity=6, dim=4, rows=9, dtype=torch.float64)
    src.sample(5)
    path = tmp_path / "ring.safetensors"
    path.write_bytes(b"old contents")
    src.save(path)
    assert sorted(os.listdir(tmp_path)) == ["ring.safetensors"]  # no temporary file left behind
    loaded = RingReplayBuffer.load(path, capacity=6, latent_dim=4)
    assert (loaded.dtype, len(loaded), loaded.total_pushed) == (torch.float64, 6, 9)
    assert torch.equal(loaded.z, src.z) and torch.equal(loaded.cursor, src.cursor)
    assert torch.equal(loaded.sample(40).target_index, src.sample(40).target_index)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "ring.safetensors"
    filled().save(path)
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        filled(rows=1).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ring.safetensors"]


def test_load_rejects_damaged_and_mismatched_files(tmp_path):
    good = tmp_path / "good.safetensors"
    filled(capacity=4, dim=3).save(good)
    with pytest.raises(ValueError, match="holds a buffer of capacity 4, expected 8"):
        RingReplayBuffer.load(good, capacity=8)
    with pytest.raises(ValueError, match="holds a buffer of latent size 3, expected 2"):
        RingReplayBuffer.load(good, latent_dim=2)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    for bad in (truncated, garbage):
        with pytest.raises(ValueError, match="is not a readable RingReplayBuffer file"):
            RingReplayBuffer.load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"z": torch.zeros(4, 3)}, str(other))
    with pytest.raises(ValueError, match="is not a RingReplayBuffer file"):
        RingReplayBuffer.load(other)
    with pytest.raises(FileNotFoundError):
        RingReplayBuffer.load(tmp_path / "missing.safetensors")


def test_load_state_dict_rejects_mismatched_or_damaged_state():
    state = filled(capacity=4, dim=3).state_dict()
    with pytest.raises(ValueError, match="capacity 5 and latent size 3"):
        RingReplayBuffer(5, 3).load_state_dict(state)
    with pytest.raises(ValueError, match="capacity 4 and latent size 2"):
        RingReplayBuffer(4, 2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing keys \['cursor'\]"):
        RingReplayBuffer(4, 3).load_state_dict({k: v for k, v in state.items() if k != "cursor"})
    bad = dict(state, cursor=torch.tensor([1, 3]))  # not full, so head must equal count
    with pytest.raises(ValueError, match=r"invalid cursor \[head=1, count=3\]"):
        RingReplayBuffer(4, 3).load_state_dict(bad)
    bad = dict(state, generator_state=torch.zeros(7, dtype=torch.uint8))
    with pytest.raises(ValueError, match="generator_state"):
        RingReplayBuffer(4, 3).load_state_dict(bad)


def test_sync_len_follows_a_cursor_advanced_outside_python():
    buf = filled(capacity=4, rows=1)
    buf.cursor.copy_(torch.tensor([3, 3]))  # as a CUDA-graph replay of two more pushes would
    assert len(buf) == 1 and buf.sync_len() == 3


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"capacity": 0}, ValueError, "capacity must be > 0, got 0"),
        ({"capacity": 2.5}, TypeError, "capacity must be an int, got float"),
        ({"capacity": True}, TypeError, "capacity must be an int, got bool"),
        ({"latent_dim": -1}, ValueError, "latent_dim must be > 0, got -1"),
        ({"dtype": torch.int64}, TypeError, "dtype must be one of"),
        ({"seed": 1, "generator": torch.Generator()}, ValueError, "either generator or seed"),
        ({"backend": "fortran"}, ValueError, "backend must be 'auto' or one of"),
        ({"device": "tpu"}, ValueError, "device must be a torch.device or a device string"),
        ({"device": 3.5}, ValueError, "device must be a torch.device or a device string"),
        ({"device": "meta"}, ValueError, "device 'meta' holds no data"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    args = {"capacity": 4, "latent_dim": 3, **kwargs}
    with pytest.raises(exc, match=match):
        RingReplayBuffer(args.pop("capacity"), args.pop("latent_dim"), **args)


def test_numpy_integers_are_accepted_as_scalar_columns():
    import numpy as np

    buf = RingReplayBuffer(4, 3, seed=0)
    buf.push(torch.ones(2, 3), np.int64(7), np.int32(2), torch.ones(2))
    batch = buf.sample(5)
    assert batch.target_index.tolist() == [7] * 5 and batch.step.tolist() == [2] * 5
    with pytest.raises(TypeError, match="target_index must be an int or a tensor"):
        buf.push(torch.ones(2, 3), np.float64(7.0), 0, torch.ones(2))


def test_sampling_errors_name_the_buffer_state():
    buf = RingReplayBuffer(4, 3)
    with pytest.raises(ValueError, match=r"empty RingReplayBuffer \(capacity 4, 0 rows pushed"):
        buf.sample(1)
    buf = filled()
    with pytest.raises(ValueError, match="n must be > 0, got 0"):
        buf.sample(0)
    with pytest.raises(TypeError, match="n must be an int"):
        buf.sample(2.0)
    buf.clear()
    assert len(buf) == 0
    with pytest.raises(ValueError, match="empty RingReplayBuffer"):
        buf.sample(1)


@pytest.mark.parametrize(
    "z,target,loss,exc,match",
    [
        (torch.ones(2, 4), 0, torch.ones(2), ValueError, r"latent size 3, got shape \(2, 4\)"),
        (
            torch.ones(2, 3).double(),
            0,
            torch.ones(2),
            TypeError,
            "dtype torch.float32, got torch.float64",
        ),
        (torch.ones(3), 0, torch.ones(3), ValueError, "z must be a 2-D tensor"),
        (torch.ones(2, 3, device="meta"), 0, torch.ones(2), ValueError, "z is on meta"),
        (torch.ones(2, 3), 0, torch.ones(3), ValueError, "z has 2 rows, loss has 3"),
        (
            torch.ones(2, 3),
            torch.zeros(3, dtype=torch.long),
            torch.ones(2),
            ValueError,
            r"target_index must have shape \(2,\)",
        ),
        (
            torch.ones(2, 3),
            torch.zeros(2),
            torch.ones(2),
            TypeError,
            "target_index must be an integer tensor",
        ),
        (
            torch.ones(2, 3),
            1.5,
            torch.ones(2),
            TypeError,
            "target_index must be an int or a tensor",
        ),
        (
            torch.ones(2, 3),
            0,
            torch.ones(2, dtype=torch.long),
            TypeError,
            "loss must be a floating tensor",
        ),
        (torch.ones(2, 3), 0, [1.0, 2.0], TypeError, "loss must be a 1-D tensor"),
    ],
)
def test_push_errors(z, target, loss, exc, match):
    buf = filled(capacity=4, dim=3, rows=1)
    with pytest.raises(exc, match=match):
        buf.push(z, target, 0, loss)
    assert len(buf) == 1 and buf.cursor.tolist() == [1, 1]
