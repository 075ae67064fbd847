"""advbench attacks: one module per family, each registering its attacks in :data:`ATTACKS`.

The contract lives in the foundation, one module per concept: the entry point :class:`Attack`
(:mod:`bench.core.attack`), :class:`AttackResult` (:mod:`bench.core.result`), the registry
(:mod:`bench.core.attack_registry`) and :class:`ThreatModel` (:mod:`bench.core.threat`); they
are re-exported here for the Python API.
"""

from attacks import apgd as _apgd  # noqa: F401  (registers apgd, apgd_t)
from attacks import boundary as _boundary  # noqa: F401  (registers boundary)
from attacks import cascade as _cascade  # noqa: F401  (registers standard)
from attacks import cw as _cw  # noqa: F401  (registers cw)
from attacks import ddn as _ddn  # noqa: F401  (registers ddn)
from attacks import deepfool as _deepfool  # noqa: F401  (registers deepfool)
from attacks import ead as _ead  # noqa: F401  (registers ead)
from attacks import fab as _fab  # noqa: F401  (registers fab_t)
from attacks import fmn as _fmn  # noqa: F401  (registers fmn)
from attacks import gradient as _gradient  # noqa: F401  (registers fgsm, bim, pgd)
from attacks import hopskipjump as _hopskipjump  # noqa: F401  (registers hopskipjump)
from attacks import onepixel as _onepixel  # noqa: F401  (registers onepixel)
from attacks import smoothadv as _smoothadv  # noqa: F401  (registers smoothadv)
from attacks import square as _square  # noqa: F401  (registers square)
from attacks import transfer as _transfer  # noqa: F401  (registers mifgsm, difgsm)
from attacks import universal as _universal  # noqa: F401  (registers uap)
from bench.core.attack import Attack, run_attack
from bench.core.attack_registry import ATTACKS, AttackSpec, register_attack
from bench.core.calls import ModelCalls
from bench.core.norms import Norm
from bench.core.result import AttackResult
from bench.core.threat import ThreatModel

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
