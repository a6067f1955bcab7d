"""Small pure parts of the daemon shell: settings mapping, status lines, hostile room
lists, and the mock pins' history trimming used by long ``--mock-hw`` runs."""

from __future__ import annotations

from typing import Any

import pytest
from appliance.hw_mocks.gpio import HISTORY_KEEP, timeline
from gpiozero import LED

from appliance.device.daemon import machine_config, panel_pins
from appliance.device.effects import ApiReply
from appliance.device.panel import PanelPins
from appliance.device.settings import ApplianceSettings
from appliance.device.startup import first_room as _first_room
from appliance.device.status import summary as _summary
from testbed.leds import led_pin


def settings(**sections: dict[str, Any]) -> ApplianceSettings:
    return ApplianceSettings.model_validate({"device": {"user_id": "pi-x"}, **sections})


def test_the_gpio_and_room_sections_reach_the_panel_and_the_machine() -> None:
    s = settings(
        device={"user_id": "pi-x", "name": "Ex"},
        gpio={"button_mute": 4, "led_mic": 26},
        room={"auto_accept_when_hand_raised": False},
    )
    assert panel_pins(s) == PanelPins(mute=4, mic=26)
    config = machine_config(s)
    assert (config.user_id, config.name, config.auto_accept_when_hand_raised) == (
        "pi-x",
        "Ex",
        False,
    )


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"rooms": []},
        {"rooms": "r-1"},
        {"rooms": ["r-1"]},
        {"rooms": [{"room_id": 7}]},
        {"rooms": [{"subject": "no id"}]},
    ],
)
def test_a_room_list_without_a_usable_first_room_joins_nothing(data: Any) -> None:
    assert _first_room(ApiReply(1, 0, "ok", data)) is None


def test_the_first_open_room_is_the_first_listed() -> None:
    data = {"rooms": [{"room_id": "old"}, {"room_id": "new"}], "next_cursor": None}
    assert _first_room(ApiReply(1, 0, "ok", data)) == "old"
    assert _first_room(ApiReply(1, 503, "not connected")) is None


def status(**changes: Any) -> dict[str, Any]:
    base = {
        "connection": "online",
        "room_id": "r-1",
        "role": "speaker",
        "mic_on": True,
        "hand_raised": False,
        "invitation": None,
        "leds": {"status": "on"},
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"connection": "connecting"}, "connecting"),
        ({"room_id": None, "role": None}, "online, no room"),
        ({"role": None, "mic_on": False}, "online, room r-1 as joining"),
        ({}, "online, room r-1 as speaker (mic_on)"),
        (
            {"role": "listener", "mic_on": False, "hand_raised": True, "invitation": {}},
            "online, room r-1 as listener (hand_raised, invited)",
        ),
        ({"leds": {"status": "blink-fast"}}, "online, room r-1 as speaker (mic_on, error)"),
    ],
)
def test_the_status_line_for_logs_and_systemd(changes: dict[str, Any], line: str) -> None:
    assert _summary(status(**changes)) == line


def test_a_blinking_pin_keeps_a_bounded_recent_history(factory: Any) -> None:
    led = LED(PanelPins().status, pin_factory=factory)
    pin = led_pin(factory, "status")
    changed_at = []
    for _ in range(600):
        led.toggle()
        changed_at.append(pin._last_change)
    after = timeline(pin)
    assert HISTORY_KEEP <= len(pin.states) <= 2 * HISTORY_KEEP
    # Same absolute times as the latest changes: nothing recent is lost.
    assert [c.at for c in after] == pytest.approx(changed_at[-len(after) :], abs=1e-6)
    led.close()
