"""Progress bars: tqdm's, drawn only when stderr is a terminal.

``disable=None`` is tqdm's own rule for that: on a terminal the bar redraws in place; in a log
file or a pipe (CI, ``nohup``, ``2> log``) nothing is written, so logs hold no cursor-control
escapes. ``enabled=False`` (``--no-progress``) turns bars off everywhere.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(*, enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar, shown only if ``enabled`` and stderr is a terminal."""
    return tqdm(disable=None if enabled else True, **kwargs)
