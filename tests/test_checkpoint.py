"""Checkpoints: safetensors + JSON config, atomic, no code execution, clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from lli_fast.checkpoint import atomic_write, load_mapping, save_mapping
from lli_fast.mapping import MappingNetwork


def trained_mapping(dim=12, depth=2, **kwargs):
    theta = MappingNetwork(dim, hidden=20, depth=depth, **kwargs)
    with torch.no_grad():
        for p in theta.parameters():
            p.normal_()
    return theta


def test_round_trip(tmp_path):
    theta = trained_mapping()
    path = tmp_path / "m.safetensors"
    save_mapping(path, theta, {"lr": 0.2, "steps": 10})
    loaded, config = load_mapping(path, expected_dim=12)
    assert config == {"lr": 0.2, "steps": 10}
    assert loaded.config() == {
        "dim": 12,
        "hidden": 20,
        "depth": 2,
        "latent_dim": 12,
        "skip": "identity",
    }
    assert not loaded.training
    z = torch.randn(4, 12)
    torch.testing.assert_close(loaded(z), theta(z), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_wrong_latent_size(tmp_path):
    path = tmp_path / "m.safetensors"
    save_mapping(path, trained_mapping(12))
    with pytest.raises(ValueError, match="inputs of size 12.*takes 100"):
        load_mapping(path, expected_dim=100)


def test_damaged_and_foreign_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_mapping(path, trained_mapping())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged"):
        load_mapping(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="damaged"):
        load_mapping(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an lli_fast mapping"):
        load_mapping(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_mapping(tmp_path / "missing.safetensors")


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_mapping(path, trained_mapping())
    before = path.read_bytes()

    def broken(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_bad_save_arguments(tmp_path):
    with pytest.raises(TypeError, match="mapping must be a MappingNetwork"):
        save_mapping(tmp_path / "x", torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="config must be JSON-serialisable"):
        save_mapping(tmp_path / "x", trained_mapping(), {"f": object()})


def test_saved_file_is_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        save_mapping(path, trained_mapping())
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.chmod(path, 0o640)
        save_mapping(path, trained_mapping())  # replacing keeps the file's mode
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_config_that_disagrees_with_tensors_is_rejected_before_allocating(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    save_mapping(path, trained_mapping(4))
    tensors = load_file(str(path))
    for arch in ({"dim": 4, "hidden": 100_000, "depth": 2}, [4, 20, 2], {"dim": 4}):
        meta = {"format": "lli_fast.mapping/1", "mapping": arch, "config": {}}
        save_file(tensors, str(path), metadata={"lli_fast_config": json.dumps(meta)})
        with pytest.raises(ValueError, match="checkpoint .*(do not fit|damaged config)"):
            load_mapping(path)
    with pytest.raises(ValueError, match="is a directory"):
        load_mapping(tmp_path)


def _rewrite_config(path, edit) -> None:
    """Rewrite the JSON config of a saved checkpoint in place through `edit(meta)`."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["lli_fast_config"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open API)
    edit(meta)
    save_file(tensors, str(path), metadata={"lli_fast_config": json.dumps(meta)})


def test_round_trip_with_a_learned_skip(tmp_path):
    theta = trained_mapping(12, depth=1, latent_dim=30, skip="linear")
    path = tmp_path / "skip.safetensors"
    save_mapping(path, theta)
    loaded, _ = load_mapping(path, expected_dim=12)
    assert loaded.skip == "linear" and loaded.embed.weight.shape == (12, 30)
    z = torch.randn(3, 30)
    torch.testing.assert_close(loaded(z), theta(z), rtol=0, atol=0)
    # a config that says "identity" for a file holding a learned embedding is refused
    _rewrite_config(path, lambda meta: meta["mapping"].update(skip="identity"))
    with pytest.raises(ValueError, match="do not fit MappingNetwork"):
        load_mapping(path)
    _rewrite_config(path, lambda meta: meta["mapping"].update(skip="conv"))
    with pytest.raises(ValueError, match="damaged config: skip='conv'"):
        load_mapping(path)
    # and a "linear" config without the embedding tensor too
    plain = tmp_path / "plain.safetensors"
    save_mapping(plain, trained_mapping(12))
    _rewrite_config(plain, lambda meta: meta["mapping"].update(skip="linear"))
    with pytest.raises(ValueError, match="do not fit MappingNetwork"):
        load_mapping(plain)
    # files written before skip existed load with the identity skip
    _rewrite_config(plain, lambda meta: meta["mapping"].pop("skip"))
    assert load_mapping(plain)[0].skip == "identity"


def test_round_trip_with_a_wider_latent_and_old_configs(tmp_path):
    theta = trained_mapping(12, depth=1, latent_dim=30)
    path = tmp_path / "wide.safetensors"
    save_mapping(path, theta)
    loaded, _ = load_mapping(path, expected_dim=12)
    assert loaded.latent_dim == 30 and loaded.dim == 12
    z = torch.randn(3, 30)
    torch.testing.assert_close(loaded(z), theta(z), rtol=0, atol=0)
    # A file written before latent_dim existed (config without it) still loads, with Z = X.
    square = tmp_path / "old.safetensors"
    save_mapping(square, trained_mapping(12))
    _rewrite_config(square, lambda meta: meta["mapping"].pop("latent_dim"))
    assert load_mapping(square)[0].latent_dim == 12
    # A config whose latent_dim disagrees with the stored tensors is refused before loading.
    _rewrite_config(square, lambda meta: meta["mapping"].update(latent_dim=31))
    with pytest.raises(ValueError, match="do not fit MappingNetwork"):
        load_mapping(square)


def test_nan_weights_are_refused_as_damage(tmp_path):
    theta = trained_mapping(12)
    with torch.no_grad():
        theta.out.bias[3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_mapping(path, theta)
    with pytest.raises(ValueError, match="damaged: tensor 'out.bias' holds NaN or Inf"):
        load_mapping(path)
