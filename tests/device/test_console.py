"""The console's pure parts: keys, blinking, rendering a status into lines."""

from __future__ import annotations

import curses
from typing import Any

import pytest

from appliance.device.console import (
    LEGEND,
    Cycle,
    DeviceView,
    Press,
    Quit,
    Select,
    action_for_key,
    led_lit,
    line_text,
    parse_ports,
    render,
    render_device,
)
from appliance.protocol.models import printable


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "connection": "online",
        "user_id": "pi-ann",
        "room_id": "room-1",
        "role": "listener",
        "mic_on": False,
        "hand_raised": True,
        "invitation": {"invitation_id": "i", "from_user_id": "pi-host", "from_name": "Host"},
        "leds": {"status": "on", "hand": "on", "invite": "blink", "mic": "off"},
        "audio": {"frames_sent": 0, "frames_received": 0, "frames_concealed": 0, "jitter_ms": 0.0},
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("key", "action"),
    [
        ("1", Select(0)),
        ("3", Select(2)),
        ("\t", Cycle()),
        ("r", Press("raise_hand", "short")),
        ("R", Press("raise_hand", "long")),
        ("m", Press("mute", "short")),
        ("M", Press("mute", "long")),
        ("a", Press("accept", "short")),
        ("A", Press("accept", "long")),
        ("q", Quit()),
        (ord("a"), Press("accept", "short")),
        (27, Quit()),
        ("x", None),
        (curses.KEY_RESIZE, None),
        (-1, None),
    ],
)
def test_keys(key: str | int, action: object) -> None:
    assert action_for_key(key) == action


@pytest.mark.parametrize(
    ("pattern", "lit_at", "dark_at"),
    [
        ("on", [0.0, 0.3, 0.9], []),
        ("off", [], [0.0, 0.3, 0.9]),
        ("blink-slow", [0.0, 0.4, 1.1], [0.6, 0.9, 1.7]),  # 1 Hz
        ("blink", [0.0, 0.2, 0.55], [0.3, 0.45, 0.8]),  # 2 Hz
        ("blink-fast", [0.0, 0.05, 0.25], [0.15, 0.35, 0.19]),  # 5 Hz
    ],
)
def test_leds_blink_at_their_rates(pattern: str, lit_at: list[float], dark_at: list[float]) -> None:
    # The phase origin is arbitrary (the console draws on wall time); here it is 0.
    assert all(led_lit(pattern, t) for t in lit_at)
    assert not any(led_lit(pattern, t) for t in dark_at)


def test_a_device_block_shows_everything_a_person_needs() -> None:
    view = DeviceView(5684, status(), error=None, last="raise_hand short: sent")
    lines = [line_text(line) for line in render_device(view, 1, True, 0.0)]
    assert lines[0] == "▶[2] pi-ann :5684"
    text = "\n".join(lines)
    for expected in (
        "connection online",
        "room       room-1",
        "role       listener",
        "mic        off",
        "hand       raised",
        "invitation from Host",
        "raise_hand short: sent",
    ):
        assert " ".join(expected.split()) in " ".join(text.split())
    leds = next(line for line in render_device(view, 1, True, 0.0) if "status" in line_text(line))
    glyphs = {
        text.strip(): glyph for (glyph, _), (text, _) in zip(leds[1::2], leds[2::2], strict=True)
    }
    assert glyphs == {"status": "●", "hand": "●", "invite": "●", "mic": "○"}  # t=0: blinks lit
    later = render_device(view, 1, True, 0.3)  # the 2 Hz invite LED is dark at 0.3 s
    invite = next(line for line in later if "invite" in line_text(line))
    assert [g for g, style in invite if g in "●○"] == ["●", "●", "○", "○"]


def test_leds_are_coloured_when_lit_and_dim_when_dark() -> None:
    view = DeviceView(
        5683, status(leds={"status": "on", "hand": "off", "invite": "off", "mic": "on"})
    )
    line = next(x for x in render_device(view, 0, False, 0.0) if "status" in line_text(x))
    styles = [style for glyph, style in line if glyph in "●○"]
    assert styles == ["led-status", "dim", "dim", "led-mic"]


def test_a_device_that_does_not_answer_says_so() -> None:
    lines = [line_text(x) for x in render_device(DeviceView(5685), 2, False, 0.0)]
    assert lines == [" [3] ? :5685", "  waiting for the device"]


def test_the_screen_has_devices_side_by_side_and_the_key_legend() -> None:
    views = [DeviceView(5683, status(user_id="pi-host")), DeviceView(5684, status())]
    lines = [line_text(x) for x in render(views, 0, 0.0, width=120)]
    assert "GoChat appliances" in lines[0]
    assert any("[1] pi-host" in x and "[2] pi-ann" in x for x in lines)
    assert lines[-len(LEGEND) :] == [f" {text}" for text in LEGEND]
    narrow = [line_text(x) for x in render(views, 0, 0.0, width=60)]
    assert not any("[1] pi-host" in x and "[2] pi-ann" in x for x in narrow)


def test_ports() -> None:
    assert parse_ports("5683,5684, 5685") == [5683, 5684, 5685]
    for bad in ("", "x", "0", "70000"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_whatever_a_peer_sent_is_escaped_before_it_reaches_the_terminal() -> None:
    hostile = "E\u202e\x85\x1b[2J\x07\u2066x\u200b"
    invitation = {"invitation_id": "i", "from_user_id": "pi-host", "from_name": hostile}
    view = DeviceView(5684, status(invitation=invitation, room_id="r\x1b]0;t\x07"),
                      last="press: \x1b[31mred")  # fmt: skip
    text = "\n".join(line_text(x) for x in render_device(view, 0, False, 0.0))
    assert all(c.isprintable() for line in text.split("\n") for c in line)
    assert "\\u202e" in text and "\\x1b" in text and "\\x07" in text and "\\x85" in text
    assert "from E\\u202e\\x85\\x1b[2J" in text


def test_printable_leaves_ordinary_text_alone() -> None:
    for text in ("Anne-Marie", "Zoë's room", "会議室\u3000一", "🎙️ talk", "a\u00a0b"):
        assert printable(text) == text
    assert printable("a\tb\nc\x00") == "a\\x09b\\x0ac\\x00"
    assert printable("\U000e0001") == "\\U000e0001"
