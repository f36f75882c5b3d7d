"""Fixtures of the query tests (helpers live in query_toy.py)."""
from __future__ import annotations

import socket

import pytest
import torch

from .query_toy import FakeDetector


@pytest.fixture
def fake_detector() -> FakeDetector:
    return FakeDetector().eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models and MiniLM run much faster on one thread on a shared, loaded 2-core CPU (~10x here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection raises :class:`NetworkBlocked` (and is recorded)."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkBlocked(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="session")
def minilm():
    """The default text encoder, loaded once per test session."""
    from separator.query.text import load_text_encoder

    return load_text_encoder("minilm")
