"""The attack contract (DESIGN.md, "Attack" and "AttackResult") and the attack registry.

An attack is a pure batched function registered by name with a frozen params dataclass::

    @register_attack("pgd", params=PGDParams, norms=(Norm.LINF, Norm.L2))
    def pgd(target, x, y, *, eps, norm, generator, params, y_target=None) -> AttackResult: ...

Targeted vs untargeted is a field of the params, never object state; all randomness comes from
the ``torch.Generator`` passed in. :func:`run_attack` is the one entry point that validates user
input (names, eps, params, data bounds) and runs the attack in the target's eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from attacks.norms import Norm, l0_norm, l2_norm, linf_norm
from bench.errors import BadInput
from bench.params import parse_params
from bench.registry import Registry
from bench.target import Target


@dataclass(frozen=True)
class ThreatModel:
    """A norm and a budget. ``eps`` is ``None`` for minimal-perturbation attacks.

    ``eps_display`` keeps the user's spelling (``"8/255"``) next to the float.
    """

    norm: Norm
    eps: float | None
    eps_display: str = ""

    @classmethod
    def parse(cls, norm: str | Norm, eps: float | int | str | None) -> ThreatModel:
        norm_ = Norm.parse(norm)
        if eps is None:
            return cls(norm_, None, "min")
        display = str(eps)
        try:
            value = float(Fraction(eps)) if isinstance(eps, str) else float(eps)
        except (ValueError, ZeroDivisionError):
            raise BadInput(f"eps {eps!r} is not a number (write e.g. 0.3 or \"8/255\")") from None
        if not math.isfinite(value) or value < 0:
            raise BadInput(f"eps must be a finite number >= 0, got {eps!r}")
        if isinstance(eps, (int, float)):
            display = f"{value:g}"
        return cls(norm_, value, display)

    def check_against(self, bounds: tuple[float, float], input_shape: tuple[int, ...]) -> None:
        """Raise :class:`BadInput` if eps exceeds what the bounds and input shape make meaningful."""
        if self.eps is None:
            return
        lo, hi = bounds
        span = hi - lo
        limits = {
            Norm.LINF: span,
            Norm.L2: span * math.sqrt(math.prod(input_shape)),
            Norm.L0: float(math.prod(input_shape[1:]) if len(input_shape) == 3
                           else math.prod(input_shape)),
        }
        if self.eps > limits[self.norm]:
            raise BadInput(
                f"eps {self.eps_display} exceeds the largest meaningful {self.norm.value} budget "
                f"{limits[self.norm]:g} for bounds [{lo:g}, {hi:g}] and inputs "
                f"{tuple(input_shape)}"
            )


SuccessCheck = Callable[[], torch.Tensor]
"""Computes ``success`` when it is first read (a fresh fp32 forward of the final iterates)."""


class AttackResult:
    """What every attack returns. Norms are of ``x_adv - x``, per sample, in pixel space.

    ``n_forward`` / ``n_backward`` count per-image model evaluations (a batch of 128 counts 128).
    ``success`` may be given as a :data:`SuccessCheck` instead of a tensor: an attack whose last
    iterate needs no decision (FGSM, one-restart PGD) leaves the check to whoever reads it, so a
    sweep, whose runner verifies every adversarial with its own fresh fp32 forward anyway, never
    pays for it twice. That forward is not counted in ``n_forward``.
    """

    def __init__(self, x_adv: torch.Tensor, success: torch.Tensor | SuccessCheck,
                 l2: torch.Tensor, linf: torch.Tensor, l0: torch.Tensor, n_forward: int,
                 n_backward: int, y_target: torch.Tensor | None = None,
                 artifacts: dict[str, torch.Tensor] | None = None) -> None:
        self.x_adv = x_adv
        self._success = success
        self.l2, self.linf, self.l0 = l2, linf, l0
        self.n_forward, self.n_backward = n_forward, n_backward
        self.y_target = y_target
        self.artifacts: dict[str, torch.Tensor] = artifacts or {}

    @property
    def success(self) -> torch.Tensor:
        """``[N]`` bool: the adversarial fools the model (reaches ``y_target`` when targeted)."""
        if callable(self._success):
            self._success = self._success().bool()
        return self._success

    @classmethod
    def build(
        cls,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        success: torch.Tensor | SuccessCheck,
        calls: ModelCalls,
        y_target: torch.Tensor | None = None,
        artifacts: dict[str, torch.Tensor] | None = None,
    ) -> AttackResult:
        delta = x_adv - x
        return cls(
            x_adv=x_adv,
            success=success if callable(success) else success.bool(),
            l2=l2_norm(delta),
            linf=linf_norm(delta),
            l0=l0_norm(delta),
            n_forward=calls.n_forward,
            n_backward=calls.n_backward,
            y_target=y_target,
            artifacts=artifacts,
        )


def deferred_success(target: Target, x_adv: torch.Tensor, labels: torch.Tensor, *,
                     targeted: bool, known: torch.Tensor, unknown: torch.Tensor) -> SuccessCheck:
    """A :data:`SuccessCheck`: ``known`` where ``unknown`` is False, else a fresh fp32 eval-mode
    prediction of ``x_adv`` against ``labels`` (the target class when ``targeted``)."""
    def check() -> torch.Tensor:
        success = known.clone()
        rows = torch.nonzero(unknown).flatten()
        if rows.numel():
            pred = target.predict_logits(x_adv[rows]).argmax(1)
            success[rows] = pred == labels[rows] if targeted else pred != labels[rows]
        return success
    return check


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, ``[N]``."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017); > 0 means misclassified."""
    logits = logits.float()
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true


LOSSES: dict[str, LossFn] = {"ce": cross_entropy_loss, "margin": margin_loss}


def loss_by_name(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise BadInput(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}") from None


class ModelCalls:
    """Calls the target and counts per-image forward and backward evaluations."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.n_forward = 0
        self.n_backward = 0

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.n_forward += x.shape[0]
        return self.target(x)

    def loss_and_grad(
        self, x: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, logits (both detached) and the gradient of the summed loss wrt ``x``."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.target(x)
            loss = loss_fn(logits, labels)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.n_forward += x.shape[0]
        self.n_backward += x.shape[0]
        return loss.detach(), logits.detach(), grad.detach()


class AttackFn(Protocol):
    def __call__(
        self,
        target: Target,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None,
        norm: Norm,
        generator: torch.Generator,
        params: Any,
        y_target: torch.Tensor | None = None,
    ) -> AttackResult: ...


CostFn = Callable[[Any, int, int, int], tuple[int, int]]
"""``(params, n_images, num_classes, n_fit) -> (forward, backward)`` model calls, upper bound."""


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its function, params dataclass, supported norms and paper."""

    name: str
    fn: AttackFn
    params_cls: type
    norms: tuple[Norm, ...]
    minimal: bool = False
    summary: str = ""
    needs_fit_data: bool = False
    positive_budget: bool = False
    black_box: bool = False
    cost: CostFn | None = None
    streams: bool = False

    def max_calls(self, params: Any, n: int, num_classes: int, n_fit: int = 0
                  ) -> tuple[int, int] | None:
        """Upper bound on (forward, backward) per-image model calls for ``n`` images (``n_fit``
        fitting images), from the attack's full budget; ``None`` when the attack has no rule."""
        return None if self.cost is None else self.cost(params, n, num_classes, n_fit)

    def make_params(self, params: Mapping[str, Any] | Any = None) -> Any:
        """Build the frozen params dataclass from a mapping; unknown keys are named in the error."""
        return parse_params(self.params_cls, params, f"attack {self.name!r}")


ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(
    name: str, *, params: type, norms: tuple[Norm, ...], minimal: bool = False,
    needs_fit_data: bool = False, positive_budget: bool = False, black_box: bool = False,
    cost: CostFn | None = None, streams: bool = False,
) -> Callable[[AttackFn], AttackFn]:
    """Register an attack function under ``name`` (its docstring's first line is its summary).

    ``minimal``: takes ``eps = None`` and reports minimal perturbations. ``needs_fit_data``: the
    attack fits on training data, passed as ``fit_data=(x, y)`` (universal perturbations).
    ``positive_budget``: eps = 0 is refused (a UAP radius ξ or a pixel count k must be > 0).
    ``black_box``: uses model outputs only, never gradients (gradient-masking checks use this).
    ``cost``: the upper bound of model calls for a budget (``advbench run --dry-run``).
    ``streams``: takes ``batch_size=`` and works through any number of images that many at a
    time, refilling the rows that finish early; the runner then hands it a whole cell at once.
    """

    def decorator(fn: AttackFn) -> AttackFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        ATTACKS.add(name, AttackSpec(name, fn, params, norms, minimal, summary, needs_fit_data,
                                     positive_budget, black_box, cost, streams))
        return fn

    return decorator


def get_attack(name: str) -> AttackSpec:
    return ATTACKS.get(name)


def check_threat(spec: AttackSpec, threat: ThreatModel) -> None:
    """Raise :class:`BadInput` if ``spec`` cannot run under ``threat``."""
    if threat.norm not in spec.norms:
        raise BadInput(
            f"attack {spec.name!r} supports norms {', '.join(n.value for n in spec.norms)}, "
            f"not {threat.norm.value}"
        )
    if threat.eps is None and not spec.minimal:
        raise BadInput(f"attack {spec.name!r} needs an eps budget")
    if spec.positive_budget and threat.eps is not None and threat.eps <= 0:
        raise BadInput(f"attack {spec.name!r} needs eps > 0 (got {threat.eps_display}); its "
                       f"clean baseline is the clean_acc column of every row")
    if threat.norm is Norm.L0 and threat.eps is not None and (
            threat.eps < 1 or threat.eps != int(threat.eps)):
        raise BadInput(f"attack {spec.name!r}: an l0 budget is a pixel count, a whole number "
                       f">= 1; got eps {threat.eps_display}")


def run_attack(
    attack: str | AttackSpec,
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str | Norm = Norm.LINF,
    eps: float | str | None,
    generator: torch.Generator | None = None,
    params: Mapping[str, Any] | Any = None,
    y_target: torch.Tensor | None = None,
    fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Validate the request and run a registered attack in the target's eval mode.

    ``batch_size`` caps the rows a streaming attack (``spec.streams``) works on at a time; the
    others take all of ``x`` at once.

    Raises :class:`BadInput` for unknown names, bad eps, unknown params, inputs of the wrong
    shape or outside the target's bounds, and labels that do not match the inputs.
    """
    spec = attack if isinstance(attack, AttackSpec) else get_attack(attack)
    threat = ThreatModel.parse(norm, eps)
    check_threat(spec, threat)
    threat.check_against(target.bounds, target.input_shape)
    parsed = spec.make_params(params)
    target.check_inputs(x)
    if y.shape != (x.shape[0],):
        raise BadInput(f"labels must have shape [{x.shape[0]}], got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= target.num_classes):
        raise BadInput(f"labels must lie in 0..{target.num_classes - 1}")
    extra: dict[str, Any] = {}
    if spec.needs_fit_data:
        if fit_data is None:
            raise BadInput(f"attack {spec.name!r} fits on training data: pass fit_data=(x, y) "
                           f"(in a sweep: a dataset with a train split, or train_dataset)")
        target.check_inputs(fit_data[0])
        extra["fit_data"] = fit_data
    if batch_size is not None:
        if batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        if spec.streams:
            extra["batch_size"] = batch_size
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    with target.evaluating():
        return spec.fn(
            target, x, y, eps=threat.eps, norm=threat.norm, generator=generator,
            params=parsed, y_target=y_target, **extra,
        )
