"""Train theta for the face DCGAN with one setting and print the held-out few-step loss as it goes.

The scratch harness behind the variant tables in bench/RESULTS.md section 1: the demo's data,
split, flips and evaluation starts (seed 1234), one setting per run, single-threaded so that two
runs can share the 2-core machine. Settings are a JSON object overriding DEFAULTS, e.g.

    python scripts/landscape_sweep.py '{"name": "adam1", "optimizer": "adam", "lr": 1.0,
        "momentum": 0}'

(the defaults are the demo's TRAIN and MAPPING settings, bfloat16 autocast, 240 s, 1 thread)

prints `rounds, seconds, loss at 5 / 10 / 20 steps` after each quarter of the budget and writes
the same rows to /tmp/landscape_sweep_<name>.json.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from lli_fast.data import lfw_faces
from lli_fast.demo import EVAL_SEED, MAPPING, TRAIN, face_trainer, inner_settings
from lli_fast.invert import invert
from lli_fast.mapping import MappingNetwork
from lli_fast.models import face_dcgan

DEFAULTS = dict(
    name="run",
    seconds=240.0,
    threads=1,
    evals=4,
    bf16=True,
    **TRAIN,  # the demo's settings unless overridden
    **MAPPING,
)


def main(argv: list[str]) -> None:
    cfg = dict(DEFAULTS)
    settings = json.loads(argv[0]) if argv else {}
    if not isinstance(settings, dict):
        raise SystemExit(f"settings must be a JSON object, got {argv[0]!r}")
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    for key, value in settings.items():
        if type(value) is not type(DEFAULTS[key]) and not (
            isinstance(DEFAULTS[key], float) and type(value) is int
        ):
            raise SystemExit(f"{key} must be a {type(DEFAULTS[key]).__name__}, got {value!r}")
    cfg.update(settings)
    if not cfg["name"].replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"name must be letters, digits, - and _, got {cfg['name']!r}")
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    generator = face_dcgan()
    faces = lfw_faces(size=64)
    mapping = MappingNetwork(100, hidden=cfg["hidden"], depth=cfg["depth"], skip=cfg["skip"])
    inner = inner_settings(cfg)
    train = {k: cfg[k] for k in TRAIN}
    autocast = torch.bfloat16 if cfg["bf16"] else None
    trainer = face_trainer(generator, mapping, faces.train, autocast=autocast, **train)
    y = faces.heldout
    z0 = torch.randn(len(y), 100, generator=torch.Generator().manual_seed(EVAL_SEED))
    start, rows = time.perf_counter(), []
    for _ in range(cfg["evals"]):
        trainer.train(time_budget_s=cfg["seconds"] / cfg["evals"], progress=False)
        mapping.eval()
        curve = invert(generator, y, mapping, steps=20, init=z0, **inner).loss_curve.mean(1)
        mapping.train()
        row = [trainer.rounds_done, round(time.perf_counter() - start)]
        row += [round(float(curve[k]), 4) for k in (5, 10, 20)]
        rows.append(row)
        rounds, seconds, at5, at10, at20 = row
        print(f"{cfg['name']} rounds {rounds}  {seconds} s  loss@5 {at5}  @10 {at10}  @20 {at20}")
    with open(f"/tmp/landscape_sweep_{cfg['name']}.json", "w") as fh:
        json.dump({"settings": cfg, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
