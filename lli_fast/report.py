"""Reporting helpers: loss tables, steps-to-reach, PNG plots and image grids."""

from __future__ import annotations

import os

import numpy as np
import torch

TABLE_STEPS = (0, 1, 2, 5, 10, 20, 50, 100)


def steps_to_reach(curve: torch.Tensor, level: float) -> int | None:
    """First step t at which the mean loss curve (K + 1,) is <= level, or None if never."""
    hits = torch.nonzero(curve <= level).flatten()
    return int(hits[0]) if len(hits) else None


def loss_table(curves: dict[str, torch.Tensor], steps=TABLE_STEPS) -> str:
    """A plain-text table of mean loss per step, one column per curve (each (K + 1,))."""
    names = list(curves)
    lines = ["step  " + "  ".join(f"{n:>12s}" for n in names)]
    for s in steps:
        cells = []
        for n in names:
            c = curves[n]
            cells.append(f"{float(c[s]):12.5f}" if s < len(c) else f"{'-':>12s}")
        lines.append(f"{s:4d}  " + "  ".join(cells))
    return "\n".join(lines)


def plot_curves(path: str, curves: dict[str, torch.Tensor], title: str, ylabel: str) -> None:
    """Loss-vs-step PNG, one line per (K + 1,) curve, log-scaled y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, c in curves.items():
        ax.plot(np.arange(len(c)), c.cpu().numpy(), label=name)
    ax.set_xlabel("gradient steps on z")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def image_grid(path: str, columns: dict[str, torch.Tensor], max_rows: int = 8) -> None:
    """PNG grid: one labelled column per entry of `columns` ((N, 3, H, W) images in [-1, 1]),
    showing the first `max_rows` rows, scaled up 2x."""
    from PIL import Image, ImageDraw

    names = list(columns)
    rows = min(max_rows, *(len(v) for v in columns.values()))
    h, w = columns[names[0]].shape[-2:]
    pad, header = 2, 14
    canvas = np.full(
        (header + rows * (h + pad) + pad, len(names) * (w + pad) + pad, 3), 255, np.uint8
    )
    for j, name in enumerate(names):
        imgs = ((columns[name][:rows].detach().cpu().clamp(-1, 1) + 1) * 127.5).round()
        imgs = imgs.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(rows):
            y0, x0 = header + pad + i * (h + pad), pad + j * (w + pad)
            canvas[y0 : y0 + h, x0 : x0 + w] = imgs[i]
    image = Image.fromarray(canvas)
    image = image.resize((canvas.shape[1] * 2, canvas.shape[0] * 2), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for j, name in enumerate(names):
        draw.text((2 * (pad + j * (w + pad)) + 2, 6), name, fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
