"""A request's life in the machine: drafted, sent, and — when it fails — dealt with.

Every request the machine sends is a typed :class:`~appliance.protocol.models.Request`
(its class names its method), validated here before it leaves, so the server never
sees one the wire would reject: an invalid one fails locally, exactly as a 400 from the
server would. Success answers are handled in :mod:`.responses`.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import ValidationError

from appliance.device import view
from appliance.device.effects import SendRequest
from appliance.device.events import ButtonName
from appliance.device.machine.outcomes import (
    Fields,
    Out,
    aims_at,
    backoff,
    left,
    reply,
    report,
    room_gone,
)
from appliance.device.state import DeviceState, Fault, Pending
from appliance.protocol.models import (
    Code,
    Method,
    Request,
    ResponseOnstageInviteRequest,
    describe_validation_error,
)

_SESSION_OPS = frozenset(
    {Method.LOGIN_ROOM, Method.CREATE_ROOM, Method.QUIT_ROOM, Method.LOGIN, Method.HEARTBEAT}
)
_FATAL_JOIN = frozenset(
    {Code.BAD_REQUEST, Code.FORBIDDEN, Code.NOT_FOUND, Code.CONFLICT, Code.GONE}
)


def draft(model: type[Request], fields: Fields) -> Request | str:
    """``fields`` validated as a ``model`` request, or why the wire would refuse them."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        return describe_validation_error(exc)


def ask(
    s: DeviceState,
    model: type[Request],
    fields: Fields,
    now: float,
    out: Out,
    *,
    button: ButtonName | None = None,
    ticket: int | None = None,
) -> DeviceState:
    """Validate ``fields`` as a ``model`` request and send it (or fail it locally)."""
    request = draft(model, fields)
    if isinstance(request, str):
        # Data from the server (ids) or the CoAP caller that the wire would reject:
        # fail it here, as the server would, without sending anything.
        stand_in = Pending(model.model_construct(**fields), now, button, ticket, retried=True)
        return on_failure(s, stand_in, Code.BAD_REQUEST, request, now=now, out=out)
    return send(s, Pending(request, now, button, ticket), out)


def send(s: DeviceState, pending: Pending, out: Out) -> DeviceState:
    """Emit the request and remember it under a fresh tag."""
    tag = s.next_tag
    out.append(SendRequest(tag, pending.payload))
    return replace(s, next_tag=tag + 1, pending={**s.pending, tag: pending})


def answer(
    s: DeviceState, *, accept: bool, now: float, out: Out, button: ButtonName | None
) -> DeviceState:
    """Answer the waiting invitation; it stops waiting while the answer is in flight."""
    invitation = s.invitation
    if invitation is None:
        return s
    fields = {
        "room_id": invitation.room_id,
        "invitation_id": invitation.invitation_id,
        "accept": accept,
    }
    s = replace(s, invitation=replace(invitation, answering=True))
    return ask(s, ResponseOnstageInviteRequest, fields, now, out, button=button)


# ---------------------------------------------------------------- failure


def on_failure(
    s: DeviceState, p: Pending, code: int, message: str, *, now: float, out: Out
) -> DeviceState:
    """A request failed (answered with an error, timed out, or could not be built)."""
    if code == Code.NOT_LOGGED_IN:
        return _on_logged_out(s, p, message, out)
    room = getattr(p.payload, "room_id", None)
    if (
        code == Code.GONE
        and p.method is not Method.QUIT_ROOM
        and room is not None
        and room == view.room_id(s)
    ):
        s = room_gone(s, out, code, message)
    else:
        s = _failed_method(s, p, code, message, now=now, out=out)
    report(p, code, message, None, out)
    return s


def quit_done(s: DeviceState, request: Request) -> DeviceState:
    """Whatever the answer to ``quit_room``, we are out: success, 404/410 (no such room
    or member), 401 (our session and membership expired) — or no answer while stopping."""
    return left(s) if s.joined == getattr(request, "room_id", None) else s


def _failed_method(
    s: DeviceState, p: Pending, code: int, message: str, *, now: float, out: Out
) -> DeviceState:
    match p.method:
        case Method.LOGIN:
            faults = s.faults | {Fault.LOGIN_FAILED} if 400 <= code < 500 else s.faults
            return backoff(replace(s, faults=faults), now)
        case Method.LOGIN_ROOM | Method.CREATE_ROOM:
            return _join_failed(s, p, code, message, now=now, out=out)
        case Method.QUIT_ROOM:
            return quit_done(s, p.payload)
        case Method.RESPONSE_ONSTAGE_INVITE:
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
        return backoff(s, now)  # 429, 5xx, no answer: try again later
    target = s.target
    if target is None or not aims_at(p, target):
        return s  # the person has asked for something else meanwhile
    # The request's own ticket is answered by report(); a later ask for the same room
    # waits in the target.
    reply(target.ticket, code, message, out)
    return replace(s, target=None, faults=s.faults | {Fault.ROOM_LOST})


def _on_logged_out(s: DeviceState, p: Pending, message: str, out: Out) -> DeviceState:
    # The server's session expired, so it also took us out of the room. Reconcile logs
    # in and re-joins; a person's request is retried once after that.
    s = replace(left(s), session=None)
    if p.method in _SESSION_OPS:
        return _session_op_logged_out(s, p, out)
    if p.method is Method.RESPONSE_ONSTAGE_INVITE or (p.button is None and p.ticket is None):
        return s  # the invitation died with the membership; automatic requests are redone
    if p.retried:
        report(p, Code.NOT_LOGGED_IN, message, None, out)
        return s
    return replace(s, deferred=(*s.deferred, replace(p, retried=True)))


def _session_op_logged_out(s: DeviceState, p: Pending, out: Out) -> DeviceState:
    # Reconcile redoes these by itself; only a CoAP ticket riding on one needs care.
    if p.ticket is None:
        return s
    if p.method is Method.QUIT_ROOM:
        reply(p.ticket, Code.OK, "ok", out, {})  # out of the room, as asked
        return s
    target = s.target
    if target is not None and target.ticket is None and aims_at(p, target):
        return replace(s, target=replace(target, ticket=p.ticket))  # answered by the re-join
    reply(p.ticket, Code.NOT_LOGGED_IN, "the session expired", out)
    return s
