"""Declarative experiment specs for ``normlab reproduce``: what to run, not how.

A :class:`ReproSpec` names the paper claim, the data, the training configuration, the arms
(method + options + optional model), the seeds, experiment-specific parameters, and a
:class:`Quick` variant for smoke tests. Runners (``runners.py``) interpret specs; specs never
contain code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import TrainConfig

__all__ = ["Arm", "Claim", "Quick", "ReproSpec"]


@dataclass(frozen=True)
class Arm:
    """One trained variant: a registered method, its options, and optionally its own model.

    Attributes:
        label: name in tables and plots (unique within a spec).
        method: registered method name.
        options: constructor options of the method.
        model: a model that replaces the spec's ``config.model`` for this arm (e.g. PointNet
            with per-layer scale and shift for the standardization loss).
    """

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None


@dataclass(frozen=True)
class Claim:
    """A claim of a paper and the number or figure that supports it there.

    Attributes:
        key: what the runner measures for it (runner-specific, e.g. ``"speedup:std_loss"``).
        claim: the claim in one line.
        paper: the paper's figure or number, quoted.
    """

    key: str
    claim: str
    paper: str


@dataclass(frozen=True)
class Quick:
    """The tiny smoke-test variant of a spec: replacements applied by :meth:`ReproSpec.resolve`."""

    dataset: str = "synthetic"
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    seeds: int = 2
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReproSpec:
    """One ``normlab reproduce NAME`` experiment.

    Attributes:
        name: the command-line name (``fig1-cnn``).
        title: one-line title for the report.
        paper: citation of the paper whose figure this reproduces.
        runner: key of the runner that interprets this spec.
        dataset, dataset_options: the registered dataset and its loader options.
        config: training configuration shared by all arms (runners may derive from it).
        arms: the variants compared.
        seeds: number of seeds (0, 1, ...).
        params: runner-specific parameters (weight grid, batch sizes, recording period...).
        claims: the paper's claims this experiment checks.
        paper_setting: the paper's data and budget, for the "differences" column.
        budget_note: why our budget differs (CPU time), stated in the report.
        quick: the smoke-test variant.
    """

    name: str
    title: str
    paper: str
    runner: str
    dataset: str
    config: TrainConfig
    arms: tuple[Arm, ...]
    seeds: int
    claims: tuple[Claim, ...]
    paper_setting: str
    budget_note: str
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    quick: Quick = field(default_factory=Quick)

    def __post_init__(self) -> None:
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: arm labels must be unique, got {labels}")
        if self.seeds < 1:
            raise ValueError(f"{self.name}: seeds must be >= 1, got {self.seeds}")

    def resolve(self, quick: bool = False, seeds: int | None = None,
                params: Mapping[str, Any] | None = None) -> "ReproSpec":
        """The spec to run: itself, or its quick variant; ``seeds`` overrides the count and
        ``params`` replaces parameters (each must exist; a tuple parameter takes a tuple or
        one value, which becomes a 1-tuple). The budget note records every replacement.

        Raises:
            ValueError: an unknown parameter, or a value of the wrong type.
        """
        spec = self
        if quick:
            q = self.quick
            spec = dataclasses.replace(
                self, dataset=q.dataset, dataset_options=dict(q.dataset_options),
                config=dataclasses.replace(self.config, **q.config), seeds=q.seeds,
                params={**self.params, **q.params},
                budget_note="QUICK smoke test (tiny budget, synthetic or small data; numbers "
                            "are meaningless). The full run: " + self.budget_note)
        if seeds is not None:
            spec = dataclasses.replace(spec, seeds=seeds)
        if params:
            spec = dataclasses.replace(spec, params={**spec.params,
                                                     **self._checked(spec.params, params)},
                                       budget_note=spec.budget_note + " Parameters changed "
                                       "from the spec's: " + ", ".join(
                                           f"{k}={v!r}" for k, v in params.items()) + ".")
        return spec

    def _checked(self, known: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
        out = {}
        for key, value in params.items():
            if key not in known:
                raise ValueError(f"{self.name} has no parameter {key!r}; known: "
                                 f"{', '.join(known) or 'none'}")
            default = known[key]
            if isinstance(default, tuple) and not isinstance(value, (tuple, list)):
                value = (value,)
            elif isinstance(default, float) and isinstance(value, int):
                value = float(value)
            if isinstance(default, (tuple, list)):
                value = tuple(value)
            if not isinstance(value, type(default)):
                raise ValueError(f"{self.name} parameter {key} must be "
                                 f"{type(default).__name__} like {default!r}, got {value!r}")
            out[key] = value
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name, "title": self.title, "paper": self.paper, "runner": self.runner,
            "dataset": self.dataset, "dataset_options": dict(self.dataset_options),
            "config": self.config.to_dict(),
            "arms": [{"label": a.label, "method": a.method, "options": dict(a.options),
                      "model": a.model} for a in self.arms],
            "seeds": self.seeds, "params": dict(self.params),
            "paper_setting": self.paper_setting, "budget_note": self.budget_note,
        }
