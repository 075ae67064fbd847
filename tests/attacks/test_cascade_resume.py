"""A cascade killed after a member resumes from its checkpoint and ends as an uninterrupted
run, sample for sample; its calls and seconds add up over the pieces; a checkpoint of other
weights or samples is never resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from attacks import Attack
from bench.core.errors import BadInput
from bench.core.members import MemberStats
from bench.core.result import AttackResult
from bench.core.resume import Checkpoints, Piece, PieceDir, PieceStore, fingerprint
from bench.core.target import Target

PARAMS = {"version": "standard", "steps": 5, "target_classes": 2, "queries": 40}
EPS = 0.15


class Killed(Exception):
    """The worker dies right after a checkpoint."""


class DiesAfter(PieceDir):
    """Pieces on disk; the run is killed right after its ``n``-th piece is saved."""

    def __init__(self, root: Path, n: int) -> None:
        super().__init__(root)
        self.n = n

    def save(self, key: str, piece: Piece) -> None:
        super().save(key, piece)
        if piece.done == self.n:
            raise Killed(piece.label)


def cascade(target: Target, x: torch.Tensor, y: torch.Tensor,
            checkpoints: tuple[PieceStore, str] | None = None) -> AttackResult:
    """The cascade on ``(x, y)``; with ``checkpoints = (store, fingerprint)`` it saves and
    resumes its pieces there under the key ``run``."""
    attack = Attack.create("standard", norm="linf", eps=EPS, params=PARAMS)
    kept = None if checkpoints is None else Checkpoints(checkpoints[0], "run", checkpoints[1])
    return attack(target, x, y, generator=torch.Generator().manual_seed(3), batch_size=64,
                  checkpoints=kept)


@pytest.fixture
def xy(digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return digits[0][:60], digits[1][:60]


@pytest.mark.parametrize("killed_after", [1, 3])
def test_resumed_cascade_equals_an_uninterrupted_run(killed_after: int, lenet: Target,
                                                     xy: Any, tmp_path: Path) -> None:
    x, y = xy
    print_ = fingerprint("w", x, y)
    whole = cascade(lenet, x, y)
    store = DiesAfter(tmp_path, killed_after)
    with pytest.raises(Killed):
        cascade(lenet, x, y, (store, print_))
    assert store.load("run") is not None and store.load("run").done == killed_after
    resumed = cascade(lenet, x, y, (PieceDir(tmp_path), print_))
    assert torch.equal(resumed.x_adv, whole.x_adv)
    assert torch.equal(resumed.success, whole.success)
    assert torch.equal(resumed.artifacts["fooled_by"], whole.artifacts["fooled_by"])
    ours = MemberStats.read(resumed.artifacts["members"])
    theirs = MemberStats.read(whole.artifacts["members"])
    assert [(s.given, s.fooled, s.n_forward, s.n_backward) for s in ours] == \
        [(s.given, s.fooled, s.n_forward, s.n_backward) for s in theirs]
    assert (resumed.n_forward, resumed.n_backward) == (whole.n_forward, whole.n_backward)
    assert resumed.earlier_s > 0  # the first pieces' seconds are carried over
    assert any(f"resumed from a checkpoint after {killed_after} of 4 members" in note
               for note in resumed.notes), resumed.notes
    assert not any("resumed" in note for note in whole.notes)


def test_a_checkpoint_of_other_samples_or_weights_is_not_resumed(lenet: Target, xy: Any,
                                                                 tmp_path: Path) -> None:
    x, y = xy
    store = DiesAfter(tmp_path, 2)
    with pytest.raises(Killed):
        cascade(lenet, x, y, (store, fingerprint("w", x, y)))
    for other in (fingerprint("other weights", x, y), fingerprint("w", x.flip(0), y.flip(0))):
        result = cascade(lenet, x, y, (PieceDir(tmp_path), other))
        assert not any("resumed" in note for note in result.notes)


def test_a_corrupt_checkpoint_is_reported_and_the_run_starts_over(
        lenet: Target, xy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x, y = xy
    (tmp_path / "run.safetensors").write_bytes(b"not a checkpoint")
    result = cascade(lenet, x, y, (PieceDir(tmp_path), fingerprint("w", x, y)))
    assert "is not a readable checkpoint" in caplog.text
    assert torch.equal(result.x_adv, cascade(lenet, x, y).x_adv)
    assert PieceDir(tmp_path).load("run") is not None  # overwritten by the run's own pieces


def test_a_checkpoint_of_another_member_stats_layout_is_refused_in_one_line(
        lenet: Target, xy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint whose member stats are one positional table (or lack a field this advbench
    stores) is not read by position: the log says so and the run starts over."""
    x, y = xy
    print_ = fingerprint("w", x, y)
    with pytest.raises(Killed):
        cascade(lenet, x, y, (DiesAfter(tmp_path, 1), print_))
    piece = PieceDir(tmp_path).load("run")
    assert piece is not None
    stats = MemberStats.from_named(piece.tensors)
    piece.tensors = {k: v for k, v in piece.tensors.items() if not k.startswith("member.")}
    piece.tensors["members"] = MemberStats.table(stats)[:, :7]  # an older layout, by position
    PieceDir(tmp_path).save("run", piece)
    result = cascade(lenet, x, y, (PieceDir(tmp_path), print_))
    refused = [r for r in caplog.records if "starts over" in r.getMessage()]
    assert len(refused) == 1 and "members" in caplog.text
    assert not any("resumed" in note for note in result.notes)
    assert torch.equal(result.x_adv, cascade(lenet, x, y).x_adv)


def test_checkpoints_are_refused_by_an_attack_that_keeps_none(lenet: Target, xy: Any,
                                                              tmp_path: Path) -> None:
    x, y = xy
    pgd = Attack.create("pgd", norm="linf", eps=EPS, params={"steps": 2})
    with pytest.raises(BadInput, match="attack 'pgd' keeps no checkpoints"):
        pgd(lenet, x, y, checkpoints=Checkpoints(PieceDir(tmp_path), "run", "fp"))
    assert not any(tmp_path.iterdir())
