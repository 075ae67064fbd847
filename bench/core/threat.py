"""The threat model an attack runs under: a norm and a budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from bench.core.errors import BadInput
from bench.core.norms import Norm


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
        """The largest meaningful budget of this norm: Linf the input range, L2 and L1 the box's
        diagonal (any point of the box is within it), L0 the pixel count."""
        span = bounds[1] - bounds[0]
        if self.norm is Norm.LINF:
            return span
        if self.norm is Norm.L2:
            return span * math.sqrt(math.prod(input_shape))
        if self.norm is Norm.L1:
            return span * math.prod(input_shape)
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
