"""Fixtures for the server over a real broker."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.client import GoChatClient
from testbed import Broker
from testbed.postgres import Postgres
from testbed.server import RunningServer, connect


@pytest.fixture
def server(
    request: pytest.FixtureRequest, broker: Broker, tmp_path: Path
) -> Iterator[RunningServer]:
    """The business server, in-process on an offset clock, against ``broker``: on
    SQLite, or (a module's ``pytestmark = pytest.mark.parametrize("server",
    ["sqlite", "postgresql"], indirect=True)``) two instances on one PostgreSQL
    database sharing the requests and one clock; the first one is yielded. Env
    ``GOCHAT_TEST_STORE=postgresql`` makes the latter the default for every test."""
    if getattr(request, "param", os.environ.get("GOCHAT_TEST_STORE", "sqlite")) == "sqlite":
        running = RunningServer(broker, tmp_path / "server.db").start()
        yield running
        running.stop()
        return
    postgres: Postgres = request.getfixturevalue("postgres")
    url = postgres.new_database()
    first = RunningServer(broker, tmp_path / "unused.db", store_url=url).start()
    second = RunningServer(
        broker, tmp_path / "unused.db", first.clock, store_url=url, instance=2
    ).start()
    first.peers.append(second)
    yield first
    second.stop()
    first.stop()


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
