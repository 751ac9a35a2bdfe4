"""A strict reader for the IDX files of MNIST and Fashion-MNIST.

LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition",
1998, Proc. IEEE 86(11) (MNIST; the IDX format is described on its web page); Xiao, Rasul &
Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", 2017, arXiv:1708.07747 (same format).

An IDX file is: two zero bytes (the magic), a type byte, a byte with the number of
dimensions ``ndim``, ``ndim`` big-endian uint32 sizes, then the data, big-endian, row-major.
The reader checks every one of these and the exact data length, so a truncated download,
trailing garbage, a wrong file or a corrupt gzip raises :class:`DataError` naming the file
and the problem, and never yields a silently shorter dataset.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DataError", "IDX_TYPES", "read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """Data that is missing, malformed or fails its checksum. The message names the file."""


# Official IDX type codes -> big-endian numpy dtypes.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's IDX bytes, gunzipped when the file is gzip (by suffix or by magic)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from e
    is_gzip = raw[:2] == _GZIP_MAGIC
    if path.suffix == ".gz" and not is_gzip:
        raise DataError(f"{path}: corrupt gzip: the file does not start with the gzip magic "
                        f"1f 8b (first bytes {raw[:4].hex(' ') or 'none: empty file'})")
    if not is_gzip:
        return raw
    try:
        return gzip.decompress(raw)
    # Truncated streams raise EOFError, bad headers/CRCs BadGzipFile (an OSError), bad
    # deflate data zlib.error.
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip ({type(e).__name__}: {e})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a native-endian, writable numpy array.

    Args:
        path: the file. Gzip is detected from the ``.gz`` suffix or the gzip magic bytes.

    Returns:
        An array of shape given by the header and dtype given by the type byte
        (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64).

    Raises:
        DataError: (a ``ValueError``) for an unreadable file, corrupt gzip, wrong magic,
            unknown type code, zero dimensions, a short header, or a data section that is
            shorter (truncated) or longer (trailing bytes) than the header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file: {len(data)} bytes, the header alone "
                        "needs at least 4")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: wrong magic number: first two bytes are "
                        f"{data[:2].hex(' ')}, an IDX file starts with 00 00")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header: {len(data)} bytes, {ndim} dimensions "
                        f"need {header}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DataError(f"{path}: truncated IDX file: shape {shape} of {dtype.name} needs "
                        f"{expected} data bytes, found {actual}")
    if actual > expected:
        raise DataError(f"{path}: {actual - expected} trailing bytes after the {expected} "
                        f"data bytes of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    # astype copies: the result is native-endian and writable (torch.from_numpy needs both).
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
