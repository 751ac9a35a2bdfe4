"""A short trainer: one method, one seed, curves out (in the manner of minGPT's trainer).

The trainer asks the method for its three training hooks (the model was built with the
fourth, ``block``): an auxiliary loss, an optimizer wrapper, and at the end the deployment
transform. Data live in memory; batches are index slices, shuffled deterministically from the
seed, so a run repeats bit for bit on the same machine and thread count.

Data parallel (``replica`` given, see :mod:`normlab.distributed`): every rank builds the same
model, trains it wrapped in DistributedDataParallel on its shard of each global batch, and
logs the mean of the ranks' losses; rank 0 alone evaluates. Without ``replica`` nothing of
this runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import Replica
from ..methods import Method
from ..surgery import deploy_model
from .config import TrainConfig
from .datasets import Batches, Dataset
from .input_scaling import scale_inputs
from .models import build_model

__all__ = ["RunResult", "train", "evaluate", "eval_schedule", "make_optimizer", "TrainingDiverged"]


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
    """Curves and summary of one training run."""

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

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "final_acc": self.final_acc}


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 2000) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        loss += F.cross_entropy(out, y[i:i + chunk], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + chunk]).sum().item()
    model.train(was_training)
    return correct / len(x), loss / len(x)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The base optimizer over the trainable parameters (before the method wraps it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def train(
    config: TrainConfig,
    data: Dataset,
    method: Method,
    seed: int,
    on_step: Callable[[int], None] | None = None,
    raise_on_nan: bool = False,
    replica: Replica | None = None,
) -> tuple[RunResult, nn.Module]:
    """Train ``config.model`` with ``method`` from ``seed``; evaluate at :func:`eval_schedule`.

    A non-finite loss stops the run and is recorded (``diverged_at``, ``diverged_reason``)
    with the curves up to that step, or raises :class:`TrainingDiverged` if ``raise_on_nan``.
    With ``replica`` (one rank of a data-parallel run) only rank 0's result has test curves.

    Returns:
        The run's curves and the trained model in its deployment form (auxiliary hooks
        removed, :func:`normlab.surgery.deploy_model` applied).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(seed)
    data = scale_inputs(data, config.input_scaling)
    model = build_model(config.model, method, data.in_shape, data.num_classes, init=config.init)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    if replica is not None:
        model = replica.prepare(model, method.batch_dependent)
    aux = method.auxiliary_loss(model)
    optimizer = method.wrap_optimizer(make_optimizer(config, model), model)
    # Hooks and optimizer wrappers hold the eager modules; DDP and compiled wrappers share them.
    forward = model if replica is None else replica.wrap(model)
    forward = torch.compile(forward) if config.compile else forward
    rank, world = (0, 1) if replica is None else (replica.rank, replica.world_size)
    batches = iter(Batches(len(data.x_train), config.batch_size, seed, rank, world))
    result = RunResult(method=method.name, seed=seed)
    evaluates = replica is None or replica.is_main
    eval_steps = set(eval_schedule(config))

    def record_eval(step: int) -> None:
        acc, loss = evaluate(model, data.x_test, data.y_test, config.eval_batch)
        result.eval_steps.append(step)
        result.test_acc.append(acc)
        result.test_loss.append(loss)

    start = time.perf_counter()
    if evaluates:
        record_eval(0)
    model.train()
    for step in range(1, config.steps + 1):
        idx = next(batches)
        inputs = data.x_train[idx]
        logits = forward(inputs.contiguous(memory_format=layout) if inputs.dim() == 4 else inputs)
        task = F.cross_entropy(logits, data.y_train[idx])
        extra = aux() if aux is not None else None
        loss = task if extra is None else task + extra
        if replica is None:
            finite = math.isfinite(loss.item())
            task_value, extra_value = task.item(), (0.0 if extra is None else extra.item())
        else:  # every rank decides on the same (mean) numbers, so all stop together
            task_value, extra_value = replica.mean(task, extra)
            finite = math.isfinite(task_value + extra_value)
        if not finite:
            reason = (f"non-finite loss at step {step}: task {task_value:.4g}"
                      + ("" if extra is None else f", auxiliary {extra_value:.4g}"))
            if raise_on_nan:
                raise TrainingDiverged(f"{method.name} seed {seed}: {reason}")
            result.diverged_at, result.diverged_reason = step, reason
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.train_loss.append(task_value)
        result.aux_loss.append(extra_value)
        if evaluates and step in eval_steps:
            record_eval(step)
        if on_step is not None:
            on_step(step)
    result.seconds = time.perf_counter() - start
    if aux is not None:
        aux.remove()
    if hasattr(optimizer, "remove"):
        optimizer.remove()
    if replica is not None:
        model = replica.finish(model)
    return result, deploy_model(model.eval(), method)
