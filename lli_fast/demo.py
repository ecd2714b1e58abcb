"""`lli demo`: landscape-learned inversion of the pretrained face DCGAN on real LFW faces.

1. Tune plain optimization (Adam in X) with a small learning-rate sweep on training faces.
2. Train theta with LandscapeTrainer on the training faces within a time budget.
3. Invert the held-out faces with plain OBI and with the learned landscape, from the same starts.
4. Report the loss table, steps-to-reach ratios, timings; write results.json, PNGs, checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time

import torch

from lli_fast.checkpoint import atomic_write, save_mapping
from lli_fast.data import lfw_faces
from lli_fast.invert import invert
from lli_fast.mapping import MappingNetwork
from lli_fast.models import face_dcgan
from lli_fast.report import TABLE_STEPS, image_grid, loss_table, plot_curves, steps_to_reach
from lli_fast.trainer import LandscapeTrainer

FULL = dict(
    train_seconds=420.0,
    sweep_lrs=(0.03, 0.1, 0.3, 1.0),
    sweep_steps=50,
    sweep_faces=16,
    eval_steps=100,
)
QUICK = dict(
    train_seconds=45.0, sweep_lrs=(0.1, 0.3, 1.0), sweep_steps=30, sweep_faces=8, eval_steps=100
)
# The learned landscape's inner loop is plain gradient descent (SGD): unlike Adam, whose per
# coordinate normalisation cancels any scale theta learns, SGD's step is J_theta^T grad_x, so theta
# also learns the preconditioner J_theta J_theta^T of the steps it takes in X (bench/RESULTS.md:
# 10-step loss 0.047 vs 0.055 with Adam at equal training time).
TRAIN = dict(
    steps=10,
    optimizer="sgd",
    lr=300.0,
    momentum=0.5,
    batch_size=32,
    fit_batch_size=64,
    fit_iters=8,
    theta_lr=3e-3,
)
MAPPING = dict(hidden=256, depth=2, skip="linear")
EVAL_SEED = 1234


def _json_safe(obj):
    """obj with every NaN/Inf float replaced by None: strict JSON has no NaN (json.dump would
    write the non-standard token NaN, which other readers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str, obj) -> None:
    """Atomically write `obj` as indented, strict JSON (NaN/Inf become null)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)

    atomic_write(path, write)


def train_autocast() -> torch.dtype | None:
    """bfloat16 autocast for training where the CPU runs it natively (AVX-512 BF16 / AMX: about
    1.8x the rounds per second here at the same loss per round), else None (float32)."""
    return torch.bfloat16 if _cpu_has_native_bf16() else None


def _cpu_has_native_bf16() -> bool:
    """Whether the CPU has bfloat16 dot-product instructions (AVX-512 BF16 or AMX). torch's own
    mkldnn bf16 check accepts any AVX-512 CPU, where bf16 is emulated and slower than float32."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def inner_settings(config: dict, lr: float | None = None) -> dict:
    """invert() keyword arguments of the inner loop a checkpoint was trained with (checkpoints
    written before the inner optimizer was recorded used Adam); `lr` overrides the config's.
    A config value of the wrong type raises ValueError naming the key (invert() then checks the
    values themselves: a known optimizer, lr > 0, momentum in [0, 1))."""
    if not isinstance(config, dict):
        raise ValueError(
            f"checkpoint config must be a JSON object, got {type(config).__name__}: {config!r}"
        )

    def number(key: str, default: float) -> float:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"checkpoint config {key!r} must be a number, got {value!r}")
        return float(value)

    optimizer = config.get("optimizer", "adam")
    if not isinstance(optimizer, str):
        raise ValueError(f"checkpoint config 'optimizer' must be a string, got {optimizer!r}")
    return {
        "optimizer": optimizer,
        "lr": number("lr", 1.0) if lr is None else lr,
        "momentum": number("momentum", 0.0),
    }


def describe_inner(settings: dict) -> str:
    name = {"sgd": "SGD", "adam": "Adam"}.get(settings["optimizer"], settings["optimizer"])
    text = f"{name}, lr {settings['lr']:g}"
    if settings.get("momentum"):
        text += f", momentum {settings['momentum']:g}"
    return text


def face_trainer(
    generator, mapping: MappingNetwork, targets: torch.Tensor, seed: int = 0, **overrides
) -> LandscapeTrainer:
    """The demo's LandscapeTrainer (TRAIN settings, `overrides` on top, random flips, bfloat16
    autocast where the CPU has it), shared by `lli demo`, `lli train` and the sweep script."""
    settings = {**TRAIN, "autocast": train_autocast(), **overrides}
    return LandscapeTrainer(
        generator, mapping, targets, target_transform=random_flip, seed=seed, **settings
    )


def random_flip(y: torch.Tensor) -> torch.Tensor:
    """Mirror half the faces left-right: a label-free augmentation of the 80 training faces."""
    keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) < 0.5
    return torch.where(keep, y, y.flip(-1))


def sweep_lr(generator, faces: torch.Tensor, lrs, steps: int) -> tuple[float, dict[str, float]]:
    """Pick the plain-OBI Adam lr with the lowest mean loss after `steps` on training faces."""
    scores = {}
    for lr in lrs:
        result = invert(generator, faces, steps=steps, lr=lr, seed=EVAL_SEED + 1)
        scores[str(lr)] = float(result.loss_curve[steps].mean())
    best = min(scores, key=scores.get)
    return float(best), scores


def run(out_dir: str = "out/demo", quick: bool = False, seconds: float | None = None) -> dict:
    """Run the whole job and write its outputs into `out_dir`; returns the results dict."""
    cfg = dict(QUICK if quick else FULL)
    if seconds is not None:
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        cfg["train_seconds"] = float(seconds)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    generator = face_dcgan()
    faces = lfw_faces(size=64)
    print(
        f"face DCGAN (gan-face-generate 1.1.1), LFW faces: {len(faces.train)} train, "
        f"{len(faces.heldout)} held out; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    t0 = time.perf_counter()
    base_lr, sweep = sweep_lr(
        generator, faces.train[: cfg["sweep_faces"]], cfg["sweep_lrs"], cfg["sweep_steps"]
    )
    sweep_s = time.perf_counter() - t0
    print(f"baseline lr sweep (loss at {cfg['sweep_steps']} steps): {sweep} -> lr {base_lr}")

    mapping = MappingNetwork(100, **MAPPING)
    trainer = face_trainer(generator, mapping, faces.train)
    autocast = trainer.autocast
    t0 = time.perf_counter()
    history = trainer.train(time_budget_s=cfg["train_seconds"])
    train_s = time.perf_counter() - t0
    mapping.eval()
    precision = "float32" if autocast is None else f"{autocast} autocast".replace("torch.", "")
    print(f"trained theta: {trainer.rounds_done} rounds in {train_s:.0f} s ({precision})")
    inner = inner_settings(TRAIN)  # the inner loop invert() repeats at test time

    k = cfg["eval_steps"]
    y = faces.heldout
    z0 = torch.randn(len(y), 100, generator=torch.Generator().manual_seed(EVAL_SEED))
    t0 = time.perf_counter()
    base = invert(generator, y, steps=k, lr=base_lr, init=z0)
    base_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    learned = invert(generator, y, mapping, steps=k, init=z0, **inner)
    learned_s = time.perf_counter() - t0
    base_10 = invert(generator, y, steps=10, lr=base_lr, init=z0)
    learned_10 = invert(generator, y, mapping, steps=10, init=z0, **inner)

    curves = {"baseline": base.loss_curve.mean(1), "learned": learned.loss_curve.mean(1)}
    table = loss_table(curves)
    reach = {}
    for ref in (50, 100):
        level = float(curves["baseline"][ref])
        t = steps_to_reach(curves["learned"], level)
        reach[str(ref)] = {
            "baseline_loss": level,
            "learned_steps": t,
            "speedup": (ref / t) if t else None,  # None: never reached, or reached at step 0
        }
    print("\nmean per-pixel MSE on held-out real faces (images in [-1, 1]):")
    print(table)
    for ref, r in reach.items():
        t = r["learned_steps"]
        if t is None:
            msg = f"not reached in {k} steps"
        elif t == 0:
            msg = "0 steps (theta(z_0) is already as good)"
        else:
            msg = f"{t} steps ({r['speedup']:.1f}x fewer)"
        print(f"baseline loss at {ref} steps ({r['baseline_loss']:.5f}): learned needs {msg}")

    plot_curves(
        os.path.join(out_dir, "loss_vs_step.png"),
        {
            f"plain OBI (Adam, lr {base_lr})": curves["baseline"],
            f"learned landscape ({describe_inner(inner)})": curves["learned"],
        },
        "Inverting a face DCGAN on held-out LFW faces",
        "mean per-pixel MSE",
    )
    image_grid(
        os.path.join(out_dir, "faces_grid.png"),
        {
            "target": y,
            "baseline@10": base_10.output,
            "learned@10": learned_10.output,
            "baseline@100": base.output,
        },
    )
    ckpt = os.path.join(out_dir, "mapping.safetensors")
    save_mapping(ckpt, mapping, {"forward_model": "face_dcgan", **TRAIN})
    results = {
        "task": "face DCGAN inversion of held-out LFW faces",
        "settings": {
            **cfg,
            "train": TRAIN,
            "train_precision": precision,
            "mapping": MAPPING,
            "quick": quick,
        },
        "baseline_lr": base_lr,
        "lr_sweep": sweep,
        "table_steps": list(TABLE_STEPS),
        "curves": {n: c.tolist() for n, c in curves.items()},
        "steps_to_reach_baseline": reach,
        "train_history": history.as_dict(),
        "timings_s": {
            "sweep": sweep_s,
            "train": train_s,
            "invert_baseline": base_s,
            "invert_learned": learned_s,
            "total": time.perf_counter() - t_start,
        },
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "checkpoint": ckpt,
    }
    path = os.path.join(out_dir, "results.json")
    write_json(path, results)
    print(f"\nwrote {out_dir}/results.json, loss_vs_step.png, faces_grid.png, mapping.safetensors")
    return results
