"""Views: what the outside sees, computed from the state by pure functions.

The server is the truth: role, mic and hand come from the latest room state (the seats
list is complete), falling back to response data only where the room state cannot say
(a listener's raised hand beyond the 50 oldest shown). LEDs follow these views, never
the buttons.
"""

from __future__ import annotations

from typing import Any, Literal

from appliance.audio.port import NO_AUDIO, AudioStats
from appliance.device.effects import ALL_OFF, LedPattern, Leds
from appliance.device.state import DeviceState, JoinTarget
from appliance.protocol.models import Member, Method, Role, SetUserInfoRequest

Connection = Literal["offline", "connecting", "online"]


def connection(s: DeviceState) -> Connection:
    """``online`` once connected *and* logged in; ``connecting`` while trying either."""
    if s.link == "up" and s.session is not None:
        return "online"
    if s.link == "down":
        return "offline"
    return "connecting"


def in_room(s: DeviceState) -> bool:
    """Whether we are, per the server, in a room we hold the state of, right now."""
    return (
        s.running
        and connection(s) == "online"
        and s.joined is not None
        and s.room is not None
        and s.room.room_id == s.joined
    )


def room_id(s: DeviceState) -> str | None:
    """The room we are in or (re)joining, as ``/status`` shows it."""
    if s.joined is not None:
        return s.joined
    if isinstance(s.target, JoinTarget):
        return s.target.room_id
    return None


def my_seat(s: DeviceState) -> Member | None:
    """Our seat in the current room, if we hold one."""
    if not in_room(s) or s.room is None:
        return None
    return s.room.seat_of(s.user_id)


def my_role(s: DeviceState) -> Role | None:
    """Our role in the current room (None when not in one)."""
    if not in_room(s):
        return None
    seat = my_seat(s)
    return seat.role if seat is not None else Role.LISTENER


def mic_on(s: DeviceState) -> bool:
    """Whether we hold a seat with the mic on (we are being heard)."""
    seat = my_seat(s)
    return seat is not None and seat.mic_on


def hand_raised(s: DeviceState) -> bool:
    """Whether our hand is raised, per the server.

    The room state lists at most the 50 oldest raised hands. If we are in the list, the
    hand is up; if the list is complete (it holds every raised hand) and we are not in
    it, the hand is down; otherwise we are beyond the 50 shown, and only the responses
    and inbox commands can tell (:attr:`DeviceState.hand_hint`).
    """
    if s.room is None or my_role(s) is not Role.LISTENER:
        return False
    if s.room.hand_raised(s.user_id):
        return True
    if s.room.raised_hand_count <= len(s.room.raised_hands):
        return False
    return s.hand_hint


def invitation_waiting(s: DeviceState) -> bool:
    """Whether an invitation waits for the person's answer."""
    return in_room(s) and s.invitation is not None and not s.invitation.answering


def oldest_uninvited_hand(s: DeviceState) -> str | None:
    """Host: the oldest raised hand without an open invitation from us."""
    if s.room is None:
        return None
    invited = {o.user_id for o in s.outgoing.values()}
    return next((h.user_id for h in s.room.raised_hands if h.user_id not in invited), None)


def leds(s: DeviceState) -> Leds:
    """The four LED patterns (docs/device.md's LED table)."""
    if not s.running:
        return ALL_OFF
    status = _status_led(s)
    if not in_room(s):
        return Leds(status=status)
    return Leds(
        status=status,
        hand=_hand_led(s),
        invite="blink" if invitation_waiting(s) else "off",
        mic="on" if mic_on(s) else "off",
    )


def _status_led(s: DeviceState) -> LedPattern:
    # An error outranks everything while running. Idle (online, no room wanted) is
    # shown like joining: the device is waiting to join, and "on" is kept strictly for
    # "in a room" so a steady light can be trusted.
    if s.faults:
        return "blink-fast"
    return "on" if in_room(s) else "blink-slow"


def _hand_led(s: DeviceState) -> LedPattern:
    role = my_role(s)
    if role is Role.HOST:
        return "blink" if s.room is not None and s.room.raised_hand_count > 0 else "off"
    if role is Role.LISTENER:
        return "on" if hand_raised(s) else "off"
    return "off"


def publishing(s: DeviceState) -> bool:
    """Whether to capture and publish: on a seat with the mic on, per the server.

    Stopping early is always allowed (it can only make us quieter), so capture also
    stops the moment we ask to mute, leave the stage or leave the room, or are told we
    were muted or removed, without waiting for the room state to confirm it.
    """
    if not mic_on(s) or s.room is None:
        return False
    return s.room.version > s.mic_block_version and not _mic_off_pending(s)


def _mic_off_pending(s: DeviceState) -> bool:
    for p in s.pending.values():
        if p.method is Method.QUIT_ROOM:
            return True
        payload = p.payload
        if (
            isinstance(payload, SetUserInfoRequest)
            and payload.user_id == s.user_id
            and (payload.mic_on is False or payload.role is Role.LISTENER)
        ):
            return True
    return False


def heard(s: DeviceState) -> frozenset[str]:
    """The users whose streams to play: every other seated member with the mic on."""
    if not in_room(s) or s.room is None:
        return frozenset()
    return frozenset(m.user_id for m in s.room.seats if m.mic_on and m.user_id != s.user_id)


def subscription(s: DeviceState) -> str | None:
    """The room whose state topic we should be subscribed to (joined, or joining)."""
    if not s.running or connection(s) != "online":
        return None
    return room_id(s)


def status(s: DeviceState, audio: AudioStats | None = None) -> dict[str, Any]:
    """The CoAP ``/status`` payload (docs/device.md); ``audio``: the engine's counters."""
    role = my_role(s)
    return {
        "connection": connection(s),
        "user_id": s.user_id,
        "room_id": room_id(s),
        "role": role.value if role is not None else None,
        "mic_on": mic_on(s),
        "hand_raised": hand_raised(s),
        "invitation": (
            s.invitation.as_status() if invitation_waiting(s) and s.invitation is not None else None
        ),
        "leds": leds(s).as_dict(),
        "audio": (audio or NO_AUDIO).as_status(),
    }


def is_ready(s: DeviceState) -> bool:
    """systemd READY=1: the broker is reached and the room joined, or none is wanted."""
    if not s.running or connection(s) != "online":
        return False
    return s.target is None or in_room(s)


def is_idle(s: DeviceState) -> bool:
    """Nothing in flight (the shell waits for this after :class:`StopRequested`)."""
    return not s.pending


def next_deadline(s: DeviceState) -> float | None:
    """When the machine next needs a :class:`~appliance.device.events.Tick` (or None)."""
    times = [p.sent_at + s.config.request_timeout_s for p in s.pending.values()]
    times += [o.deadline for o in s.outgoing.values()]
    if s.invitation is not None:
        times.append(s.invitation.deadline)
    if s.session is not None and s.link == "up" and s.running:
        times.append(s.session.next_heartbeat_at)
    if s.failures and _waiting_to_retry(s):
        times.append(s.retry_at)
    return min(times, default=None)


def _waiting_to_retry(s: DeviceState) -> bool:
    # Only while a login or join is wanted and not yet resent: a past retry time must
    # never wake the shell again (it would spin).
    if not s.running or s.link != "up":
        return False
    if any(p.method in _RETRIED for p in s.pending.values()):
        return False
    return s.session is None or (s.target is not None and s.joined is None)


_RETRIED = frozenset({Method.LOGIN, Method.LOGIN_ROOM, Method.CREATE_ROOM, Method.QUIT_ROOM})
