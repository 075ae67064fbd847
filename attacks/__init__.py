"""advbench attacks: one module per family, each registering its attacks in :data:`ATTACKS`."""

from attacks import deepfool as _deepfool  # noqa: F401  (registers deepfool)
from attacks import gradient as _gradient  # noqa: F401  (registers fgsm, bim, pgd)
from attacks import onepixel as _onepixel  # noqa: F401  (registers onepixel)
from attacks import universal as _universal  # noqa: F401  (registers uap)
from attacks.base import (
    ATTACKS,
    AttackResult,
    AttackSpec,
    ModelCalls,
    ThreatModel,
    get_attack,
    register_attack,
    run_attack,
)
from attacks.norms import Norm

__all__ = [
    "ATTACKS",
    "AttackResult",
    "AttackSpec",
    "ModelCalls",
    "Norm",
    "ThreatModel",
    "get_attack",
    "register_attack",
    "run_attack",
]
