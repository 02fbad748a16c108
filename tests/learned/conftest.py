"""Learned-resizer tests: one torch thread.

The models here are tiny; on a shared 2-core machine two OpenMP threads spin against each other and
against other jobs (measured: a 36-step training test took 54 s with 2 threads, 5 s with 1).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
