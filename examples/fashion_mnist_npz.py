"""Save Fashion-MNIST (IDX files) as an .npz for ``normlab compare --dataset file.npz``.

Usage:
    python examples/fashion_mnist_npz.py /usr/share/datasets/fashion-mnist fmnist.npz \
        --train 10000 --test 2000

Keeps the first ``--train`` training and ``--test`` test images (uint8, (N, 1, 28, 28)) and
their labels under the names normlab reads: x_train, y_train, x_test, y_test.
"""

import argparse
from pathlib import Path

import numpy as np

from normlab.lab.datasets import read_idx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("idx_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=60000, help="first N training images")
    p.add_argument("--test", type=int, default=10000, help="first N test images")
    args = p.parse_args()
    split = {}
    for key, prefix, n in (("train", "train", args.train), ("test", "t10k", args.test)):
        x = read_idx(args.idx_dir / f"{prefix}-images-idx3-ubyte.gz")[:n, None]
        y = read_idx(args.idx_dir / f"{prefix}-labels-idx1-ubyte.gz")[:n].astype(np.int64)
        split[f"x_{key}"], split[f"y_{key}"] = x, y
    np.savez_compressed(args.out, **split)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in split.items()))


if __name__ == "__main__":
    main()
