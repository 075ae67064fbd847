"""advbench attacks: one module per family, each registering its attacks in :data:`ATTACKS`.

The contract (:class:`Attack`, :class:`AttackResult`, the registry) lives in
:mod:`bench.core.attack`; it is re-exported here for the Python API.
"""

from attacks import apgd as _apgd  # noqa: F401  (registers apgd, apgd_t)
from attacks import cascade as _cascade  # noqa: F401  (registers standard)
from attacks import deepfool as _deepfool  # noqa: F401  (registers deepfool)
from attacks import fab as _fab  # noqa: F401  (registers fab_t)
from attacks import gradient as _gradient  # noqa: F401  (registers fgsm, bim, pgd)
from attacks import onepixel as _onepixel  # noqa: F401  (registers onepixel)
from attacks import smoothadv as _smoothadv  # noqa: F401  (registers smoothadv)
from attacks import square as _square  # noqa: F401  (registers square)
from attacks import universal as _universal  # noqa: F401  (registers uap)
from bench.core.attack import (
    ATTACKS,
    Attack,
    AttackResult,
    AttackSpec,
    ModelCalls,
    ThreatModel,
    register_attack,
    run_attack,
)
from bench.core.norms import Norm

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "AttackSpec",
    "ModelCalls",
    "Norm",
    "ThreatModel",
    "register_attack",
    "run_attack",
]
