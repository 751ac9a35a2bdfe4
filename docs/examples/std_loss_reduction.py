"""One loss weight for the paper's CNN and a 10x wider one: ``reduction="sum"`` vs ``"mean"``.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925: the paper's loss sums the per-channel KL over channels and
layers, so its weight must shrink as networks grow. ``reduction="mean"`` divides by the
channel count. The paper's CNN (widths 32/16/8, 56 hooked channels) at sum-weight 1.0 is
mean-weight 56; the same two weights are then used on the CNN with 10x the channels.

Usage: ``python docs/examples/std_loss_reduction.py [--steps 200] [--batch 32] [--lr 1e-3]``
(Fashion-MNIST, plain SGD (default: the lab's learning rate), one thread, seed 0).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from normlab import StandardizationLoss
from normlab.lab.config import TrainConfig
from normlab.lab.datasets import load_dataset
from normlab.lab.datasets.base import Batches
from normlab.lab.models.paper import cnn
from normlab.methods import create_method


def run(widths, reduction: str, weight: float, data, steps: int, batch: int, lr: float):
    torch.manual_seed(0)
    model = cnn(create_method("none"), (1, 28, 28), 10, widths=widths).train()
    std = StandardizationLoss(model, weight=weight, reduction=reduction)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    first = last = float("nan")
    for step, idx in zip(range(steps), Batches(len(data.y_train), batch, seed=0)):
        x, y = data.x_train[idx], data.y_train[idx]
        task = F.cross_entropy(model(x), y)
        aux = std()
        loss = task + aux
        if step == 0:
            first = aux.item()
        last = aux.item()
        if not math.isfinite(loss.item()):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_test[:2000]).argmax(1) == data.y_test[:2000]).float().mean().item()
    return step + 1, first, last, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=TrainConfig().lr)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion_mnist")
    lr = args.lr
    print(f"| network | reduction | weight | steps run | auxiliary loss first -> last | "
          f"test acc (2000) |\n|---|---|---|---|---|---|")
    for label, widths in (("paper cnn 32/16/8", (32, 16, 8)), ("10x wider 320/160/80", (320, 160, 80))):
        for reduction, weight in (("sum", 1.0), ("mean", float(sum((32, 16, 8))))):
            n, first, last, acc = run(widths, reduction, weight, data, args.steps, args.batch, lr)
            print(f"| {label} | {reduction} | {weight:g} | {n} | {first:.4g} -> {last:.4g} | "
                  f"{100 * acc:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
