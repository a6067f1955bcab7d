"""Effects: what the state machine asks the shell to do, as plain frozen values.

The machine never does I/O; it returns a list of these, in the order they should be
carried out. Each effect names one adapter:

============================  ===============================================
effect                        carried out by
============================  ===============================================
:class:`SendRequest`          MQTT session (publish a request, route the answer)
:class:`SubscribeRoom`,       MQTT session (room state; the audio wildcard too)
:class:`UnsubscribeRoom`
:class:`SetLeds`,             panel
:class:`Refused`
:class:`StartPublishing`,     audio module
:class:`StopPublishing`,
:class:`SetHeard`,
:class:`SetVoiceKey`
:class:`StatusChanged`        CoAP API (notify ``/status`` observers)
:class:`ApiReply`             CoAP API (answer the request that carried the ticket)
============================  ===============================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.protocol.models import Method, Request

LedName = Literal["status", "hand", "invite", "mic"]
LED_NAMES: tuple[LedName, ...] = ("status", "hand", "invite", "mic")

LedPattern = Literal["off", "on", "blink-slow", "blink", "blink-fast"]
"""docs/device.md's LED patterns: blink-slow is 1 Hz, blink 2 Hz, blink-fast 5 Hz."""

LED_PATTERNS: tuple[LedPattern, ...] = ("off", "on", "blink-slow", "blink", "blink-fast")

BLINK_TIMES: dict[LedPattern, tuple[float, float]] = {
    "blink-slow": (0.5, 0.5),  # 1 Hz
    "blink": (0.25, 0.25),  # 2 Hz
    "blink-fast": (0.1, 0.1),  # 5 Hz
}
"""(on, off) seconds of each blinking pattern (docs/device.md, LEDs)."""

REFUSAL_FLASHES = 2
REFUSAL_FLASH_S = 0.15
"""A refusal flashes the status LED twice, on and off for this long each time: 3.3 Hz,
unlike any steady pattern."""


@dataclass(frozen=True, slots=True)
class Leds:
    """The pattern of each of the four LEDs."""

    status: LedPattern = "off"
    hand: LedPattern = "off"
    invite: LedPattern = "off"
    mic: LedPattern = "off"

    def as_dict(self) -> dict[LedName, LedPattern]:
        """The ``leds`` object of the CoAP ``/status`` payload."""
        return {"status": self.status, "hand": self.hand, "invite": self.invite, "mic": self.mic}


ALL_OFF = Leds()


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Publish ``payload`` on ``req/{me}/{payload.method}``; answer with
    :class:`~appliance.device.events.ResponseReceived` carrying the same ``tag``."""

    tag: int
    payload: Request

    @property
    def method(self) -> Method:
        """The request's method."""
        return self.payload.method


@dataclass(frozen=True, slots=True)
class SubscribeRoom:
    """Subscribe to ``room/{room_id}/state`` (and ``room/{room_id}/audio/+``).

    May repeat for a room already subscribed: the machine does so to get the retained
    state again. Re-subscribing is harmless in MQTT, so the session need not dedupe.
    """

    room_id: str


@dataclass(frozen=True, slots=True)
class UnsubscribeRoom:
    """Unsubscribe from the room's state and audio topics."""

    room_id: str


@dataclass(frozen=True, slots=True)
class SetLeds:
    """Show these patterns (emitted only when something changed)."""

    leds: Leds


@dataclass(frozen=True, slots=True)
class Refused:
    """A press the current role or state does not allow, or that the server refused:
    flash the status LED twice, then show the current patterns again."""

    reason: str


@dataclass(frozen=True, slots=True)
class StartPublishing:
    """Open the capture device and publish Opus on ``room/{room_id}/audio/{user_id}``."""

    room_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class StopPublishing:
    """Close capture; the audio module marks the last packet as the end of a talk spurt."""


@dataclass(frozen=True, slots=True)
class SetHeard:
    """Play exactly these users' streams (the other seated members with the mic on)."""

    user_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class SetVoiceKey:
    """The room's voice key of ``epoch`` (from a join's ``media`` or a ``media_key``
    push): hand it to the audio module. ``key`` is the base64 text; never logged."""

    room_id: str
    epoch: int
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The ``/status`` payload (apart from the audio counters) changed: notify observers."""


@dataclass(frozen=True, slots=True)
class ApiReply:
    """The outcome of the CoAP request that carried ``ticket``.

    ``code`` is a docs/protocol.md response code (0 = success), or 503 (the broker link went
    down before an answer) or 504 (the server did not answer in time). ``data`` is the
    server's ``data`` on success.
    """

    ticket: int
    code: int
    message: str
    data: Mapping[str, Any] | None = None


Effect = (
    SendRequest
    | SubscribeRoom
    | UnsubscribeRoom
    | SetLeds
    | Refused
    | StartPublishing
    | StopPublishing
    | SetHeard
    | SetVoiceKey
    | StatusChanged
    | ApiReply
)
"""Everything :func:`appliance.device.machine.step` may return."""
