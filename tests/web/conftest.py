"""The browser tests' shared set-up: one broker, one server, one page server and one
headless Chromium for the whole directory (starting Chromium costs ~1 s, the page and
the broker more), with a fresh browser context per person and fresh user names per
test, so the tests stay independent while the suite stays lean.

The fake microphone of every page plays :data:`testbed.web.PAGE_TONE_HZ` in bursts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from appliance.pageserver import PageServer
from testbed import Broker
from testbed.daemons import InProcessDaemon
from testbed.server import RunningServer
from testbed.web import PAGE_TONE_HZ, PageUser, launch, write_tone_bursts

_serial = itertools.count(1)


def unique(prefix: str) -> str:
    """A user name no other test of the run uses (sessions outlive a test)."""
    return f"{prefix}-{next(_serial)}"


@pytest.fixture(scope="package")
def web_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("web") / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="package")
def web_server(
    web_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    server = RunningServer(web_broker, tmp_path_factory.mktemp("server") / "server.db").start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def page_server(web_broker: Broker) -> Iterator[PageServer]:
    server = PageServer(web_broker.ws_url).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """One Playwright for the directory (its sync API allows only one at a time)."""
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="package")
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    mic = write_tone_bursts(tmp_path_factory.mktemp("mic") / "tone.wav", PAGE_TONE_HZ)
    chromium = launch(playwright, mic)
    yield chromium
    chromium.close()


@pytest.fixture
def people(
    browser: Browser, page_server: PageServer, web_broker: Broker, web_server: RunningServer
) -> Iterator[Callable[..., PageUser]]:
    """Factory: ``people("web")`` is a new person with a fresh account, logged in
    (``login=False``: only the page opened). Every page is closed after the test, and
    none may have thrown."""
    made: list[PageUser] = []

    def make(prefix: str = "web", *, login: bool = True, **kwargs: Any) -> PageUser:
        user = unique(prefix)
        person = PageUser(browser, page_server.url, user, web_broker.add_user(user), **kwargs)
        made.append(person)
        return person.login() if login else person.open()

    yield make
    errors = {person.user: person.errors for person in made if person.errors}
    for person in made:
        person.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def appliances(
    web_broker: Broker, web_server: RunningServer
) -> Iterator[Callable[..., InProcessDaemon]]:
    """Factory of started in-process appliances (mock GPIO and sound card) on the
    shared broker; ``appliances("pi-host", mode="host", subject=...)``."""
    made: list[InProcessDaemon] = []

    def make(prefix: str, **kwargs: Any) -> InProcessDaemon:
        device = InProcessDaemon(web_broker, unique(prefix), **kwargs)
        made.append(device)
        return device.start()

    yield make
    for device in reversed(made):
        device.stop()


@pytest.fixture
def recording(tmp_path: Path) -> Callable[[str], Path]:
    """Where an appliance's speaker is recorded: ``audio={"mock_output": recording("x")}``."""
    return lambda name: tmp_path / f"{name}.wav"
