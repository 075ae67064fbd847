from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.datasets import Dataset, load_dataset, read_idx
from bench.core.errors import BadInput, UnknownName

IDX_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "mnist-t10k-head"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def test_mnist5k_split_is_stratified_disjoint_and_deterministic(mnist5k: Dataset) -> None:
    assert mnist5k.train is not None
    assert len(mnist5k.train) == 4000 and len(mnist5k.test) == 1000
    assert torch.equal(mnist5k.test.y.bincount(), torch.full((10,), 100))
    assert mnist5k.input_shape == (1, 28, 28)
    assert float(mnist5k.test.x.min()) == 0.0 and float(mnist5k.test.x.max()) == 1.0
    train_rows = {bytes(r) for r in (mnist5k.train.x * 255).round().byte().flatten(1).numpy()}
    test_rows = {bytes(r) for r in (mnist5k.test.x * 255).round().byte().flatten(1).numpy()}
    assert len(train_rows & test_rows) <= 1  # (no digit appears in both; equal images at most by chance)
    from bench.core import datasets

    again = datasets.mnist5k(None)
    assert torch.equal(again.test.x, mnist5k.test.x) and torch.equal(again.train.y, mnist5k.train.y)


def test_idx_pairs_load_with_train_and_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 5))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6) % 3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:4])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([2, 1, 0, 2]))
    assert load_dataset(f"idx:{tmp_path}").num_classes == 10  # MNIST's unless declared
    declared = tmp_path / "declared"
    shutil.copytree(tmp_path, declared)
    (declared / "classes.txt").write_text("zero\none\ntwo\n")
    ds = load_dataset(f"idx:{declared}")
    assert ds.train is not None and len(ds.train) == 6 and len(ds.test) == 4
    assert ds.test.x.shape == (4, 1, 5, 5) and ds.num_classes == 3
    torch.testing.assert_close(ds.test.x[1, 0] * 255, torch.tensor(images[1], dtype=torch.float32))
    assert ds.test.y.tolist() == [2, 1, 0, 2]


@pytest.mark.parametrize("classes,labels", [(None, [0, 12, 3]), ("a\nb\nc\n", [0, 1, 5])])
def test_idx_labels_outside_the_declared_classes_are_refused(
        tmp_path: Path, classes: str | None, labels: list[int]) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 5, 5), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array(labels))
    if classes:
        (tmp_path / "classes.txt").write_text(classes)
    declared = 3 if classes else 10
    with pytest.raises(BadInput, match=f"test labels span 0..{max(labels)}, outside the "
                                       f"{declared} declared classes"):
        load_dataset(f"idx:{tmp_path}")


def test_official_mnist_idx_files() -> None:
    """The first 20 digits of the official MNIST test set, cut from its IDX files as published
    (tests/data): its labels start 7, 2, 1, 0, 4, and the first image is a 7 in 28x28 pixels."""
    ds = load_dataset(f"idx:{IDX_FIXTURE}")
    assert len(ds.test) == 20 and ds.train is None and ds.test.x.shape == (20, 1, 28, 28)
    assert ds.test.y.tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]
    assert float(ds.test.x.min()) == 0.0 and float(ds.test.x.max()) == 1.0
    assert ds.mean == (0.1307,) and ds.num_classes == 10
    with pytest.raises(BadInput, match="has no train split; set train_dataset"):
        ds.split("train")


def test_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not a directory"):
        load_dataset(f"idx:{tmp_path / 'missing'}")
    with pytest.raises(BadInput, match="no non-train"):
        load_dataset(f"idx:{tmp_path}")
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(BadInput, match="bad magic"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")


def test_torchvision_roots_are_never_downloaded(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="never downloads"):
        load_dataset(f"mnist:{tmp_path}")
    assert not any(tmp_path.iterdir())


def test_unknown_dataset_names() -> None:
    with pytest.raises(UnknownName, match="did you mean 'mnist5k'"):
        load_dataset("mnist5")
    with pytest.raises(BadInput, match="takes no argument"):
        load_dataset("mnist5k:foo")
