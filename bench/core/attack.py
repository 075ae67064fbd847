"""The one entry point that runs every attack.

:class:`Attack` parses the params and checks the threat model once, then validates inputs (data
bounds, labels, starting points) and runs the attack in the target's eval mode with batching,
streaming and the out-of-memory back-off; :func:`run_attack` is the one-call form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.attack_registry import ATTACKS, AttackSpec, FitData, check_labels, check_threat
from bench.core.calls import adaptive_settings, ran_once_note
from bench.core.errors import BadInput
from bench.core.norms import Norm
from bench.core.progress import progress_bar
from bench.core.result import AttackResult, at_budget, concat_results
from bench.core.resume import Checkpoints
from bench.core.target import (
    Target,
)
from bench.core.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attack:
    """A registered attack bound to a threat model and parsed params: the one way to run one.

    :meth:`create` parses the params into the attack's frozen dataclass and checks the threat
    model, once; calling the object (``attack(target, x, y, ...)``, final in the spirit of
    Foolbox's ``__call__`` over a ``run``) checks the inputs and runs the attack in the target's
    eval mode, ``batch_size`` rows at a time: a streaming attack (FGSM, BIM, PGD) takes all of
    ``x`` and keeps ``batch_size`` rows busy, an attack that fits on training data (UAP) fits its
    one perturbation on all of ``x``, every other attack takes ``x`` in chunks. A CUDA
    out-of-memory error halves the rows and runs again from the generator's starting state. A
    cascade given ``checkpoints`` saves its state after each member and resumes from a piece an
    interrupted run of the same cell left there (:mod:`bench.core.resume`).
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
                 progress: bool = False, x_init: torch.Tensor | None = None,
                 checkpoints: Checkpoints | None = None) -> AttackResult:
        """Attack ``(x, y)`` on ``target``; ``fit_data = (x, y)`` for an attack that fits on
        training data, ``y_target`` the target classes of a targeted attack (else its own),
        ``x_init`` the points an attack that takes them starts from (one per image),
        ``checkpoints`` where a cascade saves and resumes its pieces."""
        self.check_inputs(target, x, y)
        self.check_fit_data(target, fit_data)
        self.check_start(target, x, x_init)
        if checkpoints is not None and self.spec.cascade is None:
            raise BadInput(f"attack {self.name!r} keeps no checkpoints (only a cascade does)")
        if batch_size is not None and batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        per_sample = {k: v for k, v in (("y_target", y_target), ("x_init", x_init))
                      if v is not None}
        eot_iter, bpda = adaptive_settings(self.params)
        with target.evaluating(), target.drawing_from(generator), \
                target.adaptive(eot_iter, bpda):
            extra: dict[str, Any] = {"fit_data": fit_data} if self.spec.needs_fit_data else {}
            if checkpoints is not None:
                extra["checkpoints"] = checkpoints
            result = self._run(target, x, y, generator, per_sample, extra,
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
             extra: dict[str, Any], rows: int, progress: bool) -> AttackResult:
        """Chunks of ``rows`` (or all of ``x`` at once), with the out-of-memory back-off."""
        start_state = generator.get_state()
        while True:
            try:
                return self._chunks(target, x, y, generator, per_sample, extra, rows, progress)
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
                extra: dict[str, Any], rows: int, progress: bool) -> AttackResult:
        """Run the attack function on chunks of ``rows`` images; ``per_sample`` (``y_target``,
        ``x_init``) is cut like the images, ``extra`` (``fit_data``, ``checkpoints``) goes
        whole to every call."""
        n = x.shape[0]
        whole = self.spec.needs_fit_data or self.spec.streams
        chunk = max(n, 1) if whole else rows
        if self.spec.streams:
            extra = {**extra, "batch_size": rows}
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
    checkpoints: Checkpoints | None = None,
) -> AttackResult:
    """``Attack.create(attack, norm=norm, eps=eps, params=params)(target, x, y, ...)``: one
    call from Python (``eps`` None: a minimal-perturbation attack such as DeepFool, unbounded). Raises :class:`BadInput` for unknown names, bad eps, unknown params,
    inputs of the wrong shape or outside the target's bounds, and labels that do not match."""
    return Attack.create(attack, norm=norm, eps=eps, params=params)(
        target, x, y, generator=generator, y_target=y_target, fit_data=fit_data,
        batch_size=batch_size, x_init=x_init, checkpoints=checkpoints)
