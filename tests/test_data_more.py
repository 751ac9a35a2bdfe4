"""Point-cloud and CIFAR-10 loaders of normlab reproduce, on small files the tests write in the
official formats (corrupt files and a code-running pickle included)."""
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from normlab.lab.datasets.cifar10 import (CIFAR10_TEST, CIFAR10_TRAIN, RestrictedUnpickler, cifar10,
                                          read_cifar10_archive)
from normlab.lab.datasets.modelnet40 import modelnet40
from normlab.lab.datasets.shapes3d import SHAPE_FAMILIES, shapes3d
from normlab.lab.datasets.download import file_md5
from normlab.lab.datasets.idx import DataError


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
