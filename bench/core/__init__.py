"""advbench's foundation: the contracts and machinery every other package builds on.

Errors, the generic registry, params parsing, the :class:`~bench.core.target.Target`, norms and
threat models, the attack contract and its one entry point, checkpoints and the cache helper,
datasets, the model zoo, training and measurement. Nothing here imports a plugin package
(attacks, defenses, generative, leaderboards) or the orchestration in :mod:`bench`.
"""
