"""normlab.distributed: DDP training, global vs replica statistics, synchronized norms.

Multi-process checks run on 2 local gloo processes (127.0.0.1, a free port) started by
normlab.distributed.spawn; each compares against a single-process reference computed in the
same process on the concatenated batch (the reference never communicates). The spawned
checks are collected in one session (process start-up is the expensive part on 2 cores) and
reported as separate test items.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import threading
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from normlab.distributed import (DistributedConfig, RankFailedError, Replica,
                                 global_l1_moments, global_linf_moments, global_mean_var,
                                 global_range_moments, global_standardization_loss, launch,
                                 revert_sync_norm, spawn, sync_norm, unsynced_batch_layers)
from normlab.distributed.sync_norm import SyncBatchNorm, SyncLinfBatchNorm
from normlab.functional import standardization_loss
from normlab.functional.dispersion_batch_norm import l1_moments, linf_moments, range_moments
from normlab.lab.cli import main as cli_main
from normlab.lab.models import build_model
from normlab.layers import BatchRenorm, L1BatchNorm, LinfBatchNorm, RangeBatchNorm
from normlab.losses import StandardizationLoss
from normlab.methods import create_method

TWO = DistributedConfig(nproc=2, backend="gloo", timeout_s=60.0)


def _close(actual, expected, what, atol=1e-5, rtol=1e-4):
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=atol,
                                                            rtol=rtol):
        diff = (actual - expected).abs().max().item() if actual.shape == expected.shape else None
        raise AssertionError(f"{what}: max |diff| {diff} (shapes {tuple(actual.shape)}, "
                             f"{tuple(expected.shape)})")


def _same_on_all_ranks(t: torch.Tensor, what: str) -> None:
    """Exactly equal on every rank (max and min over ranks agree)."""
    hi, lo = t.detach().clone().double(), -t.detach().clone().double()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MAX)
    if not torch.equal(hi, -lo):
        raise AssertionError(f"{what} differs across ranks by {(hi + lo).abs().max().item()}")


# --------------------------------------------------------------------------- spawned checks

def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g) * 2 + 0.5, torch.randint(0, 4, (n,), generator=g)


def _ddp_grads(replica: Replica, method_name: str, mode: str, **options):
    """Gradients of one DDP step on this rank's shard, and of the single-process reference.

    Reference objective: cross-entropy of the full batch plus the method's auxiliary loss,
    for ``mode="global"`` on the full batch, for ``"replica"`` the mean of the per-shard
    auxiliary losses (what DDP's averaging of replica losses optimizes).
    """
    x, y = _batch()
    w, r = replica.world_size, replica.rank
    shards = list(zip(x.chunk(w), y.chunk(w)))
    torch.manual_seed(0)
    ref = build_model("cnn", create_method(method_name, **options), (1, 8, 8), 4)
    ref_aux = create_method(method_name, **options).auxiliary_loss(ref)
    loss = F.cross_entropy(ref(x), y)
    aux_values = []
    if ref_aux is not None and mode == "global":
        aux_values = [ref_aux()]
    elif ref_aux is not None:
        ref_aux()  # consume the full-batch forward's terms: every forward since a read counts
        for xs, _ in shards:
            ref(xs)
            aux_values.append(ref_aux())
    if aux_values:
        loss = loss + torch.stack(aux_values).mean()
    loss.backward()

    method = create_method(method_name, **options)
    mine = dataclasses.replace(replica, config=dataclasses.replace(replica.config, stats=mode))
    torch.manual_seed(0)
    model = mine.prepare(build_model("cnn", method, (1, 8, 8), 4), method.batch_dependent)
    aux = method.auxiliary_loss(model)
    ddp = mine.wrap(model)
    out = ddp(shards[r][0])
    extra = aux() if aux is not None else None
    task = F.cross_entropy(out, shards[r][1])
    (task if extra is None else task + extra).backward()
    task_mean, extra_mean = mine.mean(task, extra)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if p.requires_grad:
            _close(p.grad, q.grad, f"{method_name}/{mode}: grad of {name}")
    if aux_values:
        _close(extra_mean, torch.stack(aux_values).mean(), f"{method_name}/{mode}: aux loss")
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
        if b.is_floating_point():
            _same_on_all_ranks(b, f"buffer {name}")
            _close(b, c, f"{method_name}/{mode}: buffer {name}")
    revert_sync_norm(model)


def check_ddp_none(replica):
    _ddp_grads(replica, "none", "replica")


def check_ddp_sync_batch_norm(replica):
    _ddp_grads(replica, "batch_norm_affine", "global")


def check_ddp_std_loss_global(replica):
    _ddp_grads(replica, "std_loss", "global", stats="global")


def check_ddp_std_loss_replica(replica):
    _ddp_grads(replica, "std_loss", "replica")


def check_std_loss_replica_is_mean_of_shard_losses(replica):
    """Each rank's replica loss is its shard's loss; their mean is the mean of shard losses,
    which differs from the full-batch loss (so the check can tell the modes apart)."""
    x = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 3 + 1
    x[5:] *= 0.2  # the shards differ: replica and global losses are far apart
    shards = x.chunk(replica.world_size)
    layer = nn.Conv2d(3, 5, 3)
    torch.manual_seed(3)
    layer.reset_parameters()
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 2))
    values = {}
    for stats in ("replica", "global"):
        with StandardizationLoss(model, stats=stats) as std:
            model(shards[replica.rank])
            values[stats] = replica.mean(std())[0]
    with torch.no_grad():
        per_shard = [standardization_loss(layer(s)) for s in shards]
        full = standardization_loss(layer(x))
    _close(values["replica"], torch.stack(per_shard).mean(), "replica std loss")
    _close(values["global"], full, "global std loss")
    if abs(values["replica"] - values["global"]) < 1e-2:
        raise AssertionError("test data too easy: replica and global losses agree")


def _layers():
    fixed = dict(warmup_start=0, rmax_steps=0, dmax_steps=0)
    return {
        "BatchNorm2d": nn.BatchNorm2d(3),
        "BatchNorm2d(momentum=None)": nn.BatchNorm2d(3, momentum=None),
        "BatchNorm1d": nn.BatchNorm1d(3),
        "L1BatchNorm": L1BatchNorm(3),
        "LinfBatchNorm": LinfBatchNorm(3, k=6),
        "LinfBatchNorm(paper)": LinfBatchNorm(3, k=4, correction="paper"),
        "RangeBatchNorm": RangeBatchNorm(3),
        "BatchRenorm": BatchRenorm(3, rmax=1.3, dmax=0.2, **fixed),
    }


def check_sync_layers_match_full_batch(replica):
    """Forward, input and parameter gradients, running statistics and eval output of every
    synchronized layer equal the plain layer on the concatenated batch; ranks hold unequal
    shards (3 and 5 samples)."""
    sizes = [3, 5]
    lo = sum(sizes[:replica.rank])
    for name, layer in _layers().items():
        with torch.no_grad():
            if layer.weight is not None:
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
        ref = copy.deepcopy(layer)
        sync_norm(layer)
        g = torch.Generator().manual_seed(4)
        for step in range(2):  # two steps: Batch Renorm's r, d then use the running stats
            shape = (8, 3) if name == "BatchNorm1d" else (8, 3, 2, 3)
            x = (torch.randn(shape, generator=g) * 2 + 1).requires_grad_()
            up = torch.randn(shape, generator=g)
            y_ref = ref(x)
            (y_ref * up).sum().backward()
            xs = x.detach()[lo:lo + sizes[replica.rank]].clone().requires_grad_()
            y = layer(xs)
            (y * up[lo:lo + sizes[replica.rank]]).sum().backward()
            _close(y, y_ref[lo:lo + sizes[replica.rank]], f"{name} step {step}: forward")
            _close(xs.grad, x.grad[lo:lo + sizes[replica.rank]], f"{name}: input grad")
            for pname, p in layer.named_parameters():
                total = p.grad.clone()
                dist.all_reduce(total)  # without DDP: the objective is the sum over ranks
                _close(total, dict(ref.named_parameters())[pname].grad, f"{name}: {pname} grad")
                p.grad = None
            ref.zero_grad()
            for bname, b in layer.named_buffers():
                _same_on_all_ranks(b, f"{name}: {bname}")
                _close(b, dict(ref.named_buffers())[bname], f"{name}: {bname}")
        layer.eval(), ref.eval()
        x = torch.randn((4, 3) if name == "BatchNorm1d" else (4, 3, 2, 2), generator=g)
        _close(layer(x), ref(x), f"{name}: eval forward")
        if type(revert_sync_norm(layer)) is not type(ref):
            raise AssertionError(f"{name}: revert_sync_norm did not restore the class")


def check_topk_global_is_top_of_whole_batch(replica):
    """The global top-k holds deviations from both ranks: with every large value on rank 1,
    the global dispersion is the full batch's, not the mean of the two ranks' top-k."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 2, 3, generator=g)
    x[4:] *= 10  # rank 1 holds the big deviations
    mine = global_linf_moments(x.chunk(2)[replica.rank], k=5)[1]
    _close(mine, linf_moments(x, k=5)[1], "global top-k dispersion")
    local = linf_moments(x.chunk(2)[replica.rank], k=5)[1]
    if torch.allclose(mine, local):
        raise AssertionError("global top-k equals the local one: nothing was shared")


CHECKS = {name: fn for name, fn in globals().items() if name.startswith("check_")}


def _run_checks(replica: Replica) -> dict[str, str | None]:
    """Every check on this rank: None when it passed, else the traceback."""
    torch.set_num_threads(1)
    outcome = {}
    for name, fn in CHECKS.items():
        try:
            fn(replica)
            outcome[name] = None
        except Exception:
            outcome[name] = traceback.format_exc()
    return outcome


@pytest.fixture(scope="module")
def spawned():
    return spawn(_run_checks, (), TWO)


@pytest.mark.parametrize("name", list(CHECKS))
def test_spawned(spawned, name):
    for rank, outcome in enumerate(spawned):
        assert outcome[name] is None, f"rank {rank}:\n{outcome[name]}"


# --------------------------------------------------------------------------- rank failure

def _fail_on_rank_one(replica: Replica) -> None:
    if replica.rank == 1:
        raise RuntimeError("deliberate failure on rank 1")
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for a peer that is gone


def test_rank_failure_is_a_clear_error_not_a_hang():
    """A rank that raises ends the run: the launcher names it and stops the rank blocked in a
    collective, long before the collectives' own timeout would have (10 minutes here)."""
    config = dataclasses.replace(TWO, timeout_s=600.0)
    outcome = {}

    def run():
        try:
            spawn(_fail_on_rank_one, (), config)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=300.0)  # a safety net so a hang fails the test instead of the suite
    assert not thread.is_alive(), "spawn still waits on a rank blocked in a collective"
    err = outcome.get("error")
    assert isinstance(err, RankFailedError), f"expected RankFailedError, got {err!r}"
    assert err.rank == 1 and "_fail_on_rank_one" in err.errors[1]
    assert "rank 1 of 2 failed: RuntimeError: deliberate failure on rank 1" in str(err)
    assert "then stopped: rank 0 (" in str(err)  # the peer blocked in all_reduce was stopped
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("normlab-rank")]


# --------------------------------------------------------------------------- end to end

def test_cli_nproc_2_matches_single_process(tmp_path, capsys):
    common = ["compare", "--methods", "none,batch_norm,std_loss", "--dataset", "synthetic",
              "--steps", "20", "--eval-every", "10", "--seeds", "1", "--no-progress",
              "--batch-size", "32", "--stats", "global"]
    assert cli_main(common + ["--out", str(tmp_path / "one")]) == 0
    assert cli_main(common + ["--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert b["environment"]["world_size"] == "2" and "world_size" not in a["environment"]
    assert a["config"] == b["config"] and a["methods"] == b["methods"]
    for method in ("none", "batch_norm", "std_loss"):
        ra, rb = a["runs"][method][0], b["runs"][method][0]
        assert ra["eval_steps"] == rb["eval_steps"] == [0, 1, 2, 4, 8, 10, 16, 20]
        for key in ("test_acc", "test_loss", "train_loss", "aux_loss"):
            _close(rb[key], ra[key], f"{method} {key}", atol=1e-4)
    assert "world_size" not in a["environment"]


# --------------------------------------------------------------------------- one process

def test_global_functions_equal_single_process_ones_without_a_group():
    x = torch.randn(6, 4, 3, 3) * 3 + 2
    mean, var, n = global_mean_var(x)
    _close(mean, x.mean((0, 2, 3)), "mean")
    _close(var, x.var((0, 2, 3), correction=0), "var")
    assert n == 54
    _close(global_standardization_loss(x), standardization_loss(x), "std loss")
    for mine, ref in ((global_l1_moments(x), l1_moments(x)),
                      (global_linf_moments(x, k=7), linf_moments(x, k=7)),
                      (global_range_moments(x), range_moments(x))):
        _close(mine[0], ref[0], "mean")
        _close(mine[1], ref[1], "dispersion")


def test_global_functions_reject_bad_input():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        global_mean_var(torch.randn(1, 3))
    with pytest.raises(ValueError, match="floating"):
        global_standardization_loss(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        global_linf_moments(torch.randn(4, 3), k=0)


def test_sync_norm_swaps_in_place_and_reverts():
    model = build_model("cnn", create_method("batch_norm"), (1, 8, 8), 4)
    params = {n: p for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert sync_norm(model) is model
    norms = [m for m in model.modules() if isinstance(m, SyncBatchNorm)]
    assert len(norms) == 3
    assert all(p is params[n] for n, p in model.named_parameters())
    model(torch.randn(4, 1, 8, 8)).sum().backward()  # single process: plain BN maths
    optimizer.step()
    with pytest.raises(ValueError, match="expected 4D input"):
        norms[0](torch.randn(4, 32))  # BatchNorm2d's own input check is kept
    revert_sync_norm(model)
    assert [type(m) for m in norms] == [nn.BatchNorm2d] * 3
    assert not hasattr(norms[0], "process_group")
    linf = sync_norm(LinfBatchNorm(3, k=4))
    assert isinstance(linf, SyncLinfBatchNorm) and "k=4" in repr(linf)


def test_sync_layers_equal_plain_ones_in_one_process():
    for name, layer in _layers().items():
        ref = copy.deepcopy(layer)
        sync_norm(layer)
        x = torch.randn((8, 3) if name == "BatchNorm1d" else (8, 3, 2, 3)) * 2 + 1
        _close(layer(x), ref(x), f"{name} forward")
        for (bn, b), (_, c) in zip(layer.named_buffers(), ref.named_buffers()):
            _close(b, c, f"{name} {bn}")


def test_half_precision_statistics_are_float32():
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    layer = sync_norm(nn.BatchNorm2d(3))
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
    _close(y.float(), F.batch_norm(x, None, None, training=True), "bf16 sync BN", atol=0.05)
    assert global_standardization_loss(x.half()).dtype == torch.float32


def test_unsynced_batch_layers_lists_what_cannot_be_synchronized():
    class Custom(nn.BatchNorm2d):  # a subclass may override forward: never swapped
        pass
    model = nn.Sequential(nn.BatchNorm2d(3), Custom(3), nn.GroupNorm(1, 3))
    sync_norm(model)
    assert unsynced_batch_layers(model) == ["1"]
    assert type(model[1]) is Custom


def test_options_and_launch_validation(tmp_path):
    with pytest.raises(ValueError, match="stats"):
        StandardizationLoss(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), stats="local")
    with pytest.raises(ValueError, match="stats"):
        create_method("std_loss", stats="bogus")
    with pytest.raises(ValueError, match="nproc"):
        DistributedConfig(nproc=0)
    assert launch(lambda replica, a: (replica, a), (7,)) == (None, 7)
    code = cli_main(["run", "--method", "none", "--dataset", "synthetic", "--steps", "2",
                     "--batch-size", "33", "--nproc", "2", "--out", str(tmp_path)])
    assert code == 2  # a clear error before any process starts
