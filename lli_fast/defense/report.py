"""Formatting of the defense demo's results: the markdown table, the PNG, atomic JSON."""

from __future__ import annotations

import json
import os

from lli_fast.checkpoint import atomic_write


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write `obj` as indented JSON."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)

    atomic_write(path, write)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, write)


def results_table(results: dict) -> str:
    """Markdown table: one row per defense; accuracy (%) on clean and attacked held-out images,
    then latency per image at batch 1 and per batch at 256 (ms)."""
    acc, lat = results["accuracy"], results["latency_ms"]
    settings = list(next(iter(acc.values())))
    head = ["defense", *[_column(s) for s in settings], "ms / image (B=1)", "ms / batch (B=256)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in acc.items():
        cells = [name, *[f"{100 * row[s]:.1f}" for s in settings]]
        timing = lat.get(name, {})
        cells += [_ms(timing.get("batch_1")), _ms(timing.get("batch_256"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _column(setting: str) -> str:
    return "clean acc" if setting == "clean" else f"robust acc {setting.replace('eps=', 'eps ')}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def plot_results(path: str | os.PathLike, results: dict) -> None:
    """Bars of accuracy per defense and setting (left) and latency per defense (right, log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, lat = results["accuracy"], results["latency_ms"]
    names = list(acc)
    settings = list(next(iter(acc.values())))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(settings)
    for k, setting in enumerate(settings):
        xs = [i + (k - (len(settings) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [100 * acc[n][setting] for n in names], width, label=_column(setting))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("accuracy on held-out digits (%)")
    ax.set_ylim(0, 115)  # headroom for the legend above the bars
    ax.set_title("MNIST, non-adaptive L-inf PGD-40")
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    timed = [n for n in names if n in lat]
    for k, key in enumerate(("batch_1", "batch_256")):
        xs = [i + (k - 0.5) * 0.4 for i in range(len(timed))]
        label = "ms / image, B=1" if key == "batch_1" else "ms / batch, B=256"
        bx.bar(xs, [lat[n][key] for n in timed], 0.4, label=label)
    bx.set_yscale("log")
    bx.set_xticks(range(len(timed)), timed, rotation=20, ha="right")
    bx.set_ylabel("latency (ms, log scale)")
    bx.set_title("purification + classification latency, CPU")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
