"""The user's own model, turned into each method's variant by surgery.

A model comes from a callable returning an ``nn.Module`` (from Python), or from the command
line as ``MODULE:FUNCTION`` (an importable module) or ``path/to/file.py:FUNCTION``. For every
method the callable is called afresh (after ``torch.manual_seed(seed)``, so every method
starts from the same weights of the layers they share) and the result is changed as the
method says:

==============  ===============================================================
method kind     what is done to the user's model
==============  ===============================================================
layer           its norm layers replaced (:func:`normlab.replace_norm`); for a
                norm-free model, the method's norm inserted after each weight
                layer (:func:`normlab.surgery.insert_norm`)
none            its norm layers removed (:func:`normlab.remove_norm`)
loss            norms removed; the trainer attaches the auxiliary loss
gradient        norms removed; the trainer wraps the optimizer
weight          norms removed; the weights reparametrized (``method.prepare``)
==============  ===============================================================

:func:`describe` says it in one line per method, for the report. A model whose norms the
method cannot handle raises ``ValueError`` with one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from torch import Tensor, nn

from ..methods import Method
from ..surgery import insert_norm, is_norm_layer, remove_norm, replace_norm

__all__ = ["load_model_fn", "is_model_spec", "build_variant", "describe", "ModelFn", "UserModel"]

ModelFn = Callable[[], nn.Module]


def is_model_spec(name: str) -> bool:
    """Whether ``name`` names the user's model (``MODULE:FUNCTION`` or ``file.py:FUNCTION``)
    rather than a registered lab model."""
    return ":" in name


def load_model_fn(spec: str) -> ModelFn:
    """The callable named by ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``.

    Raises:
        ValueError: a malformed spec, a module or file that does not import, a missing or
            non-callable attribute (one line each).
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"--model {spec!r}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"--model {spec!r}: no such file {path}")
        name = f"_normlab_user_model_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # so pickling the callable (--jobs workers) finds it
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise ValueError(f"--model {spec!r}: {path} fails to import: "
                             f"{type(err).__name__}: {err}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise ValueError(f"--model {spec!r}: cannot import {target!r}: "
                             f"{type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"--model {spec!r}: {target} has no callable {attr!r}")
    return fn


def _top_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Norm layers not inside another norm layer (what the converters act on)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if is_norm_layer(module) and not any(name.startswith(p + ".") for p, _ in found):
            found.append((name, module))
    return found


def _remove(model: nn.Module, report: list) -> nn.Module:
    return remove_norm(model, inplace=True, report=report)


def _replace(model: nn.Module, method: Method, report: list) -> nn.Module:
    return replace_norm(model, method, inplace=True, report=report)


def _insert(model: nn.Module, method: Method, example: Tensor | None, report: list) -> nn.Module:
    if example is None:
        raise ValueError(f"{method.name}: inserting norms into a norm-free model needs an "
                         "example input")
    return insert_norm(model, method, example, inplace=True, report=report)


def build_variant(model_fn: ModelFn, method: Method, example: Tensor | None = None,
                  report: list | None = None) -> nn.Module:
    """``model_fn()`` turned into ``method``'s variant (module docstring).

    Args:
        model_fn: a callable returning an ``nn.Module``.
        method: a built method.
        example: an input batch (to insert norms into a norm-free model).
        report: a list that gets one record (``name``, ``old``, ``new``, ``action``) per
            changed layer.

    Raises:
        TypeError: ``model_fn`` does not return an ``nn.Module``.
        ValueError: the method cannot be applied to this model (one line).
    """
    report = [] if report is None else report
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model function returned {type(model).__name__}, not an nn.Module")
    try:
        has_norm = bool(_top_norms(model))
        if method.kind == "layer":
            model = (_replace(model, method, report) if has_norm
                     else _insert(model, method, example, report))
        elif has_norm:
            model = _remove(model, report)
        return method.prepare(model)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        raise ValueError(f"method {method.name!r} cannot be applied to "
                         f"{type(model).__name__}: {err}") from None


def describe(method: Method, report: list, model: nn.Module) -> str:
    """One line: what was done to the user's model for ``method``."""
    parts = []
    by_action: dict[tuple[str, str, str], int] = {}
    for r in report:
        action = getattr(r, "action", "replaced")
        key = (action, r.old, r.new if action != "removed" else "")
        by_action[key] = by_action.get(key, 0) + 1
    for (action, old, new), n in by_action.items():
        if action == "removed" or new in ("removed", "Identity"):
            parts.append(f"{n} {old} removed")
        elif action == "inserted":
            parts.append(f"{n} {new} inserted after weight layers")
        else:
            parts.append(f"{n} {old} replaced by {new}")
    if method.kind == "loss":
        aux = method.auxiliary_loss(model)
        layers = getattr(aux, "layers", None)
        if aux is not None:
            aux.remove()
        parts.append(f"auxiliary loss on {len(layers)} layers" if layers is not None
                     else "auxiliary loss attached")
    elif method.kind == "gradient":
        parts.append(f"optimizer wrapped ({type(method).__name__})")
    elif method.kind == "weight":
        parts.append("weights reparametrized")
    return "; ".join(parts) or "unchanged"


class UserModel:
    """A picklable model function named by ``MODULE:FUNCTION`` or ``file.py:FUNCTION``:
    worker processes re-import it by its spec (a function loaded from a file has no module
    path they could import by)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fn = load_model_fn(spec)  # fail here, with one line, not in a worker

    @property
    def label(self) -> str:
        """A name fit for a folder: ``file-FUNCTION`` / ``module.sub-FUNCTION``."""
        target, _, attr = self.spec.rpartition(":")
        return f"{Path(target).stem if target.endswith('.py') else target}-{attr}"

    def __call__(self) -> nn.Module:
        return self._fn()

    def __getstate__(self) -> dict:
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"])
