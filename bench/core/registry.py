"""One generic name → object registry for attacks, defenses, models and datasets.

Registration is a decorator (as in timm's ``@register_model``); duplicate names raise instead of
silently overwriting; unknown names raise an error listing the closest registered names; listing
accepts shell-style wildcards (``"pgd*"``).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.core.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of entries of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name can be registered once only."""
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    @contextlib.contextmanager
    def scoped(self, name: str, entry: T) -> Iterator[T]:
        """Register ``entry`` under ``name`` (replacing an entry of that name) for the duration
        of a ``with`` block, then restore what was there: throwaway entries for tests."""
        key = name.lower()
        previous = self._entries.get(key)
        self._entries[key] = entry
        try:
            yield entry
        finally:
            if previous is None:
                del self._entries[key]
            else:
                self._entries[key] = previous

    def get(self, name: str) -> T:
        """Return the entry called ``name`` (case-insensitive) or raise :class:`UnknownName`."""
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise UnknownName(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name.lower(), list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        return f"unknown {self.kind} {name!r}; {hint}known: {', '.join(self.names())}"

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern.lower()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
