"""Fixtures for the multi-task tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny models on one intra-op thread, then restore the setting.

    One thread is as fast for them, and several times faster when other jobs share the cores:
    idle OpenMP workers spin-wait for cores that are busy elsewhere.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
