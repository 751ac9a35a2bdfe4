"""Arguments shared by the training commands, generated from :class:`TrainConfig`."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

from ...distributed import BACKENDS, STATS, DistributedConfig, torchrun_world
from ...methods import Method, create_method, method_accepts
from ..config import TrainConfig
from ..datasets import Dataset, load_dataset

__all__ = ["add_config_args", "config_from_args", "methods_from_args", "dataset_from_args",
           "distributed_from_args", "parse_key_values"]


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
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first..first+n-1")
    p.add_argument("--weight", type=float, default=None,
                   help="auxiliary-loss weight (std_loss; shortcut for --option weight=W)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method constructor option, given to every chosen method that takes it")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset files")
    p.add_argument("--no-download", action="store_true", help="never download data")
    p.add_argument("--out", type=Path, default=None, help="results folder")
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


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
    for key in options:
        if not any(method_accepts(n, key) for n in names):
            raise ValueError(f"option {key!r} is taken by none of the methods {names}")
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


def dataset_spec(args: argparse.Namespace, seed: int = 0) -> tuple:
    """What a worker process needs to load the same dataset (see normlab.lab.parallel)."""
    return (args.dataset, args.data_dir, not args.no_download, seed)


def dataset_from_args(args: argparse.Namespace, seed: int = 0) -> Dataset:
    return load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download,
                        seed=seed)
