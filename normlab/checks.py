"""Argument checks shared by layers, methods and optimizers: one clear error line each.

Torch-style constructors take the same few kinds of numeric argument (a channel or iteration
count, an ``eps``, a ``momentum``); checking each kind in one place keeps their error
messages identical wherever the argument appears.
"""

from __future__ import annotations

__all__ = ["check_count", "check_eps", "check_momentum"]


def check_count(value: int, name: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= ``minimum`` (a bool is not a count).

    The message reads ``"<name> must be a positive int, got ..."`` for ``minimum=1`` and
    ``"<name> must be an int >= <minimum>, got ..."`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_eps(eps: float, *, zero_ok: bool = False) -> None:
    """Raise ``ValueError`` unless ``eps > 0`` (``eps >= 0`` when ``zero_ok``: for a divisor
    that cannot reach 0 without it, or a damping term that may be off)."""
    if zero_ok:
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
    elif not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def check_momentum(momentum: float) -> None:
    """Raise ``ValueError`` unless ``momentum`` is in ``[0, 1]`` (torch's convention: the
    weight of the new batch in a running average)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
