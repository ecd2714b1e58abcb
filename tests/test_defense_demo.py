"""`lli defend-demo` end to end at toy size, and its cached checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from lli_fast.defense import checkpoint
from lli_fast.defense.classifier import (
    ClassifierConfig,
    cached_classifier,
    classifier_path,
    load_or_train_classifier,
)
from lli_fast.defense.demo import DemoSettings, run
from lli_fast.defense.landscape import LandscapeConfig

TOY = DemoSettings(
    ClassifierConfig(channels=(4, 8), feature_dim=32, projection_dim=16, epochs=1),
    tuple(
        LandscapeConfig(
            fit=fit, hidden=16, rounds=2, n_images=40, batch_size=8, fit_batch_size=16, fit_iters=1
        )
        for fit in ("contrastive", "label")
    ),
    n_eval=20,
    attack_steps=3,
    reverse_steps=(1, 2),
    latency_reps={"batch_1": 2, "batch_256": 1},
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLI_FAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "defense"


def test_demo_writes_results_table_and_plot_and_reuses_its_cache(tmp_path, cache):
    out = tmp_path / "out"
    results = run(str(out), settings=TOY)
    names = ["none", "reverse attack, 1 step", "reverse attack, 2 steps"]
    names += ["learned landscape, 1 step", "learned landscape (label fit), 1 step"]
    assert list(results["accuracy"]) == names
    for row in results["accuracy"].values():
        assert set(row) == {"clean", "eps=0.1", "eps=0.3"}
        assert all(0 <= a <= 1 for a in row.values())
    assert results["data"]["n_evaluated"] == 20
    assert all(v["batch_1"] > 0 and v["batch_256"] > 0 for v in results["latency_ms"].values())
    assert "Non-adaptive" in results["evaluation"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["accuracy"] == results["accuracy"]
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(names) + 1  # header + one row per defense
    assert (out / "accuracy_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(cache.glob("*.safetensors"))) == 3  # classifier and both thetas, cached
    again = run(str(out), settings=TOY)
    assert again["classifier"]["from_cache"]
    assert all(land["from_cache"] for land in again["landscapes"])
    assert again["accuracy"] == results["accuracy"]  # same weights, same seeds, same numbers


def test_classifier_cache_round_trip_and_stale_or_damaged_files(cache):
    cfg = TOY.classifier
    model, info = load_or_train_classifier(cfg)
    assert not info["from_cache"]
    again, info2 = load_or_train_classifier(cfg)
    assert info2["from_cache"] and info2["heldout_accuracy"] == info["heldout_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    path = classifier_path(cfg)
    assert path.parent == cache and path.is_file()
    assert checkpoint.load_checked(path, info["config"]) is not None
    assert checkpoint.load_checked(path, {**info["config"], "epochs": 2}) is None  # stale
    path.write_bytes(b"not a safetensors file")
    assert checkpoint.load_checked(path, info["config"]) is None  # damaged: retrain, no crash
    assert not cached_classifier(cfg)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") or "tmp-" in p.name]


def test_cache_dir_honours_the_environment(cache):
    assert checkpoint.cache_dir() == cache and cache.is_dir()
