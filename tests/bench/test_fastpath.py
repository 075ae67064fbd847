"""Fast paths: channels_last and torch.compile copies, the measured choice, the automatic batch
size, and their place in a sweep's rows."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import nn

import bench.core.fastpath as fastpath
from bench.config import parse_config
from bench.core.errors import ConfigError
from bench.core.fastpath import (
    FastPath,
    FastPathOptions,
    accelerate,
    candidates,
    fit_batch_size,
    tune,
)
from bench.core.target import Target


def test_fit_batch_size_is_the_largest_power_of_two_in_the_memory_share() -> None:
    mib = 2 ** 20
    assert fit_batch_size(mib, 100 * mib, cap=4096) == 32  # 60 MiB usable -> 60 images -> 32
    assert fit_batch_size(mib, 100 * mib, cap=16) == 16
    assert fit_batch_size(mib, 100 * mib, cap=40) == 32
    assert fit_batch_size(200 * mib, 100 * mib, cap=4096) == 1  # nothing fits: one at a time
    assert fit_batch_size(0, 100 * mib, cap=300) == 300


def test_candidates_follow_the_options_and_the_model() -> None:
    conv = Target(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(10)),
                  num_classes=10, input_shape=(1, 8, 8))
    mlp = Target(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), num_classes=10,
                 input_shape=(1, 8, 8))
    auto = FastPathOptions(channels_last="auto", compile="auto")
    assert candidates(conv, auto) == [FastPath(False, False), FastPath(False, True),
                                      FastPath(True, False), FastPath(True, True)]
    assert candidates(mlp, auto) == [FastPath(False, False), FastPath(False, True)]
    assert candidates(conv, FastPathOptions(channels_last=True)) == [FastPath(True, False)]
    assert FastPath(True, True).name == "channels_last+compile" and FastPath().name == "eager"


def test_channels_last_copy_computes_the_same_logits_and_leaves_the_original(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = digits[0][:32]
    fast = accelerate(lenet, FastPath(channels_last=True))
    assert fast is not lenet and fast.channels_last and not lenet.channels_last
    seen: list[bool] = []
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    hook = conv.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        got = fast.predict_logits(x)
    finally:
        hook.remove()
    assert seen == [True]
    assert torch.allclose(got, lenet.predict_logits(x), atol=1e-4)
    assert all(p.is_contiguous() for p in lenet.parameters())  # checkpoints stay saveable
    assert accelerate(lenet, FastPath()) is lenet


def test_compiled_copy_computes_the_same_logits_and_gradients(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = digits[0][:16]
    fast = accelerate(lenet, FastPath(compiled=True))
    assert torch.allclose(fast.predict_logits(x), lenet.predict_logits(x), atol=1e-4)
    grads = []
    for model in (lenet, fast):
        xg = x.clone().requires_grad_(True)
        with model.evaluating():
            model(xg).logsumexp(1).sum().backward()
        grads.append(xg.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert "_compiled" not in dict(fast.named_modules())  # not a submodule: no extra weights
    assert set(fast.state_dict()) == set(lenet.state_dict())


def test_tune_takes_the_fastest_measured_path_and_skips_failing_ones(
        monkeypatch: pytest.MonkeyPatch, lenet: Target,
        digits: tuple[torch.Tensor, torch.Tensor], caplog: pytest.LogCaptureFixture) -> None:
    def fake_floors(model: Target, x: torch.Tensor, precisions: tuple[str, ...],
                    **_: Any) -> dict[tuple[str, str], float]:
        return {("forward+backward", precisions[0]): 200.0 if model.channels_last else 100.0}

    def broken_compile(self: Target) -> None:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fastpath, "floors", fake_floors)
    monkeypatch.setattr(Target, "compile_model", broken_compile)
    with caplog.at_level(logging.WARNING, logger="bench.core.fastpath"):
        tuned = tune(lenet, digits[0], "fp32",
                     FastPathOptions(channels_last="auto", compile="auto"), cap=200)
    assert tuned.path == FastPath(channels_last=True) and tuned.target.channels_last
    assert tuned.measured == {"eager": 100.0, "channels_last": 200.0}
    assert "fast path compile failed" in caplog.text and "no compiler here" in caplog.text
    assert tuned.batch_size == 500
    monkeypatch.setattr(fastpath, "floors", lambda m, x, p, **_: {
        ("forward+backward", p[0]): 50.0 if m.channels_last else 99.0})
    slow = tune(lenet, digits[0], "fp32", FastPathOptions(channels_last="auto"), cap=200)
    assert slow.path == FastPath() and slow.target is lenet  # never a path measured slower


def test_auto_batch_size_on_the_cpu_is_capped_by_the_data(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    options = FastPathOptions(channels_last=False, batch_size="auto")
    assert tune(lenet, digits[0], "fp32", options, cap=200).batch_size == 200
    assert tune(lenet, digits[0], "fp32", options, cap=10_000).batch_size == 500


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_fits_in_cuda_memory(lenet: Target,
                                             digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    import copy

    model = copy.deepcopy(lenet).cuda()
    x = digits[0].cuda()
    size = fastpath.auto_batch_size(model, x, "fp32", cap=1 << 20)
    assert size == fastpath.MAX_AUTO_BATCH or size >= 1024
    big = x[:1].expand(size, *x.shape[1:]).contiguous()
    xg = big.requires_grad_(True)
    model(xg).sum().backward()  # the chosen batch's forward+backward fits


@pytest.mark.parametrize("key,value,message", [
    ("channels_last", "yes", "'channels_last' must be true, false or \"auto\""),
    ("compile", 1, "'compile' must be true, false or \"auto\""),
    ("batch_size", "big", "'batch_size' must be an integer >= 1 or \"auto\""),
    ("batch_size", 0, "'batch_size' must be an integer >= 1 or \"auto\""),
])
def test_bad_fast_path_settings_are_config_errors(key: str, value: Any, message: str) -> None:
    base = {"targets": [{"model": "lenet"}], "attacks": [{"name": "fgsm", "eps": [0.1]}]}
    with pytest.raises(ConfigError, match=message):
        parse_config({**base, "sweep": {"name": "x", key: value}})


def test_sweep_rows_record_the_fast_path_and_batch(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A cell crafted on the channels_last copy gives the eager cell's results (up to float
    noise), records its fast path and automatic batch size, and keeps the eager model's floor."""
    from bench.evaluation import EvalData
    from bench.records import AttackedModel, PreparedTarget
    from bench.runner import run_cell
    from tests.conftest import make_cell

    x, y = digits
    clean = lenet.predict_logits(x).argmax(1)
    prepared, data = PreparedTarget(lenet, lenet, clean, y), EvalData(x, y, torch.arange(len(y)))
    cell = make_cell("fgsm", 0.15)
    rows = {}
    for options in (FastPathOptions(channels_last=False),
                    FastPathOptions(channels_last=True, batch_size="auto")):
        tuned = tune(lenet, x, "fp32", options, cap=x.shape[0])
        attacked = AttackedModel(lenet, tuned.target, tuned.path.name, tuned.batch_size)
        rows[options.channels_last] = run_cell(cell, prepared, data, attacked,
                                               device=torch.device("cpu"), run_id="r").summary
    eager, fast = rows[False], rows[True]
    assert (eager.fast_path, eager.batch_size) == ("eager", 500)
    assert (fast.fast_path, fast.batch_size) == ("channels_last", len(y))
    assert abs(fast.robust_acc - eager.robust_acc) <= 2 / len(y)


def _rates(values: dict[str, float]) -> Any:
    """``floors`` as measured on a machine whose forward+backward runs at ``values``."""
    def fake(model: Target, x: torch.Tensor, precisions: tuple[str, ...],
             **_: Any) -> dict[tuple[str, str], float]:
        return {("forward+backward", p): values[p] for p in precisions}
    return fake


@pytest.mark.parametrize("values,agrees,chosen", [
    ({"fp32": 100.0, "bf16": 300.0}, True, "bf16"),   # native bf16, same predictions
    ({"fp32": 2284.0, "bf16": 170.0}, True, "fp32"),  # bf16 emulated (AVX2-only CPU)
    ({"fp32": 100.0, "bf16": 300.0}, False, "fp32"),  # faster, but predictions differ
])
def test_auto_precision_takes_the_fastest_that_matches_fp32(
        values: dict[str, float], agrees: bool, chosen: str, lenet: Target,
        digits: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "floors", _rates(values))
    monkeypatch.setattr(fastpath, "matches_fp32", lambda target, x, p: agrees)
    assert fastpath.resolve_precision(lenet, digits[0], "auto") == chosen


def test_an_explicit_precision_slower_than_fp32_is_kept_with_one_warning(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fastpath, "floors", _rates({"fp32": 2284.0, "bf16": 170.0}))
    with caplog.at_level(logging.WARNING, logger="bench.core.fastpath"):
        assert fastpath.resolve_precision(lenet, digits[0], "bf16") == "bf16"
    (record,) = caplog.records
    assert "bf16 is slower than fp32" in record.message and "170 vs 2284" in record.message
    caplog.clear()
    monkeypatch.setattr(fastpath, "floors", _rates({"fp32": 100.0, "bf16": 300.0}))
    with caplog.at_level(logging.WARNING, logger="bench.core.fastpath"):
        fastpath.resolve_precision(lenet, digits[0], "bf16")
    assert not caplog.records


def test_bf16_predictions_of_the_lenet_match_fp32(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The check ``auto`` relies on, measured for real: bf16 autocast keeps the LeNet's
    predictions; a model whose logits bf16 cannot tell apart does not pass."""
    assert fastpath.matches_fp32(lenet, digits[0], "bf16")

    # class 1's weights exceed class 0's by 0.1%, below bf16's resolution: fp32 says 1, bf16 ties
    close_model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2, bias=False))
    with torch.no_grad():
        close_model[1].weight.copy_(torch.tensor([[1.0], [1.001]]).expand(2, 784))
    close = Target(close_model, num_classes=2, input_shape=(1, 28, 28), name="close")
    assert not fastpath.matches_fp32(close, digits[0], "bf16")


def test_auto_precision_is_resolved_in_the_row(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor], tmp_path: Any) -> None:
    """A cell asked for ``auto`` records the precision it ran at, with that precision's floor."""
    from bench.core.measure import Precision
    from bench.evaluation import EvalData
    from bench.records import PreparedTarget
    from bench.runner import RunOptions, run_cell
    from bench.worker import Worker
    from tests.conftest import make_cell

    x, y = digits
    cell = make_cell("fgsm", 0.15, precision=Precision.AUTO)
    config = parse_config({"sweep": {"name": "t", "dataset": "mnist5k", "precision": "auto"},
                           "targets": [{"model": "lenet"}],
                           "attacks": [{"name": "fgsm", "eps": [0.15]}]})
    worker = Worker(config, RunOptions(out=tmp_path, cache_dir=tmp_path, progress=False,
                                       device="cpu"), "r")
    attacked = worker.prepare_attacked(lenet, "auto", x)
    assert attacked.precision in ("fp32", "bf16")
    assert attacked.floor is not None and ("forward+backward", attacked.precision) in attacked.floor
    prepared = PreparedTarget(lenet, lenet, lenet.predict_logits(x).argmax(1), y)
    row = run_cell(cell, prepared, EvalData(x, y, torch.arange(len(y))), attacked,
                   device=torch.device("cpu"), run_id="r").summary
    assert row.precision == attacked.precision and row.floor_img_per_s is not None
