"""MNIST-C's and CIFAR-10-C's corruptions (each against its description in the benchmark's
code: not the identity, inside [0, 1], reproducible from its seed and the image's index, and
for CIFAR-10-C stronger with the severity), the corruption evaluation of a sweep's targets
(grayscale and colour) and its board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.functional as TF

from bench.cli import main
from bench.core.corruptions import CIFAR10_C, MNIST_C, SEVERITIES, corrupt
from bench.core.errors import BadInput
from leaderboards.corruptions import boards, load_corruptions, severity_grids

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
    with pytest.raises(BadInput, match="no corruption set for 2-channel"):
        corrupt(digits16.expand(-1, 2, -1, -1), "fog", 0)
    with pytest.raises(BadInput, match="one severity 5, not 2"):
        corrupt(digits16, "fog", 0, severity=2)
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
    # one severity per corruption (fog 5, stripe 0, shot noise 5): no severity grid
    assert "the benchmark's severities" in printed and "severity 5" not in printed
    assert severity_grids(rows) == []
    assert len(list((out / "corruptions").glob("*.png"))) == 1

    assert main(["run", str(config), "--out", str(out), "--cache-dir", str(cache_dir),
                 "--no-progress"]) == 0
    site = tmp_path / "site"
    assert main(["publish", str(out), "--out", str(site)]) == 0
    page = (site / "corruptions.html").read_text()
    assert "shot_noise" in page and "corruptions-" in page


def test_corruptions_command_refuses_a_bad_results_folder_before_writing(
        lenet: Any, cache_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out = tmp_path / "results"
    args = ["corruptions", str(config), "--out", str(out), "--cache-dir", str(cache_dir),
            "--corruptions", "stripe", "--no-progress"]
    assert main(args) == 0
    stored = next((out / "corruptions").glob("*.parquet"))
    # a stored evaluation of the same target that disagrees (other weights, same name):
    # refused before anything is written, the stored files untouched
    other = pd.read_parquet(stored).assign(accuracy=0.0)
    clash = out / "corruptions" / "other-sweep.parquet"
    other.to_parquet(clash)
    before = {p.name: p.read_bytes() for p in (out / "corruptions").iterdir()}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "disagree" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (out / "corruptions").iterdir()} == before
    # a file that is not Parquet: named, and refused before any evaluation
    clash.write_text("not parquet")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert str(clash) in err and len(err.splitlines()) == 1
    assert stored.read_bytes() == before[stored.name]


def test_board_refuses_disagreeing_rows_and_leaves_incomplete_means_out() -> None:
    row = {"dataset": "d", "split": "test", "n_samples": 10, "seed": 0, "precision": "fp32",
           "corruption_set": "mnist-c", "model": "m", "defense": "none", "defense_params": "",
           "weights_sha256": "w", "clean_acc": 0.9, "severity": 5}
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


def test_severities_average_within_a_corruption_and_need_every_level() -> None:
    row = {"dataset": "d", "split": "test", "n_samples": 10, "seed": 0, "precision": "fp32",
           "corruption_set": "cifar10-c", "model": "m", "defense": "none",
           "defense_params": "", "weights_sha256": "w", "clean_acc": 0.9}
    accuracy = {("fog", 1): 0.8, ("fog", 2): 0.4, ("contrast", 1): 0.7, ("contrast", 2): 0.7}
    rows = pd.DataFrame([{**row, "corruption": c, "severity": s, "accuracy": a}
                         for (c, s), a in accuracy.items()]
                        + [{**row, "model": "n", "corruption": "fog", "severity": 1,
                            "accuracy": 0.9}])
    (title, table), = boards(rows)
    assert "2 corruptions at severities 1–2" in title
    m = table.set_index("model").loc["m"]
    assert (m["fog"], m["contrast"], m["mean"]) == pytest.approx((60.0, 70.0, 65.0))
    assert (m["worst"], m["worst corruption"]) == (pytest.approx(60.0), "fog")
    n = table.set_index("model").loc["n"]
    assert pd.isna(n["fog"]) and pd.isna(n["mean"])  # fog at severity 2 missing
    grids = dict(severity_grids(rows))
    (grid,) = [g for t, g in grids.items() if t.startswith("m/none")]
    assert grid.set_index("corruption").loc["fog"].tolist() == pytest.approx([80.0, 40.0])


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Eight 32 × 32 crops of scikit-image's bundled colour photographs (a cat, coffee, an
    astronaut): natural colour images as CIFAR-10-C's corruptions expect."""
    from skimage import data
    from skimage.transform import resize

    crops = []
    for image in (data.chelsea(), data.coffee(), data.astronaut()):
        h, w = image.shape[:2]
        for top, left in ((0, 0), (h // 3, w // 3), (h // 2, w // 4)):
            side = min(h - top, w - left, 200)
            crop = image[top:top + side, left:left + side] / 255
            crops.append(resize(crop, (32, 32), anti_aliasing=True))
    return torch.tensor(np.stack(crops[:8]), dtype=torch.float32).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(CIFAR10_C))
def test_each_rgb_corruption_grows_with_severity_and_follows_its_seed(
        name: str, photos: torch.Tensor) -> None:
    x = photos
    change = []
    for severity in SEVERITIES:
        out = corrupt(x, name, seed=0, severity=severity)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        change.append(float((out - x).abs().mean()))
    assert change[0] > 1e-3, f"{name} at severity 1 left the images as they were"
    # severity 5 changes the images more than severity 1 (on average over the photographs);
    # not elastic_transform, whose levels trade the affine part (largest at 1) for the
    # elastic one (largest at 5), as the authors set them
    if name != "elastic_transform":
        assert change[-1] > change[0], f"{name}: {change}"
    out = corrupt(x, name, seed=3, severity=3)
    assert torch.equal(out, corrupt(x, name, seed=3, severity=3))
    idx = torch.arange(len(x)) * 7 + 2
    alone = corrupt(x[2:3], name, seed=3, indices=idx[2:3], severity=3)
    assert torch.equal(corrupt(x, name, seed=3, indices=idx, severity=3)[2:3], alone)
    if name not in {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                    "jpeg_compression"}:
        assert not torch.equal(out, corrupt(x, name, seed=4, severity=3)), "seed ignored"


def test_rgb_corruptions_match_their_definitions(photos: torch.Tensor) -> None:
    """The deterministic ones against the formula or the library the authors call, and the
    noises' statistics."""
    from PIL import Image
    from skimage.color import hsv2rgb, rgb2hsv

    x = photos
    image = x[0].permute(1, 2, 0).double().numpy()
    # contrast: each channel pulled to its mean, keeping 15% of the deviation at severity 5
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", 0, severity=5),
                               ((x - mean) * 0.15 + mean).clamp(0, 1))
    # brightness: HSV value + 0.3 at severity 5
    hsv = rgb2hsv(image)
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    np.testing.assert_allclose(corrupt(x[:1], "brightness", 0, severity=5)[0]
                               .permute(1, 2, 0).double().numpy(), hsv2rgb(hsv), atol=1e-6)
    # JPEG at quality 40: what Pillow writes and reads back
    buffer = __import__("io").BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, "JPEG", quality=40)
    expected = np.asarray(Image.open(buffer), dtype=np.float64) / 255
    np.testing.assert_allclose(corrupt(x[:1], "jpeg_compression", 0, severity=5)[0]
                               .permute(1, 2, 0).double().numpy(), expected, atol=1e-6)
    # Gaussian noise: residual σ 0.10 at severity 5 where nothing clips
    noisy = corrupt(x, "gaussian_noise", 0, severity=5).double() - x.double()
    inside = (x > 0.3) & (x < 0.7)
    assert float(noisy[inside].std()) == pytest.approx(0.10, rel=0.1)
    # pixelate at severity 5: 65% of the side, so neighbouring pixels repeat
    pixel = corrupt(x, "pixelate", 0, severity=5)
    repeats = (pixel[..., 1:] == pixel[..., :-1]).float().mean()
    assert float(repeats) > 0.3 > float((x[..., 1:] == x[..., :-1]).float().mean())
    # defocus: a blur keeps each channel's mean (away from the reflected borders)
    blur = corrupt(x, "defocus_blur", 0, severity=5)
    torch.testing.assert_close(blur.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02, rtol=0)
    assert float(blur.diff(dim=-1).abs().mean()) < float(x.diff(dim=-1).abs().mean())


def test_rgb_corruptions_need_a_severity(photos: torch.Tensor) -> None:
    with pytest.raises(BadInput, match="severity in 1–5, got None"):
        corrupt(photos, "fog", 0)
    with pytest.raises(BadInput, match="its corruptions: gaussian_noise"):
        corrupt(photos, "stripe", 0, severity=1)
    from bench.core.corruptions import SETS

    with pytest.raises(BadInput, match="no severity 6"):
        SETS["cifar10-c"].select(severities=(6,))
    # MNIST-C's fog has only severity 5: asking for 3 selects nothing, which is refused
    with pytest.raises(BadInput, match="has severity 3; theirs: fog 5"):
        SETS["mnist-c"].select(("fog",), (3,))


RGB_MODULE = '''
from torch import nn


def rgb_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 64, 10))
'''

RGB_CONFIG = """
[sweep]
name = "colour"
dataset = "npz:{data}"
n_eval = 40

[[models]]
name = "rgb-cnn"
factory = "rgbnets:rgb_cnn"
weights = "{weights}"
input_shape = [3, 32, 32]
num_classes = 10

[[targets]]
model = "rgb-cnn"

[[attacks]]
name = "fgsm"
eps = [0.05]
"""


def test_corruptions_command_on_colour_images_evaluates_each_severity(
        mnist5k: Any, cache_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A user's colour data set (digits in random bright colours on random dark backgrounds,
    32 × 32, as npz) and a user's CNN trained on it: CIFAR-10-C's corruptions at the chosen
    severities."""
    from safetensors.torch import save_file

    from bench.core.usermodels import build_module

    gen = torch.Generator().manual_seed(0)

    def colour(x: torch.Tensor) -> torch.Tensor:
        ink = torch.nn.functional.pad(x, (2, 2, 2, 2))
        fg, bg = torch.rand(2, len(x), 3, 1, 1, generator=gen)
        return (0.6 + 0.4 * fg) * ink + 0.3 * bg * (1 - ink)  # bright ink, dark background

    train = mnist5k.split("train")
    xs, ys = colour(train.x[:2000]), train.y[:2000]
    (tmp_path / "rgbnets.py").write_text(RGB_MODULE)
    net = build_module("rgb-cnn", "rgbnets:rgb_cnn", {}, tmp_path)
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(2):
        for x, y in zip(xs.split(100), ys.split(100), strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    save_file(net.state_dict(), str(tmp_path / "weights.safetensors"))
    test = mnist5k.split("test")
    images = (colour(test.x[:200]) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    np.savez(tmp_path / "test.npz", x=images.numpy(), y=test.y[:200].numpy())
    config = tmp_path / "colour.toml"
    config.write_text(RGB_CONFIG.format(data=tmp_path / "test.npz", weights="weights.safetensors"))
    out = tmp_path / "results"
    assert main(["corruptions", str(config), "--out", str(out), "--cache-dir", str(cache_dir),
                 "--corruptions", "gaussian_noise", "contrast", "--severities", "1", "5",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = load_corruptions(out)
    assert set(rows["corruption_set"]) == {"cifar10-c"}
    assert sorted(zip(rows["corruption"], rows["severity"])) == [
        ("contrast", 1), ("contrast", 5), ("gaussian_noise", 1), ("gaussian_noise", 5)]
    clean = float(rows["clean_acc"].iloc[0])
    assert clean > 0.5, f"the user's CNN did not learn the coloured digits ({clean})"
    # one stored number recomputed here: the npz images under contrast 5 through the CNN
    from bench.core.datasets import load_dataset
    from bench.evaluation import eval_subset

    data = eval_subset(load_dataset(f"npz:{tmp_path / 'test.npz'}"), "test", 40,
                       torch.device("cpu"))
    stored = rows.set_index(["corruption", "severity"])
    with torch.no_grad():
        faded = corrupt(data.x, "contrast", seed=0, indices=data.idx, severity=5)
        accuracy = float((net(faded).argmax(1) == data.y).float().mean())
    assert float(stored.loc[("contrast", 5), "accuracy"]) == pytest.approx(accuracy)
    (_, table), = boards(rows)
    assert table["mean"].iloc[0] == pytest.approx(100 * rows["accuracy"].mean())
    assert table["contrast"].iloc[0] == pytest.approx(
        100 * stored.loc["contrast", "accuracy"].mean())
    assert "severity 5" in printed and "cifar10-c" in printed
    assert len(list((out / "corruptions").glob("*.png"))) == 1
