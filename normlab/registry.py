"""A small name -> factory registry with readable errors (in the manner of fvcore's Registry).

Names are normalized (case-insensitive, ``-`` and spaces read as ``_``) so that ``Batch-Norm``
and ``batch_norm`` find the same entry. Registering a name twice is a bug and raises; looking
up an unknown name raises a ``KeyError`` that lists every known name.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """Canonical form of a registry name: lower case, ``-`` and spaces become ``_``."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class Registry(Generic[T]):
    """Maps names to objects (usually factories).

    Args:
        kind: what the registry holds, used in error messages ("method", "model", ...).

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(): ...
        >>> MODELS.get("Tiny") is tiny
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""
        if obj is None:
            return lambda o: self.register(name, o)
        key = normalize_name(name)
        if key in self._items:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[key] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered under ``name``; a KeyError listing the known names otherwise."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = normalize_name(name)
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
