"""Run configuration: one frozen dataclass; the CLI is generated from its fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .init import INIT_SCHEMES
from .input_scaling import INPUT_SCALINGS

__all__ = ["TrainConfig", "OPTIMIZERS", "EVAL_SCHEDULES", "INIT_SCHEMES", "INPUT_SCALINGS"]

OPTIMIZERS = ("sgd", "adam")
EVAL_SCHEDULES = ("log", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run except the method and the seed.

    Defaults are the standardization-loss paper's small-network setting (arXiv:1903.00925,
    appendix A): SGD, learning rate 1e-3, batch 128, weight decay 4e-5, 1000 steps.
    """

    model: str = field(default="cnn", metadata={"help": "network (normlab list models)"})
    dataset: str = field(default="fashion_mnist", metadata={"help": "dataset name"})
    steps: int = field(default=1000, metadata={"help": "training steps"})
    batch_size: int = field(default=128, metadata={"help": "mini-batch size"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd or adam"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=4e-5, metadata={"help": "L2 weight decay"})
    eval_every: int = field(default=50, metadata={"help": "evaluate on the test set every K steps"})
    eval_schedule: str = field(default="log", metadata={
        "choices": EVAL_SCHEDULES,
        "help": "log: steps 1, 2, 4, 8, ... merged with every K (speed-ups resolved down to "
                "one step); linear: every K steps only"})
    init: str = field(default="torch", metadata={
        "choices": INIT_SCHEMES,
        "help": "weight init: torch (Kaiming-uniform a=sqrt(5), uniform biases) or glorot "
                "(TensorFlow's: Glorot-uniform weights, zero biases)"})
    input_scaling: str = field(default="standardize", metadata={
        "choices": INPUT_SCALINGS,
        "help": "inputs: standardize (training pixel mean/std), unit (p/255) or signed "
                "(2p/255 - 1)"})
    eval_batch: int = field(default=2000, metadata={"help": "test-set chunk size for evaluation"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: leave torch's default)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    channels_last: bool = field(default=False, metadata={
        "help": "channels-last memory layout for 4-D activations (same maths; ~1.6x faster "
                "CPU convolutions for the paper's cnn)"})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        for name, known in (("eval_schedule", EVAL_SCHEDULES), ("init", INIT_SCHEMES),
                            ("input_scaling", INPUT_SCALINGS)):
            if getattr(self, name) not in known:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; known: "
                                 f"{', '.join(known)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
