"""Restarts mid-room: the broker, then the server. Every device comes back in the same
room with the same role, and its LEDs right again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from testbed import Broker
from testbed.daemons import InProcessDaemon, expect_leds, wait_until
from testbed.server import RunningServer

HOST = {"status": "on", "hand": "off", "invite": "off", "mic": "on"}
SPEAKER_MUTED = {"status": "on", "hand": "off", "invite": "off", "mic": "off"}
LISTENER_HAND = {"status": "on", "hand": "on", "invite": "off", "mic": "off"}


def room_of_three(
    daemons: Callable[..., InProcessDaemon],
) -> tuple[InProcessDaemon, InProcessDaemon, InProcessDaemon]:
    """A host; pi-ann on stage with the mic off; pi-bob a listener with the hand up."""
    host = daemons("pi-host", mode="host", subject="Restarts")
    ann = daemons("pi-ann", mode="join")
    bob = daemons("pi-bob", mode="join", room={"auto_accept_when_hand_raised": False})
    ann.press("raise_hand")
    ann.wait_status(lambda s: s["hand_raised"])
    host.press("accept")
    ann.wait_status(lambda s: s["role"] == "speaker")
    ann.press("mute")
    ann.wait_status(lambda s: not s["mic_on"])
    bob.press("raise_hand")
    bob.wait_status(lambda s: s["hand_raised"])
    expect_leds([(host, {**HOST, "hand": "blink"}), (ann, SPEAKER_MUTED), (bob, LISTENER_HAND)])
    return host, ann, bob


def same_room_and_roles(devices: list[InProcessDaemon], room_id: str, roles: list[str]) -> None:
    for device, role in zip(devices, roles, strict=True):
        device.wait_status(
            lambda s, r=role: (
                s["connection"] == "online" and s["room_id"] == room_id and s["role"] == r
            ),
            timeout_s=15,
        )


def test_broker_restart_mid_room(
    broker: Broker, gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon]
) -> None:
    host, ann, bob = room_of_three(daemons)
    room_id = host.status["room_id"]
    broker.restart()
    for device in (host, ann, bob):
        device.wait_status(lambda s: s["connection"] != "online", timeout_s=5)
    same_room_and_roles([host, ann, bob], room_id, ["host", "speaker", "listener"])
    expect_leds([(host, {**HOST, "hand": "blink"}), (ann, SPEAKER_MUTED), (bob, LISTENER_HAND)])
    # And the room still works: the host invites the raised hand, bob sees it waiting.
    host.press("accept")
    bob.wait_status(lambda s: s["invitation"] is not None)
    expect_leds([(bob, {**LISTENER_HAND, "invite": "blink"})])


def test_server_restart_mid_room(
    broker: Broker, tmp_path: Path, daemons: Callable[..., InProcessDaemon]
) -> None:
    db = tmp_path / "restart.db"
    server = RunningServer(broker, db).start()
    try:
        host, ann, bob = room_of_three(daemons)
        room_id = host.status["room_id"]
        server.stop()
        # While the server is away, a press cannot be carried out: it flashes at once
        # (the broker reports that nobody took the request) and changes nothing.
        refusals = ann.daemon.counts["presses_refused"]
        ann.press("mute")
        wait_until(lambda: ann.daemon.counts["presses_refused"], lambda n: n == refusals + 1, 3)
        assert ann.status["mic_on"] is False
        server = RunningServer(broker, db).start()
        same_room_and_roles([host, ann, bob], room_id, ["host", "speaker", "listener"])
        expect_leds([(host, {**HOST, "hand": "blink"}), (ann, SPEAKER_MUTED), (bob, LISTENER_HAND)])
        # The new server serves the same devices: pi-ann turns its mic on.
        ann.press("mute")
        ann.wait_status(lambda s: s["mic_on"])
        expect_leds([(ann, {**SPEAKER_MUTED, "mic": "on"})])
    finally:
        server.stop()
