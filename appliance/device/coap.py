"""The local CoAP API (docs/device.md "Local API"), served with aiocoap on the daemon's loop.

=====================  ========  =====================================================
resource               method    meaning
=====================  ========  =====================================================
``/status``            GET, Obs  the status payload; observers are notified on every
                                 ``StatusChanged`` effect
``/buttons/{name}``    POST      ``{"press": "short"|"long"}``: a button gesture
``/room``              PUT       ``{"room_id"}`` joins, ``{"subject"}`` creates and hosts
``/room``              DELETE    leaves
``/rooms``             GET       the room list as ``get_room_list`` returns it
                                 (optional query ``cursor=``, ``page_size=``)
``/host/{action}``     POST      ``invite`` / ``remove`` / ``mute`` ``{"user_id"}``
``/counters``          GET       diagnostics: request, drop and error counters
=====================  ========  =====================================================

Payloads are JSON (content-format 50). Every error is a 4.xx/5.xx with a JSON body
``{"message": ...}``. Server outcomes map to CoAP codes as in :data:`COAP_CODES`.

Hostile input is answered, counted and forgotten: a wrong method is 4.05, an unknown
path 4.04, and bad JSON, wrong types, unknown fields, an unknown button or action, or
a payload over :data:`MAX_BODY_BYTES` (blockwise uploads included) are 4.00 with a
message naming the problem. A content format other than JSON is 4.15.

A button press answers 2.04 once the gesture was handled, like a physical press, with
what it did: ``{"button", "press", "outcome": "sent"|"refused"|"ignored", "reason"}``
(``refused`` flashed the status LED; ``ignored``: that button's previous request is
still in flight). Requests that need the server (``/room``, ``/rooms``, ``/host``)
answer once the server did, or after :data:`CALL_TIMEOUT_S` with 5.04.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import aiocoap
from aiocoap import error as coap_error
from aiocoap import resource
from aiocoap.numbers.codes import Code as CoapCode
from aiocoap.numbers.contentformat import ContentFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.device.effects import ApiReply
from appliance.device.events import (
    BUTTONS,
    ButtonName,
    CreateRequested,
    Event,
    HostAction,
    HostActionName,
    JoinRequested,
    LeaveRequested,
    PressKind,
    RoomListRequested,
)
from appliance.protocol.models import Code, UserId, describe_validation_error
from appliance.protocol.topics import ROOM_ID_RE

log = logging.getLogger("gochat.device.coap")

JSON = ContentFormat.JSON
MAX_BODY_BYTES = 1024
"""Largest request payload accepted (every valid one is well under 200 bytes)."""
CALL_TIMEOUT_S = 15.0
"""How long a request that needs the server may take before the caller gets 5.04."""
HOST_ACTIONS: tuple[HostActionName, ...] = ("invite", "remove", "mute")

COAP_CODES: Mapping[int, CoapCode] = {
    Code.BAD_REQUEST: CoapCode.BAD_REQUEST,
    # 401: the *device's* server session lapsed (it logs in again by itself); the
    # caller did nothing wrong and may retry, so not 4.01/4.03.
    Code.NOT_LOGGED_IN: CoapCode.SERVICE_UNAVAILABLE,
    Code.FORBIDDEN: CoapCode.FORBIDDEN,
    Code.NOT_FOUND: CoapCode.NOT_FOUND,
    Code.CONFLICT: CoapCode.CONFLICT,  # 4.09 (RFC 8132)
    # 410: CoAP has no "Gone"; a closed room is, to the caller, no room to join.
    Code.GONE: CoapCode.NOT_FOUND,
    Code.RATE_LIMITED: CoapCode.TOO_MANY_REQUESTS,  # 4.29 (RFC 8516)
    Code.INTERNAL: CoapCode.INTERNAL_SERVER_ERROR,
    502: CoapCode.BAD_GATEWAY,  # a malformed answer, or the broker refused
    503: CoapCode.SERVICE_UNAVAILABLE,  # not connected / the link dropped
    504: CoapCode.GATEWAY_TIMEOUT,  # the server did not answer in time
}
"""docs/protocol.md response codes (and the machine's 502-504) to CoAP response codes."""


def coap_code(code: int) -> CoapCode:
    """The CoAP response code for a protocol/machine code (0 is not an error)."""
    mapped = COAP_CODES.get(code)
    if mapped is not None:
        return mapped
    return CoapCode.BAD_REQUEST if 400 <= code < 500 else CoapCode.INTERNAL_SERVER_ERROR


class DeviceApi(Protocol):
    """What the CoAP server needs from the daemon."""

    def status(self) -> dict[str, Any]:
        """The ``/status`` payload."""
        ...

    def press(self, button: ButtonName, kind: PressKind) -> tuple[str, str | None]:
        """Handle a gesture now; return ``(outcome, reason)`` (see the module doc)."""
        ...

    def call(self, make_event: Callable[[int], Event], timeout_s: float) -> Awaitable[ApiReply]:
        """Feed ``make_event(ticket)`` and await the machine's reply for that ticket
        (raises ``TimeoutError`` after ``timeout_s``)."""
        ...

    def counters(self) -> dict[str, int]:
        """Diagnostic counters of the whole daemon."""
        ...


class CoapBindError(Exception):
    """The configured CoAP address or port cannot be bound (in use, not local)."""


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ButtonBody(_Body):
    press: Literal["short", "long"]


class RoomBody(_Body):
    """``PUT /room``: exactly one of ``room_id`` (join) or ``subject`` (create)."""

    room_id: str | None = Field(default=None, pattern=ROOM_ID_RE.pattern)
    subject: str | None = Field(default=None, min_length=1, max_length=64)
    max_seats: int | None = Field(default=None, ge=2, le=16)

    @model_validator(mode="after")
    def _one_of(self) -> RoomBody:
        if (self.room_id is None) == (self.subject is None):
            raise ValueError('give either "room_id" (join) or "subject" (create)')
        if self.max_seats is not None and self.subject is None:
            raise ValueError('"max_seats" goes with "subject" only')
        return self


class HostBody(_Body):
    user_id: UserId


class ApiRequestError(Exception):
    """A request this API answers with 4.00 (or ``code``); ``str()`` is the message."""

    def __init__(self, message: str, code: CoapCode = CoapCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def json_message(code: CoapCode, body: Any) -> aiocoap.Message:
    """A response with a JSON payload (content-format 50)."""
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return aiocoap.Message(code=code, payload=payload, content_format=JSON)


def error_message(code: CoapCode, message: str) -> aiocoap.Message:
    """An error response: ``{"message": ...}``."""
    return json_message(code, {"message": message})


_Name = TypeVar("_Name", bound=str)


def path_name(request: aiocoap.Message, allowed: Sequence[_Name], unknown: str) -> _Name:
    """The one path segment after a resource (``/buttons/{name}``, ``/host/{action}``):
    4.04 for none or several segments, 4.00 for a name that is not ``allowed``."""
    path = request.opt.uri_path
    if len(path) != 1:
        raise coap_error.NotFound()
    name: str = path[0]
    if name not in allowed:
        raise ApiRequestError(f"{unknown} {name[:32]!r} (one of {', '.join(allowed)})")
    return allowed[allowed.index(name)]  # typed as the allowed literal


def parse_body(model: type[_Body], request: aiocoap.Message) -> Any:
    """Validate a request's JSON payload as ``model`` or raise :class:`ApiRequestError`."""
    fmt = request.opt.content_format
    if fmt is not None and fmt != JSON:
        raise ApiRequestError(
            "payload: content-format must be 50 (application/json)",
            CoapCode.UNSUPPORTED_CONTENT_FORMAT,
        )
    if request.opt.block1 is not None or len(request.payload) > MAX_BODY_BYTES:
        raise ApiRequestError(f"payload: larger than {MAX_BODY_BYTES} bytes")
    try:
        return model.model_validate_json(request.payload)
    except ValidationError as exc:
        raise ApiRequestError(describe_validation_error(exc)) from None


def reply_message(reply: ApiReply, success: CoapCode) -> aiocoap.Message:
    """The CoAP response for the machine's outcome of a ticketed request."""
    if reply.code == Code.OK:
        return json_message(success, dict(reply.data or {}))
    return error_message(coap_code(reply.code), reply.message)


# ---------------------------------------------------------------- resources


class _ApiResource(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """Base: turns :class:`ApiRequestError` into 4.00 and counts it."""

    def __init__(self, api: DeviceApi, counters: Counter[str]) -> None:
        super().__init__()
        self.api = api
        self.counters = counters

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # Large GET answers (the room list) go out blockwise; uploads never need it,
        # and assembling a hostile one would only hold memory.
        return bool(request.code == CoapCode.GET)

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            response: aiocoap.Message = await super().render(request)
        except ApiRequestError as exc:
            self.counters["bad_request"] += 1
            log.info("CoAP %s /%s: %s", request.code, "/".join(request.opt.uri_path), exc)
            return error_message(exc.code, str(exc))
        return response

    async def call(self, make_event: Callable[[int], Event], success: CoapCode) -> aiocoap.Message:
        try:
            reply = await self.api.call(make_event, CALL_TIMEOUT_S)
        except TimeoutError:
            self.counters["timeouts"] += 1
            message = f"no outcome within {CALL_TIMEOUT_S:.0f} s; the device keeps trying"
            return error_message(CoapCode.GATEWAY_TIMEOUT, message)
        return reply_message(reply, success)


def _no_query(request: aiocoap.Message) -> None:
    if request.opt.uri_query:
        raise ApiRequestError("query: this resource takes no query parameters")


class ObserverGoneError(Exception):
    """The observer of a ``/status`` observation went away while it was notified."""


class _GuardedPipe:
    """A response pipe that tells a departed observer from a failure.

    When a notification goes to a client that has quit (a console closed), the send
    can fail at once (ICMP port unreachable), which ends the pipe *inside*
    ``add_response``; aiocoap (0.4.x) then raises ``TypeError: 'bool' object is not
    iterable`` from the ended pipe. Any error once the peer's interest ended, or a
    response after it, is :class:`ObserverGoneError` instead: nobody is listening.
    """

    def __init__(self, pipe: Any, counters: Counter[str]) -> None:
        self._pipe = pipe
        self._counters = counters
        self.request = pipe.request
        self.gone = False
        pipe.on_interest_end(self._ended)

    def _ended(self) -> None:
        self.gone = True
        self._counters["observers_gone"] += 1

    def add_response(self, response: aiocoap.Message, is_last: bool = False) -> None:
        if self.gone:
            raise ObserverGoneError()
        try:
            self._pipe.add_response(response, is_last=is_last)
        except Exception:
            if not self.gone:
                raise
            raise ObserverGoneError() from None


class StatusResource(resource.ObservableResource):  # type: ignore[misc]
    """``/status``: GET and Observe; an observer that leaves is counted
    (``observers_gone``), never a 5.00."""

    def __init__(self, api: DeviceApi, counters: Counter[str]) -> None:
        super().__init__()
        self.api = api
        self.counters = counters

    async def render_to_pipe(self, pipe: Any) -> None:
        if pipe.request.opt.observe != 0:  # a plain GET (or a deregistration)
            await super().render_to_pipe(pipe)
            return
        try:
            await super().render_to_pipe(_GuardedPipe(pipe, self.counters))
        except ObserverGoneError:
            log.debug("CoAP /status: an observer went away while notified")

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return json_message(CoapCode.CONTENT, self.api.status())


class ButtonResource(_ApiResource, resource.PathCapable):  # type: ignore[misc]
    """``/buttons/{name}``: POST ``{"press": "short"|"long"}``."""

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        button = path_name(request, BUTTONS, "button: unknown button")
        body: ButtonBody = parse_body(ButtonBody, request)
        outcome, reason = self.api.press(button, body.press)
        result: dict[str, Any] = {"button": button, "press": body.press, "outcome": outcome}
        if reason is not None:
            result["reason"] = reason
        return json_message(CoapCode.CHANGED, result)


class RoomResource(_ApiResource):
    """``/room``: PUT joins or creates; DELETE leaves."""

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        _no_query(request)
        body: RoomBody = parse_body(RoomBody, request)
        if body.room_id is not None:
            room_id = body.room_id
            return await self.call(lambda t: JoinRequested(room_id, ticket=t), CoapCode.CHANGED)
        subject, seats = body.subject or "", body.max_seats
        return await self.call(
            lambda t: CreateRequested(subject, max_seats=seats, ticket=t), CoapCode.CHANGED
        )

    async def render_delete(self, request: aiocoap.Message) -> aiocoap.Message:
        _no_query(request)
        if request.payload:
            raise ApiRequestError("payload: DELETE /room takes none")
        return await self.call(lambda t: LeaveRequested(ticket=t), CoapCode.DELETED)


class RoomsResource(_ApiResource):
    """``/rooms``: GET the room list (query ``cursor``, ``page_size``)."""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        cursor, page_size = _room_list_query(request.opt.uri_query)
        return await self.call(
            lambda t: RoomListRequested(t, cursor=cursor, page_size=page_size), CoapCode.CONTENT
        )


def _room_list_query(query: tuple[str, ...]) -> tuple[str | None, int | None]:
    cursor: str | None = None
    page_size: int | None = None
    for item in query:
        key, sep, value = item.partition("=")
        if key == "cursor" and sep:
            cursor = value
        elif key == "page_size" and value.isdigit() and len(value) <= 3:
            page_size = int(value)
        else:
            raise ApiRequestError(f"query: unknown or malformed parameter {item[:32]!r}")
    return cursor, page_size


class HostResource(_ApiResource, resource.PathCapable):  # type: ignore[misc]
    """``/host/{action}``: POST ``{"user_id"}`` (host only)."""

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        name = path_name(request, HOST_ACTIONS, "action: unknown")
        body: HostBody = parse_body(HostBody, request)
        user_id = body.user_id
        return await self.call(lambda t: HostAction(name, user_id, ticket=t), CoapCode.CHANGED)


class CountersResource(_ApiResource):
    """``/counters``: GET the daemon's diagnostic counters."""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return json_message(CoapCode.CONTENT, {**self.api.counters(), **self.counters})


class ApiSite(resource.Site):  # type: ignore[misc]
    """The root: routes, turns aiocoap's errors into JSON ones, counts everything."""

    def __init__(self, counters: Counter[str]) -> None:
        super().__init__()
        self.counters = counters

    async def render_to_pipe(self, pipe: Any) -> None:
        # aiocoap's Site hands the pipe straight to the child resource, so errors
        # (unknown path, method not allowed, a bug) surface here, not in render().
        request = pipe.request
        try:
            await super().render_to_pipe(pipe)
        except coap_error.RenderableError as exc:
            pipe.add_response(self._refused(request, exc), is_last=True)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("CoAP %s /%s failed", request.code, "/".join(request.opt.uri_path))
            message = error_message(CoapCode.INTERNAL_SERVER_ERROR, "internal error (logged)")
            pipe.add_response(message, is_last=True)

    def _refused(
        self, request: aiocoap.Message, exc: coap_error.RenderableError
    ) -> aiocoap.Message:
        code = getattr(exc, "code", CoapCode.INTERNAL_SERVER_ERROR)
        path = "/" + "/".join(request.opt.uri_path)
        if code == CoapCode.NOT_FOUND:
            self.counters["not_found"] += 1
            message = f"no such resource: {path[:64]}"
        elif code == CoapCode.METHOD_NOT_ALLOWED:
            self.counters["method_not_allowed"] += 1
            message = f"{request.code} is not allowed on {path[:64]}"
        else:
            self.counters["refused_other"] += 1
            message = getattr(exc, "message", "") or str(code)
        log.info("CoAP %s %s: %s", request.code, path[:64], message)
        return error_message(code, message)


class CoapApi:
    """The CoAP server: build, :meth:`start`, notify with :meth:`status_changed`."""

    def __init__(self, api: DeviceApi, bind: str, port: int) -> None:
        self.bind = bind
        self.port = port
        self.counters: Counter[str] = Counter()
        self._status = StatusResource(api, self.counters)
        self.site = ApiSite(self.counters)
        self.site.add_resource(["status"], self._status)
        self.site.add_resource(["buttons"], ButtonResource(api, self.counters))
        self.site.add_resource(["room"], RoomResource(api, self.counters))
        self.site.add_resource(["rooms"], RoomsResource(api, self.counters))
        self.site.add_resource(["host"], HostResource(api, self.counters))
        self.site.add_resource(["counters"], CountersResource(api, self.counters))
        self._context: aiocoap.Context | None = None

    async def start(self) -> None:
        """Bind exactly ``bind``:``port`` (UDP only) and serve.

        Raises :class:`CoapBindError` if the port is taken: aiocoap binds with
        ``SO_REUSEPORT``, so a second daemon on the same port would otherwise share
        it silently and get half of the requests.
        """
        _probe_free(self.bind, self.port)
        try:
            self._context = await aiocoap.Context.create_server_context(
                self.site, bind=(self.bind, self.port), transports=["udp6"]
            )
        except OSError as exc:
            raise CoapBindError(f"coap: cannot bind {self.bind}:{self.port}: {exc}") from None
        for interface in _udp_interfaces(self._context):
            _keep_stale_refusals_local(interface, self.counters)
        log.info("CoAP API on udp %s:%d", self.bind, self.port)

    def status_changed(self) -> None:
        """Notify ``/status`` observers (they re-render the status)."""
        self._status.updated_state()

    async def close(self) -> None:
        """Stop serving."""
        if self._context is not None:
            context, self._context = self._context, None
            await context.shutdown()


def _udp_interfaces(context: aiocoap.Context) -> list[Any]:
    """aiocoap's UDP message interfaces of ``context`` (one per bound socket)."""
    found = []
    for tokens in context.request_interfaces:
        messages = getattr(tokens, "token_interface", None)
        interface = getattr(messages, "message_interface", None)
        if interface is not None and hasattr(interface, "error_received"):
            found.append(interface)
    return found


def _keep_stale_refusals_local(interface: Any, counters: Counter[str]) -> None:
    """Stop a peer that went away from taking another peer's observation with it.

    A UDP socket keeps the ICMP "port unreachable" of a datagram to a departed
    peer (a console that quit) as a pending error, which the *next* ``sendmsg``
    returns, whoever it is addressed to. aiocoap (0.4.x) blames that next peer and
    ends its exchanges: an observer still listening loses its observation and that
    notification. The refusal also arrives on the error queue, naming the right
    peer, so here a refusal on send is counted (``stale_refusals``) and the datagram
    sent again.
    """
    send, error_received = interface.send, interface.error_received
    refused: list[OSError] = []

    def on_error(exc: OSError) -> None:
        if isinstance(exc, ConnectionRefusedError) and interface._remote_being_sent_to.get():
            refused.append(exc)  # while sending: stale, not about this datagram
            return
        error_received(exc)

    def send_once_more_if_stale(message: aiocoap.Message) -> None:
        send(message)
        if refused:
            refused.clear()
            counters["stale_refusals"] += 1
            send(message)
            refused.clear()  # a second one in a row: the errqueue still reports it

    interface.error_received = on_error
    interface.send = send_once_more_if_stale


def _probe_free(bind: str, port: int) -> None:
    family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((bind, port))
        except OSError as exc:
            raise CoapBindError(f"coap: cannot bind {bind}:{port}: {exc.strerror}") from None


__all__ = [
    "CALL_TIMEOUT_S",
    "COAP_CODES",
    "MAX_BODY_BYTES",
    "CoapApi",
    "CoapBindError",
    "DeviceApi",
    "coap_code",
]
