"""The method registry: every normalization normlab knows, by name.

A method file defines a :class:`~normlab.methods.base.Method` subclass and registers it with
``@METHODS.register("name")``, which also sets the class's ``name``; importing this package
imports every method file, so ``normlab list`` and the tests parametrized over the registry
see it at once.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Union

from ..registry import Registry, normalize_name
from .base import KINDS, AuxiliaryLoss, Method

__all__ = ["METHODS", "MethodRegistry", "Method", "AuxiliaryLoss", "KINDS", "create_method",
           "method_accepts"]


class MethodRegistry(Registry[Callable[..., Method]]):
    """The method registry: registering a Method class also sets its ``name``, so the name
    is written once, in the decorator."""

    def register(self, name: str, obj: Callable[..., Method] | None = None):
        if obj is None:
            return lambda o: self.register(name, o)
        super().register(name, obj)
        if isinstance(obj, type) and issubclass(obj, Method):
            obj.name = normalize_name(name)
        return obj


METHODS = MethodRegistry("method")

MethodSpec = Union[str, Method, type, functools.partial]


def method_accepts(spec: str | Callable[..., Method], option: str) -> bool:
    """Whether the method's constructor takes the keyword ``option``."""
    factory = METHODS.get(spec) if isinstance(spec, str) else spec
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def create_method(spec: MethodSpec, **options: Any) -> Method:
    """A method instance from a registered name, a Method, a Method class or a partial.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: an option the method does not take (the message lists the ones it does).
    """
    if isinstance(spec, Method):
        if options:
            raise TypeError(f"options {sorted(options)} given for an already built {spec!r}")
        return spec
    factory = METHODS.get(spec) if isinstance(spec, str) else spec
    try:
        method = factory(**options)
    except TypeError as err:
        params = [p for p in inspect.signature(factory).parameters]
        raise TypeError(
            f"bad options {options} for method {spec!r}: {err}; it takes: {params or 'nothing'}"
        ) from None
    if not isinstance(method, Method):
        raise TypeError(f"{spec!r} did not build a Method (got {type(method).__name__})")
    return method


def _import_method_files() -> None:
    """Import every module of this package: each registers its methods on import."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_method_files()
