"""The console's pure parts: keys, blinking, rendering a status into lines."""

from __future__ import annotations

import curses
from typing import Any

import pytest

from appliance.protocol.models import printable
from appliance.tools.console import (
    FLASH_S,
    HELP_LINE,
    LEGEND,
    Console,
    Cycle,
    DeviceView,
    Help,
    Host,
    MemberView,
    Pick,
    Press,
    Quit,
    Screen,
    Select,
    action_for_key,
    flash_lit,
    led_lit,
    line_text,
    next_pick,
    note_own_refusal,
    note_refusals,
    parse_ports,
    render,
    render_device,
    room_members,
)


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
        ("p", Pick(1)),
        ("P", Pick(-1)),
        ("i", Host("invite")),
        ("x", Host("mute")),
        ("k", Host("remove")),
        ("?", Help()),
        ("h", Help()),
        ("q", Quit()),
        (ord("a"), Press("accept", "short")),
        (27, Quit()),
        ("z", None),
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
    view = DeviceView(5684, status(), error=None)
    lines = [line_text(line) for line in render_device(view, 1, True, 0.0, width=24)]
    assert lines[0] == "▶[2] pi-ann :5684"
    assert all(len(line) <= 24 for line in lines)
    text = " ".join(" ".join(lines).split())
    for expected in (
        "online · listener",
        "room room-1",
        "mic off",
        "hand raised",
        "invite from Host",
    ):
        assert expected in text
    block = render_device(view, 1, True, 0.0)
    leds = [line for line in block if len(line) == 5]
    glyphs = {
        label.strip(): glyph
        for line in leds
        for (glyph, _), (label, _) in zip(line[1::2], line[2::2], strict=True)
    }
    assert glyphs == {"status": "●", "hand": "●", "invite": "●", "mic": "○"}  # t=0: blinks lit
    later = render_device(view, 1, True, 0.3)  # the 2 Hz invite LED is dark at 0.3 s
    assert [g for line in later for g, _ in line if g in "●○"] == ["●", "●", "○", "○"]


def test_a_device_block_names_its_room_by_subject_once_known() -> None:
    view = DeviceView(5684, status(), error=None)

    def shown() -> list[str]:
        return [" ".join(line_text(x).split()) for x in render_device(view, 1, True, 0.0, 24)]

    assert "room room-1" in shown()  # the subject is not known yet: the id
    view.subject = ("room-1", "Morning room")
    assert "room Morning room" in shown() and "id room-1" in shown()
    view.status = status(room_id="room-2")  # it moved: that subject is not this room's
    assert "room room-2" in shown() and not any("Morning" in line for line in shown())
    view.status = status(room_id=None)
    assert "room —" in shown()


def test_names_and_ids_too_long_for_a_column_are_cut_with_an_ellipsis() -> None:
    long = status(user_id="pi-" + "x" * 60, room_id="r" * 32)
    lines = [line_text(x) for x in render_device(DeviceView(5683, long), 0, False, 0.0, 24)]
    assert all(len(line) <= 24 for line in lines)
    assert lines[0].startswith(" [1] pi-xxx") and lines[0].endswith("… :5683")
    assert any(line.endswith("r…") for line in lines)


def test_leds_are_coloured_when_lit_and_dim_when_dark() -> None:
    view = DeviceView(
        5683, status(leds={"status": "on", "hand": "off", "invite": "off", "mic": "on"})
    )
    block = render_device(view, 0, False, 0.0)
    styles = [style for line in block for glyph, style in line if glyph in "●○"]
    assert styles == ["led-status", "dim", "dim", "led-mic"]


def test_a_device_that_does_not_answer_says_so() -> None:
    lines = [line_text(x) for x in render_device(DeviceView(5685), 2, False, 0.0)]
    assert lines == [" [3] ? :5685", "  waiting for the device"]


def test_the_screen_has_devices_side_by_side_and_the_help_line_at_the_bottom() -> None:
    views = [DeviceView(5683, status(user_id="pi-host")), DeviceView(5684, status())]
    lines = [line_text(x) for x in render(views, Screen(), 0.0, 120, 30)]
    assert len(lines) == 30
    assert "GoChat appliances" in lines[0]
    assert any("[1] pi-host" in x and "[2] pi-ann" in x for x in lines)
    assert lines[-1] == HELP_LINE
    narrow = [line_text(x) for x in render(views, Screen(), 0.0, 40, 30)]
    assert not any("[1] pi-host" in x and "[2] pi-ann" in x for x in narrow)
    assert all(len(x) <= 39 for x in narrow)


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
    other = DeviceView(5685, status(user_id="pi-\x1b[2Jbob"))
    lines = render([view, other], Screen(), 0.0, 200, 30)
    text = "\n".join(line_text(x) for x in lines)
    assert all(c.isprintable() for line in text.split("\n") for c in line)
    assert "\\u202e" in text and "\\x1b" in text and "\\x07" in text and "\\x85" in text
    assert "from E\\u202e\\x85\\x1b[2J" in text


def test_printable_leaves_ordinary_text_alone() -> None:
    for text in ("Anne-Marie", "Zoë's room", "会議室\u3000一", "🎙️ talk", "a\u00a0b"):
        assert printable(text) == text
    assert printable("a\tb\nc\x00") == "a\\x09b\\x0ac\\x00"
    assert printable("\U000e0001") == "\\U000e0001"


REFUSAL = "refused: " + "the room is closing and nobody may take the stage now; " * 5 + "END"


def three_devices() -> list[DeviceView]:
    host = status(user_id="pi-host", role="host", mic_on=True, hand_raised=False, invitation=None)
    bob = status(user_id="pi-bob", role="speaker", hand_raised=False)
    views = [
        DeviceView(5683, host, error=None, last=f"accept short: {REFUSAL}", last_bad=True),
        DeviceView(5684, status(), error=None),
        DeviceView(5685, bob, error=None),
    ]
    for view in views:
        view.subject = ("room-1", "Morning room")
    return views


def test_at_80x24_everything_fits_with_a_long_refusal_shown_whole() -> None:
    assert len(REFUSAL) > 200
    lines = render(three_devices(), Screen(picked="pi-ann"), 0.0, 80, 24)
    text = [line_text(x) for x in lines]
    assert len(text) == 24 and all(len(x) <= 79 for x in text)
    assert all(f"[{n}] pi-" in "".join(text) for n in (1, 2, 3))
    assert sum("● status" in x or "○ status" in x for x in text) == 1  # one row, 3 blocks
    assert " members  ▸pi-ann (listener, hand up)  pi-bob (speaker, muted)" in text
    message = [
        x.strip() for x, line in zip(text, lines, strict=True) if line[:1] and line[0][1] == "bad"
    ]
    assert " ".join(message) == f"pi-host:5683: accept short: {REFUSAL}"  # wrapped, not cut
    assert len(message) > 2
    assert text[-1] == HELP_LINE and len(HELP_LINE) <= 79


def test_the_help_key_shows_the_full_legend_within_80x24() -> None:
    text = [line_text(x) for x in render(three_devices(), Screen(help=True), 0.0, 80, 24)]
    assert len(text) == 24 and all(len(x) <= 79 for x in text)
    assert [f" {line}".rstrip() for line in LEGEND] == text[2 : 2 + len(LEGEND)]
    assert text[-1] == HELP_LINE
    for key in ("1-9, Tab", "p, P", "host: invite", "host: mute", "host: remove", "q, Esc"):
        assert any(line.startswith(f" {key}") or key in line for line in text)


def status_light(view: DeviceView, now: float) -> tuple[str, str]:
    line = next(x for x in render_device(view, 0, False, now) if "status" in line_text(x))
    glyph, style = line[1]
    return glyph, style


def test_a_refused_press_flashes_the_status_light_twice_then_the_pattern_returns() -> None:
    view = DeviceView(5683, status(leds={"status": "on"}), error=None, flash_at=100.0)
    assert pytest.approx(0.6) == FLASH_S
    # 0.15 s on, 0.15 s off, twice: drawn red ("bad"), over the steady "on"
    assert status_light(view, 100.05) == ("●", "bad")
    assert status_light(view, 100.2) == ("○", "dim")
    assert status_light(view, 100.35) == ("●", "bad")
    assert status_light(view, 100.5) == ("○", "dim")
    assert status_light(view, 100.65) == ("●", "led-status")  # over: the pattern again
    assert status_light(view, 99.9) == ("●", "led-status")
    assert [flash_lit(None, 1.0), flash_lit(100.0, 100.7)] == [None, None]


def test_a_host_picks_among_the_other_online_devices_in_its_room() -> None:
    views = three_devices()
    views.append(DeviceView(5686, status(user_id="pi-far", room_id="room-2")))
    views.append(DeviceView(5687, status(user_id="pi-gone", connection="connecting")))
    views.append(DeviceView(5688))  # not answering
    members = room_members(views, 0)
    assert members == [
        MemberView("pi-ann", "listener", mic_on=False, hand_raised=True),
        MemberView("pi-bob", "speaker", mic_on=False, hand_raised=False),
    ]
    assert [m.user_id for m in room_members(views, 1)] == ["pi-host", "pi-bob"]
    assert room_members(views, 5) == [] and room_members(views, 9) == []
    assert next_pick(members, None, 1) == "pi-ann"
    assert next_pick(members, None, -1) == "pi-bob"
    assert next_pick(members, "pi-ann", 1) == "pi-bob"
    assert next_pick(members, "pi-bob", 1) == "pi-ann"
    assert next_pick(members, "pi-far", 1) == "pi-ann"  # gone from the room: start again
    assert next_pick([], "pi-ann", 1) is None


def test_keys_that_need_a_member_say_so_and_send_nothing_when_none_is_picked() -> None:
    console = Console("127.0.0.1", [5683, 5684])
    console.views[0].status = status(user_id="pi-host", role="host")
    console.handle(Host("invite"))  # no CoAP client: a request would fail loudly
    assert console.views[0].last == "invite: pick a member first (p)"
    assert console.views[0].last_bad
    console.handle(Pick(1))  # the other device has not answered: nobody to pick
    assert console.screen.picked is None
    assert console.views[0].last.startswith("no member to pick")
    console.views[1].status = status()
    console.handle(Pick(1))
    assert console.screen.picked == "pi-ann"
    console.handle(Help())
    console.handle(Select(1))
    assert console.screen == Screen(selected=1, picked="pi-ann", help=True)
    console.handle(Select(7))  # no such device: nothing changes
    console.handle(Quit())
    assert console.selected == 1 and console.quit


def test_refusals_counted_on_the_device_flash_once_each() -> None:
    view = DeviceView(5683, status(), error=None)
    note_refusals(view, 4, 10.0)  # the first reading is history: no flash
    assert (view.refusals, view.flash_at, view.last) == (4, None, "")
    note_refusals(view, 4, 10.3)
    assert view.flash_at is None
    note_refusals(view, 5, 10.6)  # one more on the box: it flashed there, and here
    assert view.flash_at == 10.6 and view.last_bad
    assert "refused on the device" in view.last
    note_refusals(view, 0, 12.0)  # the daemon restarted: start counting again
    assert (view.refusals, view.flash_at) == (0, 10.6)


def test_the_consoles_own_refusal_flashes_once_whichever_news_comes_first() -> None:
    view = DeviceView(5683, status(), error=None, refusals=3)
    note_own_refusal(view, 20.0)  # the answer to the press first...
    assert view.flash_at == 20.0
    note_refusals(view, 4, 20.2)  # ...then the counter: the same refusal
    assert view.flash_at == 20.0 and view.last == ""
    note_refusals(view, 5, 20.5)  # a finger on the box next: a new flash
    assert view.flash_at == 20.5
    note_refusals(view, 6, 30.0)  # the counter first...
    note_own_refusal(view, 30.1)  # ...then the answer: no second flash
    assert view.flash_at == 30.0
    note_own_refusal(view, 40.0)  # long after: a refusal of its own
    assert view.flash_at == 40.0


def test_a_status_of_the_wrong_shape_is_drawn_as_unknown_never_a_crash() -> None:
    odd = [{}, {"user_id": None, "leds": "on", "invitation": []}, {"role": 7, "room_id": 3}]
    views = [DeviceView(5683 + i, status, error=None) for i, status in enumerate(odd)]
    for selected in range(3):
        lines = render(views, Screen(selected=selected, picked="x"), 0.0, 80, 24)
        assert len(lines) == 24 and "[1] ? :5683" in line_text(lines[2])
