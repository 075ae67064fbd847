"""The runner's records, passed between preparing, attacking, verifying and summarising: a
target prepared for its cells (clean pass, weights' hashes), the model an attack is crafted on
(fast path, batch size, floor), an attack's raw run, and a cell's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bench.config import Cell
from bench.core.lipschitz import MarginGradient
from bench.core.target import Certificate, Target
from leaderboards.schema import SummaryRow


@dataclass
class PreparedTarget:
    """A target ready for its cells: the undefended ``base`` and the evaluated ``defended``
    model, the defended model's clean predictions of the evaluated samples, their margin
    gradients, the SHA-256 of both models' weights (every row records them), and how many
    predictions a second clean pass changed (the ``unstable`` indicator)."""

    base: Target
    defended: Target
    clean_pred: torch.Tensor
    labels: torch.Tensor
    margin_grad: MarginGradient = MarginGradient(None, None)  # not measured: null columns
    weights_sha256: str | None = None  # the defended target's weights (state_sha256)
    base_weights_sha256: str | None = None  # the undefended model's
    unstable: int = 0  # samples whose prediction a second clean pass changed (randomness)
    # a randomised target: the draws each prediction is judged over, and the samples every
    # draw classified correctly (None: deterministic, one pass decides)
    draws: int = 1
    correct_every_draw: torch.Tensor | None = None
    certificate: Certificate | None = None  # a certified defense's, on the evaluated samples
    certify_s: float | None = None
    # a deterministic target's bound certificates and their seconds, by (method, norm)
    bound_certificates: dict[tuple[str, str], tuple[Certificate, float]] = field(
        default_factory=dict)

    def certificate_of(self, cell: Cell) -> tuple[Certificate | None, float | None]:
        """The certificate beside ``cell``'s row and its seconds: the bound the cell asks for
        (``certify``), else the defense's own (None: neither)."""
        if cell.certify:
            return self.bound_certificates[(cell.certify, cell.threat_model.norm.value)]
        return self.certificate, self.certify_s

    def certified_at(self, cell: Cell) -> torch.Tensor | None:
        """``[N]``: the samples certified correct within the cell's eps (None: no certificate,
        or one of another norm, or no eps)."""
        cert, threat = self.certificate_of(cell)[0], cell.threat_model
        if cert is None or threat.norm.value != cert.norm or threat.eps is None:
            return None
        return (cert.pred == self.labels) & cert.holds_at(threat.eps)

    @property
    def clean_correct(self) -> torch.Tensor:
        """The samples counted as correctly classified: by every draw of a randomised target."""
        if self.correct_every_draw is not None:
            return self.correct_every_draw
        return self.clean_correct_one_draw

    @property
    def clean_correct_one_draw(self) -> torch.Tensor:
        return self.clean_pred == self.labels


@dataclass(frozen=True)
class AttackedModel:
    """The model a cell's attack is crafted on, prepared once per sweep and precision: the
    plain model (its floor is the row's reference), the copy on the chosen fast path with its
    batch size, the floor (:func:`bench.core.measure.floors`) and the precision it runs at."""

    plain: Target
    fast: Target
    fast_path: str
    batch_size: int
    floor: dict[tuple[str, str], float] | None = None
    precision: str = "fp32"  # what "auto" resolved to for this model

    def precision_for(self, cell: Cell) -> str:
        """The precision ``cell`` runs at: its own, or for ``auto`` the resolved one."""
        return self.precision if cell.precision == "auto" else cell.precision


@dataclass
class AttackRun:
    """The raw outcome of running one attack over the evaluated samples."""

    x_adv: torch.Tensor
    y_target: torch.Tensor | None
    n_forward: int
    n_backward: int
    wall_s: float
    peak_mem_bytes: int | None
    artifacts: dict[str, torch.Tensor]
    effective_params: dict[str, Any] = field(default_factory=dict)
    n_grad_unavailable: int = 0  # gradient evaluations that came back zero or not finite
    notes: list[str] = field(default_factory=list)  # what the run decided, in words


SAMPLE_ARTIFACTS = ("fooled_by", "members", "queries", "crossed", "improving", "margin")
"""Per-sample outputs of an attack that go into its rows, not into artifact files."""


@dataclass
class CellResult:
    summary: SummaryRow
    samples: dict[str, Any]
    artifacts: dict[str, torch.Tensor]
