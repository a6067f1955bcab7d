"""The page's screenshots in docs/web.md, made from a real room.

Run (from the repository root)::

    .venv/bin/python -m testbed.screenshots            # writes docs/img/web-*.png

A broker, the server and appliances on stand-in hardware; the participant's view is a
page in the appliances' "Morning room" (its host speaks), the host's view a page hosting
a room with an appliance on stage and another with its hand up. Each view is taken at
desktop size and at 390 x 844 (a phone).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from appliance.pageserver import PageServer
from testbed.broker import Broker
from testbed.daemons import InProcessDaemon, expect_leds
from testbed.server import RunningServer
from testbed.web import PageUser, launch, write_tone_bursts

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 844}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        broker = Broker(tmp / "broker")
        broker.start()
        server = RunningServer(broker, tmp / "server.db").start()
        pages = PageServer(broker.ws_url).start()
        devices: list[InProcessDaemon] = []

        def device(user: str, **kwargs: object) -> InProcessDaemon:
            made = InProcessDaemon(broker, user, **kwargs).start()  # type: ignore[arg-type]
            devices.append(made)
            return made

        try:
            host = device("pi-host", mode="host", subject="Morning room",
                          audio={"mock_input": "tone:220"})  # fmt: skip
            device("pi-ann", mode="join", room_id=host.status["room_id"])
            with sync_playwright() as playwright:
                browser = launch(playwright, write_tone_bursts(tmp / "mic.wav", 440))
                for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                    participant(browser, pages.url, broker, host, size=size, viewport=viewport)
                    console(browser, pages.url, broker, device, size=size, viewport=viewport)
                browser.close()
        finally:
            for made in reversed(devices):
                made.stop()
            pages.stop()
            server.stop()
            broker.stop()
    print(f"screenshots in {OUT}")
    return 0


def participant(browser, url, broker, host, *, size, viewport) -> None:  # type: ignore[no-untyped-def]
    """web-1 in the Morning room, hand up; on the phone, invited to the stage."""
    user = "web-1" if size == "desktop" else "web-3"
    person = PageUser(browser, url, user, broker.add_user(user), viewport=viewport).login()
    person.join(host.status["room_id"])
    expect(person.member(host.user)).to_have_attribute("data-speaking", "true")
    if size == "desktop":
        person.by("raise-hand").click()
        expect(person.member(user)).to_have_attribute("data-hand", "true")
    else:
        person.by("raise-hand").click()
        expect_leds([(host, {"hand": "blink"})])
        host.press("accept")
        expect(person.by("invite-banner")).to_be_visible()
    person.page.screenshot(path=str(OUT / f"web-participant-{size}.png"), full_page=True)
    person.by("leave").click()
    expect(person.page.locator("#lobby-view")).to_be_visible()
    person.close()


def console(browser, url, broker, device, *, size, viewport) -> None:  # type: ignore[no-untyped-def]
    """A page hosting "Book club": an appliance speaks on stage, another raises a hand."""
    user = "web-2" if size == "desktop" else "web-4"
    person = PageUser(browser, url, user, broker.add_user(user), viewport=viewport).login()
    room_id = person.create_room("Book club")
    bob = device(f"pi-bob-{size}", mode="join", room_id=room_id, audio={"mock_input": "tone:330"})
    eve = device(f"pi-eve-{size}", mode="join", room_id=room_id)
    person.member(bob.user).get_by_test_id("invite").click()
    expect_leds([(bob, {"invite": "blink"})])
    bob.press("accept")
    eve.press("raise_hand")
    expect(person.member(bob.user)).to_have_attribute("data-speaking", "true")
    expect(person.member(eve.user)).to_have_attribute("data-hand", "true")
    person.page.screenshot(path=str(OUT / f"web-host-{size}.png"), full_page=True)
    person.by("close-room").click()
    person.close()


if __name__ == "__main__":
    sys.exit(main())
