from __future__ import annotations

import pytest

from bench.core.errors import BadInput, UnknownName
from bench.core.registry import Registry


def make() -> Registry[int]:
    reg: Registry[int] = Registry("widget")
    reg.add("pgd", 1)
    reg.add("pgd_l2", 2)
    reg.register("fgsm")(3)
    return reg


def test_lookup_is_case_insensitive() -> None:
    assert make().get("PGD") == 1


def test_duplicates_raise() -> None:
    reg = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.add("Pgd", 9)
    assert reg.get("pgd") == 1


def test_unknown_names_list_close_matches() -> None:
    with pytest.raises(UnknownName) as info:
        make().get("pdg")
    message = str(info.value)
    assert "unknown widget 'pdg'" in message and "did you mean 'pgd'" in message
    assert "known: fgsm, pgd, pgd_l2" in message
    assert isinstance(info.value, BadInput)


def test_wildcards() -> None:
    reg = make()
    assert reg.names("pgd*") == ["pgd", "pgd_l2"]
    assert reg.names() == ["fgsm", "pgd", "pgd_l2"]
    assert "fgsm" in reg and "bim" not in reg and len(reg) == 3


@pytest.mark.parametrize("kind", ["attacks", "models", "datasets", "defenses"])
def test_project_registries_are_populated(kind: str) -> None:
    from attacks import ATTACKS
    from bench.core.datasets import DATASETS
    from bench.core.zoo import ZOO
    from defenses import DEFENSES

    reg = {"attacks": ATTACKS, "models": ZOO, "datasets": DATASETS, "defenses": DEFENSES}[kind]
    expected = {"attacks": {"fgsm", "bim", "pgd"}, "models": {"lenet", "resnet18_cifar"},
                "datasets": {"mnist5k", "idx", "mnist", "fashionmnist", "cifar10"},
                "defenses": {"none"}}[kind]
    assert expected <= set(reg.names())
