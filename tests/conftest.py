"""Shared fixtures and helpers: a LeNet trained with the real recipe on mnist5k (once per session,
in a temporary cache), held-out digits, tiny targets for fast contract tests, a result-row factory,
sweep cells, and the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from attacks import Attack
from bench.config import Cell
from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import Dataset, load_dataset
from bench.core.registry import Registry
from bench.core.target import Target
from bench.core.training import trained_classifier

TEST_CHECKPOINTS = Path(__file__).resolve().parent / "data" / "checkpoints"
"""Cache entries advbench trained with its own recipes, kept as test data so that CI does not
train them anew (the DCGAN and the full 60-epoch WGAN-GP of the gan preset);
tests/generative/test_gan.py checks that they are keyed by the current recipes."""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's checkpoint cache, holding the test checkpoints (and seeded with the
    bundled ones on first use, as every cache is)."""
    root = tmp_path_factory.mktemp("advbench-cache")
    shutil.copytree(TEST_CHECKPOINTS, root, dirs_exist_ok=True)
    if os.environ.get("ADVBENCH_SEED_CACHE"):  # checkpoints a benchmark run trained before
        shutil.copytree(os.environ["ADVBENCH_SEED_CACHE"], root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def trained_lenet(mnist5k: Dataset, cache_dir: Path) -> tuple[Target, dict[str, Any]]:
    """LeNet trained by advbench's own recipe (what `advbench run --preset quick` uses)."""
    return trained_classifier("lenet", mnist5k, seed=0, device=torch.device("cpu"),
                              cache=CheckpointCache(cache_dir), progress=False)


@pytest.fixture(scope="session")
def lenet(trained_lenet: tuple[Target, dict[str, Any]]) -> Target:
    return trained_lenet[0]


@pytest.fixture(scope="session")
def digits(mnist5k: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """200 held-out digits, 20 per class."""
    x, y = mnist5k.test.x, mnist5k.test.y
    idx = torch.cat([torch.nonzero(y == c)[:20, 0] for c in range(10)])
    return x[idx].clone(), y[idx].clone()


class TinyCNN(nn.Module):
    """A small untrained CNN with batch norm and dropout (so train/eval mode matters)."""

    def __init__(self, in_channels: int = 1, outputs: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Dropout(0.5), nn.LazyLinear(outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_tiny_target(kind: str = "classifier", seed: int = 0) -> Target:
    torch.manual_seed(seed)
    if kind == "discriminator":
        net = TinyCNN(1, 1)
        net(torch.zeros(2, 1, 28, 28))
        return Target(net, num_classes=2, input_shape=(1, 28, 28), mean=[0.5], std=[0.5],
                      kind="discriminator", name="tiny-d").eval()
    net = TinyCNN(1, 10)
    net(torch.zeros(2, 1, 28, 28))
    return Target(net, num_classes=10, input_shape=(1, 28, 28), mean=[0.1307], std=[0.3081],
                  name="tiny").eval()


@pytest.fixture(scope="session")
def trained_dcgan(mnist5k: Dataset, cache_dir: Path) -> Any:
    """DCGAN trained by advbench's own recipe on mnist5k (what the gan preset uses; from
    :data:`TEST_CHECKPOINTS`, else trained: ~2 min)."""
    from generative import trained_gan

    return trained_gan("dcgan", mnist5k, seed=0, device=torch.device("cpu"),
                       cache=CheckpointCache(cache_dir), progress=False)


@pytest.fixture(scope="session")
def short_critic(mnist5k: Dataset) -> Callable[[str], Any]:
    """``short_critic(name)``: the critic ``name`` (wgan, wgan_gp) trained by its own recipe for
    4 epochs on the training digits, the last 500 held out for its threshold (once per
    session)."""
    from generative import gan_spec, train_gan

    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            recipe = dataclasses.replace(gan_spec(name).recipe, epochs=4)
            made[name] = train_gan(gan_spec(name), mnist5k.split("train"), seed=0,
                                   device=torch.device("cpu"), recipe=recipe, progress=False)
        return made[name]

    return get


@pytest.fixture(scope="session")
def trained_wgan_gp(mnist5k: Dataset, cache_dir: Path) -> Any:
    """WGAN-GP trained by advbench's own recipe on mnist5k (what the gan preset uses; its
    gradient norm on interpolates settles near 1 only after the full 60 epochs: from
    :data:`TEST_CHECKPOINTS`, else trained: ~7 min)."""
    from generative import trained_gan

    return trained_gan("wgan_gp", mnist5k, seed=0, device=torch.device("cpu"),
                       cache=CheckpointCache(cache_dir), progress=False)


@pytest.fixture(scope="session")
def original_autoattack() -> Any:
    """The original AutoAttack (Croce & Hein, ICML 2020) as its authors package it:
    ``pyautoattack`` 0.2.0, a pinned test extra. Missing, the tests that compare with it fail
    (an ImportError), they never skip. advbench itself never imports it."""
    import pyautoattack

    return pyautoattack


Register = Callable[[Registry[Any], str, Any], None]


@pytest.fixture
def register() -> Iterator[Register]:
    """``register(REGISTRY, name, entry)``: a throwaway registry entry for one test."""
    with contextlib.ExitStack() as stack:
        yield lambda registry, name, entry: stack.enter_context(registry.scoped(name, entry))


def small_params(spec: Any, **extra: Any) -> dict[str, Any]:
    """Tiny budgets so the contract runs fast; the attack's own defaults otherwise."""
    fields = {f.name for f in dataclasses.fields(spec.params_cls)}
    params = {k: v for k, v in {"steps": 5, "max_passes": 1, "deepfool_steps": 3, "max_fit": 64,
                                "generations": 3, "population": 20, "queries": 20,
                                "target_classes": 3, "search_steps": 2,
                                "initial_evals": 20, "max_queries": 200}.items() if k in fields}
    params.update({k: v for k, v in extra.items() if k in fields})
    return params


def summary_values(cell_id: str = "c1", run_id: str = "r1", **overrides: Any) -> dict[str, Any]:
    """Every field of a valid :class:`leaderboards.schema.SummaryRow`, as a mapping."""
    from leaderboards.schema import SummaryRow

    base = {
        "cell_id": cell_id, "run_id": run_id,
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "dataset": "mnist5k",
        "train_dataset": "mnist5k", "split": "test", "n_samples": 4, "target_kind": "classifier", "model": "lenet",
        "model_description": None, "model_paper": None, "model_entry": None,
        "model_source": "zoo", "weights_sha256": None,
        "base_weights_sha256": None, "critic_threshold": None,
        "defense": "none", "defense_params": None, "direction": None, "threat": "adaptive",
        "attack": "pgd", "attack_params": "{}", "black_box": False, "label_only": False,
        "cascade_member": None,
        "member_given": None, "member_robust_acc": None, "flags": None, "decision": None,
        "targeted": False, "norm": "linf", "eps": 0.1, "eps_display": "0.1", "seed": 0,
        "precision": "fp32", "batch_size": 4, "fast_path": "eager", "clean_acc": 1.0,
        "robust_acc": 0.5, "success_rate": 0.5, "median_l2": 1.0, "median_linf": 0.1,
        "mean_l0": 700.0, "rho_adv": 0.1, "margin_grad_l1": None, "margin_grad_l2": None,
        "source_model": None, "fooling_rate": 0.5,
        "attack_run": cell_id, "n_forward": 8, "n_backward": 4, "runner_calls": 20,
        "wall_s": 0.1, "img_per_s": 40.0,
        "floor_img_per_s": None, "floor_fraction": None,
        "peak_mem_bytes": None, "device": "cpu", "node": None, "torch_version": "x",
        "advbench_version": "y",
        "git_sha": None, "draws": None, "clean_acc_one_draw": None, "robust_acc_one_draw": None,
        "certified_acc": None, "certified_fooled": None, "abstain_rate": None,
        "certify_method": None, "certify_n_forward": None, "certify_s": None,
    }
    assert set(base) | {"schema_version"} == {f.name for f in dataclasses.fields(SummaryRow)}
    base.update(overrides)
    return base


def sample_values(cell_id: str = "c1", adv: tuple[bool, ...] = (True, False, True, False)
                  ) -> dict[str, Any]:
    """The per-sample columns of a cell whose samples were all classified correctly."""
    n = len(adv)
    return {"cell_id": [cell_id] * n, "sample_idx": np.arange(n), "label": np.zeros(n, int),
            "clean_correct": np.ones(n, bool), "adv_correct": np.array(adv),
            "success": ~np.array(adv), "l2": np.ones(n, np.float32),
            "linf": np.ones(n, np.float32), "l0": np.ones(n, np.float32),
            "distance": [None if a else 1.0 for a in adv],
            "fooled_by": [None] * n, "queries": [None] * n,
            "certified_radius": [None] * n, "certified_correct": [None] * n,
            "certified": [None] * n}


def make_cell(attack: str, eps: float = 0.1, norm: str = "linf", params: Any = None,
              **fields: Any) -> Cell:
    """A sweep cell attacking LeNet on 40 mnist5k digits (fields override the cell's)."""
    cell = Cell("t", "mnist5k", "mnist5k", "test", 40, "lenet", "none", "adaptive",
                Attack.create(attack, norm=norm, eps=eps, params=params), 0, "fp32")
    return dataclasses.replace(cell, **fields)


def advbench(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` in a fresh process, as a user runs it."""
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


class BrokenLinear(nn.Module):
    """A linear MNIST classifier whose output can be broken the ways users' models break:
    ``nan``, ``shape`` (4 logits for 10 classes), ``detached`` (no input gradient),
    ``probabilities`` (a softmax at the end); ``logits`` is the working model."""

    def __init__(self, mode: str = "logits") -> None:
        super().__init__()
        self.mode = mode
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        if self.mode == "nan":
            return out * float("nan")
        if self.mode == "shape":
            return out[:, :4]
        if self.mode == "detached":
            return out.detach()
        if self.mode == "probabilities":
            return out.softmax(1)
        return out
