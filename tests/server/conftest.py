"""Fixtures for the server over a real broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.client import GoChatClient
from testbed import Broker
from testbed.server import RunningServer, connect


@pytest.fixture
def server(broker: Broker, tmp_path: Path) -> Iterator[RunningServer]:
    """The business server, in-process on an offset clock, against ``broker``."""
    running = RunningServer(broker, tmp_path / "server.db").start()
    yield running
    running.stop()


@pytest.fixture
def users(broker: Broker, server: RunningServer) -> Iterator[Callable[..., GoChatClient]]:
    """Factory of connected, logged-in clients; all closed after the test."""
    made: list[GoChatClient] = []

    def make(user: str, *, login: bool = True) -> GoChatClient:
        client = connect(broker, user, login=login)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
