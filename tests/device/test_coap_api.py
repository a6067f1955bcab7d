"""The local CoAP API of a real daemon (real broker and server): shapes, codes, hostility."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from appliance.device.coap import coap_code
from appliance.device.machine import BROKER_REFUSED, LINK_LOST, TIMEOUT
from testbed.daemons import CoapClient, InProcessDaemon
from testbed.server import RunningServer

STATUS_KEYS = {
    "connection",
    "user_id",
    "room_id",
    "role",
    "mic_on",
    "hand_raised",
    "invitation",
    "leds",
    "audio",
}
AUDIO_KEYS = {
    "frames_sent", "frames_received", "frames_concealed", "frames_rejected", "jitter_ms",
    "underrun_ms", "late_frames", "speaking", "input_level_dbfs", "howl_events",
}  # fmt: skip


@pytest.mark.parametrize(
    ("code", "coap"),
    [
        (400, "4.00"),
        (401, "5.03"),
        (403, "4.03"),
        (404, "4.04"),
        (409, "4.09"),
        (410, "4.04"),
        (429, "4.29"),
        (500, "5.00"),
        (BROKER_REFUSED, "5.02"),
        (LINK_LOST, "5.03"),
        (TIMEOUT, "5.04"),
        (418, "4.00"),
        (599, "5.00"),
    ],
)
def test_protocol_codes_map_to_coap_codes(code: int, coap: str) -> None:
    assert coap_code(code).dotted == coap


def test_status_observe_rooms_and_room_changes(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], coap: CoapClient
) -> None:
    pi = daemons("pi-api")
    status = coap.get(pi.coap_port, "/status")
    assert (status.code, status.content_format) == ("2.05", 50)
    assert set(status.body) == STATUS_KEYS and set(status.body["audio"]) == AUDIO_KEYS
    assert status.body["connection"] == "online" and status.body["room_id"] is None
    assert status.body["leds"] == {
        "status": "blink-slow",
        "hand": "off",
        "invite": "off",
        "mic": "off",
    }

    watch = coap.observe(pi.coap_port)
    created = coap.request(pi.coap_port, "PUT", "/room", {"subject": "Tea time"})
    assert created.code == "2.04"
    room_id = created.body["room"]["room_id"]
    note = watch.wait_for(lambda s: s["role"] == "host")
    assert note["room_id"] == room_id and note["mic_on"] is True
    assert note["leds"] == {"status": "on", "hand": "off", "invite": "off", "mic": "on"}

    rooms = coap.get(pi.coap_port, "/rooms")
    assert rooms.code == "2.05"
    assert [r["room_id"] for r in rooms.body["rooms"]] == [room_id]
    assert rooms.body["rooms"][0]["subject"] == "Tea time" and rooms.body["next_cursor"] is None
    assert coap.get(pi.coap_port, "/rooms?page_size=1").code == "2.05"

    left = coap.request(pi.coap_port, "DELETE", "/room")
    assert (left.code, left.body) == ("2.02", {})
    watch.wait_for(lambda s: s["room_id"] is None and s["leds"]["status"] == "blink-slow")
    watch.cancel()
    assert coap.get(pi.coap_port, "/rooms").body["rooms"] == []


def test_server_refusals_come_back_as_coap_errors(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], coap: CoapClient
) -> None:
    pi = daemons("pi-api")
    missing = coap.request(pi.coap_port, "PUT", "/room", {"room_id": "no-such-room"})
    assert missing.code == "4.04" and isinstance(missing.body["message"], str)
    assert pi.status["leds"]["status"] == "blink-fast"  # a room that refused us is an error
    not_in_room = coap.post(pi.coap_port, "/host/invite", {"user_id": "pi-other"})
    assert (not_in_room.code, not_in_room.body) == ("4.09", {"message": "not in a room"})
    press = coap.post(pi.coap_port, "/buttons/raise_hand", {"press": "short"})
    assert press.code == "2.04"
    assert press.body == {
        "button": "raise_hand",
        "press": "short",
        "outcome": "refused",
        "reason": "not in a room",
    }


HOSTILE: list[tuple[str, str, Any, dict[str, Any], str]] = [
    # method, path, payload (bytes = raw), request options, expected code
    ("POST", "/status", {}, {}, "4.05"),
    ("DELETE", "/rooms", None, {}, "4.05"),
    ("GET", "/buttons/mute", None, {}, "4.05"),
    ("PUT", "/host/invite", {"user_id": "x"}, {}, "4.05"),
    ("GET", "/nowhere", None, {}, "4.04"),
    ("GET", "/buttons", None, {}, "4.04"),
    ("POST", "/buttons/mute/extra", {"press": "short"}, {}, "4.04"),
    ("POST", "/buttons/volume", {"press": "short"}, {}, "4.00"),
    ("POST", "/buttons/mute", b"{not json", {}, "4.00"),
    ("POST", "/buttons/mute", b"", {}, "4.00"),
    ("POST", "/buttons/mute", {"press": 1}, {}, "4.00"),
    ("POST", "/buttons/mute", {"press": "medium"}, {}, "4.00"),
    ("POST", "/buttons/mute", {"press": "short", "force": True}, {}, "4.00"),
    ("POST", "/buttons/mute", [], {}, "4.00"),
    ("POST", "/buttons/mute", b"\xff\xfe", {}, "4.00"),
    ("POST", "/buttons/mute", {"press": "short", "pad": "x" * 2000}, {}, "4.00"),
    ("POST", "/buttons/mute", b"press=short", {"content_format": 0}, "4.15"),
    ("PUT", "/room", {"room_id": "a/b"}, {}, "4.00"),
    ("PUT", "/room", {"room_id": "r", "subject": "s"}, {}, "4.00"),
    ("PUT", "/room", {}, {}, "4.00"),
    ("PUT", "/room", {"subject": ""}, {}, "4.00"),
    ("PUT", "/room", {"room_id": "r", "max_seats": 4}, {}, "4.00"),
    ("DELETE", "/room", {"now": True}, {}, "4.00"),
    ("POST", "/host/kick", {"user_id": "x"}, {}, "4.00"),
    ("POST", "/host/invite", {"user_id": "bad id!"}, {}, "4.00"),
    ("POST", "/host/mute", {"user": "x"}, {}, "4.00"),
    ("GET", "/rooms?page_size=abc", None, {}, "4.00"),
    ("GET", "/rooms?sort=name", None, {}, "4.00"),
]


def test_hostile_requests_get_4xx_and_are_counted_and_the_daemon_keeps_serving(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], coap: CoapClient
) -> None:
    pi = daemons("pi-api")
    for method, path, payload, options, expected in HOSTILE:
        raw = payload if isinstance(payload, bytes) else None
        reply = coap.request(
            pi.coap_port, method, path, None if raw is not None else payload, raw=raw, **options
        )
        assert reply.code == expected, (method, path, payload, reply)
        assert reply.content_format == 50 and set(reply.body) == {"message"}, reply
        assert reply.body["message"], reply
    counters = coap.get(pi.coap_port, "/counters").body
    assert counters["method_not_allowed"] == 4
    assert counters["not_found"] == 3
    assert counters["bad_request"] == len(HOSTILE) - 7
    assert counters.get("internal_errors", 0) == 0
    # Still serving, still the same device.
    status = coap.get(pi.coap_port, "/status")
    assert status.code == "2.05" and status.body["connection"] == "online"
    created = coap.request(pi.coap_port, "PUT", "/room", {"subject": "Still here", "max_seats": 4})
    assert created.code == "2.04" and created.body["room"]["max_seats"] == 4


def test_an_observer_that_quits_is_dropped_and_status_keeps_answering(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], coap: CoapClient
) -> None:
    """Two consoles observe /status; one quits without deregistering. The "port
    unreachable" for its next notification came back as the error of the *next* send,
    to the observer that stayed: aiocoap ended that observation inside the send and
    raised ``TypeError: 'bool' object is not iterable`` (a 5.00 in the log), and the
    staying console heard nothing more."""
    pi = daemons("pi-obs")
    staying = coap.observe(pi.coap_port)
    leaving = CoapClient()
    leaving.observe(pi.coap_port)
    leaving.close()  # its socket is gone: notifications to it are refused

    for subject in ("One", "Two", "Three"):
        created = coap.request(pi.coap_port, "PUT", "/room", {"subject": subject})
        assert created.code == "2.04"
        room_id = created.body["room"]["room_id"]
        staying.wait_for(lambda s, r=room_id: s["room_id"] == r and s["role"] == "host")
        assert coap.request(pi.coap_port, "DELETE", "/room").code == "2.02"
        staying.wait_for(lambda s: s["room_id"] is None)

    assert coap.get(pi.coap_port, "/status").code == "2.05"
    counters = coap.get(pi.coap_port, "/counters").body
    assert counters.get("internal_errors", 0) == 0
    assert counters["observers_gone"] >= 1
    staying.cancel()
