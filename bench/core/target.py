"""The Target: a model wrapped with everything an attack needs to know.

Attacks work in pixel space ``[lo, hi]`` (default ``[0, 1]``). Normalisation (per-channel
mean/std, or the GAN's ``[-1, 1]`` mapping, which is mean = std = 0.5) happens *inside* the
target, so no attack ever knows about it. A discriminator with one logit ``d`` is exposed as the
two logits ``[0, d]`` (class 1 = real), so every attack runs on it unchanged.

A defense may put a :class:`Preprocessing` step before the model (bit-depth reduction, JPEG, a
random resize-and-pad). A randomised step draws from the generator the target is handed
(:meth:`Target.drawing_from`); a non-differentiable one declares a differentiable stand-in,
which attacks use on the backward pass (BPDA, Athalye, Carlini & Wagner, ICML 2018) unless
:meth:`Target.adaptive` switches it off; their gradient attacks average ``eot_iter`` draws
(Expectation over Transformation, the same paper).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from bench.core.errors import BadInput, ModelOutputError

TargetKind = Literal["classifier", "discriminator"]


class Preprocessing(nn.Module):
    """A pixel-space step in front of a target's model: :meth:`transform` is the step itself;
    :meth:`substitute` its differentiable stand-in for BPDA (``None``: the step is
    differentiable, or has none), ``stand_in`` naming it; ``randomised``: it draws from the
    generator it is handed."""

    randomised: bool = False
    summary: str = "preprocessing"
    stand_in: str = ""  # what :meth:`substitute` is, in words ("" when it has none)

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def substitute(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor, generator: torch.Generator,
                straight_through: bool = True) -> torch.Tensor:
        """The step's output; with ``straight_through``, differentiated as its stand-in. Without
        one, a step autograd cannot pass (a uint8 codec) passes a zero gradient: what a
        gradient attack sees of it (the ``zero-grad`` indicator fires)."""
        out = self.transform(x, generator)
        if not x.requires_grad:
            return out
        stand_in = self.substitute(x) if straight_through else None
        if stand_in is not None:
            return stand_in + (out - stand_in).detach()
        return out if out.requires_grad else out + 0.0 * x


@dataclass(frozen=True)
class Certificate:
    """Per input: the certified prediction (−1: abstained or nothing certified), the radius
    in ``norm`` within which it provably holds (0 where abstained), and the passes each input
    cost (forward passes of a smoothed classifier's draws; bound computations of IBP/CROWN).
    ``method`` names how it was obtained; ``certified`` holds, per eps, the inputs certified
    at exactly that eps where it was computed there (else a radius of at least eps decides)."""

    pred: torch.Tensor
    radius: torch.Tensor
    n_forward_per_sample: int
    norm: str = "l2"
    method: str = "smoothing"
    certified: dict[float, torch.Tensor] = field(default_factory=dict)

    def holds_at(self, eps: float) -> torch.Tensor:
        """``[N]``: the prediction provably holds within ``eps``."""
        if eps in self.certified:
            return self.certified[eps]
        return (self.pred >= 0) & (self.radius >= eps)


class Target(nn.Module):
    """An ``nn.Module`` returning ``[N, num_classes]`` logits for pixel-space inputs.

    Args:
        model: the wrapped network; it sees normalised inputs.
        num_classes: number of logits the target returns (2 for a discriminator).
        input_shape: shape of one input, e.g. ``(1, 28, 28)``.
        bounds: ``(lo, hi)`` of the pixel space attacks work in.
        mean, std: per-channel normalisation applied before ``model`` (``None`` = identity).
        kind: ``"classifier"`` or ``"discriminator"`` (one logit ``d`` exposed as ``[0, d]``).
        name: human-readable name used in results.
        preprocess: a defense's :class:`Preprocessing` step, applied to pixel-space inputs.
        randomised: the forward draws randomness (a randomised ``preprocess`` makes it so).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        kind: TargetKind = "classifier",
        name: str = "model",
        preprocess: Preprocessing | None = None,
        randomised: bool = False,
    ) -> None:
        super().__init__()
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise BadInput(f"bounds must satisfy lo < hi, got {bounds!r}")
        if kind not in ("classifier", "discriminator"):
            raise BadInput(f"target kind must be 'classifier' or 'discriminator', got {kind!r}")
        if kind == "discriminator" and num_classes != 2:
            raise BadInput("a discriminator target has num_classes = 2 (logits [0, d])")
        self.model = model
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.bounds = (lo, hi)
        self.kind: TargetKind = kind
        self.name = name
        self.card: dict[str, Any] = {}  # how this target was made (params, training curve)
        self.channels_last = False  # feed the model NHWC tensors (bench.core.fastpath)
        self.__dict__["_compiled"] = None  # torch.compile(model), kept out of the submodules
        self.preprocess = preprocess
        self.declared_random = randomised
        self.global_rng = False  # its randomness is torch's global generator's (a user's code)
        self.eot_iter = 1  # draws a gradient averages (set by adaptive())
        self.bpda = True  # differentiate a preprocessing step as its stand-in
        self.__dict__["_draws"] = None  # the generator the forward draws from
        channels = self.input_shape[0]
        shape = (1, channels) + (1,) * (len(self.input_shape) - 1)
        mean_t = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float32)
        for label, values in (("mean", mean_t), ("std", std_t)):
            if values.ndim != 1 or values.numel() != channels:
                raise BadInput(f"{label} must have one value per input channel ({channels} for "
                               f"input_shape {self.input_shape}), got {values.tolist()}")
        if not bool((std_t > 0).all()):
            raise BadInput(f"std must be > 0 per channel, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.reshape(shape), persistent=False)
        self.register_buffer("std", std_t.reshape(shape), persistent=False)

    @classmethod
    def from_module(cls, model: nn.Module, *, input_shape: Sequence[int], num_classes: int,
                    bounds: tuple[float, float] = (0.0, 1.0),
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    name: str = "model", device: torch.device | str = "cpu",
                    kind: TargetKind = "classifier") -> Target:
        """A target for any module (the one a sweep's ``[[models]]`` entry builds), moved to
        ``device`` and checked on a probe batch (:meth:`probe`)."""
        target = cls(model, num_classes=num_classes, input_shape=input_shape, bounds=bounds,
                     mean=mean, std=std, name=name, kind=kind).to(device)
        target.probe()
        return target

    def probe(self) -> None:
        """Run the target on two in-bounds inputs: :class:`ModelOutputError` naming it unless
        it returns finite ``[N, num_classes]`` logits."""
        lo, hi = self.bounds
        ramp = torch.linspace(0, 1, 2, device=self.device).view(2, *([1] * len(self.input_shape)))
        x = (lo + (hi - lo) * ramp.expand(2, *self.input_shape)).contiguous()
        try:
            with torch.no_grad(), self.evaluating():
                out = self(x)
        except ModelOutputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's forward, reported in one line
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelOutputError(
                f"model {self.name!r} fails on inputs of shape [N, "
                f"{', '.join(map(str, self.input_shape))}] ({type(exc).__name__}: {detail}); "
                f"check its input_shape") from None
        check_finite_logits(out, self.name)

    @property
    def randomised(self) -> bool:
        """Whether two forward passes of one input may differ (the defense draws randomness)."""
        return self.declared_random or bool(self.preprocess is not None
                                            and self.preprocess.randomised)

    def with_preprocess(self, preprocess: Preprocessing, name: str) -> Target:
        """This target's model, normalisation and bounds behind ``preprocess`` (weights shared);
        :class:`BadInput` if it has a preprocessing step of its own already."""
        if self.preprocess is not None:
            raise BadInput(f"target {self.name!r} already has a preprocessing step "
                           f"({self.preprocess.summary}); a defense's {preprocess.summary} "
                           f"cannot be put in front of it")
        return Target(self.model, **self.pixel_space(), name=name,
                      preprocess=preprocess).to(self.device)

    def pixel_space(self) -> dict[str, Any]:
        """The keyword arguments that give another target this one's classes, input shape,
        bounds, normalisation and kind (a defense wrapping this target's model)."""
        return {"num_classes": self.num_classes, "input_shape": self.input_shape,
                "bounds": self.bounds, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "kind": self.kind}

    @contextlib.contextmanager
    def drawing_from(self, generator: torch.Generator) -> Iterator[Target]:
        """The forward's randomness is drawn from ``generator`` inside the block."""
        previous = self.__dict__["_draws"]
        self.__dict__["_draws"] = generator
        try:
            yield self
        finally:
            self.__dict__["_draws"] = previous

    @contextlib.contextmanager
    def adaptive(self, eot_iter: int = 1, bpda: bool = True) -> Iterator[Target]:
        """Inside the block, gradients average ``eot_iter`` draws of a randomised target (EOT)
        and pass a non-differentiable step as its stand-in when ``bpda`` (BPDA)."""
        previous = self.eot_iter, self.bpda
        self.eot_iter, self.bpda = eot_iter, bpda
        try:
            yield self
        finally:
            self.eot_iter, self.bpda = previous

    def bpda_note(self) -> str | None:
        """What a gradient attack's row says of BPDA on this target: the step differentiated
        as its stand-in, or as itself when ``bpda`` is off (None: no stand-in declared)."""
        step = self.preprocess
        if step is None or not step.stand_in:
            return None
        if self.bpda:
            return f"BPDA: {step.summary} differentiated as {step.stand_in}"
        return f"BPDA off: {step.summary} differentiated as itself"

    def draws(self, device: torch.device) -> torch.Generator:
        """The generator the forward draws from: the one handed in, else one of its own."""
        generator = self.__dict__["_draws"]
        if generator is None or generator.device.type != device.type:
            generator = torch.Generator(device=device).manual_seed(0)
            self.__dict__["_draws"] = generator
        return generator

    @torch.no_grad()
    def decide(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The predicted class of each input (−1 where the target abstains): the argmax of
        :meth:`predict_logits` unless the target decides otherwise (a smoothed classifier)."""
        return self.predict_logits(x, batch_size).argmax(1)

    @property
    def decide_passes(self) -> int:
        """Forward passes of the model one :meth:`decide` spends per input."""
        return 1

    def certify(self, x: torch.Tensor, batch_size: int = 1024) -> Certificate | None:
        """A certified prediction and L2 radius per input; ``None``: this target has no
        certificate (a smoothed classifier has, :mod:`bench.core.smoothing`)."""
        return None

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return self.mean.device

    def compile_model(self) -> None:
        """Run the model through ``torch.compile`` from now on (weights stay shared)."""
        self.__dict__["_compiled"] = torch.compile(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.global_rng:
            return self._forward(x)
        # a user's randomised code draws from torch's global generator: seed it from the
        # handed one for this forward, so the run is reproducible, and restore it after
        seed = int(torch.randint(0, 2**62, (1,), generator=self.draws(x.device),
                                 device=x.device))
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:
            x = self.preprocess(x, self.draws(x.device), self.bpda)
        z = (x - self.mean) / self.std
        if self.channels_last and z.ndim == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__["_compiled"]
        out = (self.model if compiled is None else compiled)(z)
        if self.kind == "discriminator":
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim != 1:
                raise ModelOutputError(
                    f"a discriminator must return one logit per image ([N] or [N, 1]), "
                    f"got shape {tuple(out.shape)}"
                )
            return torch.stack([torch.zeros_like(out), out], dim=1)
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise ModelOutputError(
                f"model {self.name!r} must return [N, {self.num_classes}] logits, "
                f"got shape {tuple(out.shape)}"
            )
        return out

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[Target]:
        """Put every submodule in eval mode; restore each one's exact ``training`` flag after."""
        flags = [(module, module.training) for module in self.modules()]
        try:
            self.eval()
            yield self
        finally:
            for module, flag in flags:
                module.training = flag

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise :class:`BadInput` unless ``x`` is a batch of this target's inputs within bounds."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise BadInput(
                f"inputs have shape {tuple(x.shape)}, but target {self.name!r} expects "
                f"[N, {', '.join(map(str, self.input_shape))}]"
            )
        if not x.is_floating_point():
            raise BadInput(f"inputs must be floating point in {self.bounds}, got dtype {x.dtype}")
        if x.numel() == 0:
            return
        lo, hi = self.bounds
        x_min, x_max = float(x.min()), float(x.max())
        if x_min != x_min or x_max != x_max:
            raise BadInput("inputs contain NaN values")
        if x_min < lo or x_max > hi:
            hint = ""
            if hi <= 1.0 and x_min >= 0 and x_max > 10:
                hint = " (divide 0..255 images by 255)"
            elif x_min < lo:
                hint = (" (they look normalised: the target takes raw pixels and applies its "
                        "own mean/std, so pass unnormalised images and give mean= and std= to "
                        "the Target)")
            raise BadInput(
                f"inputs lie in [{x_min:g}, {x_max:g}], outside the target's bounds "
                f"[{lo:g}, {hi:g}]{hint}"
            )

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Fresh fp32 logits for ``x`` in eval mode, batched; raises on non-finite outputs."""
        outs = []
        with self.evaluating(), torch.autocast(x.device.type, enabled=False):
            for chunk in x.split(batch_size):
                outs.append(self(chunk.float()).float())
        logits = torch.cat(outs) if outs else torch.empty(0, self.num_classes, device=x.device)
        check_finite_logits(logits, self.name)
        warn_if_probabilities(self, logits)
        return logits


def warn_if_probabilities(target: nn.Module, logits: torch.Tensor) -> None:
    """Warn when a classifier's outputs look like probabilities (every row in [0, 1] summing
    to 1): attack losses expect logits, and a softmax saturates them. Checked on the first
    non-empty output a target gives, so the check costs nothing afterwards."""
    state = target.__dict__
    if getattr(target, "kind", "classifier") != "classifier" or \
            state.get("_checked_probabilities") or logits.numel() == 0 or logits.shape[1] < 2:
        return
    state["_checked_probabilities"] = True
    out = logits.detach().float()
    if float(out.min()) >= 0 and float(out.max()) <= 1 and bool(
            torch.allclose(out.sum(1), torch.ones(1, device=out.device), atol=1e-4)):
        warnings.warn(
            f"model {getattr(target, 'name', 'model')!r} seems to return probabilities (every "
            f"row in [0, 1], summing to 1), not logits: attacks' losses then get vanishing "
            f"gradients and robustness is overestimated; return the logits (drop the final "
            f"softmax)", stacklevel=3)


def check_differentiable(logits: torch.Tensor, name: str) -> None:
    """Raise :class:`ModelOutputError` if ``logits`` carry no gradient back to the input (a
    model that detaches its output, or runs under ``torch.no_grad``)."""
    if not logits.requires_grad:
        raise ModelOutputError(
            f"model {name!r} gives no gradient with respect to its inputs (its output is "
            f"detached, or computed under torch.no_grad); gradient attacks need one: fix the "
            f"model, or use a black-box attack (onepixel)")


def check_finite_logits(logits: torch.Tensor, name: str) -> None:
    """Raise :class:`ModelOutputError` if ``logits`` contain NaN or infinite values."""
    if not bool(torch.isfinite(logits).all()):
        raise ModelOutputError(
            f"model {name!r} returned NaN or infinite logits; check its weights and inputs"
        )


class _MeanLogits(nn.Module):
    """The mean of its targets' logits (a discriminator's: of its one logit ``d``)."""

    def __init__(self, targets: Sequence[Target]) -> None:
        super().__init__()
        self.members = nn.ModuleList(targets)
        self.discriminator = targets[0].kind == "discriminator"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members]).mean(0)
        return logits[:, 1:] if self.discriminator else logits


def ensemble(targets: Sequence[Target], name: str) -> Target:
    """One target whose logits are the mean of ``targets``' (each with its own normalisation):
    the ensemble a transfer attack is crafted on (Liu et al., ICLR 2017; Dong et al., CVPR
    2018, fuse logits). The members must agree on input shape, classes, bounds and kind, and
    be deterministic."""
    first = targets[0]
    for t in targets:
        if (t.input_shape, t.num_classes, t.bounds, t.kind) != (
                first.input_shape, first.num_classes, first.bounds, first.kind):
            raise BadInput(f"ensemble {name!r}: {t.name!r} takes {t.input_shape} in "
                           f"{t.bounds} to {t.num_classes} {t.kind} logits, {first.name!r} "
                           f"{first.input_shape} in {first.bounds} to {first.num_classes} "
                           f"{first.kind} logits; an ensemble's models must agree")
        if t.randomised:
            raise BadInput(f"ensemble {name!r}: {t.name!r} is randomised; an ensemble's "
                           f"models must be deterministic")
    return Target(_MeanLogits(targets), num_classes=first.num_classes,
                  input_shape=first.input_shape, bounds=first.bounds, kind=first.kind,
                  name=name)
