from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from bench.core import training
from bench.core.checkpoints import CheckpointCache, load_or_fit, resolve_cache_dir
from bench.core.datasets import Dataset
from bench.core.errors import BadInput
from bench.core.target import Target
from bench.core.zoo import TrainRecipe


def test_lenet_reaches_97_percent_on_held_out_digits(trained_lenet: tuple[Target, dict[str, Any]],
                                                     mnist5k: Dataset) -> None:
    target, card = trained_lenet
    with torch.no_grad(), target.evaluating():  # a plain forward, not advbench's own helper
        correct = int((target(mnist5k.test.x).argmax(1) == mnist5k.test.y).sum())
    assert correct / len(mnist5k.test) >= 0.97
    assert card["metrics"]["test_acc"] == pytest.approx(correct / len(mnist5k.test), abs=1e-9)
    assert card["architecture"] == "lenet" and len(card["history"]) == 12


def test_checkpoint_is_safetensors_with_a_card(trained_lenet: tuple[Target, dict[str, Any]],
                                               cache_dir: Path) -> None:
    entry = CheckpointCache(cache_dir).entry("models", trained_lenet[1]["cache_key"])
    assert (entry / "model.safetensors").is_file()
    card = json.loads((entry / "card.json").read_text())
    assert card["config"]["train_fingerprint"] and card["config"]["model"] == "lenet"


def test_cache_hit_loads_without_training(trained_lenet: tuple[Target, dict[str, Any]],
                                          mnist5k: Dataset, cache_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(training, "fit", no_training)
    again, card = training.trained_classifier("lenet", mnist5k, seed=0, device=torch.device("cpu"),
                                              cache=CheckpointCache(cache_dir), progress=False)
    x = mnist5k.test.x[:50]
    assert torch.equal(again.predict_logits(x), trained_lenet[0].predict_logits(x))
    assert card == trained_lenet[1]


def test_interrupted_save_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.core.checkpoints as ckpt

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", crash)
    cache = CheckpointCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.save("models", "abc", {"w": torch.zeros(2)}, {"x": 1})
    assert cache.load("models", "abc") is None
    assert list((tmp_path / "models").iterdir()) == []


def _fit_linear(calls: list[str]) -> Any:
    def fit(key: str) -> tuple[torch.nn.Module, dict[str, Any]]:
        calls.append(key)
        return torch.nn.Linear(3, 2), {"kind": "linear"}
    return fit


def _linear(cache: CheckpointCache, calls: list[str]) -> torch.nn.Module:
    def restore(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        module = torch.nn.Linear(3, 2)
        module.load_state_dict(weights)
        return module

    module, _ = load_or_fit(cache, "models", {"m": "linear"}, seed=0,
                            device=torch.device("cpu"), restore=restore,
                            fit=_fit_linear(calls), state=lambda m: m.state_dict())
    return module


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage card", "other weights"])
def test_a_damaged_cache_entry_is_moved_aside_and_refitted(
        damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache, calls = CheckpointCache(tmp_path), []
    first = _linear(cache, calls)
    entry = cache.entry("models", calls[0])
    weights = entry / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:40])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "garbage card":
        (entry / "card.json").write_text("{not json")
    else:  # valid safetensors, but not the weights the card was written for
        save_file({k: v + 1 for k, v in first.state_dict().items()}, str(weights))
    damaged = {p.name: p.read_bytes() for p in entry.iterdir()}
    with caplog.at_level("WARNING"):
        _linear(cache, calls)
    assert len(calls) == 2  # fitted again
    assert f"checkpoint cache entry {entry} is damaged" in caplog.text
    (aside,) = (tmp_path / "quarantine" / "models").iterdir()
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == damaged  # nothing deleted
    assert cache.load("models", calls[0]) is not None  # a fresh, whole entry
    calls_before = len(calls)
    _linear(cache, calls)
    assert len(calls) == calls_before  # and it is trusted next time


def test_cache_entries_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _linear(CheckpointCache(tmp_path), [])
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "models").iterdir()
    assert entry.stat().st_mode & 0o777 == 0o755


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir(None) == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("ADVBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(None) == tmp_path / "xdg" / "advbench"


def test_zero_epochs_and_wrong_shapes_are_refused(mnist5k: Dataset, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="epochs must be >= 1"):
        training.trained_classifier("lenet", mnist5k, seed=0, device=torch.device("cpu"),
                                    cache=CheckpointCache(tmp_path), progress=False,
                                    recipe=TrainRecipe(epochs=0, batch_size=8, lr=1e-3))
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    with pytest.raises(BadInput, match="expects inputs \\(3, 32, 32\\).*pick a model.*lenet"):
        training.trained_classifier("resnet18_cifar", mnist5k, seed=0, device=torch.device("cpu"),
                                    cache=CheckpointCache(tmp_path), progress=False)


def test_resnet18_cifar_builds_for_32x32() -> None:
    from bench.core.zoo import classifier_spec

    net = classifier_spec("resnet18_cifar").build(10).eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def _small_fit(threads: int, cache: CheckpointCache | None, mnist5k: Dataset) -> str:
    """A one-epoch LeNet fit on 512 digits with ``threads`` intra-op threads set outside it,
    through the cache (``cache``) or directly; the fingerprint of its weights."""
    from bench.core.checkpoints import state_fingerprint
    from bench.core.datasets import Split
    from bench.core.zoo import classifier_spec

    spec = classifier_spec("lenet")
    split = mnist5k.split("train")
    small = Split(split.x[:512], split.y[:512])

    def train(key: str) -> tuple[Target, dict[str, Any]]:
        target = training.make_target(spec, mnist5k, spec.build(10))
        training.fit(target, small, TrainRecipe(epochs=1, batch_size=64, lr=1e-3), seed=0,
                     device=torch.device("cpu"), progress=False)
        return target, {}

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if cache is None:
            torch.manual_seed(0)
            return state_fingerprint(train("")[0].model)
        target, card = load_or_fit(cache, "models", {"small": 1}, seed=0,
                                   device=torch.device("cpu"), restore=lambda w: None,
                                   fit=train, state=lambda t: t.model.state_dict())
        assert card["trained_on"]["threads"] == 2 and card["trained_on"]["torch"]
        return state_fingerprint(target.model)
    finally:
        torch.set_num_threads(old)


def test_fits_give_the_same_weights_whatever_the_thread_count(mnist5k: Dataset,
                                                              tmp_path: Path) -> None:
    # the same fit run directly with 1 and 2 threads: the reductions round differently
    assert _small_fit(1, None, mnist5k) != _small_fit(2, None, mnist5k)
    # through load_or_fit (every advbench fit): identical
    assert _small_fit(1, CheckpointCache(tmp_path / "a"), mnist5k) == \
        _small_fit(2, CheckpointCache(tmp_path / "b"), mnist5k)


def test_reproducible_restores_the_settings() -> None:
    from bench.core.checkpoints import reproducible

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with reproducible(torch.device("cpu")):
            assert torch.get_num_threads() == 2 and torch.backends.cudnn.deterministic
        assert torch.get_num_threads() == 1 and not torch.backends.cudnn.deterministic
    finally:
        torch.set_num_threads(old)
