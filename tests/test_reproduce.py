"""Tests of ``normlab reproduce``: quick runs, instrumentation, analysis, the new models and
the ModelNet40 / shapes3d / CIFAR-10 loaders (on small files written in the official formats)."""

import io
import json
import math
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from normlab.lab.cli import main
from normlab.lab.data_more import (CIFAR10_TEST, CIFAR10_TRAIN, RestrictedUnpickler, cifar10,
                                   modelnet40, read_cifar10_archive, shapes3d, SHAPE_FAMILIES)
from normlab.lab.download import file_md5
from normlab.lab.idx import DataError
from normlab.lab.models import MODELS, build_model
from normlab.lab.models_more import ScaleShift
from normlab.lab.reproduce import EXPERIMENTS, reproduce
from normlab.lab.reproduce.analysis import band_stability, weight_analysis
from normlab.lab.reproduce.instrument import (Instrumented, PercentileRecorder, halve_lr_every,
                                              last_activation)
from normlab.methods import create_method

VERDICTS = {"holds here", "does not hold here", "cannot tell"}


# --------------------------------------------------------------------------- quick runs

@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_run_writes_report(name, tmp_path):
    payload = reproduce(name, quick=True, out=tmp_path, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["experiment"] == name and results["quick"] is True
    rows = results["paper_vs_normlab"]
    assert len(rows) == len(EXPERIMENTS[name].claims) >= 1
    assert all(r["verdict"] in VERDICTS and r["paper"] and r["ours"] for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "## Paper vs normlab" in report and "Run time:" in report and "QUICK" in report
    assert payload["plots"]
    for plot in payload["plots"]:
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in report


def test_cli_list_and_unknown_name(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "pointnet" in capsys.readouterr().out
    assert main(["reproduce", "fig9-nothing"]) == 2
    assert "known: fig1-cnn" in capsys.readouterr().err


# --------------------------------------------------------------------------- instrumentation

def test_percentile_recorder_matches_numpy_and_skips_eval():
    act = nn.ReLU()
    rec = PercentileRecorder(act, every=3, percentiles=(15, 50, 85), unit=1)
    xs = [torch.randn(40, 4) for _ in range(7)]
    for i, x in enumerate(xs):
        act.train()
        act(x)
        act.eval()
        act(torch.full((40, 4), 1e3))  # evaluation forwards are neither counted nor recorded
    assert rec.steps == [1, 3, 6]
    for step, row in zip(rec.steps, rec.values):
        expected = np.percentile(xs[step - 1][:, 1].double().numpy(), [15, 50, 85])
        np.testing.assert_allclose(row, expected, rtol=1e-12)
    rec.remove()
    act.train()
    act(xs[0])
    assert len(rec.steps) == 3


def test_halve_lr_every():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    handle = halve_lr_every(opt, 2)
    for _ in range(5):
        opt.step()
    assert opt.param_groups[0]["lr"] == 0.25
    handle.remove()
    opt.step()
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.25


def test_instrumented_delegates_and_removes_hooks():
    inner = create_method("batch_norm")
    method = Instrumented(inner, record_every=1)
    assert (method.name, method.kind, method.conv_bias) == ("batch_norm", "layer", False)
    assert method.options() == inner.options()
    model = build_model("cnn", method, (1, 28, 28), 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    model(torch.randn(4, 1, 28, 28))
    assert method.recordings[0].steps == [1]
    method.for_inference(model)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_instrumented_schedule_halves_lr_until_the_run_ends():
    method = Instrumented(create_method("none"), lr_halve_every=2)
    p = nn.Parameter(torch.zeros(1))
    opt = method.wrap_optimizer(torch.optim.Adam([p], lr=1e-3), nn.Linear(1, 1))
    for _ in range(4):
        opt.step()
    assert math.isclose(opt.param_groups[0]["lr"], 2.5e-4)
    method.for_inference(nn.Linear(1, 1))
    for _ in range(4):
        opt.step()
    assert math.isclose(opt.param_groups[0]["lr"], 2.5e-4)


def test_last_activation_needs_one():
    assert isinstance(last_activation(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid())), nn.Sigmoid)
    with pytest.raises(ValueError, match="no activation"):
        last_activation(nn.Sequential(nn.Linear(2, 2)))


# --------------------------------------------------------------------------- analysis

def test_weight_analysis_finds_robust_range_and_collapse():
    weights = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    ana = weight_analysis(weights, [0.80, 0.81, 0.82, 0.83, 0.15], baseline=0.80, chance=0.1)
    assert ana["best_weight"] == 1.0 and ana["collapse_weight"] == 10.0
    assert (ana["robust_low"], ana["robust_high"]) == (1e-3, 1.0)
    assert math.isclose(ana["orders"], 3.0)
    flat = weight_analysis(weights, [0.8] * 5, baseline=0.8, chance=0.1)
    assert flat["collapse_weight"] is None and math.isclose(flat["orders"], 4.0)
    with pytest.raises(ValueError, match="increase"):
        weight_analysis([1.0, 0.1], [0.5, 0.5], 0.5, 0.1)


def test_band_stability():
    still = band_stability([[-1, 0, 1]] * 4)
    assert still["median_drift"] == 0 and still["width_ratio"] == 1
    moving = band_stability([[-1, 0, 1], [0, 1, 2], [1, 2, 5]])  # widths 2, 2, 4
    assert math.isclose(moving["median_drift"], 2 / (8 / 3))
    assert math.isclose(moving["width_ratio"], 2.0)


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("method", ["none", "batch_norm", "group_norm", "frn", "std_loss"])
@pytest.mark.parametrize("model,shape", [("mobilenet", (1, 28, 28)), ("pointnet", (3, 20)),
                                         ("resnet20", (3, 8, 8))])
def test_new_models_forward_and_backward(model, shape, method):
    m = create_method(method)
    net = build_model(model, m, shape, 5)
    out = net(torch.randn(4, *shape))
    assert out.shape == (4, 5)
    out.sum().backward()
    convs = [c for c in net.modules() if isinstance(c, (nn.Conv1d, nn.Conv2d))]
    assert all((c.bias is not None) == m.conv_bias for c in convs)


def test_resnet20_has_twenty_weight_layers():
    net = build_model("resnet20", create_method("none"), (3, 32, 32), 10)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules()) == 20


def test_pointnet_is_invariant_to_point_order():
    net = build_model("pointnet", create_method("batch_norm"), (3, 30), 4)
    net(torch.randn(8, 3, 30))  # move the running statistics away from their init
    net.eval()
    x = torch.randn(2, 3, 30)
    torch.testing.assert_close(net(x), net(x[:, :, torch.randperm(30)]), rtol=1e-5, atol=1e-6)


def test_pointnet_scale_shift_layers():
    net = build_model("pointnet_scale_shift", create_method("std_loss"), (3, 10), 4)
    shifts = [m for m in net.modules() if isinstance(m, ScaleShift)]
    assert [s.num_features for s in shifts] == [64, 64, 64, 128, 1024, 512, 256]
    assert all(m.bias is None for m in net.modules() if isinstance(m, (nn.Conv1d,))
               ) and net[-1].bias is not None
    x = torch.randn(2, 64, 5)
    shifts[0].weight.data.fill_(2.0)
    shifts[0].bias.data.fill_(-1.0)
    torch.testing.assert_close(shifts[0](x), 2 * x - 1)


# --------------------------------------------------------------------------- shapes3d

def test_shapes3d_is_deterministic_balanced_and_labelled_synthetic():
    a = shapes3d(seed=3, num_train=32, num_test=16, num_points=50)
    b = shapes3d(seed=3, num_train=32, num_test=16, num_points=50)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape == (32, 3, 50)
    assert torch.bincount(a.y_train).tolist() == [4] * 8
    assert a.source == "synthetic" and "synthetic" in a.note and a.in_shape == (3, 50)
    assert not torch.equal(a.x_train, shapes3d(seed=4, num_train=32, num_test=16,
                                               num_points=50).x_train)


def test_shapes3d_families_have_their_geometry():
    data = shapes3d(seed=0, num_train=64, num_test=8, num_points=200, noise=0.0)
    disk, sphere = list(SHAPE_FAMILIES).index("disk"), list(SHAPE_FAMILIES).index("sphere")
    for x, y in zip(data.x_train, data.y_train):
        pts = (x.T - x.T.mean(0)).double()
        smallest = torch.linalg.svdvals(pts)[-1] / torch.linalg.svdvals(pts)[0]
        if y == disk:  # a rotated, stretched disk is still flat
            assert smallest < 1e-6
        if y == sphere:
            assert smallest > 0.3


# --------------------------------------------------------------------------- ModelNet40

def _write_h5(path, data=None, label=None):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        if data is not None:
            f["data"] = data
        if label is not None:
            f["label"] = label


def test_modelnet40_reads_official_layout(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.standard_normal((6, 32, 3)).astype(np.float32)
    test = rng.standard_normal((2, 32, 3)).astype(np.float32)
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    folder.mkdir()
    _write_h5(folder / "ply_data_train0.h5", train, np.arange(6, dtype=np.uint8)[:, None] * 7)
    _write_h5(folder / "ply_data_test0.h5", test, np.array([[39], [0]], dtype=np.uint8))
    data = modelnet40(data_dir=tmp_path, num_points=16)
    assert data.x_train.shape == (6, 3, 16) and data.num_classes == 40
    np.testing.assert_array_equal(data.x_train[2].numpy(), train[2, :16].T)
    assert data.y_train.tolist() == [0, 7, 14, 21, 28, 35] and data.y_test.tolist() == [39, 0]


@pytest.mark.parametrize("problem", ["garbage", "label_range", "no_label", "few_points"])
def test_modelnet40_rejects_corrupt_files(tmp_path, problem):
    pts = np.zeros((2, 8, 3), np.float32)
    _write_h5(tmp_path / "ply_data_train0.h5", np.zeros((2, 16, 3), np.float32),
              np.zeros((2, 1), np.uint8))
    test = tmp_path / "ply_data_test0.h5"
    if problem == "garbage":
        test.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    elif problem == "label_range":
        _write_h5(test, pts, np.array([[3], [40]], np.uint8))
    elif problem == "no_label":
        _write_h5(test, pts)
    else:
        _write_h5(test, pts, np.zeros((2, 1), np.uint8))
    with pytest.raises(DataError, match="ply_data_test0.h5"):
        modelnet40(data_dir=tmp_path, num_points=16 if problem == "few_points" else 8)


def test_modelnet40_missing_and_without_h5py(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        modelnet40(data_dir=tmp_path)
    (tmp_path / "ply_data_train0.h5").write_bytes(b"x")
    (tmp_path / "ply_data_test0.h5").write_bytes(b"x")
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(DataError, match="pip install h5py"):
        modelnet40(data_dir=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10

def _py2_pickle(obj) -> bytes:
    """Protocol-2 bytes as Python 2's cPickle writes them (byte strings as SHORT_BINSTRING /
    BINSTRING, arrays through numpy.core.multiarray._reconstruct): the official format."""
    out = bytearray(b"\x80\x02")

    def put(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                put(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                put(v)
            out.extend(b"t")
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256
                       else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put((0,))
            put(b"b")
            out.extend(b"\x87R")  # _reconstruct(ndarray, (0,), 'b')
            out.extend(b"(")
            put(1)
            put(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            put((b"u1", 0, 1))
            out.extend(b"R")
            put((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # dtype state
            put(False)
            put(o.tobytes())
            out.extend(b"tb")  # array state
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def _batch(n, offset, shape=3072):
    data = ((np.arange(n * shape) + offset) % 256).astype(np.uint8).reshape(n, shape)
    return {b"batch_label": b"batch", b"labels": [(offset + i) % 10 for i in range(n)],
            b"data": data, b"filenames": [b"f%d.png" % i for i in range(n)]}


def _write_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return file_md5(path)


def _official_members(**replace):
    members = {m: _py2_pickle(_batch(3, i)) for i, m in enumerate(CIFAR10_TRAIN + CIFAR10_TEST)}
    members.update(replace)
    return members


def test_cifar10_reads_official_python_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    md5 = _write_archive(path, _official_members())
    xtr, ytr, xte, yte = read_cifar10_archive(path, md5=md5)
    assert xtr.shape == (15, 3, 32, 32) and xte.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(xtr[3].reshape(-1), _batch(3, 1)[b"data"][0])
    assert ytr[:6].tolist() == [0, 1, 2, 1, 2, 3] and yte.tolist() == [5, 6, 7]


def test_cifar10_checks_the_checksum_before_reading(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    _write_archive(path, _official_members())
    with pytest.raises(DataError, match="checksum mismatch"):
        cifar10(data_dir=tmp_path, download=False)  # the official MD5 is not this archive's


def test_cifar10_rejects_corrupt_archives(tmp_path):
    path = tmp_path / "a.tar.gz"
    md5 = _write_archive(path, _official_members())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable tar.gz"):
        read_cifar10_archive(path, md5=file_md5(path))
    bad = {CIFAR10_TEST[0]: _py2_pickle({b"data": np.zeros((2, 100), np.uint8),
                                         b"labels": [0, 1]})}
    md5 = _write_archive(path, _official_members(**bad))
    with pytest.raises(DataError, match="test_batch.*3072"):
        read_cifar10_archive(path, md5=md5)
    md5 = _write_archive(path, {CIFAR10_TRAIN[0]: _py2_pickle(_batch(2, 0))})
    with pytest.raises(DataError, match="no regular file"):
        read_cifar10_archive(path, md5=md5)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker)}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    path = tmp_path / "cifar-10-python.tar.gz"
    md5 = _write_archive(path, _official_members(**{CIFAR10_TRAIN[2]: payload}))
    with pytest.raises(DataError, match="data_batch_3.*refused global"):
        read_cifar10_archive(path, md5=md5)
    assert not marker.exists()
    # The same bytes through an unrestricted unpickler would have run the command.
    opener = pickle.dumps(_OpenFile(str(marker)), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        RestrictedUnpickler(io.BytesIO(opener), encoding="bytes").load()
    assert not marker.exists()
    pickle.loads(opener).close()
    assert marker.exists()


class _OpenFile:
    """A harmless stand-in for an exploit: unpickling it calls ``open(path, 'w')``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")
