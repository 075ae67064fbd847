"""The user's own models and data: ``[[models]]`` in a sweep, ``bench.benchmark`` from Python,
``npz:`` data. Real modules written to a temporary folder, real checkpoints, real processes."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bench.cli import main
from bench.config import load_config
from bench.core.datasets import load_dataset
from bench.core.errors import ConfigError
from bench.core.target import Target
from bench.core.usermodels import build_module, load_weights
from leaderboards import ResultStore, load
from tests.conftest import advbench

MODULE = '''
import torch
from torch import nn


def small_cnn(width=8, num_classes=10, normalise=False):
    """A small CNN; with ``normalise`` it applies MNIST's mean/std itself."""
    layers = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
              nn.Flatten(), nn.Linear(2 * width * 49, num_classes)]
    net = nn.Sequential(*layers)
    return Normalised(net) if normalise else net


class Normalised(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 0.1307) / 0.3081)


def not_a_module():
    return 42


def raises(**kwargs):
    raise RuntimeError("no GPU here")


def four_logits():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4))


class NaNs(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


def critic(width=8, sigmoid=False):
    """A DCGAN-style discriminator (one logit; with ``sigmoid``, one probability)."""
    layers = [nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
              nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
              nn.Flatten(), nn.Linear(2 * width * 49, 1)]
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))


def generator(latent=16, side=28):
    return nn.Sequential(nn.Linear(latent, side * side), nn.Tanh(),
                         nn.Unflatten(1, (1, side, side)))
'''

CONFIG = """
[sweep]
name = "mine"
dataset = "mnist5k"
n_eval = 60
batch_size = 60

[[models]]
name = "my-cnn"
factory = "mynets:small_cnn"
kwargs = {{ width = 8 }}
weights = "{weights}"
input_shape = [1, 28, 28]
num_classes = 10
mean = [0.1307]
std = [0.3081]

[[targets]]
model = "my-cnn"

[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
"""


def _train_quickly(net: nn.Module, seed: int = 0) -> nn.Module:
    """One pass of Adam over 2,000 mnist5k digits (a few seconds): a model worth attacking."""
    data = load_dataset("mnist5k").split("train")
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for x, y in zip(data.x[:2000].split(100), data.y[:2000].split(100)):
        opt.zero_grad()
        nn.functional.cross_entropy(net((x - 0.1307) / 0.3081), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the user's module and a trained checkpoint (weights.safetensors)."""
    root = tmp_path_factory.mktemp("user")
    (root / "mynets.py").write_text(MODULE)
    net = build_module("my-cnn", "mynets:small_cnn", {"width": 8}, root)
    save_file(_train_quickly(net).state_dict(), str(root / "weights.safetensors"))
    return root


def _config(user_dir: Path, text: str = CONFIG, weights: str = "weights.safetensors") -> Path:
    path = user_dir / f"sweep{abs(hash((text, weights)))}.toml"
    path.write_text(text.format(weights=weights))
    return path


def _network(user_dir: Path, **kwargs: Any) -> nn.Module:
    net = build_module("my-cnn", "mynets:small_cnn", {"width": 8, **kwargs}, user_dir)
    load_weights("my-cnn", net, user_dir / "weights.safetensors")
    return net.eval()


def test_a_sweep_on_a_user_model_matches_the_python_api_and_foolbox(
        user_dir: Path, tmp_path: Path) -> None:
    import foolbox as fb

    out = tmp_path / "results"
    proc = advbench("run", str(_config(user_dir)), "--out", str(out), "--no-progress",
                    cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "| my-cnn" in proc.stdout and "2 cell(s) run" in proc.stdout
    rows = load(out)
    assert set(rows["model_source"]) == {"mynets:small_cnn"}
    digest = rows["weights_sha256"].iloc[0]
    assert len(digest) == 64 and rows["clean_acc"].iloc[0] > 0.6

    from bench import benchmark

    api = benchmark(_network(user_dir), dataset="mnist5k", attacks=["fgsm"], eps=[0.1, 0.2],
                    name="my-cnn", mean=[0.1307], std=[0.3081], n_eval=60, batch_size=60,
                    out=tmp_path / "api", cache_dir=tmp_path / "cache", progress=False)
    assert sorted(api["robust_acc"]) == sorted(rows["robust_acc"])
    store, api_store = ResultStore(out), ResultStore(tmp_path / "api")
    for eps in (0.1, 0.2):
        a = store.samples(rows[rows["eps"] == eps]).sort_values("sample_idx")
        b = api_store.samples(api[api["eps"] == eps]).sort_values("sample_idx")
        assert a["adv_correct"].tolist() == b["adv_correct"].tolist()  # per sample

    # foolbox's FGSM on the same network, preprocessing and digits
    data = load_dataset("mnist5k").test
    idx = torch.as_tensor(sorted(store.samples(rows)["sample_idx"].unique()))
    x, y = data.x[idx], data.y[idx]
    fmodel = fb.PyTorchModel(_network(user_dir), bounds=(0, 1),
                             preprocessing={"mean": 0.1307, "std": 0.3081})
    for eps in (0.1, 0.2):
        _, _, success = fb.attacks.FGSM()(fmodel, x, y, epsilons=eps)
        clean = fb.utils.accuracy(fmodel, x, y)
        ours = float(rows[rows["eps"] == eps]["robust_acc"].iloc[0])
        assert ours == pytest.approx(1 - float(success.float().mean()), abs=1 / 60), clean


def test_normalisation_in_the_config_or_in_the_module_gives_identical_rows(
        user_dir: Path, tmp_path: Path) -> None:
    baked = CONFIG.replace("mean = [0.1307]\nstd = [0.3081]\n", "")
    # the same weights under the Normalised wrapper: keys gain a "net." prefix
    net = _network(user_dir)
    save_file({f"net.{k}": v for k, v in net.state_dict().items()},
              str(user_dir / "baked.safetensors"))
    baked = baked.replace("kwargs = {{ width = 8 }}", "kwargs = {{ width = 8, normalise = true }}")
    rows = {}
    for label, config in (("config", _config(user_dir)),
                          ("module", _config(user_dir, baked, "baked.safetensors"))):
        out = tmp_path / label
        assert main(["run", str(config), "--out", str(out), "--no-progress",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
        rows[label] = _per_sample(out)
    pd.testing.assert_frame_equal(rows["config"], rows["module"])


def _per_sample(out: Path) -> pd.DataFrame:
    store = ResultStore(out)
    summary = store.summary()
    keys = ["direction", "eps", "sample_idx"]
    samples = store.samples(summary).merge(summary[["cell_id", "direction", "eps"]],
                                           on="cell_id")
    return samples.drop(columns="cell_id").sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("wrap", ["state_dict", "DataParallel", "plain .pt"])
def test_wrapped_and_torch_checkpoints_load_the_same_weights(wrap: str, user_dir: Path,
                                                             tmp_path: Path) -> None:
    net = _network(user_dir)
    state = net.state_dict()
    saved = {"state_dict": {"state_dict": state, "epoch": 3}, "plain .pt": state,
             "DataParallel": nn.DataParallel(net).state_dict()}[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    fresh = build_module("my-cnn", "mynets:small_cnn", {"width": 8}, user_dir)
    load_weights("my-cnn", fresh, path)
    x = load_dataset("mnist5k").test.x[:16]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


def test_torchvision_and_timm_architectures_with_local_weights(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    nets = {"torchvision:resnet18": {"num_classes": 10},
            "timm:resnet10t": {"num_classes": 10}}
    models = []
    for i, (factory, kwargs) in enumerate(nets.items()):
        net = build_module("m", factory, kwargs, tmp_path)
        torch.manual_seed(i)
        weights = tmp_path / f"m{i}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
        models.append(f'''
[[models]]
name = "m{i}"
factory = "{factory}"
kwargs = {json.dumps(kwargs).replace('": ', '" = ').replace('{"', '{ "')}
weights = "{weights.name}"
input_shape = [3, 32, 32]
num_classes = 10
''')
    config = tmp_path / "arch.toml"
    config.write_text(textwrap.dedent(f"""
        [sweep]
        name = "arch"
        dataset = "mnist5k-rgb32"
        n_eval = 8
        batch_size = 8
        {''.join(models)}
        [[targets]]
        model = "m0"

        [[targets]]
        model = "m1"

        [[attacks]]
        name = "fgsm"
        eps = [0.03]
        """))
    out = tmp_path / "results"
    assert main(["run", str(config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = load(out)
    assert sorted(rows["model_source"]) == ["timm:resnet10t", "torchvision:resnet18"]
    assert rows["weights_sha256"].str.len().eq(64).all()


def test_npz_data_in_nchw_and_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 5, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 12)
    np.savez(tmp_path / "nhwc.npz", x=images, y=labels, x_train=images, y_train=labels)
    np.savez(tmp_path / "nchw.npz", x=images.transpose(0, 3, 1, 2).astype(np.float32) / 255,
             y=labels, num_classes=np.array(6))
    a, b = load_dataset(f"npz:{tmp_path / 'nhwc.npz'}"), load_dataset(f"npz:{tmp_path / 'nchw.npz'}")
    assert a.input_shape == b.input_shape == (3, 5, 5)
    torch.testing.assert_close(a.test.x, b.test.x)
    assert a.train is not None and b.train is None
    assert a.num_classes == int(labels.max()) + 1 and b.num_classes == 6
    assert torch.equal(a.test.y, torch.as_tensor(labels))


@pytest.mark.parametrize("arrays,message", [
    ({"y": np.zeros(2, int)}, "no array 'x'"),
    ({"x": np.zeros((2, 5, 5), np.float32) + 2, "y": np.zeros(2, int)}, "must lie in [0, 1]"),
    ({"x": np.zeros((2, 5, 5), np.uint8), "y": np.zeros(3, int)}, "y must be 2 integer labels"),
    ({"x": np.zeros((2, 5, 5), np.uint8), "y": np.array([0, 7]), "num_classes": np.array(3)},
     "outside the 3 classes"),
])
def test_bad_npz_files(arrays: dict[str, np.ndarray], message: str, tmp_path: Path) -> None:
    from bench.core.errors import BadInput

    path = tmp_path / f"bad{abs(hash(message))}.npz"
    np.savez(path, **arrays)
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(f"npz:{path}")


def test_user_model_defended_and_as_a_transfer_source(user_dir: Path, tmp_path: Path) -> None:
    wide = build_module("wide", "mynets:small_cnn", {"width": 12}, user_dir)
    save_file(_train_quickly(wide, seed=1).state_dict(), str(user_dir / "wide.safetensors"))
    text = CONFIG.replace('[[targets]]\nmodel = "my-cnn"\n', '''[[models]]
name = "wide-cnn"
factory = "mynets:small_cnn"
kwargs = {{ width = 12 }}
weights = "wide.safetensors"
input_shape = [1, 28, 28]
num_classes = 10
mean = [0.1307]
std = [0.3081]

[[defenses]]
name = "fgsm_rs"
params = {{ epochs = 1, init = "base" }}

[[defenses]]
name = "hgd"
params = {{ epochs = 1 }}

[[targets]]
model = "my-cnn"
defenses = ["none", "fgsm_rs", "hgd"]
''').replace('eps = [0.1, 0.2]', 'eps = [0.2]') + '''
[[attacks]]
name = "fgsm"
eps = [0.2]
source = "wide-cnn"
'''
    out = tmp_path / "results"
    proc = advbench("run", str(_config(user_dir, text)), "--out", str(out), "--no-progress",
                    cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    rows = load(out)
    assert set(rows["defense"]) == {"none", "fgsm_rs", "hgd"}
    transfer = rows[rows["source_model"] == "wide-cnn"]
    assert len(transfer) == 3 and (transfer["threat"] == "transfer").all()
    plain = rows[(rows["source_model"].isna()) & (rows["defense"] == "none")]
    fgsm_rs = rows[(rows["source_model"].isna()) & (rows["defense"] == "fgsm_rs")]
    assert float(fgsm_rs["robust_acc"].iloc[0]) > float(plain["robust_acc"].iloc[0])
    # every row names the weights it evaluated, and the undefended weights beneath them
    mine = state_digest(_network(user_dir))
    assert set(plain["weights_sha256"]) == set(rows["base_weights_sha256"]) == {mine}
    defended = rows[rows["defense"] != "none"].groupby("defense")["weights_sha256"].unique()
    assert all(len(w) == 1 and w[0] != mine for w in defended)  # its own fitted weights
    assert defended["fgsm_rs"][0] != defended["hgd"][0]


def test_resume_skips_an_unchanged_checkpoint_and_reruns_a_changed_one(
        user_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    net = _network(user_dir)
    save_file(net.state_dict(), str(weights))
    config = _config(user_dir, CONFIG, str(weights))
    out = tmp_path / "results"
    run = ["run", str(config), "--out", str(out), "--no-progress",
           "--cache-dir", str(tmp_path / "cache")]
    assert main(run) == 0 and len(load(out)) == 2
    again = advbench(*run, cwd=tmp_path, cache=tmp_path / "cache")
    assert "0 cell(s) run, 2 already stored" in again.stdout
    with torch.no_grad():
        net[0].weight.mul_(0.5)
    save_file(net.state_dict(), str(weights))
    changed = advbench(*run, cwd=tmp_path, cache=tmp_path / "cache")
    assert "2 cell(s) run, 0 already stored" in changed.stdout
    assert load(out)["weights_sha256"].nunique() == 2


BAD_MODELS = {
    "module missing": ('factory = "mynets:small_cnn"', 'factory = "nonets:small_cnn"',
                       "model 'my-cnn': cannot import 'nonets'"),
    "attribute missing": ('factory = "mynets:small_cnn"', 'factory = "mynets:big_cnn"',
                          "module 'mynets' has no attribute 'big_cnn'"),
    "factory raises": ('factory = "mynets:small_cnn"\nkwargs = {{ width = 8 }}',
                       'factory = "mynets:raises"', "raised RuntimeError: no GPU here"),
    "not a module": ('factory = "mynets:small_cnn"\nkwargs = {{ width = 8 }}',
                     'factory = "mynets:not_a_module"', "returned int, not a torch.nn.Module"),
    "weights missing": ('weights = "{weights}"', 'weights = "nowhere.safetensors"',
                        "nowhere.safetensors does not exist"),
    "keys mis-shaped": ("kwargs = {{ width = 8 }}", "kwargs = {{ width = 4 }}",
                        "do not fit the network; mis-shaped (file vs model): 0.weight"),
    "wrong output": ('factory = "mynets:small_cnn"\nkwargs = {{ width = 8 }}\n'
                     'weights = "{weights}"', 'factory = "mynets:four_logits"',
                     "must return [N, 10] logits, got shape (2, 4)"),
    "nan outputs": ('factory = "mynets:small_cnn"\nkwargs = {{ width = 8 }}\n'
                    'weights = "{weights}"', 'factory = "mynets:NaNs"',
                    "model 'my-cnn' returned NaN or infinite logits"),
    "shape vs data": ("input_shape = [1, 28, 28]", "input_shape = [1, 32, 32]",
                      "declares input_shape [1, 32, 32] but dataset 'mnist5k' has images of "
                      "shape [1, 28, 28]"),
    "classes vs data": ("num_classes = 10", "num_classes = 12",
                        "declares 12 classes but dataset 'mnist5k' has 10"),
    "mean length": ("mean = [0.1307]", "mean = [0.1, 0.2, 0.3]", "'mean' must be 1 numbers"),
    "zero std": ("std = [0.3081]", "std = [0.0]", "'std' must be positive numbers"),
    "two labels": ('[[targets]]', '[[models]]\nname = "my-cnn"\nfactory = "mynets:small_cnn"\n'
                   'input_shape = [1, 28, 28]\nnum_classes = 10\n\n[[targets]]',
                   "two models are labelled 'my-cnn'"),
    "zoo name": ('name = "my-cnn"', 'name = "lenet"', "'lenet' is a zoo model's name"),
    "torchvision typo": ('factory = "mynets:small_cnn"', 'factory = "torchvision:resnet81"',
                         "torchvision has no model 'resnet81'; did you mean"),
    "pickled module": ('weights = "{weights}"', 'weights = "pickled.pt"',
                       "needs full unpickling"),
    "unknown kind": ("num_classes = 10\n", 'num_classes = 10\nkind = "critic"\n',
                     "kind 'critic' is not supported for your own models; use 'classifier', "
                     "'discriminator', 'generator'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_user_models_exit_2_with_one_line(case: str, user_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    old, new, message = BAD_MODELS[case]
    assert old in CONFIG, case
    if case == "pickled module":
        torch.save(_network(user_dir), user_dir / "pickled.pt")  # a whole module: needs code
    config = _config(user_dir, CONFIG.replace(old, new, 1))
    out = tmp_path / "results"
    code = main(["run", str(config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert message in err[0], err[0]
    assert not out.exists()


def test_timm_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench.core.errors import BadInput

    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(BadInput, match=r"pip install 'advbench\[timm\]'"):
        build_module("m", "timm:resnet18", {}, tmp_path)


def test_list_models_shows_the_config_models(user_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models", "--config", str(_config(user_dir))]) == 0
    out = capsys.readouterr().out
    assert "lenet" in out and "zoo:" in out
    line = next(x for x in out.splitlines() if x.startswith("my-cnn"))
    assert "classifier" in line and "1x28x28" in line and "yours: mynets:small_cnn" in line


def test_target_from_module_probes_the_model() -> None:
    from bench.core.errors import ModelOutputError

    target = Target.from_module(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                                input_shape=(1, 2, 2), num_classes=3)
    assert target.predict_logits(torch.rand(5, 1, 2, 2)).shape == (5, 3)
    with pytest.raises(ModelOutputError, match="fails on inputs of shape"):
        Target.from_module(nn.Sequential(nn.Flatten(), nn.Linear(9, 3)),
                           input_shape=(1, 2, 2), num_classes=3)


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The README's worked example, extracted and run in a fresh process and folder."""
    import subprocess

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Benchmark your own model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "ADVBENCH_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "my_cnn.pt").is_file()
    rows = load(tmp_path / "results")
    assert len(rows) == 4 and set(rows["model"]) == {"my-cnn"}
    assert (rows["clean_acc"] > 0.9).all()  # a trained model
    pgd = rows[rows["attack"] == "pgd"].set_index("eps")["robust_acc"]
    assert pgd[0.3] < pgd[0.1] <= rows["clean_acc"].iloc[0]
    assert "my-cnn" in proc.stdout


def test_the_readmes_first_example_runs_on_a_users_npz(tmp_path: Path, mnist5k: Any) -> None:
    """The five lines on the README's first screen, run as written in a fresh process, with
    ``my_net`` a user's network and ``test.npz`` a user's test arrays (uint8 images, labels)."""
    import subprocess

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) == 5
    idx = torch.linspace(0, len(mnist5k.test) - 1, 500).round().long()  # every class
    images = (mnist5k.test.x[idx] * 255).round().byte().numpy()
    np.savez(tmp_path / "test.npz", x=images, y=mnist5k.test.y[idx].numpy())
    setup = ("import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
             "my_net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    proc = subprocess.run([sys.executable, "-c", setup + code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    rows = load(tmp_path / "results")
    assert len(rows) == 4 and set(rows["model"]) == {"my-net"}
    assert (rows["n_samples"] == 500).all()
    assert "robust_acc" in proc.stdout


def _png_tree(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, (h, w) in sizes.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{i}.png")


def test_imagefolder_resizes_crops_and_maps_classes(tmp_path: Path) -> None:
    from bench.core.errors import BadInput

    _png_tree(tmp_path, {"cat": (10, 12), "dog": (9, 9)})
    with pytest.raises(BadInput, match=r"images of different sizes.*add '\?size=H'"):
        load_dataset(f"imagefolder:{tmp_path}")
    ds = load_dataset(f"imagefolder:{tmp_path}?size=8")
    assert ds.input_shape == (3, 8, 8) and ds.num_classes == 2
    assert ds.train is not None and len(ds.train) == len(ds.test) == 6
    assert ds.test.y.tolist() == [0, 0, 0, 1, 1, 1]  # class order from the folder names
    assert 0 <= float(ds.test.x.min()) and float(ds.test.x.max()) <= 1
    gray = load_dataset(f"imagefolder:{tmp_path}?size=8x6&mode=L")
    assert gray.input_shape == (1, 8, 6)
    (tmp_path / "class_map.json").write_text(json.dumps({"cat": 3, "dog": 5}))
    mapped = load_dataset(f"imagefolder:{tmp_path}?size=8&mode=RGB")
    assert mapped.test.y.tolist() == [3, 3, 3, 5, 5, 5] and mapped.num_classes == 6
    with pytest.raises(BadInput, match="options are size="):
        load_dataset(f"imagefolder:{tmp_path}?width=8")


GAN_CONFIG = """
[sweep]
name = "gan"
dataset = "mnist5k"
n_eval = 20
batch_size = 20

[[models]]
name = "my-gen"
kind = "generator"
factory = "mynets:generator"
weights = "gen.safetensors"
input_shape = [1, 28, 28]
latent_shape = [16]

[[models]]
name = "my-d"
kind = "discriminator"
factory = "mynets:critic"
kwargs = {{ sigmoid = {sigmoid} }}
output = "{output}"
generator = "my-gen"
weights = "d.safetensors"
input_shape = [1, 28, 28]
mean = [0.5]
std = [0.5]

[[targets]]
model = "my-d"
{defenses}
[[attacks]]
name = "fgsm"
eps = [0.05]
"""


@pytest.fixture(scope="module")
def gan_dir(user_dir: Path) -> Path:
    torch.manual_seed(3)
    for name, factory in (("gen", "mynets:generator"), ("d", "mynets:critic")):
        net = build_module(name, factory, {}, user_dir)
        save_file(net.state_dict(), str(user_dir / f"{name}.safetensors"))
    return user_dir


def _gan_config(gan_dir: Path, output: str = "logit", sigmoid: str = "false",
                defenses: str = "") -> Path:
    path = gan_dir / f"gan-{output}-{sigmoid}-{abs(hash(defenses))}.toml"
    path.write_text(GAN_CONFIG.format(output=output, sigmoid=sigmoid, defenses=defenses))
    return path


def test_a_user_discriminator_as_logit_or_probability_gives_the_same_rows(
        gan_dir: Path, tmp_path: Path) -> None:
    rows = {}
    for output, sigmoid in (("logit", "false"), ("probability", "true")):
        out = tmp_path / output
        assert main(["run", str(_gan_config(gan_dir, output, sigmoid)), "--out", str(out),
                     "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
        summary = load(out)
        assert set(summary["direction"]) == {"real->fake", "fake->real"}
        assert (summary["target_kind"] == "discriminator").all()
        rows[output] = _per_sample(out)
    pd.testing.assert_frame_equal(rows["logit"], rows["probability"])


def test_fake_images_come_from_the_user_generator(gan_dir: Path, tmp_path: Path) -> None:
    """The fake->real cells attack the generator's samples: the discriminator's clean verdicts
    on them match the user's own forward of generator + discriminator."""
    out = tmp_path / "results"
    assert main(["run", str(_gan_config(gan_dir)), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    summary = load(out)
    fake = summary[summary["direction"] == "fake->real"]
    samples = ResultStore(out).samples(fake)
    from generative.discriminator import eval_noise_seed

    gen = build_module("g", "mynets:generator", {}, gan_dir)
    load_weights("g", gen, gan_dir / "gen.safetensors")
    d = build_module("d", "mynets:critic", {}, gan_dir)
    load_weights("d", d, gan_dir / "d.safetensors")
    z = torch.randn(20, 16, generator=torch.Generator().manual_seed(eval_noise_seed(0)))
    with torch.no_grad():
        images = ((gen(z) + 1) / 2).clamp(0, 1)
        says_fake = d((images - 0.5) / 0.5)[:, 0] < 0
    assert samples.sort_values("sample_idx")["clean_correct"].tolist() == says_fake.tolist()


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace('generator = "my-gen"', 'generator = "nobody"'),
     "generator 'nobody' is not a [[models]] entry of kind \"generator\""),
    (lambda t: t.replace('output = "{output}"', 'output = "score"'),
     "'output' must be 'logit' or 'probability' or 'critic'"),
    (lambda t: t.replace("kwargs = {{ sigmoid = {sigmoid} }}", "kwargs = {{ sigmoid = false }}")
     .replace('output = "{output}"', 'output = "probability"'),
     'output = "probability" needs the network to end in an nn.Sigmoid'),
    (lambda t: t.replace('weights = "gen.safetensors"', "kwargs = {{ side = 14 }}"),
     "makes images of shape [1, 14, 14], its discriminator takes [1, 28, 28]"),
    (lambda t: t.replace("{defenses}", 'defenses = ["robgan"]'),
     "robgan trains a zoo GAN's discriminator anew; target 'my-d' is a discriminator advbench "
     "did not train"),
])
def test_bad_user_gans(edit: Any, message: str, gan_dir: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    path = gan_dir / f"bad-{abs(hash(message))}.toml"
    path.write_text(edit(GAN_CONFIG).format(output="logit", sigmoid="false", defenses=""))
    code = main(["run", str(path), "--out", str(tmp_path / "r"), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_critic_threshold_maximises_balanced_accuracy() -> None:
    from bench.core.usermodels import calibrate_threshold

    def balanced(real: np.ndarray, fake: np.ndarray, t: float) -> float:
        return ((real > t).mean() + (fake <= t).mean()) / 2

    rng = np.random.default_rng(0)
    for shift in (0.0, 0.5, 3.0):  # overlapping to fully separated scores
        real, fake = rng.normal(shift, 1, 200), rng.normal(0, 1, 300)
        t = calibrate_threshold(torch.tensor(real), torch.tensor(fake))
        candidates = np.concatenate([real, fake, [-1e9, 1e9]])
        best = max(balanced(real, fake, c) for c in candidates)  # brute force over all cuts
        assert balanced(real, fake, t) == pytest.approx(best)
    assert calibrate_threshold(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0])) == 3.5


def test_a_user_critic_is_attacked_at_its_calibrated_threshold(gan_dir: Path,
                                                                tmp_path: Path) -> None:
    from bench.core.usermodels import UserModel

    out = tmp_path / "results"
    assert main(["run", str(_gan_config(gan_dir, "critic")), "--out", str(out),
                 "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = load(out)
    thresholds = rows["critic_threshold"].unique()
    assert len(thresholds) == 1 and np.isfinite(thresholds[0])
    t = float(thresholds[0])
    user = UserModel("c", "mynets:critic", (1, 28, 28), 2, weights=gan_dir / "d.safetensors",
                     mean=(0.5,), std=(0.5,), kind="discriminator", base_dir=gan_dir,
                     output="critic")
    target = user.target(torch.device("cpu"), t)
    raw = build_module("c", "mynets:critic", {}, gan_dir)
    load_weights("c", raw, gan_dir / "d.safetensors")
    x = load_dataset("mnist5k").test.x[:8]
    with torch.no_grad():
        expected = raw((x - 0.5) / 0.5)[:, 0] - t
    logits = target.predict_logits(x)
    assert torch.equal(logits[:, 0], torch.zeros(8))
    torch.testing.assert_close(logits[:, 1], expected)


IDX_HEAD = Path(__file__).resolve().parents[1] / "data" / "mnist-t10k-head"
"""The first 20 digits of the official MNIST test set, IDX files only: no train split."""


def test_a_user_model_runs_on_test_only_data_from_python(user_dir: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """RobustBench's shape: a model and test data, nothing trained or fitted, so no train
    split is asked for; an npz without num_classes takes it from y and says so."""
    from bench import benchmark

    test = load_dataset("mnist5k").test
    x = (test.x[::20, 0].numpy() * 255).round().astype(np.uint8)  # 5 digits of each class
    np.savez(tmp_path / "test.npz", x=x, y=test.y[::20].numpy())
    with caplog.at_level("WARNING"):
        rows = benchmark(_network(user_dir), dataset=f"npz:{tmp_path / 'test.npz'}",
                         attacks=["fgsm"], eps=[0.1], name="my-cnn", mean=[0.1307],
                         std=[0.3081], n_eval=50, out=tmp_path / "results",
                         cache_dir=tmp_path / "cache", progress=False)
    assert "declares no num_classes; taking 10 from its largest label" in caplog.text
    assert len(rows) == 1 and rows.loc[0, "n_samples"] == 50
    assert rows.loc[0, "clean_acc"] >= 0.5  # far above chance: images and labels line up
    assert rows.loc[0, "robust_acc"] < rows.loc[0, "clean_acc"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_a_user_model_sweep_runs_on_the_official_test_files_alone(user_dir: Path,
                                                                 tmp_path: Path) -> None:
    text = CONFIG.replace('dataset = "mnist5k"', f'dataset = "idx:{IDX_HEAD}"').replace(
        "n_eval = 60", "n_eval = 20")
    code = main(["run", str(_config(user_dir, text)), "--out", str(tmp_path / "results"),
                 "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    rows = load(tmp_path / "results")
    assert len(rows) == 2 and set(rows["n_samples"]) == {20}
    assert set(rows["dataset"]) == {f"idx:{IDX_HEAD}"}


@pytest.mark.parametrize("edit,named", [
    (('model = "my-cnn"', 'model = "lenet"'), "target 'lenet' (a zoo model advbench trains)"),
    (('model = "my-cnn"', 'model = "my-cnn"\ndefenses = ["fgsm_rs"]'),
     "defense 'fgsm_rs' (fitted on training data)"),
    (('name = "fgsm"\neps = [0.1, 0.2]', 'name = "uap"\neps = [0.1]'),
     "attack 'uap' (fits on training data)"),
])
def test_what_needs_a_train_split_is_named_when_there_is_none(
        edit: tuple[str, str], named: str, user_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = CONFIG.replace('dataset = "mnist5k"', f'dataset = "idx:{IDX_HEAD}"').replace(
        "n_eval = 60", "n_eval = 20")
    assert edit[0] in text
    out = tmp_path / "results"
    code = main(["run", str(_config(user_dir, text.replace(*edit))), "--out", str(out),
                 "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"has no train split, which {named} needs; set train_dataset" in err[0], err[0]
    assert not out.exists()


def state_digest(module: nn.Module, prefix: str = "model.") -> str:
    """SHA-256 over a module's tensors (name, dtype, bytes; in name order) as a target holds
    them (under ``model.``), computed here."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(module.state_dict()):
        tensor = module.state_dict()[name].detach().cpu().contiguous()
        digest.update((prefix + name).encode() + str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def test_a_label_only_model_takes_label_only_attacks_and_transfers(
        user_dir: Path, tmp_path: Path, cache_dir: Path, lenet: Any) -> None:
    text = CONFIG.replace("std = [0.3081]\n", "std = [0.3081]\nlabel_only = true\n")
    with pytest.raises(ConfigError, match="'my-cnn' is label_only, but attack 'fgsm'.*"
                                          "hopskipjump"):
        load_config(_config(user_dir, text))
    text = text.replace('name = "fgsm"\neps = [0.1, 0.2]', '''name = "hopskipjump"
norm = "l2"
eps = [2.0]
params = {{ steps = 20, max_queries = 300, initial_evals = 30 }}

[[attacks]]
name = "fgsm"
eps = [0.2]
source = "lenet"''')
    out = tmp_path / "results"
    assert main(["run", str(_config(user_dir, text)), "--out", str(out), "--no-progress",
                 "--cache-dir", str(cache_dir)]) == 0
    as_source = text.replace('source = "lenet"', 'source = "my-cnn"').replace(
        'model = "my-cnn"\n\n[[attacks]]', 'model = "lenet"\n\n[[attacks]]')
    with pytest.raises(ConfigError, match="'my-cnn' is label_only, but attack 'fgsm'"):
        load_config(_config(user_dir, as_source))  # its gradients are not to be had either
    rows = load(out)
    assert set(rows["attack"]) == {"hopskipjump", "fgsm"}
    assert (rows.loc[rows["attack"] == "fgsm", "threat"] == "transfer").all()
    hsj = rows[rows["attack"] == "hopskipjump"]
    assert (hsj["robust_acc"] < hsj["clean_acc"]).all()
    assert hsj["label_only"].all() and not rows.loc[rows["attack"] == "fgsm", "label_only"].any()
