"""After every event: expire what time has overtaken, steer the session toward what
the person wants, and tell the outside what changed.

* **expire**: unanswered requests (504), invitations past their deadline;
* **reconcile**: like a controller loop, log in if not logged in, quit the room we
  should not be in, join or create the one we should, heartbeat, and resend requests
  that failed with 401 — so reconnects, expired sessions and room switches all take
  the same path;
* **sync**: compare LEDs, publishing, heard streams, the room subscription and the
  ``/status`` payload with what was last emitted, and emit only the changes.
"""

from __future__ import annotations

from dataclasses import replace

from appliance.device import view
from appliance.device.effects import (
    ApiReply,
    SetHeard,
    SetLeds,
    StartPublishing,
    StatusChanged,
    StopPublishing,
    SubscribeRoom,
    UnsubscribeRoom,
)
from appliance.device.machine.outcomes import (
    TIMEOUT,
    Fields,
    Out,
    has_pending,
    report,
    room_op_pending,
)
from appliance.device.machine.requests import ask, on_failure, send
from appliance.device.state import DeviceState, JoinTarget, Shown
from appliance.protocol.models import (
    Code,
    CreateRoomRequest,
    HeartbeatRequest,
    LoginRequest,
    LoginRoomRequest,
    Method,
    QuitRoomRequest,
)


def expire(s: DeviceState, now: float, out: Out) -> DeviceState:
    """Fail requests unanswered for the timeout; drop overdue invitations."""
    timeout = s.config.request_timeout_s
    for tag, p in list(s.pending.items()):
        if p.sent_at + timeout <= now:
            s = replace(s, pending={t: q for t, q in s.pending.items() if t != tag})
            s = on_failure(s, p, TIMEOUT, "no answer from the server", now=now, out=out)
    if s.invitation is not None and s.invitation.deadline <= now:
        s = replace(s, invitation=None)
    if any(o.deadline <= now for o in s.outgoing.values()):
        s = replace(s, outgoing={k: o for k, o in s.outgoing.items() if o.deadline > now})
    return s


def reconcile(s: DeviceState, now: float, out: Out) -> DeviceState:
    """Send whatever brings the session closer to what the person wants."""
    if s.leave_ticket is not None and s.joined is None:
        out.append(ApiReply(s.leave_ticket, Code.OK, "ok", {}))
        s = replace(s, leave_ticket=None)
    if not s.running or s.link != "up":
        return s
    if s.session is None:
        if not has_pending(s, Method.LOGIN) and now >= s.retry_at:
            s = ask(s, LoginRequest, {"name": s.config.name}, now, out)
        return s
    s = _heartbeat_if_due(s, now, out)
    if room_op_pending(s):
        return s
    wanted = s.target.room_id if isinstance(s.target, JoinTarget) else None
    if s.joined is not None and s.joined != wanted:
        ticket, s = s.leave_ticket, replace(s, leave_ticket=None)
        return ask(s, QuitRoomRequest, {"room_id": s.joined}, now, out, ticket=ticket)
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
        return ask(s, LoginRoomRequest, fields, now, out, ticket=target.ticket)
    fields = {"subject": target.subject, "max_seats": target.max_seats}
    return ask(s, CreateRoomRequest, fields, now, out, ticket=target.ticket)


def _heartbeat_if_due(s: DeviceState, now: float, out: Out) -> DeviceState:
    session = s.session
    if session is None or now < session.next_heartbeat_at or has_pending(s, Method.HEARTBEAT):
        return s
    session = replace(session, next_heartbeat_at=now + session.heartbeat_interval_s)
    return ask(replace(s, session=session), HeartbeatRequest, {}, now, out)


def _flush_deferred(s: DeviceState, now: float, out: Out) -> DeviceState:
    deferred, s = s.deferred, replace(s, deferred=())
    for p in deferred:
        room = getattr(p.payload, "room_id", None)
        if room is None or room == s.joined:  # room-less requests (room list) always fit
            s = send(s, replace(p, sent_at=now), out)
        else:
            report(p, Code.CONFLICT, "the room changed before the retry", None, out)
    return s


def sync(s: DeviceState, out: Out) -> DeviceState:
    """Emit what the outside must change to show ``s``; remember it as shown."""
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
