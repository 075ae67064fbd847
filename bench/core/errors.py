"""Error types shared by every advbench package.

`BadInput` (and its subclasses) mean the user asked for something that cannot work: an unknown
name, a malformed config, data outside the declared bounds. The CLI prints their one-line message
and exits with code 2. Anything else is a failure of advbench itself (exit code 1).
"""

from __future__ import annotations


class BadInput(ValueError):
    """The user's input is wrong; the message says what is wrong and what would be right."""


class UnknownName(BadInput, KeyError):
    """A registry lookup failed (unknown attack, model, dataset, defense...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(BadInput):
    """A sweep config is malformed (unknown key, wrong type, bad value)."""


class ModelOutputError(BadInput):
    """A model returned something that is not finite [N, C] logits."""


class AttackContractError(AssertionError):
    """An attack broke its contract (left the bounds or the eps ball): a bug, never user error."""
