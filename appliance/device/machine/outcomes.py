"""The small moves every part of the machine makes on the state.

Answering whoever asked (a CoAP ticket, a flash for a refused press), leaving a room,
adopting a newer room state, backing off after a failure: shared by the request,
response, press and upkeep modules of the machine, and by nothing outside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from appliance.device import view
from appliance.device.effects import ApiReply, Effect, Refused
from appliance.device.state import (
    EMPTY,
    CreateTarget,
    DeviceState,
    Fault,
    JoinTarget,
    Pending,
)
from appliance.protocol.models import (
    Code,
    CreateRoomRequest,
    LoginRoomRequest,
    Method,
    RoomState,
)

LINK_LOST = 503
""":class:`ApiReply` code: the broker link went down before the server answered."""
TIMEOUT = 504
""":class:`ApiReply` code: the server did not answer within the request timeout."""
BAD_ANSWER = 502
""":class:`ApiReply` code: the server's success answer did not fit its shape."""
BROKER_REFUSED = 502
""":class:`ApiReply` code: the broker refused to carry the request (ACL)."""

ROOM_OPS = frozenset({Method.LOGIN_ROOM, Method.CREATE_ROOM, Method.QUIT_ROOM})
"""Requests that change which room we are in: one at a time."""

Out = list[Effect]
"""The effects of one step, appended in the order the shell carries them out."""
Fields = dict[str, Any]
"""The fields of a request before validation."""


def report(p: Pending, code: int, message: str, data: Mapping[str, Any] | None, out: Out) -> None:
    """Tell whoever asked: the CoAP caller gets a reply, a refused press a flash."""
    reply(p.ticket, code, message, out, data if code == Code.OK else None)
    if code != Code.OK and p.button is not None:
        out.append(Refused(message))


def reply(
    ticket: int | None, code: int, message: str, out: Out, data: Mapping[str, Any] | None = None
) -> None:
    """Answer the CoAP call that carries ``ticket`` (nothing if there is none)."""
    if ticket is not None:
        out.append(ApiReply(ticket, code, message, data))


def backoff(s: DeviceState, now: float) -> DeviceState:
    """Count a failed login or join and wait longer before the next attempt."""
    cfg = s.config
    delay = min(cfg.retry_max_s, cfg.retry_min_s * 2**s.failures)
    return replace(s, failures=s.failures + 1, retry_at=now + delay)


def has_pending(s: DeviceState, method: Method) -> bool:
    """Whether a ``method`` request is in flight."""
    return any(p.method is method for p in s.pending.values())


def room_op_pending(s: DeviceState) -> bool:
    """Whether a join, create or quit is in flight."""
    return any(p.method in ROOM_OPS for p in s.pending.values())


def aims_at(p: Pending, target: JoinTarget | CreateTarget) -> bool:
    """Whether ``p`` is the join or create request that serves ``target``."""
    payload = p.payload
    if isinstance(target, JoinTarget):
        return isinstance(payload, LoginRoomRequest) and payload.room_id == target.room_id
    return isinstance(payload, CreateRoomRequest) and payload.subject == target.subject


def supersede_target(
    s: DeviceState,
    out: Out,
    code: int = Code.CONFLICT,
    message: str = "superseded by a newer room request",
) -> DeviceState:
    """A newer room wish replaces the old one: the old one's CoAP caller is told."""
    if s.target is None or s.target.ticket is None:
        return s
    out.append(ApiReply(s.target.ticket, code, message))
    return replace(s, target=replace(s.target, ticket=None))


# ---------------------------------------------------------------- the room


def left(s: DeviceState) -> DeviceState:
    """Forget membership-bound things; the room state is kept for its version count."""
    return replace(s, joined=None, invitation=None, outgoing=EMPTY, hand_hint=False)


def room_gone(s: DeviceState, out: Out, code: int, message: str) -> DeviceState:
    """The room closed or vanished: leave it, show the error until another room."""
    for p in s.deferred:
        report(p, code, message, None, out)
    if s.target is not None and s.target.ticket is not None:
        out.append(ApiReply(s.target.ticket, code, message))
    s = left(s)
    return replace(s, target=None, room=None, deferred=(), faults=s.faults | {Fault.ROOM_LOST})


def is_stale(s: DeviceState, room: RoomState) -> bool:
    """Versions only increase within a room; a different room starts a new count."""
    return s.room is not None and s.room.room_id == room.room_id and room.version <= s.room.version


def adopt_room(s: DeviceState, room: RoomState, out: Out) -> DeviceState:
    """Take a newer room state as the truth: our hand, invitation and outgoing invites."""
    if is_stale(s, room):
        return s
    s = replace(s, room=room)
    if room.closed:
        return room_gone(s, out, Code.GONE, "the room was closed")
    me = s.user_id
    seated = room.seat_of(me) is not None
    hint = s.hand_hint
    if seated:
        hint = False
    elif room.hand_raised(me):
        hint = True
    elif room.raised_hand_count <= len(room.raised_hands):
        hint = False  # the list is complete and we are not in it
    invitation = None if seated else s.invitation  # seated: the invitation is moot
    seats = {m.user_id for m in room.seats}
    outgoing = {k: o for k, o in s.outgoing.items() if o.user_id not in seats}
    return replace(s, hand_hint=hint, invitation=invitation, outgoing=outgoing)


def in_target_room(s: DeviceState, room_id: str | None) -> bool:
    """Whether ``room_id`` is the room we are in or (re)joining."""
    return room_id is not None and room_id == view.room_id(s)
