"""Fixtures of the device tests: a fake clock, a per-test gpiozero mock factory, and
real daemons (in-process or as processes) against a real broker and server.

Helpers shared by several modules live in ``device_harness.py`` (this directory is put
on ``sys.path`` by pytest, as ``tests/`` is not a package).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from appliance.hw_mocks.gpio import mock_factory
from rig import FakeClock

from testbed import Broker
from testbed.daemons import CoapClient, DaemonProcess, InProcessDaemon
from testbed.server import RunningServer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def factory() -> Iterator[Any]:
    """A fresh MockFactory per test (gpiozero's own test-suite pattern)."""
    pins = mock_factory()
    yield pins
    pins.reset()


# ---------------------------------------------------------------- real daemons


@pytest.fixture
def gochat_server(broker: Broker, tmp_path: Path) -> Iterator[RunningServer]:
    """The business server, in-process on an offset clock, against ``broker``."""
    running = RunningServer(broker, tmp_path / "server.db").start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def coap() -> Iterator[CoapClient]:
    """One blocking CoAP client for the whole run."""
    client = CoapClient()
    yield client
    client.close()


@pytest.fixture
def daemons(broker: Broker) -> Iterator[Callable[..., InProcessDaemon]]:
    """Factory of started in-process daemons (mock GPIO); all stopped after the test."""
    made: list[InProcessDaemon] = []

    def make(user: str, *, start: bool = True, **kwargs: Any) -> InProcessDaemon:
        device = InProcessDaemon(broker, user, **kwargs)
        made.append(device)
        return device.start() if start else device

    yield make
    for device in reversed(made):
        device.stop()


@pytest.fixture
def processes(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory of ``python -m appliance run --mock-hw`` processes; killed after the test."""
    made: list[DaemonProcess] = []

    def make(user: str, *, start: bool = True, **kwargs: Any) -> DaemonProcess:
        device = DaemonProcess(broker, user, tmp_path / "devices", **kwargs)
        made.append(device)
        return device.start() if start else device

    yield make
    for device in made:
        device.close()
