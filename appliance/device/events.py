"""Events: everything that can happen to the appliance, as plain frozen values.

The shell (MQTT session, CoAP API, panel, audio, timers) turns what it sees into one of
these and hands it to :func:`appliance.device.machine.step` with the current time.
Wire payloads arrive already parsed into the models of :mod:`appliance.protocol.models`;
an event never carries raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.protocol.models import InboxCommand, Response, RoomState

ButtonName = Literal["raise_hand", "mute", "accept"]
"""The three buttons, named as in DEVICE.md and the CoAP ``/buttons/{name}`` resource."""

BUTTONS: tuple[ButtonName, ...] = ("raise_hand", "mute", "accept")

PressKind = Literal["short", "long"]
"""A short press is released before the hold time; a long press acts at the hold time."""

HostActionName = Literal["invite", "remove", "mute"]
"""The CoAP ``/host/{action}`` actions."""


# ---------------------------------------------------------------- lifecycle


@dataclass(frozen=True, slots=True)
class Started:
    """The daemon started; the session begins connecting to the broker."""


@dataclass(frozen=True, slots=True)
class StopRequested:
    """SIGTERM: leave the room cleanly, turn the LEDs off, stop sending anything else."""


# ---------------------------------------------------------------- broker link


@dataclass(frozen=True, slots=True)
class Connected:
    """The MQTT connection is up (CONNACK accepted) and the session's own topics
    (``resp/{me}``, ``user/{me}/inbox``) are subscribed. Every connection starts clean:
    the machine assumes the broker forgot the room subscription."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The MQTT connection is down; the session keeps retrying with backoff.

    ``refused``: the broker refused the connection (bad credentials, not authorised),
    which the status LED shows as an error until a connection succeeds.
    """

    refused: bool = False
    reason: str = ""


# ---------------------------------------------------------------- from the server


@dataclass(frozen=True, slots=True)
class RoomStateReceived:
    """A (retained) room state push, already validated."""

    room: RoomState


@dataclass(frozen=True, slots=True)
class InboxReceived:
    """A custom command from ``user/{me}/inbox``, already validated."""

    command: InboxCommand


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The server's answer to the request the machine sent with ``tag``.

    The session maps its MQTT CorrelationData back to the tag of the
    :class:`~appliance.device.effects.SendRequest` it came from. An unknown or late tag
    is ignored by the machine.
    """

    tag: int
    response: Response


# ---------------------------------------------------------------- from the person


@dataclass(frozen=True, slots=True)
class Gesture:
    """A debounced button gesture (from the panel, or CoAP ``POST /buttons/{name}``)."""

    button: ButtonName
    kind: PressKind


@dataclass(frozen=True, slots=True)
class JoinRequested:
    """CoAP ``PUT /room {"room_id"}`` (or the config at start): join that room.

    ``ticket`` (chosen by the shell) comes back in exactly one
    :class:`~appliance.device.effects.ApiReply` when the outcome is known.
    """

    room_id: str
    ticket: int | None = None


@dataclass(frozen=True, slots=True)
class CreateRequested:
    """CoAP ``PUT /room {"subject"}`` (or the config at start): create a room and host it."""

    subject: str
    max_seats: int | None = None
    ticket: int | None = None


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """CoAP ``DELETE /room``: leave the current room (a host's leaving closes it)."""

    ticket: int | None = None


@dataclass(frozen=True, slots=True)
class HostAction:
    """CoAP ``POST /host/{action} {"user_id"}``: host only."""

    action: HostActionName
    user_id: str
    ticket: int | None = None


# ---------------------------------------------------------------- time and audio


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: expiries, timeouts, heartbeats and retries are due.

    The shell sends one at :func:`appliance.device.view.next_deadline` (or on any
    periodic timer); ``now`` is passed to ``step`` like for every event.
    """


@dataclass(frozen=True, slots=True)
class AudioDeviceLost:
    """The ALSA capture or playback device vanished (the audio module reopens it)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class AudioDeviceRestored:
    """The audio devices work again."""


Event = (
    Started
    | StopRequested
    | Connected
    | Disconnected
    | RoomStateReceived
    | InboxReceived
    | ResponseReceived
    | Gesture
    | JoinRequested
    | CreateRequested
    | LeaveRequested
    | HostAction
    | Tick
    | AudioDeviceLost
    | AudioDeviceRestored
)
"""Everything :func:`appliance.device.machine.step` accepts."""
