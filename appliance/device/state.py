"""The device state: one frozen value, replaced (never mutated) by every step.

It holds only what the device cannot re-derive: the server's latest word (room state,
response data, inbox commands), what the person asked for (the room to be in), what is
in flight, and what was last shown (so effects are emitted only on change). Everything
the outside sees — role, mic, hand, LEDs, the ``/status`` payload — is computed from it
in :mod:`appliance.device.view`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

from appliance.device.effects import ALL_OFF, Leds
from appliance.device.events import ButtonName
from appliance.protocol.models import Method, Request, RoomState

Link = Literal["down", "trying", "up"]
"""The MQTT connection: ``trying`` covers the first attempt and every reconnect."""

EMPTY: Mapping[Any, Any] = MappingProxyType({})
"""The shared empty mapping of a fresh state (read-only: states are never mutated)."""


def _empty() -> Mapping[Any, Any]:
    return EMPTY


class Fault(StrEnum):
    """Errors the status LED shows as a fast blink (docs/device.md)."""

    BROKER_REFUSED = "broker_refused"
    """The broker refused the connection; cleared by the next successful connection."""
    PUBLISH_REFUSED = "publish_refused"
    """The broker refused a publish or subscription; cleared by the next connection."""
    LOGIN_FAILED = "login_failed"
    """The server refused ``login``; cleared by a successful login."""
    ROOM_LOST = "room_lost"
    """The room closed, vanished, or refused us; cleared when a room is joined or created."""
    IDENTITY_IN_USE = "identity_in_use"
    """Another device connected with our identity and took our session over; cleared by
    the next successful connection."""
    AUDIO_LOST = "audio_lost"
    """An audio device vanished; cleared when the audio module says it is back."""


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """What the machine needs from the configuration (frozen; built once at start)."""

    user_id: str
    """This device's broker username, which is its GoChat user id."""
    name: str
    """The display name sent with ``login``."""
    auto_accept_when_hand_raised: bool = True
    """``room.auto_accept_when_hand_raised``: accept an invitation at once if our hand is up."""
    max_seats: int = 8
    """Seats of a room this device creates when the request names none."""
    request_timeout_s: float = 10.0
    """A request unanswered this long is given up (a 504 for whoever asked)."""
    retry_min_s: float = 1.0
    """First wait before retrying a failed ``login``/``login_room``/``create_room``."""
    retry_max_s: float = 30.0
    """Longest wait between such retries (the wait doubles on each failure)."""
    invitation_grace_s: float = 2.0
    """Kept past the invitation TTL before dropping it locally, should the server's
    ``invite_expired`` be lost; the server's own message normally comes first."""


@dataclass(frozen=True, slots=True)
class JoinTarget:
    """The person wants to be in this room (``ticket``: a CoAP call awaiting the outcome)."""

    room_id: str
    ticket: int | None = None


@dataclass(frozen=True, slots=True)
class CreateTarget:
    """The person wants a new room with this subject, hosted by this device."""

    subject: str
    max_seats: int
    ticket: int | None = None


Target = JoinTarget | CreateTarget


@dataclass(frozen=True, slots=True)
class Session:
    """A successful ``login`` on the current broker connection."""

    user_id: str
    heartbeat_interval_s: float
    next_heartbeat_at: float


@dataclass(frozen=True, slots=True)
class Pending:
    """A request in flight: who asked (a button, a CoAP ticket, or the machine itself)."""

    payload: Request
    sent_at: float
    button: ButtonName | None = None
    ticket: int | None = None
    retried: bool = False

    @property
    def method(self) -> Method:
        """The request's method (its payload's type says it)."""
        return self.payload.method


@dataclass(frozen=True, slots=True)
class Invitation:
    """An invitation to the stage, waiting for our answer."""

    invitation_id: str
    room_id: str
    from_user_id: str
    from_name: str
    expires_at: float
    """The server's expiry (unix seconds, shown in ``/status``)."""
    deadline: float
    """Our own clock's fallback expiry (see :attr:`MachineConfig.invitation_grace_s`)."""
    answering: bool = False
    """Our answer is in flight: the invitation no longer waits for the person."""

    def as_status(self) -> dict[str, Any]:
        """The ``invitation`` object of the ``/status`` payload."""
        return {
            "invitation_id": self.invitation_id,
            "room_id": self.room_id,
            "from_user_id": self.from_user_id,
            "from_name": self.from_name,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An invitation this device (as host) sent and that is still open."""

    user_id: str
    deadline: float


@dataclass(frozen=True, slots=True)
class Shown:
    """What the effects last told the outside, so only changes are emitted."""

    leds: Leds = ALL_OFF
    publishing: bool = False
    heard: frozenset[str] = frozenset()
    subscribed: str | None = None
    status: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Everything the device knows. Build the first one with :func:`initial_state`."""

    config: MachineConfig
    running: bool = False
    link: Link = "down"
    session: Session | None = None
    target: Target | None = None
    """The room the person wants to be in (kept across reconnects, so it is re-joined)."""
    leave_ticket: int | None = None
    """A CoAP ``DELETE /room`` awaiting the ``quit_room`` answer."""
    joined: str | None = None
    """The room the server confirmed we are in, on this connection."""
    room: RoomState | None = None
    """The latest (highest version) state of the joined or targeted room."""
    hand_hint: bool = False
    """Our hand per the latest response or inbox command: the room state shows only the
    50 oldest raised hands, so beyond them this is the only source."""
    mic_block_version: int = -1
    """After an inbox ``muted``/``removed_from_stage``, don't publish until a room state
    newer than this version says our mic is on."""
    invitation: Invitation | None = None
    outgoing: Mapping[str, Outgoing] = field(default_factory=_empty)
    """Host: open invitations by invitation id."""
    pending: Mapping[int, Pending] = field(default_factory=_empty)
    """Requests in flight by tag."""
    deferred: tuple[Pending, ...] = ()
    """Requests refused with 401, to resend once logged in and back in the room."""
    faults: frozenset[Fault] = frozenset()
    next_tag: int = 1
    retry_at: float = 0.0
    failures: int = 0
    shown: Shown = field(default_factory=Shown)

    @property
    def user_id(self) -> str:
        """Our user id: as ``login`` returned it, else as configured."""
        return self.session.user_id if self.session is not None else self.config.user_id


def initial_state(config: MachineConfig) -> DeviceState:
    """The state of a daemon that has not started yet: offline, LEDs off."""
    return DeviceState(config=config)
