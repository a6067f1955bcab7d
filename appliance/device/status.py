"""The ``/status`` payload, computed in one place.

:class:`StatusBoard` joins the state machine's view (connection, room, role, mic, hand,
invitation, LEDs) and the audio engine's counters into the payload of docs/device.md,
keeps the latest one for readers on any thread, and tells its listener when it
changed. The daemon refreshes it when the machine says the status changed, and once a
second for the audio counters (per frame would be 50 notifications a second).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.audio.port import AudioStats
from appliance.device.machine import DeviceMachine

Payload = dict[str, Any]


class StatusBoard:
    """The latest ``/status`` payload (see the module docstring)."""

    def __init__(
        self,
        machine: DeviceMachine,
        audio: Callable[[], AudioStats | None],
        on_change: Callable[[Payload], None],
    ) -> None:
        self._machine = machine
        self._audio = audio
        self._on_change = on_change
        self.snapshot: Payload = machine.status()
        """The latest payload (replaced whole, never mutated: safe to read anywhere)."""

    def refresh(self) -> Payload:
        """Recompute the payload now; tell the listener if it changed."""
        payload = self._machine.status(self._audio())
        if payload != self.snapshot:
            self.snapshot = payload
            self._on_change(payload)
        return payload


def summary(status: Payload) -> str:
    """One human line: what systemd's ``STATUS=`` and the log show."""
    connection = str(status["connection"])
    if connection != "online":
        return connection
    if status["room_id"] is None:
        return "online, no room"
    role = status["role"] or "joining"
    leds = status["leds"]
    flags = [k for k in ("mic_on", "hand_raised") if status[k]]
    if status["invitation"] is not None:
        flags.append("invited")
    if leds["status"] == "blink-fast":
        flags.append("error")
    tail = f" ({', '.join(flags)})" if flags else ""
    return f"online, room {status['room_id']} as {role}{tail}"
