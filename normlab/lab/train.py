"""The trainer: one built model, one method, one seed, curves out (minGPT's trainer style).

:class:`Trainer` takes a model that is already built (a lab model, or the user's after
surgery, :mod:`normlab.lab.user_model`) and trains it: the method's training hooks are
attached for the run and always detached at its end (:meth:`Method.attached
<normlab.methods.base.Method.attached>`), and callbacks (``on_step``, ``on_eval``,
``on_end``) see the trainer's state (``step``, ``task_value``, ``aux_value``, ``result``,
``model``, ``optimizer``). :meth:`Trainer.step` is the one training step of normlab: the lab,
``normlab bench`` and the tests all call it.

Batches: in-memory data are index slices shuffled from the seed (:class:`Batches`), so a run
repeats bit for bit on the same machine and thread count; data given as a torch Dataset or
DataLoader stream through a DataLoader seeded the same way (:mod:`normlab.lab.datasets.arrays`).
Classification trains on cross-entropy and reports accuracy; regression (float targets) on
mean squared error and reports it (lower is better).

Data parallel (``replica`` given, see :mod:`normlab.distributed`): every rank builds the same
model, trains it wrapped in DistributedDataParallel on its shard of each global batch, and
logs the mean of the ranks' losses; rank 0 alone evaluates. Without ``replica`` nothing of
this runs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import Replica
from ..methods import Method
from ..surgery import deploy_model
from .config import TrainConfig
from .datasets import Dataset
from .datasets.arrays import check_targets, task_of, test_stream, train_stream
from .input_scaling import scale_inputs
from .models import build_model

__all__ = ["RunResult", "Trainer", "train", "evaluate", "evaluate_stream", "eval_schedule",
           "make_optimizer", "task_loss", "build_run_model", "example_batch", "TrainingDiverged", "METRICS"]

#: The test metric of each task and whether a higher value is better.
METRICS = {"classification": ("accuracy", True), "regression": ("mse", False)}


def eval_schedule(config: TrainConfig) -> list[int]:
    """The steps at which a run evaluates, ascending.

    Always step 0, every ``eval_every`` steps and the last step; with
    ``eval_schedule="log"`` (the default) also the powers of two 1, 2, 4, 8, ... below the
    budget, so that a curve's early rise, and with it a large speed-up, is resolved down to
    a single step instead of being capped at ``steps / eval_every``.
    """
    steps = set(range(0, config.steps + 1, config.eval_every)) | {config.steps}
    if config.eval_schedule == "log":
        steps |= {1 << k for k in range(config.steps.bit_length()) if 1 << k <= config.steps}
    return sorted(steps)


class TrainingDiverged(RuntimeError):
    """A non-finite loss: raised when the caller asks for errors instead of a stopped run."""


@dataclass
class RunResult:
    """Curves and summary of one training run. ``test_acc`` holds the task's test metric
    (accuracy for classification, mean squared error for regression: see ``metric``)."""

    method: str
    seed: int
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    diverged_at: int | None = None
    diverged_reason: str = ""
    seconds: float = 0.0
    batch_size: int = 0
    lr: float = 0.0
    metric: str = "accuracy"

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "final_acc": self.final_acc}

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        """The inverse of :meth:`to_dict` (JSON's ``null`` back to NaN in the curves)."""
        nan = float("nan")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("test_acc", "test_loss", "train_loss", "aux_loss"):
            kw[k] = [nan if v is None else float(v) for v in kw.get(k, [])]
        return cls(**kw)


def task_loss(task: str, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy (classification) or mean squared error (regression; a target of the
    output's size is reshaped to it, so ``(N,)`` targets fit an ``(N, 1)`` output)."""
    if task == "regression":
        if target.shape != out.shape and target.numel() == out.numel():
            target = target.reshape(out.shape)
        return F.mse_loss(out, target.to(out.dtype), reduction=reduction)
    return F.cross_entropy(out, target, reduction=reduction)


@torch.no_grad()
def evaluate_stream(model: nn.Module, batches, task: str = "classification"
                    ) -> tuple[float, float]:
    """The test metric and mean loss of ``model`` (eval mode) over ``(x, y)`` batches:
    (accuracy, cross-entropy) or (mse, mse)."""
    was_training = model.training
    model.eval()
    hits, loss, n = 0.0, 0.0, 0
    for x, y in batches:
        out = model(x)
        check_targets(task, out, y)
        loss += task_loss(task, out, y, reduction="sum").item()
        if task == "classification":
            hits += (out.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    if task == "regression":
        loss = loss / (n * max(1, out[0].numel()))
        return loss, loss
    return hits / n, loss / n


def evaluate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 2000) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on ``(x, y)``."""
    return evaluate_stream(model, ((x[i:i + chunk], y[i:i + chunk])
                                   for i in range(0, len(x), chunk)))


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The base optimizer over the trainable parameters (before the method wraps it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


Callback = Callable[["Trainer"], None]
EVENTS = ("on_step", "on_eval", "on_end")


class Trainer:
    """Train a built ``model`` with ``method`` from ``seed``; evaluate on ``eval_schedule``.

    Args:
        config: steps, batch size, optimizer, evaluation (``config.model`` is not read).
        model: the model to train, already built for ``method`` (its ``prepare`` applied).
        data: a lab :class:`~normlab.lab.datasets.Dataset`, or user data
            (:mod:`normlab.lab.datasets.arrays`).
        method: the method whose auxiliary loss / optimizer wrapper train the model.
        seed: seeds the batch order (seed torch yourself before building the model).
        replica: one rank of a data-parallel run, or None.
        raise_on_nan: raise :class:`TrainingDiverged` instead of recording a stopped run.

    Example:
        >>> trainer = Trainer(config, model, data, method, seed=0)
        >>> trainer.add_callback("on_eval", lambda t: print(t.step, t.result.test_acc[-1]))
        >>> result = trainer.run()
    """

    def __init__(self, config: TrainConfig, model: nn.Module, data, method: Method, seed: int,
                 replica: Replica | None = None, raise_on_nan: bool = False) -> None:
        if isinstance(data, Dataset):  # the lab's datasets: the input-scaling ablation
            data = scale_inputs(data, config.input_scaling)
        self.config, self.data, self.method, self.seed = config, data, method, seed
        self.replica, self.raise_on_nan = replica, raise_on_nan
        self.task = task_of(data)
        self.layout = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.layout)
        if replica is not None:
            self.model = replica.prepare(self.model, method.batch_dependent)
        self.callbacks: dict[str, list[Callback]] = defaultdict(list)
        self.result = RunResult(method=method.name, seed=seed, batch_size=config.batch_size,
                                lr=config.lr, metric=METRICS[self.task][0])
        self.step, self.task_value, self.aux_value = 0, math.nan, 0.0
        self.optimizer = self.aux = self.forward = None
        self._stack: contextlib.ExitStack | None = None
        self._checked = False  # in-memory data were validated up front; their first batch
        self.streams = hasattr(data, "train_batches")  # tells a model/target mismatch

    def add_callback(self, event: str, callback: Callback) -> "Trainer":
        """Call ``callback(trainer)`` on ``event`` (one of ``on_step``, ``on_eval``, ``on_end``)."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
        self.callbacks[event].append(callback)
        return self

    def _trigger(self, event: str) -> None:
        for callback in self.callbacks[event]:
            callback(self)

    # ------------------------------------------------------------------ the method's hooks

    def open(self) -> "Trainer":
        """Build the optimizer and attach the method's hooks (``run`` does this itself)."""
        self._stack = contextlib.ExitStack()
        attached = self._stack.enter_context(
            self.method.attached(self.model, make_optimizer(self.config, self.model)))
        self.aux, self.optimizer = attached
        # Hooks and optimizer wrappers hold the eager modules; DDP and compiled wrappers share them.
        forward = self.model if self.replica is None else self.replica.wrap(self.model)
        self.forward = torch.compile(forward) if self.config.compile else forward
        self.model.train()
        return self

    def close(self) -> None:
        """Detach the method's auxiliary loss and optimizer wrapper (idempotent)."""
        if self._stack is not None:
            self._stack, stack = None, self._stack
            stack.close()

    # ------------------------------------------------------------------------- the step

    def loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """The task loss of one batch and the method's auxiliary term (or None)."""
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self.layout)
        out = self.forward(inputs)
        if not self._checked or self.streams:  # a streamed batch is checked as it comes
            check_targets(self.task, out, targets)
            self._checked = True
        task = task_loss(self.task, out, targets)
        return task, (self.aux() if self.aux is not None else None)

    def train_step(self, inputs: Tensor, targets: Tensor) -> bool:
        """zero_grad + forward + task loss (+ auxiliary) + backward + step, once.

        Returns False (and steps nothing) when the loss is not finite: every rank of a
        data-parallel run decides on the same (mean) numbers, so all stop together.
        """
        task, extra = self.loss(inputs, targets)
        loss = task if extra is None else task + extra
        if self.replica is None:
            finite = math.isfinite(loss.item())
            task_value, extra_value = task.item(), (0.0 if extra is None else extra.item())
        else:
            task_value, extra_value = self.replica.mean(task, extra)
            finite = math.isfinite(task_value + extra_value)
        self.task_value, self.aux_value = task_value, extra_value
        if not finite:
            return False
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return True

    def _record_eval(self) -> None:
        metric, loss = evaluate_stream(self.model, test_stream(self.data, self.config.eval_batch),
                                       self.task)
        self.result.eval_steps.append(self.step)
        self.result.test_acc.append(metric)
        self.result.test_loss.append(loss)
        self._trigger("on_eval")

    def run(self) -> RunResult:
        """Train ``config.steps`` steps (or until the loss is not finite); the curves."""
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        rank, world = (0, 1) if self.replica is None else (self.replica.rank,
                                                           self.replica.world_size)
        batches = iter(train_stream(self.data, self.config.batch_size, self.seed, rank, world))
        evaluates = self.replica is None or self.replica.is_main
        eval_steps = set(eval_schedule(self.config))
        result = self.result
        start = time.perf_counter()
        self.open()
        try:
            if evaluates:
                self._record_eval()
            self.model.train()
            for self.step in range(1, self.config.steps + 1):
                inputs, targets = next(batches)
                if not self.train_step(inputs, targets):
                    reason = (f"non-finite loss at step {self.step}: task {self.task_value:.4g}"
                              + ("" if self.aux is None else f", auxiliary {self.aux_value:.4g}"))
                    if self.raise_on_nan:
                        raise TrainingDiverged(f"{self.method.name} seed {self.seed}: {reason}")
                    result.diverged_at, result.diverged_reason = self.step, reason
                    break
                result.train_loss.append(self.task_value)
                result.aux_loss.append(self.aux_value)
                if evaluates and self.step in eval_steps:
                    self._record_eval()
                self._trigger("on_step")
        finally:
            self.close()
        result.seconds = time.perf_counter() - start
        self._trigger("on_end")
        return result

    def deployed(self) -> nn.Module:
        """The trained model in its deployment form (:func:`normlab.surgery.deploy_model`)."""
        model = self.model if self.replica is None else self.replica.finish(self.model)
        return deploy_model(model.eval(), self.method)


def example_batch(data, n: int = 4) -> Tensor:
    """A few training inputs (what surgery runs a forward on to learn shapes)."""
    size = len(data.x_train) if hasattr(data, "x_train") else len(data)
    return next(iter(train_stream(data, max(1, min(n, size)), 0)))[0]


def build_run_model(config: TrainConfig, data, method: Method,
                    model_fn: Callable[[], nn.Module] | None = None,
                    report: list | None = None) -> nn.Module:
    """The model one run trains: the user's ``model_fn`` variant, or the lab's ``config.model``."""
    if model_fn is None:
        return build_model(config.model, method, data.in_shape, data.num_classes,
                           init=config.init)
    from .user_model import build_variant

    return build_variant(model_fn, method, example_batch(data), report)


def train(
    config: TrainConfig,
    data: Dataset,
    method: Method,
    seed: int,
    on_step: Callable[[int], None] | None = None,
    raise_on_nan: bool = False,
    replica: Replica | None = None,
    model: nn.Module | None = None,
    model_fn: Callable[[], nn.Module] | None = None,
) -> tuple[RunResult, nn.Module]:
    """Train ``method``'s model from ``seed``: a :class:`Trainer` run.

    The model is ``model`` if given, else ``model_fn()`` turned into the method's variant
    (:func:`normlab.lab.user_model.build_variant`), else the registered lab model
    ``config.model`` built for the method.

    Returns:
        The run's curves and the trained model in its deployment form (auxiliary hooks
        removed, :func:`normlab.surgery.deploy_model` applied).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(seed)
    if model is None:
        model = build_run_model(config, data, method, model_fn)
    trainer = Trainer(config, model, data, method, seed, replica=replica,
                      raise_on_nan=raise_on_nan)
    if on_step is not None:
        trainer.add_callback("on_step", lambda t: on_step(t.step))
    result = trainer.run()
    return result, trainer.deployed()
