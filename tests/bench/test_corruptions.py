"""MNIST-C's corruptions (each against its description in the benchmark's code: not the
identity, inside [0, 1], reproducible from its seed and the image's index), the corruption
evaluation of a sweep's targets and its board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as TF

from bench.cli import main
from bench.core.corruptions import MNIST_C, corrupt
from bench.core.errors import BadInput
from leaderboards.corruptions import boards, load_corruptions

SEEDLESS = {"scale", "brightness", "stripe", "canny_edges"}
"""The corruptions without a random draw (MNIST-C fixes their parameters)."""


@pytest.fixture(scope="module")
def digits16(digits: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return digits[0][::13][:16].clone()


@pytest.mark.parametrize("name", list(MNIST_C))
def test_each_corruption_changes_stays_in_bounds_and_follows_its_seed(
        name: str, digits16: torch.Tensor) -> None:
    x = digits16
    out = corrupt(x, name, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 0.05
    assert int(changed.sum()) >= len(x) - 1, f"{name} left most digits as they were"
    assert torch.equal(out, corrupt(x, name, seed=0))
    idx = torch.arange(len(x)) * 5 + 7
    alone = corrupt(x[3:4], name, seed=0, indices=idx[3:4])
    assert torch.equal(alone[0], corrupt(x, name, seed=0, indices=idx)[3])
    if name not in SEEDLESS:
        assert not torch.equal(out, corrupt(x, name, seed=1))


def test_brightness_is_hsv_value_plus_half(digits16: torch.Tensor) -> None:
    from skimage import color

    img = digits16[0, 0].double().numpy()
    hsv = color.rgb2hsv(color.gray2rgb(img))
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + 0.5, 0, 1)
    expected = color.rgb2gray(color.hsv2rgb(hsv))
    assert np.allclose(corrupt(digits16[:1], "brightness", 0)[0, 0].double().numpy(), expected,
                       atol=1e-5)


def test_stripe_inverts_the_outer_quarters(digits16: torch.Tensor) -> None:
    x = digits16[:2]
    out = corrupt(x, "stripe", 0)
    assert torch.allclose(out[..., :7], 1 - x[..., :7])
    assert torch.allclose(out[..., 21:], 1 - x[..., 21:])
    assert torch.equal(out[..., 7:21], x[..., 7:21])


def test_geometry_scale_translate_rotate(digits16: torch.Tensor) -> None:
    x = digits16
    scaled = corrupt(x, "scale", 0)
    ratio = scaled.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.49), atol=0.06)  # area 0.7²
    moved = corrupt(x, "translate", 0)
    for a, b in zip(x[:, 0], moved[:, 0], strict=True):  # 3 pixels each way, zero filled
        errors = []
        for dy, dx in ((3, 3), (3, -3), (-3, 3), (-3, -3)):
            shifted = torch.zeros_like(a)
            shifted[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
                a[max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
            errors.append(float((shifted - b).abs().max()))
        assert min(errors) < 1e-5 < max(errors), errors
    turned = corrupt(x, "rotate", 0)
    for a, b in zip(x, turned, strict=True):  # torchvision's rotation by ±0.4 rad, bilinear
        errors = [float((TF.rotate(a, angle, TF.InterpolationMode.BILINEAR) - b).abs().mean())
                  for angle in (np.degrees(0.4), -np.degrees(0.4))]
        assert min(errors) < 0.02 < max(errors), errors


def test_noises_and_lines(digits16: torch.Tensor) -> None:
    x = digits16
    shot = corrupt(x, "shot_noise", 0)
    assert torch.allclose(shot * 3, (shot * 3).round(), atol=1e-5)  # counts of 3 per unit
    assert float(shot[x == 0].abs().max()) == 0  # no photons where there is no light
    assert float((shot - x)[(x > 0) & (x < 1)].abs().mean()) > 0.1
    impulse = corrupt(x, "impulse_noise", 0)
    flipped = ((impulse == 0) | (impulse == 1)) & ((impulse - x).abs() > 0.5)
    assert 0.04 < float(flipped.float().mean()) < 0.17
    for name in ("dotted_line", "zigzag"):
        added = corrupt(x, name, 0) - x
        assert float(added.min()) >= -1e-6 and float(added.amax(dim=(1, 2, 3)).min()) > 0.5
    dotted = corrupt(x, "dotted_line", 0) - x
    assert float(dotted[..., 0:2].abs().max()) < 1e-6  # its first dash is a gap
    edges = corrupt(x, "canny_edges", 0)
    assert set(edges.unique().tolist()) <= {0.0, 1.0}


def test_blurs_and_fog_spread_ink(digits16: torch.Tensor) -> None:
    x = digits16
    for name in ("glass_blur", "motion_blur"):
        out = corrupt(x, name, 0)
        assert float(out.amax(dim=(1, 2, 3)).mean()) < float(x.amax(dim=(1, 2, 3)).mean())
        assert ((out > 0.05).flatten(1).sum(1) > (x > 0.05).flatten(1).sum(1)).all(), name
    fogged = corrupt(x, "fog", 0)
    background = x == 0
    assert float(fogged[background].mean()) > 0.1 and float(fogged[background].std()) > 0.02


def test_bad_inputs_are_refused(digits16: torch.Tensor) -> None:
    with pytest.raises(BadInput, match="corruptions: shot_noise"):
        corrupt(digits16, "snow", 0)
    with pytest.raises(BadInput, match="grayscale"):
        corrupt(digits16.expand(-1, 3, -1, -1), "fog", 0)
    with pytest.raises(BadInput, match=r"\[0, 1\]"):
        corrupt(digits16 * 2, "fog", 0)


CONFIG = """
[sweep]
name = "corrupt"
dataset = "mnist5k"
n_eval = 100

[[targets]]
model = "lenet"

[[attacks]]
name = "fgsm"
eps = [0.1]
"""


def test_corruptions_command_stores_rows_and_prints_the_board(
        lenet: Any, cache_dir: Path, tmp_path: Path, mnist5k: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out = tmp_path / "results"
    assert main(["corruptions", str(config), "--out", str(out), "--cache-dir", str(cache_dir),
                 "--corruptions", "fog", "stripe", "shot_noise", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = load_corruptions(out)
    assert sorted(rows["corruption"]) == ["fog", "shot_noise", "stripe"]
    assert (rows["n_samples"] == 100).all()
    assert rows.set_index("corruption")["severity"].to_dict() == {"fog": 5, "stripe": 0,
                                                                  "shot_noise": 5}
    # one stored number recomputed here: the corrupted samples through the model
    from bench.evaluation import eval_subset

    data = eval_subset(mnist5k, "test", 100, torch.device("cpu"))
    with lenet.evaluating():
        fogged = corrupt(data.x, "fog", seed=0, indices=data.idx)
        accuracy = float((lenet.predict_logits(fogged).argmax(1) == data.y).float().mean())
    assert float(rows.loc[rows["corruption"] == "fog", "accuracy"].iloc[0]) == accuracy
    (_, table), = boards(rows)
    assert table["mean"].iloc[0] == pytest.approx(100 * rows["accuracy"].mean())
    assert table["worst"].iloc[0] == pytest.approx(100 * rows["accuracy"].min())
    assert "| lenet" in printed and "worst corruption" in printed
    assert len(list((out / "corruptions").glob("*.png"))) == 1

    assert main(["run", str(config), "--out", str(out), "--cache-dir", str(cache_dir),
                 "--no-progress"]) == 0
    site = tmp_path / "site"
    assert main(["publish", str(out), "--out", str(site)]) == 0
    page = (site / "corruptions.html").read_text()
    assert "shot_noise" in page and "corruptions-" in page


def test_board_refuses_disagreeing_rows_and_leaves_incomplete_means_out() -> None:
    row = {"dataset": "d", "split": "test", "n_samples": 10, "seed": 0, "precision": "fp32",
           "corruption_set": "mnist-c", "model": "m", "defense": "none", "defense_params": "",
           "weights_sha256": "w", "clean_acc": 0.9}
    rows = pd.DataFrame([{**row, "corruption": "fog", "accuracy": 0.5},
                         {**row, "corruption": "stripe", "accuracy": 0.7},
                         {**row, "model": "n", "corruption": "fog", "accuracy": 0.6}])
    (_, table), = boards(rows)
    by_model = table.set_index("model")
    assert by_model.loc["m", "mean"] == pytest.approx(60.0)
    assert by_model.loc["m", "worst corruption"] == "fog"
    assert pd.isna(by_model.loc["n", "mean"])  # stripe missing: no mean to compare
    clash = pd.concat([rows, pd.DataFrame([{**row, "corruption": "fog", "accuracy": 0.4}])])
    with pytest.raises(BadInput, match="disagree"):
        boards(clash)
