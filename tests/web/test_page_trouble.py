"""What the page says when something goes wrong, and that it finds its way back: a
wrong password, a broker it cannot reach, a server that does not answer, a broker that
goes away under it (it reconnects by itself and is back in its room), and keyboard
use alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from appliance.pageserver import PageServer
from testbed import Broker, free_port
from testbed.server import RunningServer
from testbed.web import PageUser


def test_a_wrong_password_is_said_and_the_right_one_then_works(
    people: Callable[..., PageUser],
) -> None:
    person = people(login=False)
    person.login(password="not-the-password")
    expect(person.by("login-error")).to_be_visible()
    expect(person.by("login-error")).to_contain_text("password")
    expect(person.by("connection")).to_have_attribute("data-state", "offline")
    person.login()
    expect(person.by("login-error")).to_be_hidden()


def test_a_broker_that_cannot_be_reached_is_said(browser: Browser) -> None:
    nowhere = PageServer(f"ws://127.0.0.1:{free_port()}/").start()
    try:
        person = PageUser(browser, nowhere.url, "web-x", "whatever")
        person.login(password="whatever")
        expect(person.by("login-error")).to_contain_text("Cannot reach the broker")
        person.close()
    finally:
        nowhere.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Broker, PageServer]]:
    """A broker and page of this test's own (no server yet): it is stopped and started."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    page = PageServer(broker.ws_url).start()
    yield broker, page
    page.stop()
    broker.stop()


def test_a_silent_server_then_a_lost_broker_are_said_and_the_page_comes_back(
    browser: Browser, own_broker: tuple[Broker, PageServer], tmp_path: Path
) -> None:
    broker, page_server = own_broker
    person = PageUser(browser, page_server.url, "web-1", broker.add_user("web-1"))
    try:
        person.open()
        person.by("login-user").fill(person.user)
        person.by("login-password").fill(person.password)
        person.by("login-submit").click()
        # The broker takes the login, but nobody serves the requests (PUBACK 0x10).
        expect(person.by("connection")).to_have_attribute("data-state", "online")
        expect(person.by("notice")).to_contain_text("server is not answering")
        expect(person.by("notice")).to_have_attribute("data-kind", "warning")
        server = RunningServer(broker, tmp_path / "server.db").start()
        try:
            expect(person.page.locator("#lobby-view")).to_be_visible(timeout=15_000)
            expect(person.by("notice")).to_be_hidden()
            room_id = person.create_room("Weather")

            broker.stop()
            expect(person.by("connection")).to_have_attribute("data-state", "offline")
            expect(person.by("notice")).to_contain_text("Lost the connection")
            broker.start()  # same ports: the page reconnects by itself
            expect(person.by("connection")).to_have_attribute(
                "data-state", "online", timeout=15_000
            )
            expect(person.by("notice")).to_be_hidden()
            expect(person.by("room-view")).to_have_attribute("data-room-id", room_id)
            expect(person.by("my-role")).to_have_attribute("data-state", "host")
        finally:
            server.stop()
    finally:
        person.close()
    assert not person.errors


def test_the_keyboard_alone_logs_in_creates_a_room_and_reaches_its_controls(
    people: Callable[..., PageUser],
) -> None:
    person = people(login=False)
    keys = person.page.keyboard
    expect(person.by("login-user")).to_be_focused()
    keys.type(person.user)
    keys.press("Tab")
    keys.type(person.password)
    keys.press("Enter")
    expect(person.by("create-subject")).to_be_focused()
    keys.type("Typed room")
    keys.press("Enter")
    expect(person.by("my-role")).to_have_attribute("data-state", "host")
    # Every control of the room is reachable with Tab, in a sensible order.
    reached = []
    for _ in range(6):
        keys.press("Tab")
        reached.append(
            person.page.evaluate(
                "document.activeElement.dataset.testid || document.activeElement.id"
            )
        )
    assert reached.index("mic") < reached.index("leave") < reached.index("close-room"), reached
