"""Checksum-verified downloads of the official MNIST and Fashion-MNIST files.

LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition",
1998 (MNIST); Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747.

A download goes to ``<dest>.part``, is checked against the MD5 its publishers list, and only
then renamed into place; a file with the wrong digest is deleted and the next mirror tried.
The MD5s are those of the official ``.gz`` files (the MNIST page and the Fashion-MNIST
README). Files already on disk are not hashed (see :mod:`normlab.lab.datasets.mnist`): the
Debian package ``dataset-fashion-mnist`` re-gzips the official files (same content, different
gzip bytes: its train-images MD5 is ``cf8536b0...``, not the README's ``8d4fb7e6...``), so
the published digests cannot check it; the strict IDX parser checks its structure instead.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Sequence

from .idx import DataError

__all__ = ["NETWORK_TIMEOUT_S", "download_file", "file_md5", "verify_file"]

# Short, so that an offline machine fails fast instead of hanging in a socket read.
NETWORK_TIMEOUT_S = 10.0
_CHUNK = 1 << 20


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, md5: str, delete_on_mismatch: bool = False) -> None:
    """Check a file against its expected MD5.

    Args:
        path: the file.
        md5: expected hex digest (case-insensitive).
        delete_on_mismatch: remove the file when the digest is wrong (for downloads, so that
            a bad file is never picked up later).

    Raises:
        DataError: the file is missing or its digest differs (the message names the file and
            both digests).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file to verify")
    actual = file_md5(path)
    if actual != md5.lower():
        if delete_on_mismatch:
            path.unlink(missing_ok=True)
        deleted = " (deleted)" if delete_on_mismatch else ""
        raise DataError(f"{path}: checksum mismatch{deleted}: MD5 {actual}, expected {md5}")


def download_file(urls: Sequence[str], dest: str | os.PathLike, md5: str,
                  timeout: float = NETWORK_TIMEOUT_S) -> Path:
    """Download one file from the first mirror that serves it with the right MD5.

    Args:
        urls: mirrors, tried in order (any scheme ``urllib`` opens, ``file://`` included).
        dest: final path; its directory is created.
        md5: expected hex MD5 of the file.
        timeout: seconds for each socket operation.

    Returns:
        ``dest``, verified.

    Raises:
        DataError: every mirror failed or served a file with the wrong digest; the message
            lists each URL and why.
    """
    if not urls:
        raise ValueError("download_file needs at least one URL")
    dest = Path(dest)
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
            verify_file(part, md5, delete_on_mismatch=True)
        except (OSError, DataError, ValueError) as e:  # URLError and timeouts are OSErrors
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {e}")
            continue
        os.replace(part, dest)
        return dest
    for d in created:  # leave no empty directories behind a failed download
        try:
            d.rmdir()
        except OSError:
            break
    raise DataError(f"{dest}: download failed from every mirror:\n  " + "\n  ".join(errors))
