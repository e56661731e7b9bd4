import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import BIN, Network  # noqa: E402


def pytest_sessionstart(session):
    if not os.path.exists(BIN):
        raise pytest.UsageError(f"skywire binary not found at {BIN}: run `swift build` first")


@pytest.fixture(scope="module")
def net():
    n = Network()
    try:
        n.start_discovery()
        n.start_relay()
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def pair(net):
    """Two visors on the relay: a (server side) and b (client side)."""
    a = net.start_visor("visor-a")
    b = net.start_visor("visor-b")
    return a, b
