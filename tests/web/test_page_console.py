"""The host's console on a page: it invites, mutes and removes an appliance and closes
the room, and the appliance's LEDs follow each step; a guest page follows too."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from testbed.daemons import InProcessDaemon, expect_leds
from testbed.web import PageUser

ON_STAGE = {"status": "on", "invite": "off", "mic": "on"}


def test_a_host_page_invites_mutes_and_removes_an_appliance_and_closes_the_room(
    people: Callable[..., PageUser], appliances: Callable[..., InProcessDaemon]
) -> None:
    host = people("web-host")
    room_id = host.create_room("Console")
    ann = appliances("pi-ann", mode="join", room_id=room_id, audio={"mock_input": "tone:550"})
    member = host.member(ann.user)
    expect(member).to_have_attribute("data-role", "listener")
    expect(member.get_by_test_id("mute")).to_be_hidden()

    member.get_by_test_id("invite").click()
    expect_leds([(ann, {"invite": "blink", "mic": "off"})])
    ann.press("accept")
    expect_leds([(ann, ON_STAGE)])
    expect(member).to_have_attribute("data-role", "speaker")
    expect(member).to_have_attribute("data-mic", "on")
    expect(member).to_have_attribute("data-speaking", "true")  # its voice, decoded in the page

    member.get_by_test_id("mute").click()
    expect_leds([(ann, {**ON_STAGE, "mic": "off"})])
    expect(member).to_have_attribute("data-mic", "off")
    expect(member).to_have_attribute("data-speaking", "false")

    member.get_by_test_id("remove").click()
    expect(member).to_have_attribute("data-role", "listener")
    assert ann.wait_status(lambda s: s["role"] == "listener")["room_id"] == room_id
    expect(member.get_by_test_id("invite")).to_be_visible()

    host.by("close-room").click()
    expect(host.page.locator("#lobby-view")).to_be_visible()
    expect_leds([(ann, {"status": "blink-fast", "mic": "off"})])  # the room closed under it


def test_a_guest_page_is_told_when_the_room_closes_and_is_back_in_the_lobby(
    people: Callable[..., PageUser],
) -> None:
    host = people("web-host")
    room_id = host.create_room("Short-lived")
    guest = people("web-guest")
    guest.join(room_id)
    expect(host.member(guest.user)).to_have_attribute("data-role", "listener")
    host.by("close-room").click()
    expect(guest.by("notice")).to_be_visible()
    expect(guest.by("notice")).to_contain_text("closed")
    expect(guest.by("room-view")).to_be_hidden()
    expect(
        guest.page.locator(f'[data-testid="room-item"][data-room-id="{room_id}"]')
    ).to_have_count(0)
    guest.page.locator("#create-subject").fill("Mine now")  # the way back: the lobby works
    guest.by("create-room").click()
    expect(guest.by("my-role")).to_have_attribute("data-state", "host")
