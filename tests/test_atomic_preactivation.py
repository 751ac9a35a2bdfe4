"""atomic_write leaves the old file or the new one; PreActivation is an identity with a channel dim."""

import os

import pytest
import torch

from normlab.lab.atomic import atomic_write
from normlab.nn_types import PreActivation


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    atomic_write(target, "new" * 1000)
    assert target.read_text() == "new" * 1000
    assert os.listdir(tmp_path) == ["results.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.md"]


def test_preactivation_is_identity_and_keeps_grad():
    x = torch.randn(3, 5, requires_grad=True)
    y = PreActivation(channel_dim=-1)(x)
    assert y is x and PreActivation().channel_dim == -1
