"""The defaults of a sweep, a run and ``advbench perf``, in one place: the config parser,
``bench.benchmark``, the runner's options, ``advbench perf`` and the command line's flags (and
their help) all read them here. Plain values, so the command line reads them without loading
torch."""

from __future__ import annotations

N_EVAL = 1000
"""Evaluated samples per dataset (``[sweep] n_eval``)."""

DRAWS = 10
"""Forward passes a randomised target's predictions are judged over (``[sweep] draws``): a
sample counts as robust only if every draw classifies it correctly."""

BATCH_SIZE = 500
"""Images per attack call (``[sweep] batch_size``)."""

CLAIM_TTL_S = 180.0
"""Seconds a sweep's claim on a cell (a lease its holder renews every quarter of this) may go
unrenewed before any other sweep, on any machine, takes the cell over (``[sweep] claim_ttl``,
``--claim-ttl``)."""

RETRIES = 2
"""Reruns of a failed worker or Ray task before its cells are reported as failed."""

PERF_GROUPS = ("fastpath", "fgsm", "pgd10", "pgd40-eval", "deepfool", "onepixel", "uap", "apgd",
               "standard", "rapid")
"""The case groups ``advbench perf`` runs, in order."""

PERF_PRECISIONS = ("fp32", "bf16")
PERF_REPEATS = 3
PERF_UAP_FIT = 200
PERF_EVAL_BATCHES = 4
