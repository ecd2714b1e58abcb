"""Pins the ring reference (lli_fast.reference.ring) with hand-computed cases: every kernel test
compares against it, so a wrong reference would make them all pass."""

from __future__ import annotations

import math

import pytest
import torch

from lli_fast.reference.ring import ring_push_ref, ring_sample_ref


def empty_ring(capacity: int, dim: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [
        torch.full((capacity, dim), -1.0, dtype=dtype),
        torch.full((capacity,), -1, dtype=torch.int64),
        torch.full((capacity,), -1, dtype=torch.int64),
        torch.full((capacity,), -1.0),
        torch.zeros(2, dtype=torch.int64),
    ]


def rows(values: list[int], dim: int = 2) -> tuple[torch.Tensor, ...]:
    """Batch whose row with value v is z = [v, v + 0.5, ...], target v, step 10 v, loss v / 4."""
    v = torch.tensor(values)
    z = v[:, None].float() + 0.5 * torch.arange(dim).float()
    return z, v.clone(), 10 * v, v.float() / 4


def test_push_fills_then_wraps_over_the_oldest_rows():
    ring = empty_ring(4, 2)
    ring_push_ref(*ring, *rows([1, 2, 3]))
    assert ring[1].tolist() == [1, 2, 3, -1]
    assert ring[4].tolist() == [3, 3]
    ring_push_ref(*ring, *rows([4, 5, 6]))  # slots 3, 0, 1
    assert ring[0].tolist() == [[5, 5.5], [6, 6.5], [3, 3.5], [4, 4.5]]
    assert ring[1].tolist() == [5, 6, 3, 4]
    assert ring[2].tolist() == [50, 60, 30, 40]
    assert ring[3].tolist() == [1.25, 1.5, 0.75, 1.0]
    assert ring[4].tolist() == [2, 4]


def test_push_of_more_rows_than_capacity_keeps_the_last_rows_in_order():
    # Pushed one at a time from head 1: r0->1, r1->2, r2->0, r3->1, r4->2; the ring holds r2..r4.
    ring = empty_ring(3, 2)
    ring[4].copy_(torch.tensor([1, 1]))
    ring_push_ref(*ring, *rows([10, 11, 12, 13, 14]))
    assert ring[1].tolist() == [12, 13, 14]
    assert ring[0][:, 0].tolist() == [12, 13, 14]
    assert ring[4].tolist() == [(1 + 5) % 3, 3]


def test_push_of_exactly_capacity_rows_from_the_middle():
    ring = empty_ring(3, 1)
    ring[4].copy_(torch.tensor([2, 3]))
    ring_push_ref(*ring, *rows([7, 8, 9], dim=1))
    assert ring[1].tolist() == [8, 9, 7]
    assert ring[4].tolist() == [2, 3]


def test_push_with_z_none_writes_only_metadata_and_advances_cursor():
    ring = empty_ring(4, 2)
    ring[4].copy_(torch.tensor([3, 3]))
    _, target, step, loss = rows([7, 8])
    ring_push_ref(*ring, None, target, step, loss)
    assert ring[0].eq(-1).all()  # latent_step owns the z rows in the fused path
    assert ring[1].tolist() == [8, -1, -1, 7]
    assert ring[3].tolist() == [2.0, -1, -1, 1.75]
    assert ring[4].tolist() == [1, 4]


def test_push_with_z_none_and_more_rows_than_capacity_raises():
    ring = empty_ring(2, 2)
    _, target, step, loss = rows([1, 2, 3])
    with pytest.raises(ValueError, match="B <= capacity 2, got B = 3"):
        ring_push_ref(*ring, None, target, step, loss)


def test_push_of_zero_rows_changes_nothing():
    ring = empty_ring(3, 2)
    ring[4].copy_(torch.tensor([1, 1]))
    ring_push_ref(*ring, *rows([]))
    assert ring[4].tolist() == [1, 1] and ring[1].eq(-1).all()


def test_push_reads_an_out_of_range_cursor_as_head_mod_c_and_clamped_count():
    ring = empty_ring(4, 1)
    ring[4].copy_(torch.tensor([-1, 9]))  # head -1 -> 3, count 9 -> 4
    ring_push_ref(*ring, *rows([5], dim=1))
    assert ring[1].tolist() == [-1, -1, -1, 5]
    assert ring[4].tolist() == [0, 4]


def test_sample_rows_follow_floor_u_times_count():
    ring = empty_ring(6, 2)
    ring_push_ref(*ring, *rows([100, 101, 102, 103]))  # count 4 of 6
    u = torch.tensor([0.0, 0.24, 0.25, 0.74, 0.999, 1.0, 1.5, -0.1, math.nan, math.inf])
    # floor(4u) = 0, 0 (0.96), 1, 2 (2.96), 3 (3.996); 1.0, 1.5, inf clamp to 3; -0.1, NaN -> 0.
    expected = [0, 0, 1, 2, 3, 3, 3, 0, 0, 3]
    z, target, step, loss = ring_sample_ref(*ring, u)
    assert target.tolist() == [100 + r for r in expected]
    assert step.tolist() == [1000 + 10 * r for r in expected]
    assert loss.tolist() == [(100 + r) / 4 for r in expected]
    assert z[:, 1].tolist() == [100.5 + r for r in expected]
    assert z.shape == (10, 2) and z.dtype == torch.float32


def test_sample_multiplies_in_float64_so_products_just_below_an_integer_floor_down():
    # u = the float32 just below 5/11: 11u = 4.99999982 exactly (row 4), but float32 arithmetic
    # rounds the product to 5.0 (row 5). The float64 product is exact, so all backends agree.
    u = torch.tensor([0.45454544], dtype=torch.float32)
    assert float(u) * 11 < 5 and (u * 11).item() == 5.0
    ring = empty_ring(11, 1)
    ring_push_ref(*ring, *rows(list(range(11)), dim=1))
    assert ring_sample_ref(*ring, u)[1].tolist() == [4]


def test_sample_of_an_empty_ring_yields_slot_zero():
    ring = empty_ring(3, 2)
    assert ring_sample_ref(*ring, torch.tensor([0.0, 0.5, 0.99]))[1].tolist() == [-1, -1, -1]


def test_sample_of_a_full_ring_reaches_every_slot_and_returns_copies():
    ring = empty_ring(3, 2, torch.float64)
    ring_push_ref(*ring, rows([1, 2, 3, 4])[0].double(), *rows([1, 2, 3, 4])[1:])  # full
    z, target, _, _ = ring_sample_ref(*ring, torch.tensor([0.0, 0.34, 0.67]))
    assert target.tolist() == [4, 2, 3] and z.dtype == torch.float64
    z.fill_(0)
    target.fill_(0)
    assert ring[1].tolist() == [4, 2, 3] and ring[0][0, 0] == 4  # outputs are not views
