"""The runner has the last word: it re-checks bounds and the eps ball and recomputes success."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from attacks.gradient import FGSMParams
from bench.core.attack_registry import ATTACKS, AttackSpec
from bench.core.errors import AttackContractError
from bench.core.norms import Norm
from bench.core.result import AttackResult
from bench.core.target import Target
from bench.evaluation import EvalData
from bench.records import AttackedModel, PreparedTarget
from bench.runner import attack_samples, run_cell
from tests.conftest import Register, make_cell


@pytest.fixture
def prepared(lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[PreparedTarget,
                                                                                 EvalData]:
    x, y = digits[0][::5], digits[1][::5]
    clean = lenet.predict_logits(x).argmax(1)
    return PreparedTarget(lenet, lenet, clean, y), EvalData(x, y, torch.arange(len(y)))


def eager(model: Target, batch_size: int = 16) -> AttackedModel:
    """``model`` prepared as attacks in a sweep see it, on the eager path, with no floor."""
    return AttackedModel(model, model, "eager", batch_size)


def fake_attack(register: Register, name: str, make_adv: Any, claim: bool = True) -> None:
    def fn(target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Norm,
           generator: torch.Generator, params: Any, y_target: Any = None) -> AttackResult:
        x_adv = make_adv(x, eps)
        zeros = torch.zeros(len(x))
        return AttackResult(x_adv, torch.full_like(y, claim, dtype=torch.bool), zeros, zeros,
                            zeros, n_forward=0, n_backward=0)

    register(ATTACKS, name, AttackSpec(name, fn, FGSMParams, (Norm.LINF,)))


@pytest.mark.parametrize("make_adv,match", [
    (lambda x, eps: (x + 2 * eps).clamp(0, 1), "norm .* > eps"),
    (lambda x, eps: x + 1.0, "leaves the bounds"),
    (lambda x, eps: x[:, :, :-1], "expected"),
    (lambda x, eps: x * float("nan"), "NaN"),
])
def test_contract_violations_raise(register: Register, prepared: Any,
                                   make_adv: Any, match: str) -> None:
    fake_attack(register, "cheat", make_adv)
    target, data = prepared
    with pytest.raises(AttackContractError, match=match):
        run_cell(make_cell("cheat"), target, data, eager(target.base), device=torch.device("cpu"),
                 run_id="r")


def test_claimed_success_is_not_trusted(register: Register, prepared: Any) -> None:
    fake_attack(register, "liar", lambda x, eps: x.clone(), claim=True)
    target, data = prepared
    result = run_cell(make_cell("liar"), target, data, eager(target.base),
                      device=torch.device("cpu"), run_id="r")
    summary, samples = result.summary, result.samples
    assert summary.robust_acc == summary.clean_acc
    assert summary.success_rate == 0.0
    assert list(samples["success"]) == list(~target.clean_correct.numpy())


def test_eps_zero_reproduces_clean_accuracy_exactly(prepared: Any) -> None:
    target, data = prepared
    for attack in ("fgsm", "pgd", "bim"):
        cell = make_cell(attack, eps=0.0)
        summary = run_cell(cell, target, data, eager(target.base), device=torch.device("cpu"),
                           run_id="r").summary
        assert summary.robust_acc == summary.clean_acc
        assert summary.median_l2 is None or summary.median_l2 == 0.0


class FlipsInBF16(nn.Module):
    """LeNet whose logits are negated when it runs in bf16: its bf16 predictions are wrong."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return -out if out.dtype == torch.bfloat16 else out


def test_bf16_success_is_confirmed_in_fp32(register: Register, prepared: Any) -> None:
    """A bf16 cell's adversarials are judged by an fp32 forward: on a model whose bf16
    predictions are all wrong, the unperturbed inputs an attack returns stay as robust as the
    fp32 clean pass says, though a bf16 judge would call every one fooled."""
    lenet, data = prepared[0].base, prepared[1]
    flipping = Target.from_module(FlipsInBF16(lenet.model), input_shape=(1, 28, 28),
                                  num_classes=10, mean=lenet.mean.flatten().tolist(),
                                  std=lenet.std.flatten().tolist())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_correct = flipping.eval()(data.x).argmax(1) == data.y
    clean = flipping.predict_logits(data.x).argmax(1)  # the fp32 judge
    assert float((clean == data.y).float().mean()) > 0.9
    assert float(bf16_correct.float().mean()) < 0.1
    fake_attack(register, "unmoved", lambda x, eps: x.clone(), claim=False)
    target = PreparedTarget(flipping, flipping, clean, data.y)
    cell = make_cell("unmoved", precision="bf16")
    result = run_cell(cell, target, data, eager(flipping), device=torch.device("cpu"),
                      run_id="r")
    assert result.summary.precision == "bf16"
    assert list(result.samples["adv_correct"]) == list((clean == data.y).numpy())
    assert result.summary.robust_acc == result.summary.clean_acc > 0.9


def test_cuda_out_of_memory_backs_off_the_batch_size(prepared: Any) -> None:
    """An attack that runs out of memory above 10 images is run again with halved batches from
    the same random state; every sample is attacked once and the cell completes."""
    sizes: list[int] = []
    real = ATTACKS.get("fgsm")

    def fn(target: Target, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> AttackResult:
        sizes.append(len(x))
        if len(x) > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real.fn(target, x, y, **kwargs)

    target, data = prepared
    cell = make_cell("fgsm", 0.2)
    cell = dataclasses.replace(cell, attack=dataclasses.replace(
        cell.attack, spec=AttackSpec("fgsm", fn, real.params_cls, real.norms)))
    run = attack_samples(cell, target.base, data, device=torch.device("cpu"), batch_size=40)
    assert sizes[:2] == [40, 20] and sizes[2:] == [10, 10, 10, 10]
    assert sum(sizes[2:]) == len(data.y) and run.x_adv.shape == data.x.shape
    with target.base.evaluating():
        direct = real.fn(target.base, data.x, data.y, eps=0.2, norm=Norm.LINF,
                         generator=torch.Generator(), params=FGSMParams())
    same = (run.x_adv == direct.x_adv).float().mean()
    assert float(same) > 0.999  # equal up to float noise between batch sizes


def test_streaming_attack_gets_the_whole_cell_and_backs_off_its_rows(prepared: Any) -> None:
    """PGD streams: one call sees every sample of the cell with ``batch_size`` rows busy at a
    time. Out of memory above 10 rows, the call starts over with halved rows and the same random
    state, so the result equals an undisturbed run."""
    calls: list[tuple[int, int]] = []
    real = ATTACKS.get("pgd")
    assert real.streams

    def fn(target: Target, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> AttackResult:
        calls.append((len(x), kwargs["batch_size"]))
        if kwargs["batch_size"] > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real.fn(target, x, y, **kwargs)

    target, data = prepared
    cell = make_cell("pgd", 0.2, params={"steps": 5})
    cell = dataclasses.replace(cell, attack=dataclasses.replace(
        cell.attack, spec=dataclasses.replace(real, fn=fn)))
    run = attack_samples(cell, target.base, data, device=torch.device("cpu"), batch_size=40)
    n = len(data.y)
    assert calls == [(n, 40), (n, 20), (n, 10)]
    with target.base.evaluating():
        direct = real.fn(target.base, data.x, data.y, eps=0.2, norm=Norm.LINF,
                         generator=torch.Generator().manual_seed(0), params=cell.attack.params)
    assert torch.allclose(run.x_adv, direct.x_adv, atol=1e-6)


def test_cascade_rows_carry_the_indicators_autoattack_checks() -> None:
    """A black-box member that fooled samples every white-box member missed
    (``black-box-wins``), and an eps that spans the whole input range yet leaves samples robust
    (``unconstrained``), are codes in the row; a clean run at 0.3 has none."""
    from bench.evaluation import EvalData
    from bench.failures import row_flags
    from bench.records import AttackRun
    from bench.verification import Outcome
    from tests.conftest import make_cell, make_tiny_target

    cell = make_cell("standard", eps=1.0, params={"queries": 5})
    x, y = torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.long)
    target = make_tiny_target()
    prepared = PreparedTarget(target, target, y.clone(), y)
    members = torch.tensor([[10, 5, 0, 0, 0.0, 0, 0, 0], [5, 0, 0, 0, 0.0, 0, 0, 0],
                            [5, 0, 0, 0, 0.0, 0, 0, 0], [5, 3, 0, 0, 0.0, 0, 0, 0]],
                           dtype=torch.float64)
    run = AttackRun(x, None, 0, 0, 0.0, None, {"members": members})
    robust = torch.tensor([True, True] + [False] * 8)
    none = torch.zeros(10)
    outcome = Outcome(torch.zeros(10, dtype=torch.long), ~robust, robust, none, none, none)
    data = EvalData(x, y, torch.arange(10))
    assert row_flags(cell, prepared, data, run, outcome) == "unconstrained, black-box-wins"
    clean = members.clone()
    clean[3, 1] = 0
    at_03 = make_cell("standard", eps=0.3, params={"queries": 5})
    assert row_flags(at_03, prepared, data, AttackRun(x, None, 0, 0, 0.0, None,
                                                      {"members": clean}), outcome) is None
