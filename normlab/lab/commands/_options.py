"""Arguments shared by the training commands, generated from :class:`TrainConfig`."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
from numbers import Real
from pathlib import Path

from ...distributed import BACKENDS, STATS, DistributedConfig, torchrun_world
from ...methods import METHODS, Method, create_method, method_accepts
from ..config import TrainConfig
from ..datasets import GENERATED, Dataset, load_dataset
from ..datasets.arrays import TASKS, load_npz
from ..experiment import LR_SCALING

__all__ = ["add_config_args", "config_from_args", "methods_from_args", "dataset_from_args",
           "distributed_from_args", "batch_sizes_from_args", "model_from_args",
           "parse_key_values"]


def add_config_args(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field (same name, dashes for underscores), so the CLI
    and the config cannot drift; plus data, seeds, method options and output."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true",
                           help=f.metadata.get("help", ""))
            continue
        # choices= makes argparse name the allowed values in its one-line error.
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), choices=f.metadata.get("choices"),
                       help=f"{f.metadata.get('help', '')} (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default: %(default)s)")
    u = p.add_argument_group("your own model and data (see README 'Your own model')")
    u.add_argument("--batch-sizes", default=None, metavar="B1,B2,...",
                   help="sweep these batch sizes (each with every method and seed); --lr holds "
                        "at --batch-size")
    u.add_argument("--lr-scaling", choices=LR_SCALING, default="linear",
                   help="learning rate at each swept batch size B: linear (lr x B / "
                        "batch-size, Goyal et al. 2017) or none (default: %(default)s)")
    u.add_argument("--task", choices=("auto",) + TASKS, default="auto",
                   help="for an .npz dataset: auto (integer targets classify, float targets "
                        "regress with MSE), or force one (default: %(default)s)")
    u.add_argument("--resume", action="store_true",
                   help="keep the finished runs in OUT/runs and train only the others")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first..first+n-1")
    p.add_argument("--weight", type=float, default=None,
                   help="auxiliary-loss weight (std_loss; shortcut for --option weight=W)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method constructor option, given to every chosen method that takes it")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset files")
    p.add_argument("--no-download", action="store_true", help="never download data")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing result in --out (default: refuse; see README "
                        "'Guarantees under interruption and concurrent runs')")
    p.add_argument("--baseline", default="none", help="method the speed-up is measured against")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--jobs", type=int, default=1,
                   help="independent runs in parallel on this many single-threaded worker "
                        "processes (default: %(default)s)")
    d = p.add_argument_group("data parallel (torch DDP; see README 'Scaling out')")
    d.add_argument("--nproc", type=int, default=None,
                   help="processes on this machine, each with batch-size/nproc examples of "
                        "every batch (default: 1, or torchrun's world size under torchrun)")
    d.add_argument("--stats", choices=STATS, default="replica",
                   help="batch statistics of BN layers and std_loss: each rank's shard "
                        "(replica, the paper's) or the global batch (global: synchronized "
                        "norms, all-reduced std_loss moments) (default: %(default)s)")
    d.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="torch.distributed backend; auto: nccl with CUDA, else gloo")
    d.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a rank waiting longer than this for another fails the run "
                        "(default: %(default)s)")


# The largest seed torch.manual_seed takes without overflowing.
_MAX_SEED = 2**63 - 1


def _check(ok: bool, flag: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"{flag} must be {rule}, got {value!r}")


def check_args(args: argparse.Namespace) -> None:
    """Every option of ``run``/``compare`` checked in one place, before any work.

    Raises:
        ValueError: the first bad option, named in the message.
        KeyError: an unknown ``--baseline`` (the message lists the methods).
    """
    finite = math.isfinite
    _check(finite(args.lr) and args.lr > 0, "--lr", args.lr, "a finite number > 0")
    _check(finite(args.momentum) and args.momentum >= 0, "--momentum", args.momentum,
           "a finite number >= 0")
    _check(finite(args.weight_decay) and args.weight_decay >= 0, "--weight-decay",
           args.weight_decay, "a finite number >= 0")
    _check(args.eval_batch >= 1, "--eval-batch", args.eval_batch, ">= 1")
    _check(args.threads >= 0, "--threads", args.threads, ">= 0 (0: torch's default)")
    _check(args.seeds >= 1, "--seeds", args.seeds, ">= 1")
    _check(0 <= args.first_seed <= _MAX_SEED - args.seeds, "--first-seed", args.first_seed,
           f"in [0, 2**63 - 1 - --seeds] (a torch seed)")
    _check(args.jobs >= 1, "--jobs", args.jobs, ">= 1")
    _check(args.nproc is None or args.nproc >= 1, "--nproc", args.nproc, ">= 1")
    _check(finite(args.dist_timeout) and args.dist_timeout > 0, "--dist-timeout",
           args.dist_timeout, "a finite number of seconds > 0")
    if args.weight is not None:
        _check(finite(args.weight) and args.weight >= 0, "--weight", args.weight,
               "a finite number >= 0")
    if args.data_dir is not None and args.dataset in GENERATED:
        raise ValueError(f"--data-dir: the {args.dataset} dataset is generated, it takes no "
                         "data folder (leave --data-dir out)")
    if args.baseline not in METHODS:
        raise KeyError(f"--baseline {args.baseline!r} is not a method; known: "
                       f"{', '.join(METHODS.names())}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    check_args(args)
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def _check_option(names: list[str], key: str, value: object) -> None:
    """``--option key=value`` against the default of each chosen method that takes it: a
    number where the default is a number (finite where the default is), a bool for a bool."""
    for name in names:
        try:
            param = inspect.signature(METHODS.get(name)).parameters.get(key)
        except (TypeError, ValueError):
            continue
        default = None if param is None else param.default
        flag = f"--option {key}"
        if isinstance(default, bool):
            _check(isinstance(value, bool), flag, value, f"True or False ({name})")
        elif isinstance(default, Real) and default is not None:
            _check(isinstance(value, Real) and not isinstance(value, bool), flag, value,
                   f"a number ({name}'s default is {default})")
            _check(not math.isnan(value), flag, value, "a number, not nan")
            if math.isfinite(default):
                _check(math.isfinite(value), flag, value, f"finite ({name})")
            if key == "weight" or "eps" in key:
                _check(value >= 0, flag, value, ">= 0")


def parse_key_values(items: list[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` strings to a dict; a value is a Python literal where it parses as one,
    else the string. Raises ValueError naming ``flag`` for an item without ``=``."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            try:  # nan, inf: numbers literal_eval does not read, checked by _check_option
                out[key.strip()] = float(value)
            except ValueError:
                out[key.strip()] = value
    return out


def _parse_options(args: argparse.Namespace) -> dict[str, object]:
    options = parse_key_values(args.option, "--option")
    if args.weight is not None:
        options["weight"] = args.weight
    return options


def methods_from_args(names: list[str], args: argparse.Namespace) -> dict[str, Method]:
    """Build the named methods, giving each the options it accepts.

    Raises:
        KeyError: an unknown method (the message lists the known ones).
        ValueError: an option that none of the chosen methods takes.
    """
    if not names:
        raise ValueError("no method given")
    if len(set(names)) != len(names):
        raise ValueError(f"a method is named twice in {names}")
    options = _parse_options(args)
    for key, value in options.items():
        if not any(method_accepts(n, key) for n in names):
            raise ValueError(f"option {key!r} is taken by none of the methods {names}")
        _check_option(names, key, value)
    # --stats goes to the methods that take it (std_loss); layers are synchronized by the
    # trainer, so it is no error when none of the methods takes it.
    stats = getattr(args, "stats", "replica")
    if stats != "replica":
        options.setdefault("stats", stats)
    return {n: create_method(n, **{k: v for k, v in options.items() if method_accepts(n, k)})
            for n in names}


def distributed_from_args(args: argparse.Namespace, config: TrainConfig) -> DistributedConfig:
    """The data-parallel setting; checks that ``nproc`` divides the batch size.

    Raises:
        ValueError: a bad ``--nproc``/``--stats``, or a batch size the ranks cannot share.
    """
    world = torchrun_world()
    nproc = args.nproc if args.nproc is not None else (world or 1)
    dist = DistributedConfig(nproc=nproc, stats=args.stats, backend=args.backend,
                             timeout_s=args.dist_timeout)
    if world is not None and nproc not in (1, world):
        raise ValueError(f"--nproc {nproc} under torchrun with world size {world}: leave "
                         "--nproc out when using torchrun")
    ranks = world or nproc
    if config.batch_size % ranks:
        raise ValueError(f"--batch-size {config.batch_size} is not divisible by the {ranks} "
                         "processes; the global batch is split evenly across them")
    return dist


def batch_sizes_from_args(args: argparse.Namespace) -> list[int] | None:
    """``--batch-sizes 2,8,32``: distinct positive integers, or None when not given.

    Raises:
        ValueError: a malformed list (the option's name in the message).
    """
    if args.batch_sizes is None:
        return None
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes expects comma-separated integers, got "
                         f"{args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes must be integers >= 1, got {args.batch_sizes!r}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"--batch-sizes names a batch size twice: {args.batch_sizes!r}")
    return sizes


def model_from_args(args: argparse.Namespace):
    """The user's model function for ``--model MODULE:FUNCTION`` / ``file.py:FUNCTION``, or
    None for a registered lab model (checked by name when the model is built)."""
    from ..user_model import UserModel, is_model_spec

    return UserModel(args.model) if is_model_spec(args.model) else None


def _is_npz(args: argparse.Namespace) -> bool:
    return str(args.dataset).endswith(".npz")


def dataset_spec(args: argparse.Namespace, seed: int = 0):
    """What a worker process needs to load the same dataset (see normlab.lab.parallel)."""
    if _is_npz(args):
        return functools.partial(load_npz, args.dataset, task=_task(args))
    return (args.dataset, args.data_dir, not args.no_download, seed)


def _task(args: argparse.Namespace) -> str | None:
    task = getattr(args, "task", "auto")
    return None if task == "auto" else task


def dataset_from_args(args: argparse.Namespace, seed: int = 0) -> Dataset:
    """The registered dataset ``--dataset NAME``, or the arrays of ``--dataset file.npz``."""
    if _is_npz(args):
        return load_npz(args.dataset, task=_task(args))
    if _task(args) not in (None, "classification"):
        raise ValueError(f"--task {args.task}: the registered dataset {args.dataset!r} is a "
                         "classification")
    return load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download,
                        seed=seed)
