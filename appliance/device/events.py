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
"""The three buttons, named as in docs/device.md and the CoAP ``/buttons/{name}`` resource."""

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
    ``taken_over``: the broker ended our session because another client connected
    with our identity (MQTT 5 DISCONNECT 0x8E): a cloned identity, shown as an
    error until a connection succeeds; the session waits minutes before trying again.
    """

    refused: bool = False
    reason: str = ""
    taken_over: bool = False


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


@dataclass(frozen=True, slots=True)
class RequestUndelivered:
    """The broker took the request with ``tag`` but nobody was subscribed to receive it
    (MQTT 5 PUBACK 0x10, "no matching subscribers"): the business server is not
    connected, and no answer will come. Brokers that do not send 0x10 leave this to
    the request timeout."""

    tag: int


@dataclass(frozen=True, slots=True)
class PublishRefused:
    """The broker refused something this device sent on a live connection: a QoS 1
    PUBLISH answered with a PUBACK reason code >= 0x80 (0x87 "not authorized" when the
    ACL denies the topic), or a SUBSCRIBE answered with a failure.

    ``tag``: the request the refused publish carried, if it was one (that request
    then fails at once instead of timing out). The status LED shows the error until
    the next successful connection: a refusal means the broker's ACL and this
    device's identity disagree, which a reconnect re-checks.
    """

    reason: str
    tag: int | None = None


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
class RoomListRequested:
    """CoAP ``GET /rooms`` (or the daemon looking for the first open room): send
    ``get_room_list``; the outcome comes back in the :class:`ApiReply` for ``ticket``.
    Answered at once with 503 while not logged in."""

    ticket: int
    cursor: str | None = None
    page_size: int | None = None


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
    | RequestUndelivered
    | PublishRefused
    | Gesture
    | JoinRequested
    | CreateRequested
    | LeaveRequested
    | RoomListRequested
    | HostAction
    | Tick
    | AudioDeviceLost
    | AudioDeviceRestored
)
"""Everything :func:`appliance.device.machine.step` accepts."""
