"""Shared fixtures: a real Mosquitto per test, and connected recording clients.

- ``broker``: a fresh :class:`support.Broker` (shipped config, ACL and plugin, free
  loopback port, persistence in the test's tmp dir), stopped after the test; a test
  marked ``unguarded`` gets it without the plugin, as a broker the server must defend
  itself against. Function
  scoped: retained messages and sessions never leak between tests, and a start
  costs ~20 ms.
  Its listeners: TLS with passwords (``broker.port``), TLS with client certificates
  (``broker.cert_port``; ``broker.issue_device``/``revoke``) and plain loopback
  (``broker.plain_port``), all verified against one CA per test session.
- ``postgres``: a throwaway PostgreSQL cluster (Debian's packages) for the session;
  ``postgres.new_database()`` gives each test an empty database.
- ``mqtt_client``: a factory ``mqtt_client(broker, user, **kw) -> RecordingClient``
  (see :func:`testbed.connect_client` for ``kw``; ``cert=True`` logs in with a client
  certificate); the user is created on the broker if it does not exist yet; every
  client is closed after the test. Every client speaks TLS.

``tests/`` is not a package, so pytest puts ``tests/`` on ``sys.path`` for this
file and test modules import ``support`` directly.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import Broker, MqttClientFactory, RecordingClient, connect_client
from testbed.postgres import Postgres


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the ``broker`` fixture with ``broker``."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A running Mosquitto with the shipped configuration, ACL and plugin, and no users
    yet; without the plugin in a test marked ``unguarded``."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (make venv installs it)")
    guard = request.node.get_closest_marker("unguarded") is None
    instance = Broker(tmp_path / "broker", guard=guard)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the whole run (started on first use; each
    test takes a fresh database from it with ``postgres.new_database()``)."""
    with Postgres() as cluster:
        yield cluster


@pytest.fixture
def mqtt_client() -> Iterator[MqttClientFactory]:
    """Factory of connected :class:`RecordingClient`; all are closed after the test."""
    made: list[RecordingClient] = []

    def make(broker: Broker, user: str, **kwargs: Any) -> RecordingClient:
        if kwargs.get("password") is None and not broker.has_user(user):
            broker.add_user(user)
        client = connect_client(broker, user, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
