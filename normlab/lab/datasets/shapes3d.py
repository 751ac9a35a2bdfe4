"""``shapes3d``: a procedurally generated point-cloud dataset, ALWAYS labelled synthetic.

Eight surface families (sphere, cube, cylinder, cone, torus, tetrahedron, disk, helix), each
sampled approximately uniformly (by area, or by arc length for the helix), then given a
random rotation (uniform on SO(3)), a random isotropic scale in [0.5, 1.5], a per-axis
stretch in [0.85, 1.15], a translation ~ N(0, 0.1^2) per axis and Gaussian jitter of
std ``noise``. Shapes are not re-normalized, so the network must cope with pose and scale.
It stands in for ModelNet40 (:mod:`.modelnet40`) offline.

Held as :class:`~normlab.lab.datasets.base.PointCloudDataset` with inputs ``(N, 3, P)``.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import Tensor

from .base import DATASETS, PointCloudDataset

__all__ = ["SHAPE_FAMILIES", "shapes3d"]


def _uniform(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _pick(weights: Sequence[float], g: torch.Generator, n: int, p: int) -> Tensor:
    """Index of the surface part each point lies on, drawn with probability ~ area."""
    return torch.multinomial(torch.tensor(weights, dtype=torch.float64), n * p, True,
                             generator=g).view(n, p)


def _sphere(g, n, p):
    v = torch.randn(n, p, 3, generator=g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _cube(g, n, p):
    face = _pick([1.0] * 6, g, n, p)
    pts = _uniform(g, n, p, 3) * 2 - 1
    axis, sign = face // 2, (face % 2) * 2.0 - 1
    pts.scatter_(2, axis.unsqueeze(-1), sign.unsqueeze(-1).double())
    return 0.7 * pts


def _cylinder(g, n, p, r=0.7, h=1.6):
    part = _pick([2 * math.pi * r * h, math.pi * r * r, math.pi * r * r], g, n, p)
    t, u = _uniform(g, n, p) * 2 * math.pi, _uniform(g, n, p)
    rad = torch.where(part == 0, torch.full_like(u, r), r * u.sqrt())
    z = torch.where(part == 0, (u - 0.5) * h, torch.where(part == 1, 0.5 * h, -0.5 * h))
    return torch.stack([rad * t.cos(), rad * t.sin(), z], -1)


def _cone(g, n, p, r=0.8, h=1.6):
    side = math.pi * r * math.hypot(r, h)
    part = _pick([side, math.pi * r * r], g, n, p)
    t, s = _uniform(g, n, p) * 2 * math.pi, _uniform(g, n, p).sqrt()  # sqrt: uniform by area
    rad = r * s
    z = torch.where(part == 0, 0.5 * h - h * s, torch.full_like(s, -0.5 * h))
    return torch.stack([rad * t.cos(), rad * t.sin(), z], -1)


def _torus(g, n, p, big=0.7, small=0.3):
    u, v = _uniform(g, n, p) * 2 * math.pi, _uniform(g, n, p) * 2 * math.pi
    ring = big + small * v.cos()
    return torch.stack([ring * u.cos(), ring * u.sin(), small * v.sin()], -1)


def _triangles(g, n, p, corners: Tensor, faces: list[tuple[int, int, int]]):
    face = torch.tensor(faces)[_pick([1.0] * len(faces), g, n, p)]  # (n, p, 3) corner ids
    a, b = _uniform(g, n, p, 1).sqrt(), _uniform(g, n, p, 1)
    c0, c1, c2 = (corners[face[..., i]] for i in range(3))
    return (1 - a) * c0 + a * (1 - b) * c1 + a * b * c2


def _tetrahedron(g, n, p):
    corners = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                           dtype=torch.float64) * 0.8
    return _triangles(g, n, p, corners, [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)])


def _disk(g, n, p, r=1.0):
    t, rad = _uniform(g, n, p) * 2 * math.pi, r * _uniform(g, n, p).sqrt()
    return torch.stack([rad * t.cos(), rad * t.sin(), torch.zeros_like(t)], -1)


def _helix(g, n, p, r=0.6, turns=2.0, h=1.6):
    t = _uniform(g, n, p)
    angle = 2 * math.pi * turns * t
    return torch.stack([r * angle.cos(), r * angle.sin(), (t - 0.5) * h], -1)


SHAPE_FAMILIES = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone,
                  "torus": _torus, "tetrahedron": _tetrahedron, "disk": _disk, "helix": _helix}


def _random_rotations(g: torch.Generator, n: int) -> Tensor:
    """Rotations uniform on SO(3): QR of a Gaussian matrix, signs fixed, det made +1."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.unsqueeze(-1)
    return q


def _make_clouds(g: torch.Generator, labels: Tensor, num_points: int, noise: float) -> Tensor:
    n = len(labels)
    pts = torch.empty(n, num_points, 3, dtype=torch.float64)
    for k, sampler in enumerate(SHAPE_FAMILIES.values()):
        idx = (labels == k).nonzero().squeeze(1)
        if len(idx):
            pts[idx] = sampler(g, len(idx), num_points)
    stretch = 0.85 + 0.3 * _uniform(g, n, 1, 3)
    scale = 0.5 + _uniform(g, n, 1, 1)
    pts = (pts * stretch) @ _random_rotations(g, n).transpose(1, 2) * scale
    pts = pts + 0.1 * torch.randn(n, 1, 3, generator=g, dtype=torch.float64)
    pts = pts + noise * torch.randn(pts.shape, generator=g, dtype=torch.float64)
    return pts.transpose(1, 2).float().contiguous()


@DATASETS.register("shapes3d")
def shapes3d(data_dir: str | os.PathLike | None = None, download: bool = True, seed: int = 0,
             num_train: int = 1600, num_test: int = 400, num_points: int = 1024,
             noise: float = 0.02) -> PointCloudDataset:
    """Synthetic point clouds of eight shape families (module docstring); balanced labels.

    Args:
        data_dir, download: ignored (uniform loader signature).
        seed: fixes every shape, pose and noise draw.
        num_train, num_test: clouds per split. num_points: points per cloud.
        noise: std of the Gaussian jitter added to every coordinate.
    """
    if num_train < 1 or num_test < 1 or num_points < 1 or noise < 0:
        raise ValueError(f"shapes3d: need num_train, num_test, num_points >= 1 and noise >= 0; "
                         f"got {num_train}, {num_test}, {num_points}, {noise}")
    g = torch.Generator().manual_seed(seed)
    k = len(SHAPE_FAMILIES)
    ytr = (torch.arange(num_train) % k)[torch.randperm(num_train, generator=g)]
    yte = (torch.arange(num_test) % k)[torch.randperm(num_test, generator=g)]
    xtr, xte = _make_clouds(g, ytr, num_points, noise), _make_clouds(g, yte, num_points, noise)
    return PointCloudDataset(
        "shapes3d", xtr, ytr, xte, yte, k, "synthetic",
        f"synthetic point clouds (seed {seed}): {k} procedural shape families "
        f"({', '.join(SHAPE_FAMILIES)}) with random pose, scale and noise {noise}; "
        "not ModelNet40")
