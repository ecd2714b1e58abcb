"""The `lli` command: demo, train, invert, defend-demo, bench."""

from __future__ import annotations

import argparse
import math
import os
import sys

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _train_steps(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:  # the replay ring holds 50 rounds of K + 1 rows per trajectory
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {text}")
    return value


def load_images(paths: list[str], size: int = 64):
    """PNG/JPEG files -> (N, 3, size, size) tensor in [-1, 1], the face DCGAN's range."""
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    from lli_fast.data import to_model_range

    batch = []
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory; pass image files")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                batch.append(_image_to_unit_rgb(ImageOps.exif_transpose(img), size, path))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path} is not a readable image: {exc}") from exc
    return to_model_range(torch.stack(batch), size)


def _image_to_unit_rgb(img, size: int, path: str):
    """A PIL image -> (3, size, size) float tensor in [0, 1], respecting its bit depth."""
    import numpy as np
    import torch
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.asarray(img, dtype=np.float32) / 65535.0  # 16-bit: PIL's convert would clip
    elif img.mode in ("I", "F"):
        raise ValueError(
            f"{path} has {img.mode!r} pixels (32-bit int/float) whose range is unknown; save it "
            "as an 8- or 16-bit image"
        )
    else:
        rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    gray_t = torch.from_numpy(np.ascontiguousarray(gray))[None, None]
    gray_t = torch.nn.functional.interpolate(gray_t, size=(size, size), mode="bilinear")
    return gray_t[0].expand(3, -1, -1)


def _check_out_file(path: str) -> None:
    """Fail before long work if the output file cannot be written."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path} is a directory; give a file path such as theta.safetensors")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {path}: folder {folder} is not writable")


def cmd_demo(args) -> int:
    from lli_fast.demo import run

    run(args.out, quick=args.quick, seconds=args.seconds)
    return 0


def cmd_train(args) -> int:
    from lli_fast.checkpoint import save_mapping
    from lli_fast.data import lfw_faces
    from lli_fast.demo import MAPPING, TRAIN, face_trainer
    from lli_fast.mapping import MappingNetwork
    from lli_fast.models import face_dcgan

    _check_out_file(args.out)
    generator = face_dcgan()
    targets = load_images(args.images) if args.images else lfw_faces().train
    mapping = MappingNetwork(100, **MAPPING)
    train = dict(TRAIN, steps=args.steps)
    if args.lr is not None:
        train["lr"] = args.lr
    trainer = face_trainer(generator, mapping, targets, seed=args.seed, **train)
    trainer.train(time_budget_s=args.seconds)
    save_mapping(args.out, mapping, {"forward_model": "face_dcgan", **train})
    print(f"trained {trainer.rounds_done} rounds on {len(targets)} images; wrote {args.out}")
    return 0


def cmd_invert(args) -> int:
    import json

    import torch

    from lli_fast.checkpoint import load_mapping
    from lli_fast.demo import inner_settings, write_json
    from lli_fast.invert import invert
    from lli_fast.models import face_dcgan
    from lli_fast.report import image_grid

    os.makedirs(args.out, exist_ok=True)  # fail before the work, not after it
    generator = face_dcgan()
    mapping, config = load_mapping(args.checkpoint, expected_dim=100)
    targets = load_images(args.images)
    # the inner loop the checkpoint was trained with (--lr overrides its lr)
    inner = inner_settings(config, lr=args.lr)
    result = invert(generator, targets, mapping, steps=args.steps, seed=args.seed, **inner)
    rows, diverged = [], []
    for i, path in enumerate(args.images):
        stem = os.path.splitext(os.path.basename(path))[0]
        out_png = os.path.join(args.out, f"{i:03d}_{stem}_recon.png")
        mse = float(result.loss[i])
        if not math.isfinite(mse):  # JSON has no NaN/Inf: null, and say so
            diverged.append(path)
            rows.append({"image": path, "reconstruction": None, "mse": None, "diverged": True})
            print(f"{path}: diverged (non-finite loss), no reconstruction written")
            continue
        image_grid(out_png, {"recon": result.output[i : i + 1]})
        rows.append({"image": path, "reconstruction": out_png, "mse": mse})
        print(f"{path}: mse {mse:.5f} -> {out_png}")
    finite = torch.isfinite(result.loss)
    mean = None
    if len(diverged) < len(rows):
        image_grid(
            os.path.join(args.out, "grid.png"),
            {"target": targets[finite], "recon": result.output[finite]},
            64,
        )
        mean = float(result.loss[finite].mean())
    write_json(
        os.path.join(args.out, "losses.json"),
        {"steps": args.steps, **inner, "mean_mse": mean, "images": rows},
    )
    print(json.dumps({"mean_mse": mean, "diverged": len(diverged)}))
    if diverged:
        print(
            f"lli invert: error: {len(diverged)} of {len(rows)} images diverged (non-finite "
            f"loss) with {inner['optimizer']} lr {inner['lr']:g}; try a smaller --lr",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_defend_demo(args) -> int:
    from lli_fast.defense.demo import run

    run(args.out, quick=args.quick)
    return 0


def cmd_bench(args) -> int:
    import pytest

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench_dir = os.path.join(here, "bench")
    if not os.path.isdir(bench_dir):
        print(
            "bench/ is not part of an installed package: run from a source checkout",
            file=sys.stderr,
        )
        return 2
    return pytest.main([bench_dir, "--benchmark-only", *args.pytest_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train theta for the face DCGAN and compare with plain OBI")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--quick", action="store_true", help="short run (about 2 minutes)")
    p.add_argument("--seconds", type=_positive_float, help="training time budget in seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train theta for the face DCGAN on LFW or your images")
    p.add_argument("--out", default="out/mapping.safetensors", help="checkpoint path")
    p.add_argument("--images", nargs="+", help="PNG/JPEG target images (default: LFW train faces)")
    p.add_argument("--seconds", type=_positive_float, default=420.0, help="time budget")
    p.add_argument("--steps", type=_train_steps, default=10, help="inner steps K (1-1000)")
    p.add_argument(
        "--lr",
        type=_positive_float,
        help="inner SGD learning rate (default: the demo's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("invert", help="invert your images with a trained checkpoint")
    p.add_argument("images", nargs="+", help="PNG/JPEG images (resized to 64x64)")
    p.add_argument("--checkpoint", required=True, help="mapping checkpoint (.safetensors)")
    p.add_argument("--out", default="out/invert", help="output folder")
    p.add_argument("--steps", type=_nonneg_int, default=10, help="gradient steps on z")
    p.add_argument("--lr", type=_positive_float, help="default: the checkpoint's training lr")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("defend-demo", help="MNIST purification: reverse attack vs learned")
    p.add_argument("--out", default="out/defense", help="output folder")
    p.add_argument("--quick", action="store_true", help="short run (about 2 minutes)")
    p.set_defaults(func=cmd_defend_demo)

    p = sub.add_parser("bench", help="run the CPU benchmarks (source checkout only)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as exc:
        print(f"lli {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
