"""The device state machine: ``step(state, event, now) -> (state, effects)``.

Pure and synchronous: no MQTT, GPIO, threads or clock inside; ``now`` is the caller's
monotonic clock (seconds), the same one the gesture detector uses. Every step runs in
four stages:

1. **dispatch** the event to its handler, which updates the state and may ask for
   requests (button presses, CoAP calls, answers to the server);
2. **expire** what ``now`` has overtaken: unanswered requests, invitations;
3. **reconcile** the session with what the person wants, like a controller loop: log in
   if not logged in, quit the room we should not be in, join or create the one we
   should, heartbeat, and resend requests that failed with 401 — so reconnects,
   expired sessions and room switches all take the same path;
4. **sync** the outputs: compare LEDs, publishing, heard streams, the room
   subscription and the status with what was last emitted, and emit only changes.

:class:`DeviceMachine` wraps the state for a shell that prefers an object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar, assert_never

from pydantic import BaseModel, ValidationError

from appliance.device import view
from appliance.device.effects import (
    ApiReply,
    Effect,
    Refused,
    SendRequest,
    SetHeard,
    SetLeds,
    StartPublishing,
    StatusChanged,
    StopPublishing,
    SubscribeRoom,
    UnsubscribeRoom,
)
from appliance.device.events import (
    AudioDeviceLost,
    AudioDeviceRestored,
    ButtonName,
    Connected,
    CreateRequested,
    Disconnected,
    Event,
    Gesture,
    HostAction,
    InboxReceived,
    JoinRequested,
    LeaveRequested,
    PressKind,
    PublishRefused,
    RequestUndelivered,
    ResponseReceived,
    RoomListRequested,
    RoomStateReceived,
    Started,
    StopRequested,
    Tick,
)
from appliance.device.state import (
    EMPTY,
    CreateTarget,
    DeviceState,
    Fault,
    Invitation,
    JoinTarget,
    MachineConfig,
    Outgoing,
    Pending,
    Session,
    Shown,
    initial_state,
)
from appliance.device.view import AudioCounters
from appliance.protocol.models import (
    INVITATION_TTL_S,
    METHODS,
    Code,
    CreateRoomRequest,
    EmptyRequest,
    HandLowered,
    HeartbeatData,
    InboxCommand,
    InvitationData,
    InviteExpired,
    InviteOnstage,
    InviteOnstageRequest,
    InviteResponse,
    LoginData,
    LoginRoomData,
    MeData,
    MemberData,
    Muted,
    RemovedFromStage,
    ResponseOnstageInviteRequest,
    Role,
    RoomClosed,
    RoomData,
    RoomRequest,
    RoomState,
    describe_validation_error,
)

LINK_LOST = 503
""":class:`ApiReply` code: the broker link went down before the server answered."""
TIMEOUT = 504
""":class:`ApiReply` code: the server did not answer within the request timeout."""
BAD_ANSWER = 502
""":class:`ApiReply` code: the server's success answer did not fit its shape."""
BROKER_REFUSED = 502
""":class:`ApiReply` code: the broker refused to carry the request (ACL)."""

_ROOM_OPS = frozenset({"login_room", "create_room", "quit_room"})
_SESSION_OPS = _ROOM_OPS | {"login", "heartbeat"}
_FATAL_JOIN = frozenset(
    {Code.BAD_REQUEST, Code.FORBIDDEN, Code.NOT_FOUND, Code.CONFLICT, Code.GONE}
)

Out = list[Effect]
Fields = dict[str, Any]
_M = TypeVar("_M", bound=BaseModel)


def step(state: DeviceState, event: Event, now: float) -> tuple[DeviceState, list[Effect]]:
    """Apply ``event`` at monotonic time ``now``; return the new state and the effects,
    in the order the shell should carry them out."""
    out: Out = []
    s = _dispatch(state, event, now, out)
    s = _expire(s, now, out)
    s = _reconcile(s, now, out)
    return _sync(s, out), out


class DeviceMachine:
    """The state machine held in an object, for the shell: ``effects = m.handle(ev, now)``."""

    def __init__(self, config: MachineConfig) -> None:
        self.state = initial_state(config)

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Apply ``event`` at ``now``; return the effects to carry out."""
        self.state, effects = step(self.state, event, now)
        return effects

    def status(self, audio: AudioCounters = view.NO_AUDIO) -> dict[str, Any]:
        """The CoAP ``/status`` payload."""
        return view.status(self.state, audio)

    def next_deadline(self) -> float | None:
        """When to send the next :class:`~appliance.device.events.Tick` (None: no need)."""
        return view.next_deadline(self.state)

    @property
    def ready(self) -> bool:
        """systemd READY=1 may be sent (see :func:`appliance.device.view.is_ready`)."""
        return view.is_ready(self.state)

    @property
    def idle(self) -> bool:
        """Nothing in flight (after :class:`StopRequested`: safe to disconnect)."""
        return view.is_idle(self.state)


# ================================================================ dispatch


def _dispatch(s: DeviceState, event: Event, now: float, out: Out) -> DeviceState:
    match event:
        case Started() | StopRequested() | Connected() | Disconnected():
            return _on_lifecycle(s, event, now, out)
        case RoomStateReceived() | InboxReceived() | ResponseReceived():
            return _on_server(s, event, now, out)
        case RequestUndelivered() | PublishRefused():
            return _on_broker_verdict(s, event, now, out)
        case (
            Gesture()
            | JoinRequested()
            | CreateRequested()
            | LeaveRequested()
            | HostAction()
            | RoomListRequested()
        ):
            return _on_person(s, event, now, out)
        case Tick():
            return s  # expiry and reconciliation run after every event anyway
        case AudioDeviceLost() | AudioDeviceRestored():
            lost = isinstance(event, AudioDeviceLost)
            faults = s.faults | {Fault.AUDIO_LOST} if lost else s.faults - {Fault.AUDIO_LOST}
            return replace(s, faults=faults)
        case _:
            assert_never(event)


def _on_lifecycle(
    s: DeviceState,
    event: Started | StopRequested | Connected | Disconnected,
    now: float,
    out: Out,
) -> DeviceState:
    match event:
        case Started():
            return replace(s, running=True, link="trying" if s.link == "down" else s.link)
        case StopRequested():
            return _on_stop(s, now, out)
        case Connected():
            return _on_connected(s, out)
        case Disconnected():
            return _on_disconnected(s, event, out)


def _on_server(
    s: DeviceState,
    event: RoomStateReceived | InboxReceived | ResponseReceived,
    now: float,
    out: Out,
) -> DeviceState:
    match event:
        case RoomStateReceived():
            return _on_room_state(s, event.room, out)
        case InboxReceived():
            return _on_inbox(s, event.command, now, out)
        case ResponseReceived():
            return _on_response(s, event, now, out)


def _on_person(
    s: DeviceState,
    event: Gesture
    | JoinRequested
    | CreateRequested
    | LeaveRequested
    | HostAction
    | RoomListRequested,
    now: float,
    out: Out,
) -> DeviceState:
    match event:
        case Gesture():
            return _on_gesture(s, event, now, out)
        case JoinRequested():
            return _on_join_requested(s, event, out)
        case CreateRequested():
            return _on_create_requested(s, event, out)
        case LeaveRequested():
            s = _supersede_target(s, out)
            return replace(s, target=None, leave_ticket=event.ticket)
        case HostAction():
            return _on_host_action(s, event, now, out)
        case RoomListRequested():
            return _on_room_list(s, event, now, out)


# ---------------------------------------------------------------- lifecycle and link


def _on_stop(s: DeviceState, now: float, out: Out) -> DeviceState:
    if not s.running:
        return s
    s = _supersede_target(s, out, LINK_LOST, "the device is stopping")
    s = replace(s, running=False, target=None)
    if s.joined is not None and s.link == "up" and s.session is not None:
        s = _ask(s, "quit_room", {"room_id": s.joined}, now, out)
    return s


def _on_connected(s: DeviceState, out: Out) -> DeviceState:
    # A fresh, clean connection: nothing from the old one will be answered, the broker
    # forgot our room subscription, and the server wants a login before anything else.
    s = _left(_abandon_pending(s, out))
    return replace(
        s,
        link="up",
        session=None,
        faults=s.faults - {Fault.BROKER_REFUSED, Fault.PUBLISH_REFUSED},
        failures=0,
        retry_at=0.0,
        shown=replace(s.shown, subscribed=None),
    )


def _on_disconnected(s: DeviceState, event: Disconnected, out: Out) -> DeviceState:
    s = _abandon_pending(s, out)
    faults = s.faults | {Fault.BROKER_REFUSED} if event.refused else s.faults
    # The target stays: the room is re-joined after the reconnect. An invitation is
    # dropped rather than shown while we cannot answer it (LEDs must not lie).
    s = _left(s)
    return replace(
        s,
        link="trying" if s.running else "down",
        session=None,
        faults=faults,
        shown=replace(s.shown, subscribed=None),
    )


def _abandon_pending(s: DeviceState, out: Out) -> DeviceState:
    for p in [*s.pending.values(), *s.deferred]:
        if p.ticket is not None:
            out.append(ApiReply(p.ticket, LINK_LOST, "the broker connection was lost"))
    return replace(s, pending=EMPTY, deferred=())


# ---------------------------------------------------------------- broker verdicts


def _on_broker_verdict(
    s: DeviceState, event: RequestUndelivered | PublishRefused, now: float, out: Out
) -> DeviceState:
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
    return _on_failure(s, p, code, message, now=now, out=out)


# ---------------------------------------------------------------- room state


def _on_room_state(s: DeviceState, room: RoomState, out: Out) -> DeviceState:
    if room.room_id != view.room_id(s):
        return s  # a room we are not in or joining (e.g. a late retained message)
    if _is_stale(s, room):
        return s
    return _adopt_room(s, room, out)


def _is_stale(s: DeviceState, room: RoomState) -> bool:
    # Versions only increase within a room; a different room starts a new count.
    return s.room is not None and s.room.room_id == room.room_id and room.version <= s.room.version


def _adopt_room(s: DeviceState, room: RoomState, out: Out) -> DeviceState:
    if _is_stale(s, room):
        return s
    s = replace(s, room=room)
    if room.closed:
        return _room_gone(s, out, Code.GONE, "the room was closed")
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


def _room_gone(s: DeviceState, out: Out, code: int, message: str) -> DeviceState:
    """The room closed or vanished: leave it, show the error until another room."""
    for p in s.deferred:
        _report(p, code, message, None, out)
    if s.target is not None and s.target.ticket is not None:
        out.append(ApiReply(s.target.ticket, code, message))
    s = _left(s)
    return replace(s, target=None, room=None, deferred=(), faults=s.faults | {Fault.ROOM_LOST})


def _left(s: DeviceState) -> DeviceState:
    """Forget membership-bound things; the room state is kept for its version count."""
    return replace(s, joined=None, invitation=None, outgoing=EMPTY, hand_hint=False)


# ---------------------------------------------------------------- inbox


def _on_inbox(s: DeviceState, cmd: InboxCommand, now: float, out: Out) -> DeviceState:
    match cmd:
        case InviteOnstage():
            return _on_invited(s, cmd, now, out)
        case InviteExpired() | InviteResponse():
            return _invitation_over(s, cmd.invitation_id)
        case _:
            return _on_membership_command(s, cmd, out)


def _on_membership_command(
    s: DeviceState, cmd: RemovedFromStage | Muted | HandLowered | RoomClosed, out: Out
) -> DeviceState:
    ours = cmd.room_id == view.room_id(s)
    match cmd:
        case RemovedFromStage() | Muted() if ours and s.room is not None:
            return replace(s, mic_block_version=max(s.mic_block_version, s.room.version))
        case HandLowered() if ours:
            return replace(s, hand_hint=False)
        case RoomClosed() if ours:
            return _room_gone(s, out, Code.GONE, "the room was closed")
        case _:
            return s


def _on_invited(s: DeviceState, cmd: InviteOnstage, now: float, out: Out) -> DeviceState:
    if cmd.room_id != s.joined or view.my_seat(s) is not None:
        return s
    invitation = Invitation(
        invitation_id=cmd.invitation_id,
        room_id=cmd.room_id,
        from_user_id=cmd.from_user_id,
        from_name=cmd.from_name,
        expires_at=cmd.expires_at,
        deadline=now + INVITATION_TTL_S + s.config.invitation_grace_s,
    )
    s = replace(s, invitation=invitation)
    if s.config.auto_accept_when_hand_raised and view.hand_raised(s):
        # The listener asked to speak: accept at once, as GoChat's own client does.
        return _answer(s, accept=True, now=now, out=out, button=None)
    return s


def _invitation_over(s: DeviceState, invitation_id: str) -> DeviceState:
    invitation = s.invitation
    if invitation is not None and invitation.invitation_id == invitation_id:
        invitation = None
    outgoing = {k: o for k, o in s.outgoing.items() if k != invitation_id}
    return replace(s, invitation=invitation, outgoing=outgoing)


def _answer(
    s: DeviceState, *, accept: bool, now: float, out: Out, button: ButtonName | None
) -> DeviceState:
    invitation = s.invitation
    if invitation is None:
        return s
    fields = {
        "room_id": invitation.room_id,
        "invitation_id": invitation.invitation_id,
        "accept": accept,
    }
    s = replace(s, invitation=replace(invitation, answering=True))
    return _ask(s, "response_onstage_invite", fields, now, out, button=button)


# ---------------------------------------------------------------- buttons


def _on_gesture(s: DeviceState, g: Gesture, now: float, out: Out) -> DeviceState:
    if _button_busy(s, g.button):
        # The server has not answered this button's last press: we cannot know what a
        # toggle would mean yet, so the press is ignored (no request, no flash).
        return s
    decision = _decide(s, g)
    if isinstance(decision, str):
        out.append(Refused(decision))
        return s
    method, fields = decision
    if method == "response_onstage_invite":
        return _answer(s, accept=bool(fields["accept"]), now=now, out=out, button=g.button)
    return _ask(s, method, fields, now, out, button=g.button)


def _button_busy(s: DeviceState, button: ButtonName) -> bool:
    if any(p.button == button for p in [*s.pending.values(), *s.deferred]):
        return True
    return button == "accept" and s.invitation is not None and s.invitation.answering


def _decide(s: DeviceState, g: Gesture) -> _Decision:
    """What a press asks the server for, or why it is refused (DEVICE.md's button table)."""
    role = view.my_role(s)
    if role is None or s.joined is None:
        return "not in a room"
    decider = _PRESSES.get((g.button, g.kind))
    if decider is None:
        return "this press does nothing"
    return decider(s, role, s.joined)


def _raise_or_lower_hand(s: DeviceState, role: Role, room: str) -> _Decision:
    if role is not Role.LISTENER:
        return "only a listener raises a hand"
    return "operate_raise_hand", {"room_id": room, "raise": not view.hand_raised(s)}


def _leave_stage(s: DeviceState, role: Role, room: str) -> _Decision:
    if role is Role.HOST:
        return "the host cannot leave its seat"
    if role is not Role.SPEAKER:
        return "not on the stage"
    return "set_user_info", {"room_id": room, "user_id": s.user_id, "role": Role.LISTENER}


def _toggle_mic(s: DeviceState, role: Role, room: str) -> _Decision:
    if role is Role.LISTENER:
        return "a listener has no microphone"
    return "set_user_info", {"room_id": room, "user_id": s.user_id, "mic_on": not view.mic_on(s)}


def _accept_or_invite(s: DeviceState, role: Role, room: str) -> _Decision:
    if view.invitation_waiting(s):
        return "response_onstage_invite", {"accept": True}
    if role is not Role.HOST:
        return "no invitation to accept"
    user_id = view.oldest_uninvited_hand(s)
    if user_id is None:
        return "no raised hand to invite"
    return "invite_onstage", {"room_id": room, "user_id": user_id}


def _decline(s: DeviceState, role: Role, room: str) -> _Decision:
    if not view.invitation_waiting(s):
        return "no invitation to decline"
    return "response_onstage_invite", {"accept": False}


_Decision = tuple[str, Fields] | str
"""A request to send (method, fields), or the reason a press is refused."""

_PRESSES: dict[tuple[ButtonName, PressKind], Callable[[DeviceState, Role, str], _Decision]] = {
    ("raise_hand", "short"): _raise_or_lower_hand,
    ("raise_hand", "long"): _leave_stage,
    ("mute", "short"): _toggle_mic,
    ("accept", "short"): _accept_or_invite,
    ("accept", "long"): _decline,
}


# ---------------------------------------------------------------- CoAP requests


def _on_room_list(s: DeviceState, event: RoomListRequested, now: float, out: Out) -> DeviceState:
    if not s.running or view.connection(s) != "online":
        _reply(event.ticket, LINK_LOST, "not connected to the server yet", out)
        return s
    fields: Fields = {}
    if event.cursor is not None:
        fields["cursor"] = event.cursor
    if event.page_size is not None:
        fields["page_size"] = event.page_size
    return _ask(s, "get_room_list", fields, now, out, ticket=event.ticket)


def _on_join_requested(s: DeviceState, event: JoinRequested, out: Out) -> DeviceState:
    error = _invalid("login_room", {"room_id": event.room_id})
    if error is not None:
        _reply(event.ticket, Code.BAD_REQUEST, error, out)
        return s
    s = _supersede_target(s, out)
    if event.room_id == s.joined and view.in_room(s) and s.room is not None:
        _reply(event.ticket, Code.OK, "ok", out, {"room": s.room.model_dump(mode="json")})
        return replace(s, target=JoinTarget(event.room_id))
    return replace(s, target=JoinTarget(event.room_id, event.ticket))


def _on_create_requested(s: DeviceState, event: CreateRequested, out: Out) -> DeviceState:
    max_seats = event.max_seats if event.max_seats is not None else s.config.max_seats
    error = _invalid("create_room", {"subject": event.subject, "max_seats": max_seats})
    if error is not None:
        _reply(event.ticket, Code.BAD_REQUEST, error, out)
        return s
    s = _supersede_target(s, out)
    return replace(s, target=CreateTarget(event.subject, max_seats, event.ticket))


def _supersede_target(
    s: DeviceState,
    out: Out,
    code: int = Code.CONFLICT,
    message: str = "superseded by a newer room request",
) -> DeviceState:
    if s.target is None or s.target.ticket is None:
        return s
    out.append(ApiReply(s.target.ticket, code, message))
    return replace(s, target=replace(s.target, ticket=None))


def _on_host_action(s: DeviceState, event: HostAction, now: float, out: Out) -> DeviceState:
    role = view.my_role(s)
    if role is None or s.joined is None:
        _reply(event.ticket, Code.CONFLICT, "not in a room", out)
        return s
    if role is not Role.HOST:
        _reply(event.ticket, Code.FORBIDDEN, f"only the host can {event.action}", out)
        return s
    target: Fields = {"room_id": s.joined, "user_id": event.user_id}
    match event.action:
        case "invite":
            return _ask(s, "invite_onstage", target, now, out, ticket=event.ticket)
        case "remove":
            fields = {**target, "role": Role.LISTENER}
            return _ask(s, "set_user_info", fields, now, out, ticket=event.ticket)
        case "mute":
            fields = {**target, "mic_on": False}
            return _ask(s, "set_user_info", fields, now, out, ticket=event.ticket)
        case _:
            assert_never(event.action)


# ================================================================ requests and responses


def _ask(
    s: DeviceState,
    method: str,
    fields: Fields,
    now: float,
    out: Out,
    *,
    button: ButtonName | None = None,
    ticket: int | None = None,
) -> DeviceState:
    """Validate ``fields`` as a ``method`` request and send it (or fail it locally)."""
    try:
        payload = METHODS[method].model_validate(fields)
    except ValidationError as exc:
        # Data from the server (ids) or the CoAP caller that the wire would reject:
        # fail it here, as the server would, without sending anything.
        stand_in = Pending(method, EmptyRequest(), now, button, ticket, retried=True)
        message = describe_validation_error(exc)
        return _on_failure(s, stand_in, Code.BAD_REQUEST, message, now=now, out=out)
    return _send(s, Pending(method, payload, now, button, ticket), out)


def _send(s: DeviceState, pending: Pending, out: Out) -> DeviceState:
    tag = s.next_tag
    out.append(SendRequest(tag, pending.method, pending.payload))
    return replace(s, next_tag=tag + 1, pending={**s.pending, tag: pending})


def _invalid(method: str, fields: Fields) -> str | None:
    try:
        METHODS[method].model_validate(fields)
    except ValidationError as exc:
        return describe_validation_error(exc)
    return None


def _on_response(s: DeviceState, event: ResponseReceived, now: float, out: Out) -> DeviceState:
    p = s.pending.get(event.tag)
    if p is None:
        return s  # late (timed out, or from a previous connection) or not ours
    s = replace(s, pending={t: q for t, q in s.pending.items() if t != event.tag})
    r = event.response
    if r.code != Code.OK:
        return _on_failure(s, p, r.code, r.message, now=now, out=out)
    data = r.data or {}
    handler = _ON_SUCCESS.get(p.method)
    if handler is not None:
        updated = handler(s, p, data, now, out)
        if updated is None:
            message = f"malformed {p.method} answer"
            return _on_failure(s, p, BAD_ANSWER, message, now=now, out=out)
        s = updated
    _report(p, Code.OK, "ok", data, out)
    return s


def _parse(model: type[_M], data: Mapping[str, Any]) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


# ---------------------------------------------------------------- success, by method

_SuccessHandler = Callable[
    [DeviceState, Pending, Mapping[str, Any], float, Out], DeviceState | None
]


def _ok_login(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(LoginData, data)
    if d is None:
        return None
    interval = float(d.heartbeat_interval_s)
    return replace(
        s,
        session=Session(d.user_id, interval, now + interval),
        faults=s.faults - {Fault.LOGIN_FAILED},
        failures=0,
        retry_at=0.0,
    )


def _ok_login_room(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(LoginRoomData, data)
    if d is None:
        return None
    s = replace(s, hand_hint=d.me.hand_raised)
    return _joined(s, d.room, data, out)


def _ok_create_room(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(RoomData, data)
    if d is None:
        return None
    target = s.target
    if isinstance(target, CreateTarget) and _aims_at(p, target):
        # From now on this is "the room we are in": a reconnect re-joins it, not a new one.
        s = replace(s, target=JoinTarget(d.room.room_id, target.ticket))
    return _joined(s, d.room, data, out)


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
        out.append(ApiReply(target.ticket, Code.OK, "ok", data))
        s = replace(s, target=JoinTarget(room.room_id))
    return _adopt_room(s, room, out)


def _ok_quit_room(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    return _quit_done(s, p)


def _quit_done(s: DeviceState, p: Pending) -> DeviceState:
    # Whatever the answer, we are out: success, 404/410 (no such room or member), 401
    # (our session and membership expired) — or no answer while stopping.
    return _left(s) if s.joined == getattr(p.payload, "room_id", None) else s


def _ok_heartbeat(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(HeartbeatData, data)
    if d is None:
        return None
    if _room_op_pending(s):
        return s  # a join or quit in flight makes the server's answer stale already
    if d.room_id == s.joined:
        if d.room_version is not None and s.room is not None and d.room_version > s.room.version:
            # We missed a room state: subscribing again makes the broker resend it.
            return replace(s, shown=replace(s.shown, subscribed=None))
        return s
    if s.joined is not None:
        s = _left(s)  # the server no longer has us there; reconcile re-joins the target
    if d.room_id is not None and d.room_id != view.room_id(s):
        # The server has us in a room we do not want (left while offline): quit it.
        return _ask(s, "quit_room", {"room_id": d.room_id}, now, out)
    return s


def _ok_member(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(MemberData, data)
    if d is None:
        return None
    if d.member.user_id == s.user_id:
        return replace(s, hand_hint=d.member.hand_raised)
    return s


def _ok_invite(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(InvitationData, data)
    if d is None or not isinstance(p.payload, InviteOnstageRequest):
        return None
    deadline = now + INVITATION_TTL_S + s.config.invitation_grace_s
    outgoing = {**s.outgoing, d.invitation_id: Outgoing(p.payload.user_id, deadline)}
    return replace(s, outgoing=outgoing)


def _ok_answer(
    s: DeviceState, p: Pending, data: Mapping[str, Any], now: float, out: Out
) -> DeviceState | None:
    d = _parse(MeData, data)
    if d is None or not isinstance(p.payload, ResponseOnstageInviteRequest):
        return None
    s = _invitation_over(s, p.payload.invitation_id)
    return replace(s, hand_hint=d.me.hand_raised)


_ON_SUCCESS: dict[str, _SuccessHandler] = {
    "login": _ok_login,
    "login_room": _ok_login_room,
    "create_room": _ok_create_room,
    "quit_room": _ok_quit_room,
    "heartbeat": _ok_heartbeat,
    "operate_raise_hand": _ok_member,
    "set_user_info": _ok_member,
    "invite_onstage": _ok_invite,
    "response_onstage_invite": _ok_answer,
}


# ---------------------------------------------------------------- failure


def _on_failure(
    s: DeviceState, p: Pending, code: int, message: str, *, now: float, out: Out
) -> DeviceState:
    """A request failed (answered with an error, timed out, or could not be built)."""
    if code == Code.NOT_LOGGED_IN:
        return _on_logged_out(s, p, message, out)
    room = getattr(p.payload, "room_id", None)
    if (
        code == Code.GONE
        and p.method != "quit_room"
        and room is not None
        and room == view.room_id(s)
    ):
        s = _room_gone(s, out, code, message)
    else:
        s = _failed_method(s, p, code, message, now=now, out=out)
    _report(p, code, message, None, out)
    return s


def _failed_method(
    s: DeviceState, p: Pending, code: int, message: str, *, now: float, out: Out
) -> DeviceState:
    match p.method:
        case "login":
            faults = s.faults | {Fault.LOGIN_FAILED} if 400 <= code < 500 else s.faults
            return _backoff(replace(s, faults=faults), now)
        case "login_room" | "create_room":
            return _join_failed(s, p, code, message, now=now, out=out)
        case "quit_room":
            return _quit_done(s, p)
        case "response_onstage_invite":
            return _answer_failed(s, p, code)
        case _:
            return s


def _answer_failed(s: DeviceState, p: Pending, code: int) -> DeviceState:
    invitation = s.invitation
    if invitation is None:
        return s
    payload = p.payload
    if isinstance(payload, ResponseOnstageInviteRequest) and (
        payload.invitation_id != invitation.invitation_id
    ):
        return s  # a newer invitation arrived meanwhile
    if code in (Code.BAD_REQUEST, Code.NOT_FOUND, Code.CONFLICT):
        return replace(s, invitation=None)  # answered, expired, no free seat, or malformed
    return replace(s, invitation=replace(invitation, answering=False))  # may try again


def _join_failed(
    s: DeviceState, p: Pending, code: int, message: str, *, now: float, out: Out
) -> DeviceState:
    if code not in _FATAL_JOIN:
        return _backoff(s, now)  # 429, 5xx, no answer: try again later
    target = s.target
    if target is None or not _aims_at(p, target):
        return s  # the person has asked for something else meanwhile
    # The request's own ticket is answered by _report; a later ask for the same room
    # waits in the target.
    _reply(target.ticket, code, message, out)
    return replace(s, target=None, faults=s.faults | {Fault.ROOM_LOST})


def _aims_at(p: Pending, target: JoinTarget | CreateTarget) -> bool:
    """Whether ``p`` is the join or create request that serves ``target``."""
    payload = p.payload
    if isinstance(target, JoinTarget):
        return (
            isinstance(payload, RoomRequest)
            and p.method == "login_room"
            and payload.room_id == target.room_id
        )
    return isinstance(payload, CreateRoomRequest) and payload.subject == target.subject


def _on_logged_out(s: DeviceState, p: Pending, message: str, out: Out) -> DeviceState:
    # The server's session expired, so it also took us out of the room. Reconcile logs
    # in and re-joins; a person's request is retried once after that.
    s = replace(_left(s), session=None)
    if p.method in _SESSION_OPS:
        return _session_op_logged_out(s, p, out)
    if p.method == "response_onstage_invite" or (p.button is None and p.ticket is None):
        return s  # the invitation died with the membership; automatic requests are redone
    if p.retried:
        _report(p, Code.NOT_LOGGED_IN, message, None, out)
        return s
    return replace(s, deferred=(*s.deferred, replace(p, retried=True)))


def _session_op_logged_out(s: DeviceState, p: Pending, out: Out) -> DeviceState:
    # Reconcile redoes these by itself; only a CoAP ticket riding on one needs care.
    if p.ticket is None:
        return s
    if p.method == "quit_room":
        _reply(p.ticket, Code.OK, "ok", out, {})  # out of the room, as asked
        return s
    target = s.target
    if target is not None and target.ticket is None and _aims_at(p, target):
        return replace(s, target=replace(target, ticket=p.ticket))  # answered by the re-join
    _reply(p.ticket, Code.NOT_LOGGED_IN, "the session expired", out)
    return s


def _backoff(s: DeviceState, now: float) -> DeviceState:
    cfg = s.config
    delay = min(cfg.retry_max_s, cfg.retry_min_s * 2**s.failures)
    return replace(s, failures=s.failures + 1, retry_at=now + delay)


def _report(p: Pending, code: int, message: str, data: Mapping[str, Any] | None, out: Out) -> None:
    """Tell whoever asked: the CoAP caller gets a reply, a refused press a flash."""
    _reply(p.ticket, code, message, out, data if code == Code.OK else None)
    if code != Code.OK and p.button is not None:
        out.append(Refused(message))


def _reply(
    ticket: int | None, code: int, message: str, out: Out, data: Mapping[str, Any] | None = None
) -> None:
    if ticket is not None:
        out.append(ApiReply(ticket, code, message, data))


# ================================================================ expire


def _expire(s: DeviceState, now: float, out: Out) -> DeviceState:
    timeout = s.config.request_timeout_s
    for tag, p in list(s.pending.items()):
        if p.sent_at + timeout <= now:
            s = replace(s, pending={t: q for t, q in s.pending.items() if t != tag})
            s = _on_failure(s, p, TIMEOUT, "no answer from the server", now=now, out=out)
    if s.invitation is not None and s.invitation.deadline <= now:
        s = replace(s, invitation=None)
    if any(o.deadline <= now for o in s.outgoing.values()):
        s = replace(s, outgoing={k: o for k, o in s.outgoing.items() if o.deadline > now})
    return s


# ================================================================ reconcile


def _reconcile(s: DeviceState, now: float, out: Out) -> DeviceState:
    if s.leave_ticket is not None and s.joined is None:
        out.append(ApiReply(s.leave_ticket, Code.OK, "ok", {}))
        s = replace(s, leave_ticket=None)
    if not s.running or s.link != "up":
        return s
    if s.session is None:
        if not _has_pending(s, "login") and now >= s.retry_at:
            s = _ask(s, "login", {"name": s.config.name}, now, out)
        return s
    s = _heartbeat_if_due(s, now, out)
    if _room_op_pending(s):
        return s
    wanted = s.target.room_id if isinstance(s.target, JoinTarget) else None
    if s.joined is not None and s.joined != wanted:
        ticket, s = s.leave_ticket, replace(s, leave_ticket=None)
        return _ask(s, "quit_room", {"room_id": s.joined}, now, out, ticket=ticket)
    if s.joined is None and s.target is not None:
        return _send_join(s, now, out) if now >= s.retry_at else s
    return _flush_deferred(s, now, out)


def _send_join(s: DeviceState, now: float, out: Out) -> DeviceState:
    target = s.target
    if target is None:
        return s
    # The CoAP ticket travels with the request and is answered with its outcome.
    s = replace(s, target=replace(target, ticket=None))
    if isinstance(target, JoinTarget):
        fields: Fields = {"room_id": target.room_id}
        return _ask(s, "login_room", fields, now, out, ticket=target.ticket)
    fields = {"subject": target.subject, "max_seats": target.max_seats}
    return _ask(s, "create_room", fields, now, out, ticket=target.ticket)


def _heartbeat_if_due(s: DeviceState, now: float, out: Out) -> DeviceState:
    session = s.session
    if session is None or now < session.next_heartbeat_at or _has_pending(s, "heartbeat"):
        return s
    session = replace(session, next_heartbeat_at=now + session.heartbeat_interval_s)
    return _ask(replace(s, session=session), "heartbeat", {}, now, out)


def _flush_deferred(s: DeviceState, now: float, out: Out) -> DeviceState:
    deferred, s = s.deferred, replace(s, deferred=())
    for p in deferred:
        room = getattr(p.payload, "room_id", None)
        if room is None or room == s.joined:  # room-less requests (room list) always fit
            s = _send(s, replace(p, sent_at=now), out)
        else:
            _report(p, Code.CONFLICT, "the room changed before the retry", None, out)
    return s


def _has_pending(s: DeviceState, method: str) -> bool:
    return any(p.method == method for p in s.pending.values())


def _room_op_pending(s: DeviceState) -> bool:
    return any(p.method in _ROOM_OPS for p in s.pending.values())


# ================================================================ sync


def _sync(s: DeviceState, out: Out) -> DeviceState:
    shown = s.shown
    subscribed = view.subscription(s)
    if subscribed != shown.subscribed:
        if shown.subscribed is not None:
            out.append(UnsubscribeRoom(shown.subscribed))
        if subscribed is not None:
            out.append(SubscribeRoom(subscribed))
    publishing = view.publishing(s)
    if publishing != shown.publishing:
        if publishing and s.joined is not None:
            out.append(StartPublishing(s.joined, s.user_id))
        else:
            out.append(StopPublishing())
    heard = view.heard(s)
    if heard != shown.heard:
        out.append(SetHeard(heard))
    leds = view.leds(s)
    if leds != shown.leds:
        out.append(SetLeds(leds))
    status = view.status(s)
    if status != shown.status:
        out.append(StatusChanged())
    return replace(s, shown=Shown(leds, publishing, heard, subscribed, status))


__all__ = [
    "BAD_ANSWER",
    "BROKER_REFUSED",
    "LINK_LOST",
    "TIMEOUT",
    "DeviceMachine",
    "MachineConfig",
    "initial_state",
    "step",
]
