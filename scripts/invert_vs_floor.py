"""invert() against its floor with the calls interleaved one by one (bench/RESULTS.md section 2).

pytest-benchmark times each provider in its own block of rounds; on a VM whose speed drifts
between blocks that skews a 10% comparison. This loop alternates the floor (the generator's
forward + per-row MSE + backward w.r.t. z, K times) and invert(mapping=None) call by call, then
also times them in blocks, and prints the min and mean per call of each.

    python scripts/invert_vs_floor.py [repeats]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from lli_fast.data import lfw_faces
from lli_fast.invert import invert
from lli_fast.losses import mse_rows
from lli_fast.models import face_dcgan

B, K = 16, 20  # as in bench/bench_invert.py


def main(repeats: int = 6) -> None:
    gen = face_dcgan()
    y = lfw_faces().train[:B].contiguous()
    z0 = torch.randn(B, 100, generator=torch.Generator().manual_seed(0))

    def floor() -> None:
        z = z0.clone()
        for _ in range(K):
            zg = z.requires_grad_(True)
            (g,) = torch.autograd.grad(mse_rows(gen(zg), y).sum(), zg)
            z = (zg.detach() - 0.01 * g).detach()

    def lli() -> None:
        invert(gen, y, steps=K, lr=0.3, init=z0)

    calls = {"floor": floor, "invert": lli}

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for fn in calls.values():
        fn()  # warm up
    interleaved = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            interleaved[name].append(timed(fn))
    blocks = {name: [timed(fn) for _ in range(repeats)] for name, fn in calls.items()}
    for label, times in (("interleaved", interleaved), ("blocks", blocks)):
        mins = {name: min(t) * 1e3 for name, t in times.items()}
        means = {name: statistics.mean(t) * 1e3 for name, t in times.items()}
        print(
            f"{label}: floor {mins['floor']:.0f} / {means['floor']:.0f} ms, invert "
            f"{mins['invert']:.0f} / {means['invert']:.0f} ms (min / mean); invert / floor "
            f"{mins['invert'] / mins['floor']:.3f} (min), {means['invert'] / means['floor']:.3f}"
            " (mean)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
