"""A whole room, end to end: three appliances, a real broker and the real server.

``pi-host`` and ``pi-ann`` run in-process on mock GPIO: the test presses their button
pins and reads their LED pins (and ``/status``). ``pi-bob`` is a real
``python -m appliance run --mock-hw`` process, driven over CoAP only, as a person
with the console (or an independent checker) would. Every step checks the LEDs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.daemons import CoapClient, DaemonProcess, InProcessDaemon, expect_leds, wait_until
from testbed.server import RunningServer

OFF = {"status": "on", "hand": "off", "invite": "off", "mic": "off"}
"""In the room, nothing else lit: a listener (or a muted speaker)."""
MIC = {**OFF, "mic": "on"}
"""In the room with the mic on: the host, or an unmuted speaker."""


def bob_status(coap: CoapClient, bob: DaemonProcess) -> dict[str, Any]:
    reply = coap.get(bob.coap_port, "/status")
    assert reply.code == "2.05"
    body: dict[str, Any] = reply.body
    return body


def wait_bob(
    coap: CoapClient, bob: DaemonProcess, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    return wait_until(lambda: bob_status(coap, bob), predicate, 10.0, "pi-bob")  # type: ignore[no-any-return]


def test_a_room_from_creation_to_closing(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    processes: Callable[..., DaemonProcess],
    coap: CoapClient,
) -> None:
    host = daemons("pi-host", mode="host", subject="Morning room")
    room_id = host.status["room_id"]
    ann = daemons("pi-ann", mode="join")  # room_id empty: the first open room
    bob = processes("pi-bob", mode="join")
    assert ann.status["room_id"] == room_id and ann.status["role"] == "listener"
    assert bob_status(coap, bob)["room_id"] == room_id
    expect_leds([(host, MIC), (ann, OFF)])
    assert bob_status(coap, bob)["leds"] == OFF

    # A press the role does not allow: the status LED flashes, nothing else changes.
    ann.press("mute")
    wait_until(lambda: ann.daemon.counts["presses_refused"], lambda n: n == 1, 3, "refusal")
    expect_leds([(ann, OFF)])
    assert ann.status["mic_on"] is False

    # Raise a hand by the pin: it lights only once the room state says so.
    ann.press("raise_hand")
    expect_leds([(ann, {**OFF, "hand": "on"}), (host, {**MIC, "hand": "blink"})])
    assert ann.status["hand_raised"] is True

    # The host invites the oldest raised hand with its accept button; the hand was up,
    # so pi-ann accepts at once and takes a seat with the mic on.
    host.press("accept")
    ann.wait_status(lambda s: s["role"] == "speaker")
    expect_leds([(ann, MIC), (host, MIC)])

    # The host invites pi-bob over CoAP; pi-bob declines with a long press.
    invited = coap.post(host.coap_port, "/host/invite", {"user_id": "pi-bob"})
    assert invited.code == "2.04" and invited.body["invitation_id"]
    status = wait_bob(coap, bob, lambda s: s["invitation"] is not None)
    assert status["leds"] == {**OFF, "invite": "blink"}
    assert status["invitation"]["from_user_id"] == "pi-host"
    declined = coap.post(bob.coap_port, "/buttons/accept", {"press": "long"})
    assert declined.body["outcome"] == "sent"
    status = wait_bob(coap, bob, lambda s: s["invitation"] is None)
    assert (status["role"], status["leds"]) == ("listener", OFF)

    # Invited again, pi-bob accepts with a short press of its accept button.
    assert coap.post(host.coap_port, "/host/invite", {"user_id": "pi-bob"}).code == "2.04"
    wait_bob(coap, bob, lambda s: s["leds"]["invite"] == "blink")
    assert coap.post(bob.coap_port, "/buttons/accept", {"press": "short"}).body["outcome"] == "sent"
    status = wait_bob(coap, bob, lambda s: s["role"] == "speaker")
    assert status["mic_on"] is True and status["leds"] == MIC

    # The host mutes pi-ann over CoAP: its mic LED goes out, it keeps its seat.
    muted = coap.post(host.coap_port, "/host/mute", {"user_id": "pi-ann"})
    assert muted.code == "2.04" and muted.body["member"]["mic_on"] is False
    ann.wait_status(lambda s: s["mic_on"] is False)
    expect_leds([(ann, OFF)])
    assert ann.status["role"] == "speaker"

    # pi-bob mutes itself (CoAP button); pi-ann turns its mic back on (pin).
    assert coap.post(bob.coap_port, "/buttons/mute", {"press": "short"}).body["outcome"] == "sent"
    ann.press("mute")
    status = wait_bob(coap, bob, lambda s: s["mic_on"] is False)
    assert status["leds"] == OFF and status["role"] == "speaker"
    expect_leds([(ann, MIC)])

    # pi-ann leaves the stage with a long press of raise_hand.
    ann.press("raise_hand", "long")
    ann.wait_status(lambda s: s["role"] == "listener")
    expect_leds([(ann, OFF), (host, MIC)])

    # The host removes pi-bob from the stage.
    removed = coap.post(host.coap_port, "/host/remove", {"user_id": "pi-bob"})
    assert removed.code == "2.04" and removed.body["member"]["role"] == "listener"
    status = wait_bob(coap, bob, lambda s: s["role"] == "listener")
    assert status["leds"] == OFF

    # The host closes the room: everyone else sees the error; the host just waits.
    closed = coap.request(host.coap_port, "DELETE", "/room")
    assert closed.code == "2.02"
    error = {"status": "blink-fast", "hand": "off", "invite": "off", "mic": "off"}
    idle = {"status": "blink-slow", "hand": "off", "invite": "off", "mic": "off"}
    ann.wait_status(lambda s: s["room_id"] is None)
    expect_leds([(ann, error), (host, idle)])
    status = wait_bob(coap, bob, lambda s: s["room_id"] is None)
    assert status["leds"] == error and status["role"] is None
    gochat_server.wait_until(lambda service: service.rooms[room_id].closed)
