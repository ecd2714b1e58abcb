"""Reference semantics of the ring replay buffer ops (lli_fast::ring_push, lli_fast::ring_sample).

A ring of capacity C stores four columns: ring_z (C, D) float, ring_target (C,) int64,
ring_step (C,) int64, ring_loss (C,) float32, and a cursor (2,) int64 = [head, count] on the same
device: head is the slot the next row goes to, count how many slots hold data. Starting from
[0, 0], pushes keep the invariant ``count < C  =>  head == count``, so the filled slots are
exactly 0 .. count - 1 and sampling can index them directly.

Neither function reads the cursor on the host: everything stays on the ring's device, so these
references never synchronise a GPU either (only B and C, which are shapes, are host values).
"""

from __future__ import annotations

import torch


def _head_and_count(cursor: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A cursor outside [0, C) x [0, C] is read as head mod C and count clamped to [0, C], so that
    # no kernel can touch memory outside the ring whatever the cursor holds.
    return cursor[0] % capacity, cursor[1].clamp(0, capacity)


def ring_push_ref(
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
    """Write B rows into the ring at its head, overwriting the oldest rows, in place.

    Shapes: ring_z (C, D); ring_target, ring_step (C,) int64; ring_loss (C,) float32;
    cursor (2,) int64 [head, count]; z (B, D) of ring_z's dtype, or None; target, step (B,) int64;
    loss (B,) float32.

    Exactly as if the B rows were pushed one at a time: row i goes to slot (head + i) mod C, so
    when B > C row i and row i + C share a slot and the later one wins (the ring keeps the last C
    rows, in order). Then head = (head + B) mod C and count = min(count + B, C).

    z None is the fused path: latent_step already wrote the z rows into ring_z at slots
    (head + i) mod C, i < B; only target/step/loss are written and the cursor advanced. It needs
    B <= C (otherwise two rows would have shared a slot there).
    """
    capacity = ring_z.shape[0]
    batch = target.shape[0]
    if z is None and batch > capacity:
        raise ValueError(
            "lli_fast: z=None (rows already written by latent_step) needs B <= capacity "
            f"{capacity}, got B = {batch}"
        )
    if batch == 0:
        return
    head, count = _head_and_count(cursor, capacity)
    first = max(0, batch - capacity)  # rows before this would be overwritten in this same push
    kept = torch.arange(first, batch, device=cursor.device)
    slots = (head + kept) % capacity
    if z is not None:
        ring_z[slots] = z[first:]
    ring_target[slots] = target[first:]
    ring_step[slots] = step[first:]
    ring_loss[slots] = loss[first:]
    cursor.copy_(torch.stack([(head + batch) % capacity, (count + batch).clamp(max=capacity)]))


def ring_sample_ref(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    uniform: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather one stored row per uniform draw; returns new tensors (z, target, step, loss).

    Shapes: ring as in ring_push_ref; uniform (n,) float32 in [0, 1). Returns z (n, D) of
    ring_z's dtype, target (n,) int64, step (n,) int64, loss (n,) float32.

    row = min(floor(u * count), count - 1), computed in float64 (exact for a float32 u and any
    count below 2^29, so every backend floors the same number), and row = 0 where that is
    negative or NaN. Each filled row is thus drawn with probability 1/count. An empty ring
    (count 0) yields slot 0 for every draw; RingReplayBuffer refuses to sample one.
    """
    _, count = _head_and_count(cursor, ring_z.shape[0])
    x = torch.floor(uniform.to(torch.float64) * count)
    x = torch.where(x > count - 1, count - 1, x)
    row = torch.where(x > 0, x, 0).to(torch.int64)  # x > 0 is False for NaN too
    return ring_z[row], ring_target[row], ring_step[row], ring_loss[row]
