"""``normlab bench``: correctness of the timing, memory and deployment machinery on tiny
sizes (never wall-clock assertions)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from normlab.lab.bench import allocator, cases, infer, memory, output, timing
from normlab.lab.bench.train import bench_train
from normlab.lab.cli import main
from normlab.methods import Method, create_method


class FakeClock(timing.Clock):
    """Runs the function and returns a scripted duration, so ratios are known exactly."""

    def __init__(self, durations):
        super().__init__("cpu")
        self.durations = durations  # name -> seconds
        self.calls = []

    def __call__(self, fn, inner=1):
        for _ in range(inner):
            fn()
        return self.durations[fn.__name__]


def _named(name, log):
    def fn():
        log.append(name)
    fn.__name__ = name
    return fn


def test_interleaved_rounds_rotate_and_ratios_are_per_round():
    log = []
    fns = {n: _named(n, log) for n in "abc"}
    clock = FakeClock({"a": 2.0, "b": 3.0, "c": 1.0})
    times = timing.interleaved_times(fns, repeats=3, warmup=1, inner=2, clock=clock)
    assert log[:3] == ["a", "b", "c"]  # warm-up
    rounds = [log[3 + 6 * r: 3 + 6 * (r + 1)] for r in range(3)]
    assert [r[::2] for r in rounds] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert times == {"a": [2.0] * 3, "b": [3.0] * 3, "c": [1.0] * 3}
    s = timing.ratio_summary(times, "a")
    assert s["b"]["ratio"] == 1.5 and s["c"]["ratio"] == 0.5 and s["a"]["median_ms"] == 2000.0


def test_ratio_summary_median_and_iqr_of_round_ratios():
    times = {"none": [1.0, 2.0, 1.0, 2.0, 1.0], "m": [1.1, 2.6, 1.3, 2.4, 1.0]}
    s = timing.ratio_summary(times, "none")["m"]
    ratios = np.array([1.1, 1.3, 1.3, 1.2, 1.0])
    assert s["ratio"] == pytest.approx(np.median(ratios))
    assert s["q1"] == pytest.approx(np.percentile(ratios, 25))
    assert s["q3"] == pytest.approx(np.percentile(ratios, 75))
    with pytest.raises(KeyError, match="baseline"):
        timing.ratio_summary(times, "batch_norm")


def test_quantile_matches_numpy():
    vals = list(np.random.default_rng(0).normal(size=11))
    for q in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert timing.quantile(vals, q) == pytest.approx(np.quantile(vals, q))


def test_timing_rejects_bad_arguments():
    with pytest.raises(ValueError):
        timing.interleaved_times({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError):
        timing.interleaved_times({}, repeats=1)


def test_calibrate_inner_makes_samples_long_enough():
    clock = FakeClock({"f": 0.004})
    f = _named("f", [])
    assert timing.calibrate_inner(f, 0.02, clock) == 5
    assert timing.calibrate_inner(f, 0.0, clock) == 1


def test_malloc_env_detection():
    assert allocator.malloc_env_ok(dict(allocator.MALLOC_ENV))
    assert not allocator.malloc_env_ok({"MALLOC_MMAP_THRESHOLD_": "4294967296"})
    assert allocator.malloc_env_ok({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"})
    assert "3.5x" in allocator.MALLOC_REASON


def test_wide_cnn_is_the_64_128_256_network():
    model = cases.build_bench_model(cases.BENCH_MODELS["wide_cnn"], create_method("none"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256] and convs[0].in_channels == 3


def test_setup_trains_like_the_trainer_and_closes_its_hooks():
    setup = cases.make_setup(cases.BENCH_MODELS["mlp"], create_method("std_loss"), batch=8)
    first = next(setup.model.parameters()).detach().clone()
    assert setup.x.shape == (8, 1, 28, 28)
    setup.step()
    assert not torch.equal(first, next(setup.model.parameters()))
    assert setup.aux.values()  # the std loss saw the forward
    setup.close()
    assert not setup.aux.attached


class Broken(Method):
    name = "broken"

    def block(self, num_features, spatial_dims, activation):
        raise RuntimeError("cannot build")


def test_bench_train_records_every_method_and_errors():
    methods = {"none": create_method("none"), "std_loss": create_method("std_loss"),
               "broken": Broken()}
    recs = bench_train(methods, models=["mlp"], threads=[1], repeats=2, warmup=1,
                       min_sample_s=0.0, log=lambda s: None)
    by = {r["method"]: r for r in recs}
    assert set(by) == {"none", "std_loss", "broken"}
    assert by["none"]["ratio"] == 1.0 and by["none"]["q1"] == 1.0
    assert by["std_loss"]["ratio"] > 0 and by["std_loss"]["median_ms"] > 0
    assert "cannot build" in by["broken"]["error"]
    with pytest.raises(KeyError, match="baseline"):
        bench_train({"std_loss": methods["std_loss"]}, models=["mlp"])


class UnfoldedBatchNorm(Method):
    """batch_norm's layer with the default (identity) for_inference: the bench must fold."""

    name = "unfolded_bn"
    conv_bias = False

    def norm(self, num_features, spatial_dims):
        return create_method("batch_norm").norm(num_features, spatial_dims)


def _random_running_stats(model):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)


def test_deploy_folds_what_for_inference_leaves_and_drops_std_loss_hooks():
    spec = cases.BENCH_MODELS["cnn"]
    x = torch.randn(4, *spec.in_shape)
    for method in (UnfoldedBatchNorm(), create_method("batch_norm")):
        model = cases.build_bench_model(spec, method)
        _random_running_stats(model)
        with torch.no_grad():
            expected = model.eval()(x)
        deployed, folded, n = infer.deploy(method, model)
        left = sum(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
        assert n == left  # the bench folds exactly what the method's deployment left
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        with torch.no_grad():
            torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    assert infer.deploy(UnfoldedBatchNorm(), cases.build_bench_model(spec, UnfoldedBatchNorm()))[2] == 3
    std = create_method("std_loss")
    model = cases.build_bench_model(spec, std)
    deployed, folded, n = infer.deploy(std, model)
    assert n == 0 and folded is deployed
    assert all(not m._forward_hooks for m in deployed.modules())


def test_bench_infer_records():
    methods = {"none": create_method("none"), "unfolded_bn": UnfoldedBatchNorm()}
    recs = infer.bench_infer(methods, models=["mlp"], batches=[2], threads=[1], repeats=2,
                             min_sample_s=0.0, log=lambda s: None)
    by = {r["method"]: r for r in recs}
    assert by["none"]["ratio"] == 1.0 and by["unfolded_bn"]["n_folded"] == 3
    assert by["unfolded_bn"]["norm_layers_left"] == 3 and by["none"]["batch"] == 2
    assert by["unfolded_bn"]["folded_ratio"] > 0


def test_step_peak_bytes_counts_live_tensors():
    def step():
        a = torch.empty(2**18, dtype=torch.float32)  # 1 MiB
        b = torch.empty(2**19, dtype=torch.float32)  # 2 MiB, both alive: the peak
        del a, b
        c = torch.empty(2**18, dtype=torch.float32)
        return c

    peak = memory.step_peak_bytes(step)
    assert 3 * 2**20 <= peak < 3 * 2**20 + 4096


def test_bench_memory_records():
    methods = {"none": create_method("none"), "batch_norm": create_method("batch_norm")}
    recs = memory.bench_memory(methods, models=["cnn"], log=lambda s: None)
    by = {r["method"]: r for r in recs}
    assert by["none"]["ratio"] == 1.0
    # BN keeps its input and its output for backward: more than the bare network.
    assert by["batch_norm"]["peak_mb"] > by["none"]["peak_mb"]
    assert by["none"]["state_mb"] > 0


def test_markdown_tables():
    recs = [{"model": "mlp", "threads": 1, "compile": False, "method": "none", "ratio": 1.0,
             "q1": 1.0, "q3": 1.0, "median_ms": 2.0},
            {"model": "mlp", "threads": 1, "compile": False, "method": "x", "error": "boom"}]
    table = output.markdown_table("train", recs)
    assert "| none | 1.00 [1.00-1.00] |" in table and "| x | error |" in table
    assert "mlp 1t (2.0 ms)" in table
    with pytest.raises(KeyError):
        output.markdown_table("speed", recs)


def test_cli_memory_and_train_write_json_and_markdown(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    assert main(["bench", "memory", "--methods", "none,std_loss", "--models", "mlp",
                 "--out", str(out)]) == 0
    data = json.loads((out / "memory.json").read_text())
    assert {r["method"] for r in data["records"]} == {"none", "std_loss"}
    assert "torch" in data["meta"] and (out / "memory.md").read_text().startswith("# normlab")
    for k in allocator.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    assert main(["bench", "train", "--methods", "std_loss", "--models", "mlp", "--threads",
                 "1", "--repeats", "1", "--warmup", "1", "--min-sample", "0",
                 "--out", str(out)]) == 2
    assert "MALLOC_MMAP_THRESHOLD_" in capsys.readouterr().err
    assert main(["bench", "train", "--methods", "std_loss", "--models", "mlp", "--threads",
                 "1", "--repeats", "1", "--warmup", "1", "--min-sample", "0",
                 "--default-malloc", "--out", str(out)]) == 0
    data = json.loads((out / "train.json").read_text())
    assert {r["method"] for r in data["records"]} == {"none", "std_loss"}  # baseline added
    assert "3.5x" in data["meta"]["note"]
    assert main(["bench", "train", "--models", "resnet", "--out", str(out),
                 "--default-malloc"]) == 2


def test_bench_layers_compares_layers_with_torch_batch_norm():
    from normlab.lab.bench.layers import BASELINE, bench_layers

    methods = {n: create_method(n) for n in ("none", "batch_norm", "std_loss", "group_norm")}
    recs = bench_layers(methods, shape=(8, 4, 3, 3), threads=[1], repeats=2, min_sample_s=0.0,
                        log=lambda s: None)
    by = {r["method"]: r for r in recs}
    assert set(by) == {BASELINE, "batch_norm", "std_loss", "group_norm"}  # none has no layer
    assert by[BASELINE]["ratio"] == 1.0 and by["group_norm"]["median_ms"] > 0
