"""The lab: datasets, models, trainer, metrics, reports and the CLI. Imports the library, never
the other way round.

:func:`compare` (from :mod:`normlab.lab.api`) runs the lab on your own model and data from
Python; it is imported on first use, so ``import normlab.lab`` stays cheap.
"""

__all__ = ["compare", "CompareResult"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
