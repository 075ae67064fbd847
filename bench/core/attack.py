"""The attack contract (DESIGN.md, "Attack" and "AttackResult") and the attack registry.

An attack is a pure batched function registered by name with a frozen params dataclass::

    @register_attack("pgd", params=PGDParams, norms=(Norm.LINF, Norm.L2))
    def pgd(target, x, y, *, eps, norm, generator, params, y_target=None) -> AttackResult: ...

Targeted vs untargeted is a field of the params, never object state; all randomness comes from
the ``torch.Generator`` passed in. :class:`Attack` is the one entry point: it parses the params
and checks the threat model once, then validates inputs (data bounds, labels) and runs the
attack in the target's eval mode with batching, streaming and the out-of-memory back-off.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from bench.core.errors import AttackContractError, BadInput
from bench.core.indicators import unavailable_gradients
from bench.core.norms import Norm, l0_norm, l2_norm, linf_norm, within_eps
from bench.core.params import parse_params
from bench.core.progress import progress_bar
from bench.core.registry import Registry
from bench.core.target import (
    Target,
    check_differentiable,
    check_finite_logits,
    warn_if_probabilities,
)

log = logging.getLogger(__name__)


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

    def largest(self, bounds: tuple[float, float], input_shape: tuple[int, ...]) -> float:
        """The largest meaningful budget of this norm: Linf the input range, L2 the box's
        diagonal (any point of the box is within it), L0 the pixel count."""
        span = bounds[1] - bounds[0]
        if self.norm is Norm.LINF:
            return span
        if self.norm is Norm.L2:
            return span * math.sqrt(math.prod(input_shape))
        return float(math.prod(input_shape[1:]) if len(input_shape) == 3
                     else math.prod(input_shape))

    def check_against(self, bounds: tuple[float, float], input_shape: tuple[int, ...]) -> None:
        """Raise :class:`BadInput` if eps exceeds what the bounds and input shape make meaningful."""
        if self.eps is None:
            return
        lo, hi = bounds
        limit = self.largest(bounds, input_shape)
        if self.eps > limit * (1 + 1e-9):  # a budget of the whole range, up to float rounding
            raise BadInput(
                f"eps {self.eps_display} exceeds the largest meaningful {self.norm.value} budget "
                f"{limit:g} for bounds [{lo:g}, {hi:g}] and inputs "
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

    ``effective_params`` names params the attack had to run differently than asked, with the
    value it used (APGD's DLR loss on a two-class target runs as the margin loss): the row's
    ``attack_params`` records them. ``n_grad_unavailable`` counts the per-image gradient
    evaluations (of ``n_backward``) that came back zero or not finite (the ``zero-grad``
    indicator, :mod:`bench.core.indicators`). ``notes``: what the run decided that the row
    should say in words (its ``decision`` column). ``earlier_s``: the seconds a run resumed
    from a checkpoint (:mod:`bench.core.resume`) spent before it resumed.
    """

    def __init__(self, x_adv: torch.Tensor, success: torch.Tensor | SuccessCheck,
                 l2: torch.Tensor, linf: torch.Tensor, l0: torch.Tensor, n_forward: int,
                 n_backward: int, y_target: torch.Tensor | None = None,
                 artifacts: dict[str, torch.Tensor] | None = None,
                 effective_params: dict[str, Any] | None = None,
                 n_grad_unavailable: int = 0) -> None:
        self.x_adv = x_adv
        self._success = success
        self.l2, self.linf, self.l0 = l2, linf, l0
        self.n_forward, self.n_backward = n_forward, n_backward
        self.y_target = y_target
        self.artifacts: dict[str, torch.Tensor] = artifacts or {}
        self.effective_params: dict[str, Any] = effective_params or {}
        self.n_grad_unavailable = n_grad_unavailable
        self.notes: list[str] = []
        self.earlier_s = 0.0  # seconds of a resumed run's pieces before it resumed

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
        effective_params: dict[str, Any] | None = None,
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
            effective_params=effective_params,
            n_grad_unavailable=calls.n_grad_unavailable,
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


def other_classes_by_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every class but ``y``, most likely first, ``[N, C-1]``: the order in which targeted
    attacks (APGD-T, FAB-T; Croce & Hein 2020) take their target classes."""
    ranked = logits.float().sort(dim=1, descending=True).indices
    return ranked[ranked != labels[:, None]].view(logits.shape[0], -1)


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
        self.n_grad_unavailable = 0
        self.checked = False

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a forward-only call; a model that returns NaN or infinite logits raises
        :class:`ModelOutputError` here rather than making every attack "fail" silently."""
        self.n_forward += x.shape[0]
        out = self.target(x)
        check_finite_logits(out, getattr(self.target, "name", "model"))
        warn_if_probabilities(self.target, out)
        return out

    @property
    def eot_iter(self) -> int:
        """Draws each gradient averages: the target's ``eot_iter`` when it is randomised, else 1
        (the draws of a deterministic target are identical)."""
        return self.target.eot_iter if getattr(self.target, "randomised", False) else 1

    def loss_and_grad(
        self, x: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, logits (both detached) and the gradient of the summed loss wrt ``x``.
        A row whose gradient is zero or not finite is counted (``n_grad_unavailable``); values
        that are not finite come back as 0, so an attack steps nowhere rather than into NaN.

        On a randomised target with ``eot_iter`` = k > 1 (Expectation over Transformation,
        Athalye et al. 2018) the loss, logits and gradient are the means over k draws, computed
        in one forward of k × the batch."""
        x = x.detach().requires_grad_(True)
        n, draws = x.shape[0], self.eot_iter
        with torch.enable_grad():
            inputs = x if draws == 1 else x.expand(draws, *x.shape).reshape(-1, *x.shape[1:])
            logits = self.target(inputs)
            if not self.checked:  # the first gradient call checks what the model returns
                check_differentiable(logits, getattr(self.target, "name", "model"))
                check_finite_logits(logits, getattr(self.target, "name", "model"))
                warn_if_probabilities(self.target, logits)
                self.checked = True
            loss = loss_fn(logits, labels if draws == 1 else
                           labels.repeat(draws, *([1] * (labels.ndim - 1))))
            if draws > 1:
                loss = loss.view(draws, n).mean(0)
                logits = logits.view(draws, n, -1).mean(0)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.n_forward += n * draws
        self.n_backward += n * draws
        self.count_gradients(grad)
        return loss.detach(), logits.detach(), torch.nan_to_num(grad.detach(), 0.0, 0.0, 0.0)

    def difference_gradients(self, x: torch.Tensor, classes: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at ``x`` and the gradients of ``z_k - z_0`` for the candidate classes
        ``classes[:, k]``, k ≥ 1 (one forward and K − 1 batched backward passes per image).

        Returns (logits ``[N, C]``, gradients ``[K-1, N, ...]``)."""
        k = classes.shape[1]
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.target(x)
            check_differentiable(logits, getattr(self.target, "name", "model"))
            picked = logits.gather(1, classes)  # [N, K]
            seeds = torch.zeros(k - 1, *picked.shape, device=x.device, dtype=picked.dtype)
            rows = torch.arange(k - 1, device=x.device)
            seeds[rows, :, rows + 1] = 1.0
            seeds[:, :, 0] = -1.0
            (grads,) = torch.autograd.grad(picked, x, grad_outputs=seeds, is_grads_batched=True)
        self.n_forward += x.shape[0]
        self.n_backward += x.shape[0] * (k - 1)
        self.count_gradients(grads.flatten(0, 1))
        return logits.detach(), torch.nan_to_num(grads.detach(), 0.0, 0.0, 0.0)

    def count_gradients(self, grad: torch.Tensor) -> None:
        """Count the rows of ``grad`` that are zero or not finite (one gradient evaluation
        each)."""
        self.n_grad_unavailable += int(unavailable_gradients(grad).sum())


@dataclass(frozen=True)
class AdaptiveParams:
    """What a gradient attack does on a randomised or non-differentiable defense (Athalye,
    Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018).

    ``eot_iter``: each gradient averages that many draws of a randomised target's forward
    (Expectation over Transformation); on a deterministic target the draws are identical, so
    it runs once and the row's ``decision`` column says so. ``bpda``: a defense's non-differentiable
    step is differentiated as its declared stand-in (BPDA); ``false`` differentiates the step
    itself, whose gradient is then zero (for the comparison; the ``zero-grad`` indicator fires).
    """

    eot_iter: int = 1
    bpda: bool = True

    @property
    def expectation_draws(self) -> int:
        """The draws of the target's randomness each gradient averages."""
        return self.eot_iter


def ran_once_note(eot_iter: int) -> str:
    """What a row says when its ``eot_iter`` > 1 met a deterministic target."""
    return f"eot_iter {eot_iter} ran as 1: the target is deterministic, its draws identical"


def adaptive_settings(params: Any) -> tuple[int, bool]:
    """``(eot_iter, bpda)`` of an attack's params (1, True for an attack without them);
    :class:`BadInput` for an ``eot_iter`` below 1."""
    eot_iter = int(getattr(params, "eot_iter", 1))
    if eot_iter < 1:
        raise BadInput(f"eot_iter must be >= 1, got {eot_iter}")
    return eot_iter, bool(getattr(params, "bpda", True))


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


@dataclass(frozen=True)
class CascadeMember:
    """One attack of a cascade: the name its rows carry, the registered attack and its params.
    ``conditional``: the member runs only when a failure indicator of the earlier members
    asks for it (:func:`attacks.cascade.failure_reasons`); otherwise it is skipped. ``probe``:
    a short black-box run whose margins, set against the white-box members', feed that
    decision. ``continues``: the member starts each sample from the point where the member
    before it left that sample's search (its ``x_init``), continuing one search in two parts."""

    name: str
    attack: str
    params: dict[str, Any]
    black_box: bool = False
    conditional: bool = False
    probe: bool = False
    continues: bool = False


@dataclass(frozen=True)
class MemberStats:
    """What one member of a cascade did: the samples it was given (those every earlier member
    missed), the samples it fooled, its model calls, its seconds, its gradient evaluations that
    came back zero or not finite, the samples it skipped (a conditional member no indicator
    asked for), and, for a black-box member, the samples on which it reached a higher margin
    loss than every white-box member before it. A cascade returns one per member as
    ``artifacts["members"]`` (a ``[members, fields]`` tensor, as artifacts are tensors):
    :meth:`table` writes it, :meth:`read` reads it back; a checkpoint stores them by field name
    (:meth:`named`)."""

    given: int
    fooled: int
    n_forward: int
    n_backward: int
    wall_s: float
    n_grad_unavailable: int = 0
    skipped: int = 0
    beat_white_box: int = 0

    @staticmethod
    def table(stats: Sequence[MemberStats]) -> torch.Tensor:
        """``[members, fields]``, the fields in :meth:`names` order (in memory, one run's)."""
        return torch.tensor([[getattr(s, name) for name in MemberStats.names()] for s in stats],
                            dtype=torch.float64).view(-1, len(MemberStats.names()))

    @staticmethod
    def read(table: torch.Tensor) -> list[MemberStats]:
        return [MemberStats(**MemberStats._typed(dict(zip(MemberStats.names(), row,
                                                          strict=True))))
                for row in table.tolist()]

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(MemberStats))

    @staticmethod
    def named(stats: Sequence[MemberStats]) -> dict[str, torch.Tensor]:
        """One tensor per field, ``member.<field>`` (how a checkpoint stores them: by name,
        so a checkpoint of another field set is told apart, never misread)."""
        table = MemberStats.table(stats)
        return {f"member.{name}": table[:, k].clone()
                for k, name in enumerate(MemberStats.names())}

    @staticmethod
    def from_named(tensors: Mapping[str, torch.Tensor]) -> list[MemberStats]:
        """The stats :meth:`named` wrote; :class:`KeyError` naming a field it lacks."""
        columns = {name: tensors[f"member.{name}"].tolist() for name in MemberStats.names()}
        count = len(next(iter(columns.values())))
        return [MemberStats(**MemberStats._typed({n: columns[n][i] for n in columns}))
                for i in range(count)]

    @staticmethod
    def _typed(values: dict[str, float]) -> dict[str, Any]:
        return {n: float(v) if n == "wall_s" else int(v) for n, v in values.items()}


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
    cascade: Callable[[Any], tuple[CascadeMember, ...]] | None = None
    only_on: tuple[str, ...] = ()
    starts: bool = False

    def max_calls(self, params: Any, n: int, num_classes: int, n_fit: int = 0
                  ) -> tuple[int, int] | None:
        """Upper bound on (forward, backward) per-image model calls for ``n`` images (``n_fit``
        fitting images), from the attack's full budget; ``None`` when the attack has no rule."""
        if self.cost is None:
            return None
        forward, backward = self.cost(params, n, num_classes, n_fit)
        draws = 1 if self.cascade is not None else adaptive_settings(params)[0]
        return forward * draws, backward * draws  # EOT: every draw is a call

    def make_params(self, params: Mapping[str, Any] | Any = None) -> Any:
        """Build the frozen params dataclass from a mapping; unknown keys are named in the error."""
        return parse_params(self.params_cls, params, f"attack {self.name!r}")


ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(
    name: str, *, params: type, norms: tuple[Norm, ...], minimal: bool = False,
    needs_fit_data: bool = False, positive_budget: bool = False, black_box: bool = False,
    cost: CostFn | None = None, streams: bool = False,
    cascade: Callable[[Any], tuple[CascadeMember, ...]] | None = None,
    only_on: tuple[str, ...] = (), starts: bool = False,
) -> Callable[[AttackFn], AttackFn]:
    """Register an attack function under ``name`` (its docstring's first line is its summary).

    ``minimal``: takes ``eps = None`` and reports minimal perturbations. ``needs_fit_data``: the
    attack fits on training data, passed as ``fit_data=(x, y)`` (universal perturbations).
    ``positive_budget``: eps = 0 is refused (a UAP radius ξ or a pixel count k must be > 0).
    ``black_box``: uses model outputs only, never gradients (gradient-masking checks use this).
    ``cost``: the upper bound of model calls for a budget (``advbench run --dry-run``).
    ``streams``: takes ``batch_size=`` and works through any number of images that many at a
    time, refilling the rows that finish early; the runner then hands it a whole cell at once.
    ``cascade``: the attack runs other attacks in turn; ``cascade(params)`` lists its members,
    and its result's ``artifacts`` say which member fooled each sample and what each cost
    (:mod:`attacks.cascade`); the runner writes a row per member. ``only_on``: the attack
    applies only to targets behind these defenses (SmoothAdv: a smoothed classifier); a sweep
    runs it on those and leaves the others out. ``starts``: the attack takes ``x_init=``, a
    starting point per image (a search continued from where an earlier run left it).
    """

    def decorator(fn: AttackFn) -> AttackFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        ATTACKS.add(name, AttackSpec(name, fn, params, norms, minimal, summary, needs_fit_data,
                                     positive_budget, black_box, cost, streams, cascade,
                                     only_on, starts))
        return fn

    return decorator


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


FitData = tuple[torch.Tensor, torch.Tensor]


def check_labels(target: Target, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Raise :class:`BadInput` unless ``y`` holds one integer class of ``target`` per image."""
    if y.shape != (x.shape[0],):
        raise BadInput(f"{what} must have shape [{x.shape[0]}] (one per image), got "
                       f"{tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise BadInput(f"{what} must be integer class indices (torch.long), got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= target.num_classes):
        raise BadInput(f"{what} must lie in 0..{target.num_classes - 1}, got "
                       f"{int(y.min())}..{int(y.max())}")



@dataclass(frozen=True)
class Attack:
    """A registered attack bound to a threat model and parsed params: the one way to run one.

    :meth:`create` parses the params into the attack's frozen dataclass and checks the threat
    model, once; calling the object (``attack(target, x, y, ...)``, final in the spirit of
    Foolbox's ``__call__`` over a ``run``) checks the inputs and runs the attack in the target's
    eval mode, ``batch_size`` rows at a time: a streaming attack (FGSM, BIM, PGD) takes all of
    ``x`` and keeps ``batch_size`` rows busy, an attack that fits on training data (UAP) fits its
    one perturbation on all of ``x``, every other attack takes ``x`` in chunks. A CUDA
    out-of-memory error halves the rows and runs again from the generator's starting state.
    """

    spec: AttackSpec
    threat: ThreatModel
    params: Any

    @classmethod
    def create(cls, attack: str | AttackSpec, *, norm: str | Norm = Norm.LINF,
               eps: float | str | None, params: Mapping[str, Any] | Any = None) -> Attack:
        """Raise :class:`BadInput` for unknown names, bad eps or unknown params."""
        spec = attack if isinstance(attack, AttackSpec) else ATTACKS.get(attack)
        threat = ThreatModel.parse(norm, eps)
        check_threat(spec, threat)
        parsed = spec.make_params(params)
        adaptive_settings(parsed)
        return cls(spec, threat, parsed)

    def at(self, eps: float | str | None) -> Attack:
        """The same attack and params at another budget (checked as :meth:`create` does)."""
        threat = ThreatModel.parse(self.threat.norm, eps)
        check_threat(self.spec, threat)
        return Attack(self.spec, threat, self.params)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def targeted(self) -> bool:
        return bool(getattr(self.params, "targeted", False))

    def check_inputs(self, target: Target, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise :class:`BadInput` for a budget the target's bounds make meaningless, inputs of
        the wrong shape or outside the bounds, and labels that do not match the inputs."""
        self.threat.check_against(target.bounds, target.input_shape)
        target.check_inputs(x)
        check_labels(target, x, y, "labels")

    def check_fit_data(self, target: Target, fit_data: FitData | None) -> None:
        """Raise :class:`BadInput` unless an attack that fits on training data got some."""
        if not self.spec.needs_fit_data:
            return
        if fit_data is None:
            raise BadInput(f"attack {self.name!r} fits on training data: pass fit_data=(x, y) "
                           f"(in a sweep: a dataset with a train split, or train_dataset)")
        fit_x, fit_y = fit_data
        if fit_x.shape[0] == 0:
            raise BadInput(f"attack {self.name!r}: fit_data holds no images")
        target.check_inputs(fit_x)
        check_labels(target, fit_x, fit_y, "fit_data labels")


    def check_start(self, target: Target, x: torch.Tensor, x_init: torch.Tensor | None) -> None:
        """Raise :class:`BadInput` unless ``x_init`` is None or starting points, one per image
        of ``x`` inside the bounds, for an attack that takes them."""
        if x_init is None:
            return
        if not self.spec.starts:
            raise BadInput(f"attack {self.name!r} takes no starting points (x_init)")
        if x_init.shape != x.shape:
            raise BadInput(f"x_init must have the inputs' shape {tuple(x.shape)}, got "
                           f"{tuple(x_init.shape)}")
        target.check_inputs(x_init)

    def __call__(self, target: Target, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None, y_target: torch.Tensor | None = None,
                 fit_data: FitData | None = None, batch_size: int | None = None,
                 progress: bool = False, x_init: torch.Tensor | None = None) -> AttackResult:
        """Attack ``(x, y)`` on ``target``; ``fit_data = (x, y)`` for an attack that fits on
        training data, ``y_target`` the target classes of a targeted attack (else its own),
        ``x_init`` the points an attack that takes them starts from (one per image)."""
        self.check_inputs(target, x, y)
        self.check_fit_data(target, fit_data)
        self.check_start(target, x, x_init)
        if batch_size is not None and batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        per_sample = {k: v for k, v in (("y_target", y_target), ("x_init", x_init))
                      if v is not None}
        eot_iter, bpda = adaptive_settings(self.params)
        with target.evaluating(), target.drawing_from(generator), \
                target.adaptive(eot_iter, bpda):
            result = self._run(target, x, y, generator, per_sample, fit_data,
                               batch_size or max(x.shape[0], 1), progress)
            bpda_note = target.bpda_note() if result.n_backward else None
        if eot_iter > 1 and not target.randomised:
            result.notes.append(ran_once_note(eot_iter))
        if bpda_note is not None:
            result.notes.append(bpda_note)
        if self.spec.minimal and self.threat.eps is not None:
            return at_budget(result, x, self.threat, target.bounds)
        return result

    def _run(self, target: Target, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, per_sample: dict[str, torch.Tensor],
             fit_data: FitData | None, rows: int, progress: bool) -> AttackResult:
        """Chunks of ``rows`` (or all of ``x`` at once), with the out-of-memory back-off."""
        start_state = generator.get_state()
        while True:
            try:
                return self._chunks(target, x, y, generator, per_sample, fit_data, rows,
                                    progress)
            except torch.cuda.OutOfMemoryError:
                if rows == 1 or self.spec.needs_fit_data:
                    raise
                rows = max(1, rows // 2)
                log.warning("CUDA out of memory in %s; running again with batch size %d",
                            self.name, rows)
                generator.set_state(start_state)
                torch.cuda.empty_cache()

    def _chunks(self, target: Target, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator, per_sample: dict[str, torch.Tensor],
                fit_data: FitData | None, rows: int, progress: bool) -> AttackResult:
        """Run the attack function on chunks of ``rows`` images; ``per_sample`` (``y_target``,
        ``x_init``) is cut like the images."""
        n = x.shape[0]
        whole = self.spec.needs_fit_data or self.spec.streams
        chunk = max(n, 1) if whole else rows
        extra: dict[str, Any] = {"fit_data": fit_data} if self.spec.needs_fit_data else {}
        if self.spec.streams:
            extra["batch_size"] = rows
        results = []
        with progress_bar(total=n, enabled=progress, leave=False, unit="img",
                  desc=f"{self.name}@{self.threat.eps_display}") as bar:
            for start in range(0, max(n, 1), chunk):
                part = slice(start, start + chunk)
                results.append(self.spec.fn(
                    target, x[part], y[part], eps=self.threat.eps, norm=self.threat.norm,
                    generator=generator, params=self.params,
                    **{k: v[part] for k, v in per_sample.items()}, **extra))
                bar.update(x[part].shape[0])
        return concat_results(results)


def budget_mask(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel,
                bounds: tuple[float, float]) -> torch.Tensor:
    """``[N]`` bool: which of a minimal-perturbation attack's adversarials lie inside
    ``threat``'s eps ball (all of them when eps is None)."""
    if threat.eps is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return within_eps(x_adv - x, threat.norm, threat.eps, bounds[1] - bounds[0])


def within_budget(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel,
                  bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A minimal-perturbation attack's adversarials seen at budget eps, and which lie inside
    the ball (:func:`budget_mask`): one outside keeps its clean input."""
    inside = budget_mask(x, x_adv, threat, bounds)
    return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), x_adv, x), inside


def at_budget(result: AttackResult, x: torch.Tensor, threat: ThreatModel,
              bounds: tuple[float, float]) -> AttackResult:
    """A minimal-perturbation result seen at budget eps: an adversarial outside the eps ball
    does not count (the sample keeps its clean input and is not fooled by the attack)."""
    x_adv, inside = within_budget(x, result.x_adv, threat, bounds)
    delta = x_adv - x
    seen = AttackResult(x_adv, result.success & inside, l2_norm(delta), linf_norm(delta),
                        l0_norm(delta), result.n_forward, result.n_backward,
                        y_target=result.y_target, artifacts=result.artifacts,
                        effective_params=result.effective_params,
                        n_grad_unavailable=result.n_grad_unavailable)
    seen.notes = result.notes
    return seen


def _join_artifacts(results: list[AttackResult]) -> dict[str, torch.Tensor]:
    """The chunks' artifacts as one run's: a per-sample artifact (one entry per image of its
    chunk) joined in sample order. Any other artifact describes a whole run, which a chunked
    attack cannot have: raise :class:`AttackContractError` rather than keep one chunk's."""
    joined: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(k for r in results for k in r.artifacts):
        parts = [r.artifacts.get(key) for r in results]
        if any(p is None or p.ndim == 0 or p.shape[0] != r.x_adv.shape[0]
               for p, r in zip(parts, results, strict=True)):
            raise AttackContractError(
                f"artifact {key!r} is not per-sample in every chunk, so chunks of one run "
                f"cannot be joined; return it with one entry per image")
        joined[key] = torch.cat([p for p in parts if p is not None])
    return joined


def concat_results(results: list[AttackResult]) -> AttackResult:
    """One result for consecutive chunks of a batch (model calls add up, per-sample artifacts
    are joined in order)."""
    if len(results) == 1:
        return results[0]
    checks = [r._success for r in results]

    def success() -> torch.Tensor:
        return torch.cat([r.success for r in results])

    targets = [r.y_target for r in results if r.y_target is not None]
    joined = AttackResult(
        x_adv=torch.cat([r.x_adv for r in results]),
        success=success if any(callable(c) for c in checks) else success(),
        l2=torch.cat([r.l2 for r in results]), linf=torch.cat([r.linf for r in results]),
        l0=torch.cat([r.l0 for r in results]),
        n_forward=sum(r.n_forward for r in results),
        n_backward=sum(r.n_backward for r in results),
        y_target=torch.cat(targets) if len(targets) == len(results) else None,
        artifacts=_join_artifacts(results),
        effective_params={k: v for r in results for k, v in r.effective_params.items()},
        n_grad_unavailable=sum(r.n_grad_unavailable for r in results),
    )
    joined.notes = list(dict.fromkeys(note for r in results for note in r.notes))
    joined.earlier_s = sum(r.earlier_s for r in results)
    return joined


def run_attack(
    attack: str | AttackSpec,
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str | Norm = Norm.LINF,
    eps: float | str | None = None,
    generator: torch.Generator | None = None,
    params: Mapping[str, Any] | Any = None,
    y_target: torch.Tensor | None = None,
    fit_data: FitData | None = None,
    batch_size: int | None = None,
    x_init: torch.Tensor | None = None,
) -> AttackResult:
    """``Attack.create(attack, norm=norm, eps=eps, params=params)(target, x, y, ...)``: one
    call from Python (``eps`` None: a minimal-perturbation attack such as DeepFool, unbounded). Raises :class:`BadInput` for unknown names, bad eps, unknown params,
    inputs of the wrong shape or outside the target's bounds, and labels that do not match."""
    return Attack.create(attack, norm=norm, eps=eps, params=params)(
        target, x, y, generator=generator, y_target=y_target, fit_data=fit_data,
        batch_size=batch_size, x_init=x_init)
