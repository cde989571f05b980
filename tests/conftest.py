"""Shared fixtures."""
import pytest
import torch

from tests.waiting import Spawns


def pytest_configure(config):
    config.addinivalue_line("markers", "network: needs the package index (pip download); skip with -m 'not network'")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest, and reproducibly, on one thread (two stall whenever another process holds a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def spawns(monkeypatch):
    """The worker processes a sweep started in this test (see waiting.Spawns); a gate, if set, is open at the end."""
    s = Spawns(monkeypatch)
    yield s
    s.close()
