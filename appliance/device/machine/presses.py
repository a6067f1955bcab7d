"""What the person asks for: button gestures (docs/device.md's button table) and the CoAP
API's room, room-list and host requests.

A press is decided against the current role: it becomes a request, an answer to the
waiting invitation, or a refusal (the status LED flashes). CoAP calls carry a ticket
that comes back in exactly one :class:`~appliance.device.effects.ApiReply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import assert_never

from appliance.device import view
from appliance.device.effects import Refused
from appliance.device.events import (
    ButtonName,
    CreateRequested,
    Gesture,
    HostAction,
    JoinRequested,
    LeaveRequested,
    PressKind,
    RoomListRequested,
)
from appliance.device.machine.outcomes import LINK_LOST, Fields, Out, reply, supersede_target
from appliance.device.machine.requests import answer, ask, draft, send
from appliance.device.state import CreateTarget, DeviceState, JoinTarget, Pending
from appliance.protocol.models import (
    Code,
    CreateRoomRequest,
    GetRoomListRequest,
    InviteOnstageRequest,
    LoginRoomRequest,
    OperateRaiseHandRequest,
    Request,
    Role,
    SetUserInfoRequest,
)


@dataclass(frozen=True, slots=True)
class Refuse:
    """A press the role does not allow (or that could not be built): flash, say why."""

    reason: str


@dataclass(frozen=True, slots=True)
class AnswerInvitation:
    """A press that answers the invitation waiting for us."""

    accept: bool


Decision = Request | AnswerInvitation | Refuse
"""What a press comes to."""


PersonEvent = (
    Gesture | JoinRequested | CreateRequested | LeaveRequested | HostAction | RoomListRequested
)
"""What the person (a finger, a CoAP caller, the start-up plan) asks for."""


def on_person(s: DeviceState, event: PersonEvent, now: float, out: Out) -> DeviceState:
    """Route one of the person's asks to its handler."""
    match event:
        case Gesture():
            return on_gesture(s, event, now, out)
        case JoinRequested():
            return on_join_requested(s, event, out)
        case CreateRequested():
            return on_create_requested(s, event, out)
        case LeaveRequested():
            return on_leave_requested(s, event.ticket, out)
        case HostAction():
            return on_host_action(s, event, now, out)
        case RoomListRequested():
            return on_room_list(s, event, now, out)


def on_gesture(s: DeviceState, g: Gesture, now: float, out: Out) -> DeviceState:
    """A debounced press of a button (from the panel or ``POST /buttons/{name}``)."""
    if _button_busy(s, g.button):
        # The server has not answered this button's last press: we cannot know what a
        # toggle would mean yet, so the press is ignored (no request, no flash).
        return s
    match _decide(s, g):
        case Refuse(reason):
            out.append(Refused(reason))
            return s
        case AnswerInvitation(accept):
            return answer(s, accept=accept, now=now, out=out, button=g.button)
        case request:
            return send(s, Pending(request, now, button=g.button), out)


def _button_busy(s: DeviceState, button: ButtonName) -> bool:
    if any(p.button == button for p in [*s.pending.values(), *s.deferred]):
        return True
    return button == "accept" and s.invitation is not None and s.invitation.answering


def _decide(s: DeviceState, g: Gesture) -> Decision:
    role = view.my_role(s)
    if role is None or s.joined is None:
        return Refuse("not in a room")
    decider = _PRESSES.get((g.button, g.kind))
    if decider is None:
        return Refuse("this press does nothing")
    return decider(s, role, s.joined)


def _request(model: type[Request], fields: Fields) -> Request | Refuse:
    built = draft(model, fields)
    return Refuse(built) if isinstance(built, str) else built


def _raise_or_lower_hand(s: DeviceState, role: Role, room: str) -> Decision:
    if role is not Role.LISTENER:
        return Refuse("only a listener raises a hand")
    return _request(OperateRaiseHandRequest, {"room_id": room, "raise": not view.hand_raised(s)})


def _leave_stage(s: DeviceState, role: Role, room: str) -> Decision:
    if role is Role.HOST:
        return Refuse("the host cannot leave its seat")
    if role is not Role.SPEAKER:
        return Refuse("not on the stage")
    fields = {"room_id": room, "user_id": s.user_id, "role": Role.LISTENER}
    return _request(SetUserInfoRequest, fields)


def _toggle_mic(s: DeviceState, role: Role, room: str) -> Decision:
    if role is Role.LISTENER:
        return Refuse("a listener has no microphone")
    fields = {"room_id": room, "user_id": s.user_id, "mic_on": not view.mic_on(s)}
    return _request(SetUserInfoRequest, fields)


def _accept_or_invite(s: DeviceState, role: Role, room: str) -> Decision:
    if view.invitation_waiting(s):
        return AnswerInvitation(accept=True)
    if role is not Role.HOST:
        return Refuse("no invitation to accept")
    user_id = view.oldest_uninvited_hand(s)
    if user_id is None:
        return Refuse("no raised hand to invite")
    return _request(InviteOnstageRequest, {"room_id": room, "user_id": user_id})


def _decline(s: DeviceState, role: Role, room: str) -> Decision:
    if not view.invitation_waiting(s):
        return Refuse("no invitation to decline")
    return AnswerInvitation(accept=False)


_PRESSES: dict[tuple[ButtonName, PressKind], Callable[[DeviceState, Role, str], Decision]] = {
    ("raise_hand", "short"): _raise_or_lower_hand,
    ("raise_hand", "long"): _leave_stage,
    ("mute", "short"): _toggle_mic,
    ("accept", "short"): _accept_or_invite,
    ("accept", "long"): _decline,
}


# ---------------------------------------------------------------- CoAP requests


def on_room_list(s: DeviceState, event: RoomListRequested, now: float, out: Out) -> DeviceState:
    """``GET /rooms`` (or the start-up plan looking for a room): ask the server."""
    if not s.running or view.connection(s) != "online":
        reply(event.ticket, LINK_LOST, "not connected to the server yet", out)
        return s
    fields: Fields = {}
    if event.cursor is not None:
        fields["cursor"] = event.cursor
    if event.page_size is not None:
        fields["page_size"] = event.page_size
    return ask(s, GetRoomListRequest, fields, now, out, ticket=event.ticket)


def on_join_requested(s: DeviceState, event: JoinRequested, out: Out) -> DeviceState:
    """``PUT /room {"room_id"}``: that is the room to be in now."""
    error = draft(LoginRoomRequest, {"room_id": event.room_id})
    if isinstance(error, str):
        reply(event.ticket, Code.BAD_REQUEST, error, out)
        return s
    s = supersede_target(s, out)
    if event.room_id == s.joined and view.in_room(s) and s.room is not None:
        reply(event.ticket, Code.OK, "ok", out, {"room": s.room.model_dump(mode="json")})
        return replace(s, target=JoinTarget(event.room_id))
    return replace(s, target=JoinTarget(event.room_id, event.ticket))


def on_create_requested(s: DeviceState, event: CreateRequested, out: Out) -> DeviceState:
    """``PUT /room {"subject"}``: a new room, hosted by us, is the room to be in."""
    max_seats = event.max_seats if event.max_seats is not None else s.config.max_seats
    error = draft(CreateRoomRequest, {"subject": event.subject, "max_seats": max_seats})
    if isinstance(error, str):
        reply(event.ticket, Code.BAD_REQUEST, error, out)
        return s
    s = supersede_target(s, out)
    return replace(s, target=CreateTarget(event.subject, max_seats, event.ticket))


def on_leave_requested(s: DeviceState, ticket: int | None, out: Out) -> DeviceState:
    """``DELETE /room``: no room wanted; reconcile quits the one we are in."""
    s = supersede_target(s, out)
    return replace(s, target=None, leave_ticket=ticket)


def on_host_action(s: DeviceState, event: HostAction, now: float, out: Out) -> DeviceState:
    """``POST /host/{action}``: invite, remove or mute a member (host only)."""
    role = view.my_role(s)
    if role is None or s.joined is None:
        reply(event.ticket, Code.CONFLICT, "not in a room", out)
        return s
    if role is not Role.HOST:
        reply(event.ticket, Code.FORBIDDEN, f"only the host can {event.action}", out)
        return s
    target: Fields = {"room_id": s.joined, "user_id": event.user_id}
    match event.action:
        case "invite":
            return ask(s, InviteOnstageRequest, target, now, out, ticket=event.ticket)
        case "remove":
            fields = {**target, "role": Role.LISTENER}
            return ask(s, SetUserInfoRequest, fields, now, out, ticket=event.ticket)
        case "mute":
            fields = {**target, "mic_on": False}
            return ask(s, SetUserInfoRequest, fields, now, out, ticket=event.ticket)
        case _:
            assert_never(event.action)
