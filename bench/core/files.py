"""Files advbench writes: temporary folders that become results, sites and cache entries.

:func:`tempfile.mkdtemp` creates folders readable by their owner only (0700). A folder that is
renamed into place as a published site or a cache entry must instead get the permissions any
other tool would give it under the process umask (0755 under the usual 022), so that a web
server or a colleague's account can read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.core.errors import BadInput


def umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` with the permissions the umask gives new folders."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~umask())
    return path


def check_writable(folder: Path, what: str) -> None:
    """:class:`BadInput` unless ``folder`` (``what`` names it, e.g. ``--out``) can be created or
    written: it must not be a file, and its nearest existing ancestor must be writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{what} {folder} is a file; pick a folder")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write into {what} {folder}: {existing} is not writable; pick "
                       f"another {what}")
