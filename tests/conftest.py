"""Shared test settings: one torch thread (2-core CI; threads fight and slow tiny ops) and a
fixed seed for every test."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
