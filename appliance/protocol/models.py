"""Pydantic models of every wire shape (docs/protocol.md sections 3-6).

Two families:

* **Requests** are what the server accepts. They are strict: unknown fields, missing
  fields and wrong JSON types are errors (a 400 naming the field).
* **Shapes, data and pushes** are what clients receive. They ignore unknown fields,
  so an older client keeps working against a newer server.
"""

from __future__ import annotations

import unicodedata
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from appliance.protocol.topics import USER_ID_RE

MAX_PAYLOAD_BYTES = 4096
MAX_CORRELATION_BYTES = 64
HEARTBEAT_INTERVAL_S = 10
SESSION_TTL_S = 30
INVITATION_TTL_S = 30
RATE_LIMIT_PER_S = 20
RAISED_HANDS_SHOWN = 50
NAME_MAX = 32
"""A display name's longest, in characters (``login``)."""

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories refused in text meant to be shown (docs/protocol.md 3.8): control
characters (C0, DEL, C1), format characters (bidi embeddings, overrides and isolates,
zero-width characters, the BOM...), lone surrogates, line and paragraph separators."""


def unsafe_char(text: str) -> str | None:
    """The first character of ``text`` that is unsafe to show, as ``U+XXXX``; or None."""
    for char in text:
        if unicodedata.category(char) in UNSAFE_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None


def _showable(text: str) -> str:
    bad = unsafe_char(text)
    if bad is not None:
        raise ValueError(f"must not contain control or format characters ({bad})")
    return text


def printable(text: str) -> str:
    """``text`` with every character :func:`unsafe_char` would name (and any other
    non-printable one) escaped as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``: safe to
    put on a terminal, whatever a peer sent."""
    if text.isprintable():
        return text
    return "".join(c if _shown_as_is(c) else _escape(c) for c in text)


def _shown_as_is(char: str) -> bool:
    return char.isprintable() or unicodedata.category(char) == "Zs"  # spaces are fine


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


ShowableText = Annotated[str, AfterValidator(_showable)]
"""Text a server stores and other people's devices show: no control or format characters."""
UserId = Annotated[str, Field(pattern=USER_ID_RE.pattern)]
RoomId = Annotated[str, Field(min_length=1, max_length=64)]


class Code(IntEnum):
    """Response codes (docs/protocol.md section 3)."""

    OK = 0
    BAD_REQUEST = 400
    NOT_LOGGED_IN = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    GONE = 410
    RATE_LIMITED = 429
    INTERNAL = 500


class Role(StrEnum):
    """A member's role in a room."""

    HOST = "host"
    SPEAKER = "speaker"
    LISTENER = "listener"


class Method(StrEnum):
    """Every request method (docs/protocol.md section 4); the last topic level of a request."""

    LOGIN = "login"
    LOGOUT = "logout"
    HEARTBEAT = "heartbeat"
    GET_ROOM_LIST = "get_room_list"
    CREATE_ROOM = "create_room"
    LOGIN_ROOM = "login_room"
    QUIT_ROOM = "quit_room"
    CLOSE_ROOM = "close_room"
    GET_ATTENDEE_LIST = "get_attendee_list"
    OPERATE_RAISE_HAND = "operate_raise_hand"
    INVITE_ONSTAGE = "invite_onstage"
    RESPONSE_ONSTAGE_INVITE = "response_onstage_invite"
    SET_USER_INFO = "set_user_info"


class Received(BaseModel):
    """Base of everything a client receives: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Request(BaseModel):
    """Base of every request payload: strict, unknown fields rejected.

    Each method has its own class, which knows its :class:`Method`: a request value
    says by its type what it asks for, from the device's state machine to the server's
    dispatch table.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
    method: ClassVar[Method]


# ---------------------------------------------------------------- shapes (section 4)


class Member(Received):
    """One member of a room."""

    user_id: str
    name: str
    role: Role
    mic_on: bool
    hand_raised: bool
    joined_at: float

    @property
    def seated(self) -> bool:
        """Whether this member holds a seat (host or speaker)."""
        return self.role is not Role.LISTENER


class HostRef(Received):
    """The host of a room, as a room summary names it."""

    user_id: str
    name: str


class RoomSummary(Received):
    """One line of the room list."""

    room_id: str
    subject: str
    host: HostRef
    seat_count: int
    member_count: int
    created_at: float


class RaisedHand(Received):
    """A listener waiting to speak."""

    user_id: str
    name: str
    raised_at: float


class RoomState(Received):
    """The full, retained state of a room; bounded however many listeners it has."""

    room_id: str
    subject: str
    version: int
    closed: bool
    host_id: str
    max_seats: int
    seats: list[Member]
    raised_hands: list[RaisedHand]
    raised_hand_count: int
    member_count: int
    updated_at: float

    def seat_of(self, user_id: str) -> Member | None:
        """The seat ``user_id`` holds, if any."""
        return next((m for m in self.seats if m.user_id == user_id), None)

    def is_heard(self, user_id: str) -> bool:
        """Whether ``user_id`` is on a seat with the mic on (its stream is played)."""
        seat = self.seat_of(user_id)
        return seat is not None and seat.mic_on

    def hand_raised(self, user_id: str) -> bool:
        """Whether ``user_id`` is among the raised hands shown."""
        return any(h.user_id == user_id for h in self.raised_hands)


# ---------------------------------------------------------------- requests (section 3)


class LoginRequest(Request):
    method = Method.LOGIN
    name: ShowableText = Field(min_length=1, max_length=NAME_MAX)


class LogoutRequest(Request):
    """``logout`` carries nothing."""

    method = Method.LOGOUT


class HeartbeatRequest(Request):
    """``heartbeat`` carries nothing."""

    method = Method.HEARTBEAT


class GetRoomListRequest(Request):
    method = Method.GET_ROOM_LIST
    cursor: str | None = Field(default=None, max_length=128)
    page_size: int = Field(default=20, ge=1, le=100)


class CreateRoomRequest(Request):
    method = Method.CREATE_ROOM
    subject: ShowableText = Field(min_length=1, max_length=64)
    max_seats: int = Field(default=8, ge=2, le=16)


class RoomRequest(Request):
    """Base of the requests that name a room only."""

    room_id: RoomId


class LoginRoomRequest(RoomRequest):
    method = Method.LOGIN_ROOM


class QuitRoomRequest(RoomRequest):
    method = Method.QUIT_ROOM


class CloseRoomRequest(RoomRequest):
    method = Method.CLOSE_ROOM


class GetAttendeeListRequest(Request):
    method = Method.GET_ATTENDEE_LIST
    room_id: RoomId
    cursor: str | None = Field(default=None, max_length=128)
    page_size: int = Field(default=50, ge=1, le=200)


class OperateRaiseHandRequest(Request):
    method = Method.OPERATE_RAISE_HAND
    room_id: RoomId
    raise_: bool = Field(alias="raise")
    user_id: UserId | None = None


class InviteOnstageRequest(Request):
    method = Method.INVITE_ONSTAGE
    room_id: RoomId
    user_id: UserId


class ResponseOnstageInviteRequest(Request):
    method = Method.RESPONSE_ONSTAGE_INVITE
    room_id: RoomId
    invitation_id: str = Field(min_length=1, max_length=64)
    accept: bool


class SetUserInfoRequest(Request):
    method = Method.SET_USER_INFO
    room_id: RoomId
    user_id: UserId
    role: Role | None = None
    mic_on: bool | None = None


_REQUEST_MODELS: tuple[type[Request], ...] = (
    LoginRequest, LogoutRequest, HeartbeatRequest, GetRoomListRequest, CreateRoomRequest,
    LoginRoomRequest, QuitRoomRequest, CloseRoomRequest, GetAttendeeListRequest,
    OperateRaiseHandRequest, InviteOnstageRequest, ResponseOnstageInviteRequest,
    SetUserInfoRequest,
)  # fmt: skip
METHODS: dict[Method, type[Request]] = {model.method: model for model in _REQUEST_MODELS}
"""The request model of every method."""
_METHOD_NAMES = frozenset(Method)


class BadRequestError(ValueError):
    """A request payload that does not fit its method; ``str()`` names the field."""


def parse_request(method: str, payload: bytes) -> Request:
    """Validate ``payload`` (JSON bytes) as a ``method`` request.

    Raises :class:`BadRequestError` with a message that names the offending field.
    """
    if method not in _METHOD_NAMES:
        raise BadRequestError(f"unknown method: {method[:64]}")
    model = METHODS[Method(method)]
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first failing field and why."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "payload"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "missing":
        return f"{where}: field required"
    if kind == "json_invalid":
        return "payload: not valid JSON"
    if kind == "model_type":
        return "payload: must be a JSON object"
    if kind == "value_error":
        return f"{where}: {err['ctx']['error']}"
    return f"{where}: {err['msg']}"


# ---------------------------------------------------------------- responses


class Response(Received):
    """The envelope of every answer."""

    code: int
    message: str
    data: dict[str, Any] | None = None


class Empty(Received):
    """The ``data`` of methods that return nothing: ``{}``."""


class LoginData(Received):
    user_id: str
    heartbeat_interval_s: int
    session_ttl_s: int


class HeartbeatData(Received):
    room_id: str | None
    room_version: int | None


class RoomListData(Received):
    rooms: list[RoomSummary]
    next_cursor: str | None


class MediaKey(Received):
    """A room's current voice key (section 6.1): ``key`` is the standard base64 of 32
    bytes. Never shown in a ``repr``."""

    epoch: int
    key: str = Field(repr=False)


class RoomData(Received):
    room: RoomState
    # Always sent by this server; optional so that an older server's reply still parses.
    media: MediaKey | None = None


class LoginRoomData(Received):
    room: RoomState
    me: Member
    media: MediaKey | None = None


class AttendeeListData(Received):
    attendees: list[Member]
    next_cursor: str | None


class MemberData(Received):
    member: Member


class InvitationData(Received):
    invitation_id: str
    expires_at: float


class MeData(Received):
    me: Member


# ---------------------------------------------------------------- inbox (section 5)


class InviteOnstage(Received):
    type: Literal["invite_onstage"] = "invite_onstage"
    invitation_id: str
    room_id: str
    from_user_id: str
    from_name: str
    expires_at: float


class InviteResponse(Received):
    type: Literal["invite_response"] = "invite_response"
    invitation_id: str
    room_id: str
    user_id: str
    accepted: bool


class InviteExpired(Received):
    type: Literal["invite_expired"] = "invite_expired"
    invitation_id: str
    room_id: str


class RemovedFromStage(Received):
    type: Literal["removed_from_stage"] = "removed_from_stage"
    room_id: str
    by: str


class Muted(Received):
    type: Literal["muted"] = "muted"
    room_id: str
    by: str


class HandLowered(Received):
    type: Literal["hand_lowered"] = "hand_lowered"
    room_id: str
    by: str


class RoomClosed(Received):
    type: Literal["room_closed"] = "room_closed"
    room_id: str


class MediaKeyPush(Received):
    """The room's voice key changed (section 6.1): seal and open with it from now on."""

    type: Literal["media_key"] = "media_key"
    room_id: str
    epoch: int
    key: str = Field(repr=False)


InboxCommand = Annotated[
    InviteOnstage
    | InviteResponse
    | InviteExpired
    | RemovedFromStage
    | Muted
    | HandLowered
    | RoomClosed
    | MediaKeyPush,
    Field(discriminator="type"),
]
_INBOX = TypeAdapter[InboxCommand](InboxCommand)


def parse_inbox(payload: bytes) -> InboxCommand:
    """Parse an inbox command; raises ``pydantic.ValidationError`` on anything else."""
    return _INBOX.validate_json(payload)


def dump(model: BaseModel) -> bytes:
    """Serialize a model to its wire JSON (aliases applied, e.g. ``raise``)."""
    return model.model_dump_json(by_alias=True).encode()
