"""Shared fixtures: a real Mosquitto per test, and connected recording clients.

- ``broker``: a fresh :class:`testbed.Broker` (shipped config, ACL and plugin, free
  loopback ports, persistence in the test's tmp dir), stopped after the test; a test
  marked ``unguarded`` gets it without the plugin, as a broker the server must defend
  itself against. Function scoped: retained messages and sessions never leak between
  tests, and a start costs ~0.1 s.
  Its listeners: TLS with passwords (``broker.port``), TLS with client certificates
  (``broker.cert_port``; ``broker.issue_device``/``revoke``) and plain loopback
  (``broker.plain_port``), all verified against one CA per test session.
- ``postgres``: a throwaway PostgreSQL cluster (Debian's packages) for the session;
  ``postgres.new_database()`` gives each test an empty database.
- ``mqtt_client``: a factory ``mqtt_client(broker, user, **kw) -> RecordingClient``
  (see :func:`testbed.connect_client` for ``kw``; ``cert=True`` logs in with a client
  certificate); the user is created on the broker if it does not exist yet; every
  client is closed after the test. Every client speaks TLS.

A session that runs the benchmark smokes starts them with its first test and runs the
offline tests first, beside them (:mod:`testbed.smokes`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import Broker, MqttClientFactory, RecordingClient, connect_client, smokes
from testbed.postgres import Postgres

SMOKES_EARLY = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the ``broker`` fixture with ``broker``; order the
    offline tests first, to run beside the benchmark smokes (:mod:`testbed.smokes`)."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
    config.stash[SMOKES_EARLY] = smokes.schedule(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[object]:
    """Start the benchmark smokes with the tests when the session runs their test."""
    if not session.config.stash.get(SMOKES_EARLY, False):
        return (yield)
    runs = session.config.stash[smokes.SMOKE_RUNS] = smokes.SmokeRuns().start()
    try:
        return (yield)
    finally:
        runs.stop()


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
