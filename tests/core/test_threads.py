"""CPU threads: the measured default (free cores now), its bounds, and a scoped torch thread count."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qsep_core import threads as th


def test_default_is_the_free_cores_at_least_one(monkeypatch):
    monkeypatch.setattr(th, "allowed_cores", lambda: 4)
    assert th.default_threads(busy=0.0) == 4
    assert th.default_threads(busy=0.3) == 4  # a little background load takes no core
    assert th.default_threads(busy=1.0) == 3  # one busy process takes one core (issue 19's case)
    assert th.default_threads(busy=2.2) == 2
    assert th.default_threads(busy=9.0) == 1  # never below one thread
    assert th.default_threads(busy=0.0, cap=2) == 2  # never above what the process was set to


def test_busy_cores_sees_a_busy_process():
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = th.busy_cores(0.3)
    finally:
        loop.kill()
        loop.wait()
    assert 0.6 <= busy <= th.allowed_cores() + 1e-6


@pytest.mark.parametrize("bad", [0, -1, "x", "1.5", True, 2.0])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer or 'auto'"):
        th.resolve_threads(bad)


def test_resolve_threads():
    assert th.resolve_threads(None) is None
    assert th.resolve_threads(3) == 3 and th.resolve_threads("2") == 2
    n = torch.get_num_threads()
    assert 1 <= th.resolve_threads("auto") <= n


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with th.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with th.torch_threads(None):
        assert torch.get_num_threads() == before
