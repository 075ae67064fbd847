"""The checkpoints advbench ships (``bench/core/bundled``): each is what the current code would
train, and an empty cache is seeded from them instead of training."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.config import load_preset
from bench.core.checkpoints import BUNDLED, CheckpointCache, config_hash, file_sha256
from bench.core.datasets import load_dataset
from bench.core.training import classifier_config, trained_classifier

RETRAIN = ("retrain it with the current recipe (advbench run --preset quick --cache-dir DIR) "
           "and replace bench/core/bundled/models/ with DIR/models/<key>/")


def test_every_bundled_entry_is_whole_and_keyed_by_its_config() -> None:
    entries = [p for p in BUNDLED.glob("*/*") if p.is_dir()]
    assert entries, "no bundled checkpoints"
    for entry in entries:
        card = json.loads((entry / "card.json").read_text())
        assert config_hash(card["config"]) == entry.name, entry
        assert file_sha256(entry / "model.safetensors") == card["weights_sha256"], entry


def test_the_quick_presets_models_are_bundled_for_the_current_recipe() -> None:
    """Fails when the recipe, data or training code the quick preset's models depend on no
    longer matches the bundled weights (their key hashes all of it)."""
    config = load_preset("quick")
    dataset = load_dataset(config.train_dataset or config.datasets[0])
    for target in config.targets:
        for seed in config.seeds:
            key = config_hash(classifier_config(target.model, dataset, seed=seed))
            assert (BUNDLED / "models" / key / "card.json").is_file(), (
                f"{target.model} at seed {seed} is not bundled for the current recipe (key "
                f"{key}); {RETRAIN}")


def test_an_empty_cache_is_seeded_from_the_bundle_without_training(tmp_path: Path,
                                                                   monkeypatch) -> None:
    import bench.core.training as training

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the checkpoint is bundled")

    monkeypatch.setattr(training, "fit", no_fit)
    target, card = trained_classifier("lenet", load_dataset("mnist5k"), seed=0,
                                      device=torch.device("cpu"),
                                      cache=CheckpointCache(tmp_path), progress=False)
    entry = tmp_path / "models" / card["cache_key"]
    assert file_sha256(entry / "model.safetensors") == card["weights_sha256"]
    assert card["trained_on"]["device"] == "cpu"
    test = load_dataset("mnist5k").test
    correct = int((target.predict_logits(test.x).argmax(1) == test.y).sum())
    assert correct == round(card["metrics"]["test_acc"] * len(test))  # the same weights


def test_without_a_bundle_the_cache_trains(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path, bundled=None)
    assert cache.load("models", next(BUNDLED.glob("models/*")).name) is None
    assert not (tmp_path / "models").exists()
