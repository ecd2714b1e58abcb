"""The `lli` command end to end on the real face DCGAN and LFW faces (short budgets)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lli_fast.cli import main
from lli_fast.demo import TRAIN, inner_settings


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--seconds", "4", "--out", str(out)]) == 0
    return out


def test_demo_writes_results_plots_and_checkpoint(demo_run):
    results = json.loads((demo_run / "results.json").read_text())
    base = torch.tensor(results["curves"]["baseline"])
    learned = torch.tensor(results["curves"]["learned"])
    assert base.shape == learned.shape == (101,)
    # same starts: at step 0 theta is barely trained, and both curves go down
    assert base[100] < 0.5 * base[0] and learned[100] < learned[0]
    assert results["baseline_lr"] in (0.1, 0.3, 1.0)
    assert set(results["lr_sweep"]) == {"0.1", "0.3", "1.0"}
    assert results["baseline_lr"] == float(min(results["lr_sweep"], key=results["lr_sweep"].get))
    reach = results["steps_to_reach_baseline"]["50"]
    assert reach["baseline_loss"] == pytest.approx(float(base[50]))
    if reach["learned_steps"] is not None:
        t = reach["learned_steps"]
        assert learned[t] <= base[50] and (t == 0 or learned[t - 1] > base[50])
    assert len(results["train_history"]["round"]) >= 1
    assert results["settings"]["train"]["optimizer"] == "sgd"
    assert results["settings"]["train_precision"] in ("float32", "bfloat16 autocast")
    for name in ("loss_vs_step.png", "faces_grid.png"):
        with Image.open(demo_run / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert (demo_run / "mapping.safetensors").stat().st_size > 10_000


def test_invert_user_images(demo_run, tmp_path):
    from lli_fast.data import lfw_faces

    faces = lfw_faces().heldout[:2]
    paths = []
    for i, face in enumerate(faces):
        arr = ((face.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        path = tmp_path / f"face{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    out = tmp_path / "inv"
    code = main(
        [
            "invert",
            *paths,
            "--checkpoint",
            str(demo_run / "mapping.safetensors"),
            "--out",
            str(out),
            "--steps",
            "5",
        ]
    )
    assert code == 0
    losses = json.loads((out / "losses.json").read_text())
    # the inner loop the checkpoint was trained with, read from its config
    assert (losses["optimizer"], losses["lr"], losses["momentum"]) == (
        TRAIN["optimizer"],
        TRAIN["lr"],
        TRAIN["momentum"],
    )
    assert [r["image"] for r in losses["images"]] == paths
    assert all(0 < r["mse"] < 1.0 for r in losses["images"])
    assert (out / "grid.png").exists()


def test_cli_errors_are_clear(demo_run, tmp_path, capsys):
    ckpt = str(demo_run / "mapping.safetensors")
    assert main(["invert", str(tmp_path / "missing.png"), "--checkpoint", ckpt]) == 2
    assert "image not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["invert", str(bad), "--checkpoint", ckpt, "--out", str(tmp_path / "o")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["invert", str(bad), "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--seconds", "-3"])


def test_sixteen_bit_and_exif_images_are_read_right(tmp_path):
    from lli_fast.cli import load_images

    gray16 = np.full((8, 8), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img = load_images([str(tmp_path / "g16.png")], size=8)
    torch.testing.assert_close(img, torch.full((1, 3, 8, 8), 32768 / 65535 * 2 - 1))
    # a portrait photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise)
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, :8] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    img = load_images([str(tmp_path / "rot.jpg")], size=16)
    assert img[0, 0, :4].mean() > 0.5 and img[0, 0, -4:].mean() < -0.5  # white on top after turning
    Image.fromarray(np.zeros((4, 4), dtype=np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match="32-bit"):
        load_images([str(tmp_path / "f.tiff")])


def test_train_checks_its_output_before_training(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--seconds", "1"]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--seconds", "inf"])


def test_inner_settings_of_old_and_new_checkpoints():
    # checkpoints written before the inner optimizer was recorded were trained with Adam
    assert inner_settings({"lr": 1.0, "steps": 10}) == {
        "optimizer": "adam",
        "lr": 1.0,
        "momentum": 0.0,
    }
    assert inner_settings(dict(TRAIN)) == {k: TRAIN[k] for k in ("optimizer", "lr", "momentum")}


def test_inner_settings_reject_bad_configs_and_take_an_lr_override():
    for config, words in (
        (None, "config must be a JSON object"),
        ([1], "config must be a JSON object"),
        ({"lr": "abc"}, "'lr' must be a number, got 'abc'"),
        ({"lr": True}, "'lr' must be a number, got True"),
        ({"momentum": [0.5]}, "'momentum' must be a number"),
        ({"optimizer": ["sgd"]}, "'optimizer' must be a string"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            inner_settings(config)
    assert inner_settings({"lr": 300.0, "optimizer": "sgd"}, lr=5.0)["lr"] == 5.0


def test_diverged_inversion_fails_and_writes_strict_json(demo_run, tmp_path, capsys):
    from lli_fast.data import lfw_faces

    face = lfw_faces().heldout[0]
    arr = ((face.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    image = tmp_path / "face.png"
    Image.fromarray(arr).save(image)
    out = tmp_path / "inv"
    ckpt = str(demo_run / "mapping.safetensors")
    args = ["invert", str(image), "--checkpoint", ckpt, "--out", str(out), "--steps", "3"]
    assert main([*args, "--lr", "1e30"]) == 1  # SGD at lr 1e30 overflows
    assert "diverged (non-finite loss)" in capsys.readouterr().err

    def no_nan(token):
        raise AssertionError(f"non-standard JSON token {token}")

    losses = json.loads((out / "losses.json").read_text(), parse_constant=no_nan)
    assert losses["mean_mse"] is None and losses["images"][0]["mse"] is None


def test_train_refuses_absurd_step_counts():
    with pytest.raises(SystemExit) as exc:
        main(["train", "--steps", "1000000"])
    assert exc.value.code == 2
