"""What the server and the broker answer to our requests.

One table maps each method to the shape of its success ``data`` and the handler that
applies it: the answer is parsed once, here, and a success that does not fit its shape
fails the request as a bad answer (502). Error answers, timeouts and broker verdicts go
to :func:`~.requests.on_failure`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from appliance.device import view
from appliance.device.effects import SetVoiceKey
from appliance.device.events import PublishRefused, RequestUndelivered, ResponseReceived
from appliance.device.machine.outcomes import (
    BAD_ANSWER,
    BROKER_REFUSED,
    LINK_LOST,
    Out,
    adopt_room,
    left,
    reply,
    report,
    room_op_pending,
)
from appliance.device.machine.requests import ask, on_failure, quit_done
from appliance.device.state import (
    CreateTarget,
    DeviceState,
    Fault,
    JoinTarget,
    Outgoing,
    Pending,
    Session,
)
from appliance.protocol.models import (
    INVITATION_TTL_S,
    Code,
    CreateRoomRequest,
    Empty,
    HeartbeatData,
    HeartbeatRequest,
    InvitationData,
    InviteOnstageRequest,
    LoginData,
    LoginRequest,
    LoginRoomData,
    LoginRoomRequest,
    MeData,
    MediaKey,
    MemberData,
    Method,
    OperateRaiseHandRequest,
    QuitRoomRequest,
    Received,
    Request,
    ResponseOnstageInviteRequest,
    RoomData,
    RoomState,
    SetUserInfoRequest,
)

_Q = TypeVar("_Q", bound=Request)
_D = TypeVar("_D", bound=Received)


@dataclass(frozen=True, slots=True)
class Answer(Generic[_Q, _D]):
    """A success answer: the request it answers, its parsed ``data`` and the raw
    ``data`` (passed on whole to a CoAP caller, unknown fields included)."""

    request: _Q
    data: _D
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _OnSuccess(Generic[_Q, _D]):
    """How a method's success is applied: its request type, its ``data`` shape, and
    ``apply(state, answer, now, out)``."""

    request: type[_Q]
    data: type[_D]
    apply: Callable[[DeviceState, Answer[_Q, _D], float, Out], DeviceState]


def on_response(s: DeviceState, event: ResponseReceived, now: float, out: Out) -> DeviceState:
    """The server answered the request with ``event.tag``."""
    p = s.pending.get(event.tag)
    if p is None:
        return s  # late (timed out, or from a previous connection) or not ours
    s = replace(s, pending={t: q for t, q in s.pending.items() if t != event.tag})
    r = event.response
    if r.code != Code.OK:
        return on_failure(s, p, r.code, r.message, now=now, out=out)
    data = r.data or {}
    entry = _ON_SUCCESS.get(p.method)
    if entry is not None:
        answer = _parse(entry, p, data)
        if answer is None:
            return on_failure(s, p, BAD_ANSWER, f"malformed {p.method} answer", now=now, out=out)
        s = entry.apply(s, answer, now, out)
    report(p, Code.OK, "ok", data, out)
    return s


def on_broker_verdict(
    s: DeviceState, event: RequestUndelivered | PublishRefused, now: float, out: Out
) -> DeviceState:
    """The broker refused a publish, or nobody (no server) was there to receive it."""
    if isinstance(event, PublishRefused):
        s = replace(s, faults=s.faults | {Fault.PUBLISH_REFUSED})
        code, message = BROKER_REFUSED, f"the broker refused the request ({event.reason})"
    else:
        code, message = LINK_LOST, "the server is not connected to the broker"
    tag = event.tag
    p = s.pending.get(tag) if tag is not None else None
    if p is None:
        return s
    # No answer will come: fail the request now rather than at its timeout.
    s = replace(s, pending={t: q for t, q in s.pending.items() if t != tag})
    return on_failure(s, p, code, message, now=now, out=out)


def _parse(
    entry: _OnSuccess[Any, Any], p: Pending, data: Mapping[str, Any]
) -> Answer[Any, Any] | None:
    if not isinstance(p.payload, entry.request):
        return None
    try:
        return Answer(p.payload, entry.data.model_validate(data), data)
    except ValidationError:
        return None


# ---------------------------------------------------------------- success, by method


def _logged_in(
    s: DeviceState, a: Answer[LoginRequest, LoginData], now: float, _o: Out
) -> DeviceState:
    d = a.data
    interval = float(d.heartbeat_interval_s)
    return replace(
        s,
        session=Session(d.user_id, interval, now + interval),
        faults=s.faults - {Fault.LOGIN_FAILED},
        failures=0,
        retry_at=0.0,
    )


def _room_joined(
    s: DeviceState, a: Answer[LoginRoomRequest, LoginRoomData], _now: float, out: Out
) -> DeviceState:
    s = replace(s, hand_hint=a.data.me.hand_raised)
    _voice_key(a.data.room.room_id, a.data.media, out)
    return _joined(s, a.data.room, a.raw, out)


def _room_created(
    s: DeviceState, a: Answer[CreateRoomRequest, RoomData], _now: float, out: Out
) -> DeviceState:
    target, room = s.target, a.data.room
    if isinstance(target, CreateTarget) and a.request.subject == target.subject:
        # From now on this is "the room we are in": a reconnect re-joins it, not a new one.
        s = replace(s, target=JoinTarget(room.room_id, target.ticket))
    _voice_key(room.room_id, a.data.media, out)
    return _joined(s, room, a.raw, out)


def _voice_key(room_id: str, media: MediaKey | None, out: Out) -> None:
    if media is not None:
        out.append(SetVoiceKey(room_id, media.epoch, media.key))


def _joined(s: DeviceState, room: RoomState, data: Mapping[str, Any], out: Out) -> DeviceState:
    s = replace(
        s,
        joined=room.room_id,
        faults=s.faults - {Fault.ROOM_LOST},
        failures=0,
        retry_at=0.0,
    )
    target = s.target
    if isinstance(target, JoinTarget) and target.room_id == room.room_id and target.ticket:
        reply(target.ticket, Code.OK, "ok", out, data)
        s = replace(s, target=JoinTarget(room.room_id))
    return adopt_room(s, room, out)


def _room_quit(
    s: DeviceState, a: Answer[QuitRoomRequest, Empty], _now: float, _o: Out
) -> DeviceState:
    return quit_done(s, a.request)


def _heartbeat_answered(
    s: DeviceState, a: Answer[HeartbeatRequest, HeartbeatData], now: float, out: Out
) -> DeviceState:
    d = a.data
    if room_op_pending(s):
        return s  # a join or quit in flight makes the server's answer stale already
    if d.room_id == s.joined:
        if d.room_version is not None and s.room is not None and d.room_version > s.room.version:
            # We missed a room state: subscribing again makes the broker resend it.
            return replace(s, shown=replace(s.shown, subscribed=None))
        return s
    if s.joined is not None:
        s = left(s)  # the server no longer has us there; reconcile re-joins the target
    if d.room_id is not None and d.room_id != view.room_id(s):
        # The server has us in a room we do not want (left while offline): quit it.
        return ask(s, QuitRoomRequest, {"room_id": d.room_id}, now, out)
    return s


def _member_changed(
    s: DeviceState, a: Answer[Request, MemberData], _now: float, _o: Out
) -> DeviceState:
    member = a.data.member
    if member.user_id == s.user_id:
        return replace(s, hand_hint=member.hand_raised)
    return s


def _invited(
    s: DeviceState, a: Answer[InviteOnstageRequest, InvitationData], now: float, _o: Out
) -> DeviceState:
    deadline = now + INVITATION_TTL_S + s.config.invitation_grace_s
    outgoing = {**s.outgoing, a.data.invitation_id: Outgoing(a.request.user_id, deadline)}
    return replace(s, outgoing=outgoing)


def _invitation_answered(
    s: DeviceState, a: Answer[ResponseOnstageInviteRequest, MeData], _now: float, _o: Out
) -> DeviceState:
    s = invitation_over(s, a.request.invitation_id)
    return replace(s, hand_hint=a.data.me.hand_raised)


def invitation_over(s: DeviceState, invitation_id: str) -> DeviceState:
    """The invitation ``invitation_id`` (ours, or one we sent) is answered or expired."""
    invitation = s.invitation
    if invitation is not None and invitation.invitation_id == invitation_id:
        invitation = None
    outgoing = {k: o for k, o in s.outgoing.items() if k != invitation_id}
    return replace(s, invitation=invitation, outgoing=outgoing)


_ON_SUCCESS: dict[Method, _OnSuccess[Any, Any]] = {
    Method.LOGIN: _OnSuccess(LoginRequest, LoginData, _logged_in),
    Method.LOGIN_ROOM: _OnSuccess(LoginRoomRequest, LoginRoomData, _room_joined),
    Method.CREATE_ROOM: _OnSuccess(CreateRoomRequest, RoomData, _room_created),
    Method.QUIT_ROOM: _OnSuccess(QuitRoomRequest, Empty, _room_quit),
    Method.HEARTBEAT: _OnSuccess(HeartbeatRequest, HeartbeatData, _heartbeat_answered),
    Method.OPERATE_RAISE_HAND: _OnSuccess(OperateRaiseHandRequest, MemberData, _member_changed),
    Method.SET_USER_INFO: _OnSuccess(SetUserInfoRequest, MemberData, _member_changed),
    Method.INVITE_ONSTAGE: _OnSuccess(InviteOnstageRequest, InvitationData, _invited),
    Method.RESPONSE_ONSTAGE_INVITE: _OnSuccess(
        ResponseOnstageInviteRequest, MeData, _invitation_answered
    ),
}
