"""Fast paths for the model an attack runs on, each used only where measured faster.

- **channels_last**: NHWC memory format for convolutional models (tensor-core convolutions on
  the GPU prefer it; on the CPU it is often slower). ``"auto"`` times forward+backward both ways.
- **torch.compile**: fuses the model's graph (``"auto"`` times it against eager, after
  compiling; a model or platform that cannot compile falls back to eager with a warning).
- **Automatic batch size**: the largest power of two whose forward+backward fits in the free
  CUDA memory, probed on the model; out-of-memory errors in an attack still back off (the
  runner halves the batch and retries).
- **Precision**: ``"auto"`` takes the fastest measured number format (fp32, bf16, and fp16 on
  CUDA) whose predictions match fp32's; an explicit bf16 or fp16 measured slower than fp32 (a
  CPU that emulates bf16) runs as asked, with a one-line warning giving both figures.

The fast copy is used only to *craft* adversarials: the runner verifies every adversarial with a
fresh fp32 forward of the original model, so a fast path cannot claim a success that the model
itself does not confirm.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from bench.core.errors import BadInput
from bench.core.measure import autocast, floors
from bench.core.target import Target

log = logging.getLogger(__name__)

Choice = bool | Literal["auto"]

CPU_AUTO_BATCH = 500
"""``batch_size = "auto"`` on the CPU, where memory is not what limits the batch."""
MAX_AUTO_BATCH = 8192
AUTO_MEMORY_SHARE = 0.6
"""The share of free CUDA memory an automatic batch's forward+backward may use (the rest is
headroom for the attack's own tensors and the allocator's fragmentation)."""


@dataclass(frozen=True)
class FastPath:
    """How the attacked model runs: memory format and compilation."""

    channels_last: bool = False
    compiled: bool = False

    @property
    def name(self) -> str:
        parts = [p for p, on in (("channels_last", self.channels_last),
                                 ("compile", self.compiled)) if on]
        return "+".join(parts) or "eager"


@dataclass(frozen=True)
class FastPathOptions:
    """The sweep's ``channels_last`` / ``compile`` / ``batch_size`` settings."""

    channels_last: Choice = "auto"
    compile: Choice = False
    batch_size: int | Literal["auto"] = 500

    @staticmethod
    def check_choice(key: str, value: object) -> Choice:
        if value == "auto" or isinstance(value, bool):
            return value
        raise BadInput(f"'{key}' must be true, false or \"auto\", got {value!r}")


@dataclass
class Tuned:
    """The attacked model on its chosen fast path, the batch size, and what was measured."""

    target: Target
    path: FastPath
    batch_size: int
    measured: dict[str, float]  # candidate name -> forward+backward images/s


def accelerate(target: Target, path: FastPath) -> Target:
    """A copy of ``target`` running on ``path``; ``target`` itself is left untouched (its
    weights stay contiguous for checkpoints and its fp32 verification stays eager)."""
    if path == FastPath():
        return target
    fast = copy.deepcopy(target)
    if path.channels_last:
        fast.to(memory_format=torch.channels_last)
        fast.channels_last = True
    if path.compiled:
        fast.compile_model()
    return fast


def _is_image_model(target: Target) -> bool:
    return len(target.input_shape) == 3 and any(
        isinstance(m, torch.nn.Conv2d) for m in target.modules())


def candidates(target: Target, options: FastPathOptions) -> list[FastPath]:
    """The fast paths ``options`` allow for ``target`` (channels_last only for conv nets)."""
    layouts = [False, True] if options.channels_last == "auto" else [options.channels_last]
    if not _is_image_model(target):
        layouts = [False]
    compiles = [False, True] if options.compile == "auto" else [options.compile]
    return [FastPath(c, k) for c in dict.fromkeys(layouts) for k in compiles]


def fit_batch_size(bytes_per_image: float, free_bytes: int, cap: int) -> int:
    """The largest power of two whose images fit in ``AUTO_MEMORY_SHARE`` of ``free_bytes``,
    at least 1 and at most ``cap``."""
    if bytes_per_image <= 0:
        return cap
    fits = int(AUTO_MEMORY_SHARE * free_bytes / bytes_per_image)
    size = 1
    while size * 2 <= min(fits, cap):
        size *= 2
    return size


def auto_batch_size(target: Target, x: torch.Tensor, precision: str, cap: int) -> int:
    """The largest batch whose forward+backward to the input fits on ``x``'s CUDA device,
    from the peak memory of a probe batch; on the CPU, :data:`CPU_AUTO_BATCH`."""
    cap = max(1, min(cap, MAX_AUTO_BATCH))
    device = x.device
    if device.type != "cuda":
        return min(CPU_AUTO_BATCH, cap)
    probe = x[:min(64, len(x))]
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    floors(target, probe, (precision,), repeats=1, warmup=1, min_repeats=1)
    per_image = (torch.cuda.max_memory_allocated(device) - base) / len(probe)
    free, _ = torch.cuda.mem_get_info(device)
    return fit_batch_size(per_image, free, cap)


def measure_paths(target: Target, x: torch.Tensor, paths: list[FastPath],
                  precisions: tuple[str, ...], **timing: int
                  ) -> dict[FastPath, tuple[Target, dict[str, float]]]:
    """Each path's copy of ``target`` and its forward+backward images/s on ``x`` per precision
    (``timing``: :func:`bench.core.measure.floors`' repeats / warmup / min_repeats). A path that
    fails (a platform that cannot compile) is logged and left out."""
    out: dict[FastPath, tuple[Target, dict[str, float]]] = {}
    with target.evaluating():
        for path in paths:
            try:
                fast = accelerate(target, path)
                rates = floors(fast, x, precisions, **timing)
            except Exception as exc:  # noqa: BLE001 - a path that fails is a path not taken
                log.warning("fast path %s failed on %s (%s: %s); not using it", path.name,
                            target.name, type(exc).__name__, str(exc).splitlines()[0][:200])
                continue
            out[path] = (fast, {p: rates[("forward+backward", p)] for p in precisions})
    return out


def tune(target: Target, x: torch.Tensor, precision: str, options: FastPathOptions,
         cap: int) -> Tuned:
    """Choose ``target``'s fast path and batch size for attacks at ``precision`` on images like
    ``x`` (at most ``cap`` at a time): each allowed candidate's forward+backward throughput is
    measured on one batch, and the fastest is used."""
    batch = (auto_batch_size(target, x, precision, cap) if options.batch_size == "auto"
             else options.batch_size)
    paths = candidates(target, options)
    if len(paths) == 1:
        return Tuned(accelerate(target, paths[0]), paths[0], batch, {})
    results = measure_paths(target, x[:batch], paths, (precision,), repeats=1, warmup=2,
                            min_repeats=3)
    measured = {path.name: rates[precision] for path, (_, rates) in results.items()}
    if not results:
        return Tuned(target, FastPath(), batch, measured)
    best = max(results, key=lambda path: results[path][1][precision])
    log.info("fast path for %s at %s: %s (%s)", target.name, precision, best.name,
             ", ".join(f"{k} {v:,.0f} img/s" for k, v in measured.items()))
    return Tuned(results[best][0], best, batch, measured)


PRECISION_PROBE = 64
"""Images the precision choice is measured and checked on."""
MATCH_SHARE = 0.99
"""The share of predictions a lower precision must share with fp32 to be chosen by ``auto``."""


def precision_rates(target: Target, x: torch.Tensor, precisions: tuple[str, ...]
                    ) -> dict[str, float]:
    """Forward+backward images/s of ``target`` at each precision, on a small probe batch."""
    with target.evaluating():
        rates = floors(target, x[:PRECISION_PROBE], precisions, repeats=1, warmup=1,
                       min_repeats=3)
    return {p: rates[("forward+backward", p)] for p in precisions}


def matches_fp32(target: Target, x: torch.Tensor, precision: str) -> bool:
    """Whether ``target``'s predictions at ``precision`` agree with fp32's on ``x``."""
    probe = x[:4 * PRECISION_PROBE]
    with torch.no_grad(), target.evaluating():
        reference = target(probe).argmax(1)
        with autocast(probe.device, precision):
            low = target(probe).float().argmax(1)
    return float((reference == low).float().mean()) >= MATCH_SHARE


def resolve_precision(target: Target, x: torch.Tensor, requested: str) -> str:
    """The precision attacks on ``target`` run at (see the module doc)."""
    if requested == "fp32":
        return requested
    if requested != "auto":
        rates = precision_rates(target, x, ("fp32", requested))
        if rates[requested] < rates["fp32"]:
            log.warning("precision %s is slower than fp32 for %s on %s (%.0f vs %.0f "
                        "forward+backward img/s; no native %s here?): set precision = 'fp32' "
                        "or 'auto'", requested, target.name, x.device, rates[requested],
                        rates["fp32"], requested)
        return requested
    options = ("fp32", "bf16", "fp16") if x.device.type == "cuda" else ("fp32", "bf16")
    rates = precision_rates(target, x, options)
    usable = [p for p in options if p == "fp32" or matches_fp32(target, x, p)]
    best = max(usable, key=lambda p: rates[p])
    log.info("precision for %s: %s (%s forward+backward img/s; matching fp32: %s)",
             target.name, best, ", ".join(f"{p} {r:,.0f}" for p, r in rates.items()),
             ", ".join(usable))
    return best
