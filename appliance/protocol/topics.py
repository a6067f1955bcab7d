"""Topic builders and parsers for ``gochat/v1`` (docs/protocol.md section 2).

Every topic the system uses is built here, and every topic it receives is parsed
here, so a typo cannot create a second, silently different wire shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "gochat/v1"
SERVER_USER_ID = "gochat-server"
"""The first server instance's broker account; instance N (>= 2) is ``gochat-server-N``."""

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ROOM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

# Subscriptions.
REQUESTS_ALL = f"{ROOT}/req/+/+"
REQUESTS_TREE = f"{ROOT}/req/#"
"""Every topic under ``req/``: well-formed requests and malformed ones, which the
server answers 400 when it can (docs/protocol.md 3.5)."""
REQUEST_PREFIX = f"{ROOT}/req/"
AUDIO_ALL = f"{ROOT}/room/+/audio/+"
RETAINED_SWEEP = (REQUESTS_TREE, AUDIO_ALL)
"""Where a retained message never belongs (the server's janitor looks there)."""
PRESENCE_ALL = f"{ROOT}/presence/+"
ROOM_STATE_ALL = f"{ROOT}/room/+/state"


def is_server_account(user_id: str) -> bool:
    """Whether ``user_id`` names a server's broker account: ``gochat-server``, or an
    instance's ``gochat-server-2`` ... (the broker lets these retain anywhere). Never
    a device's name."""
    return user_id == SERVER_USER_ID or user_id.startswith(f"{SERVER_USER_ID}-")


def is_user_id(value: str) -> bool:
    """Whether ``value`` is a valid user id: 1-64 chars of ``[A-Za-z0-9_.-]``."""
    return USER_ID_RE.fullmatch(value) is not None


def server_account(instance: int) -> str:
    """The broker account (and client id) of server instance ``instance`` (1, 2, ...)."""
    if instance < 1:
        raise ValueError("server instances are numbered from 1")
    return SERVER_USER_ID if instance == 1 else f"{SERVER_USER_ID}-{instance}"


def request(user_id: str, method: str) -> str:
    """The topic a client publishes its ``method`` requests on."""
    return f"{ROOT}/req/{user_id}/{method}"


def response(user_id: str) -> str:
    """The topic the server answers ``user_id`` on."""
    return f"{ROOT}/resp/{user_id}"


def inbox(user_id: str) -> str:
    """The topic of ``user_id``'s custom commands."""
    return f"{ROOT}/user/{user_id}/inbox"


def room_state(room_id: str) -> str:
    """The retained room-state topic of ``room_id``."""
    return f"{ROOT}/room/{room_id}/state"


def audio(room_id: str, user_id: str) -> str:
    """The topic ``user_id`` publishes its voice on in ``room_id``."""
    return f"{ROOT}/room/{room_id}/audio/{user_id}"


def room_audio_all(room_id: str) -> str:
    """A subscription to every stream in ``room_id``."""
    return f"{ROOT}/room/{room_id}/audio/+"


def presence(user_id: str) -> str:
    """The retained presence topic of ``user_id``."""
    return f"{ROOT}/presence/{user_id}"


@dataclass(frozen=True, slots=True)
class RequestTopic:
    """A parsed request topic."""

    user_id: str
    method: str


def parse_request(topic: str) -> RequestTopic | None:
    """Parse ``gochat/v1/req/{user_id}/{method}``; None for anything else."""
    parts = _split(topic, 5, "req")
    if parts is None or not is_user_id(parts[3]) or not parts[4]:
        return None
    return RequestTopic(parts[3], parts[4])


def request_owner(topic: str) -> str | None:
    """The user id of any topic under ``gochat/v1/req/{user_id}``, well-formed or not
    (the broker ACL lets only that user publish there); None if there is none.

    Cheap on purpose: the server calls it for every message of a flood, before
    anything else.
    """
    if not topic.startswith(REQUEST_PREFIX):
        return None
    user_id = topic[len(REQUEST_PREFIX) :].split("/", 1)[0]
    return user_id if is_user_id(user_id) else None


def retained_owner(topic: str) -> str | None:
    """Who published on ``topic``, for a request or an audio topic (None otherwise)."""
    owner = request_owner(topic)
    if owner is not None:
        return owner
    parsed = parse_audio(topic)
    return parsed.user_id if parsed is not None else None


def parse_presence(topic: str) -> str | None:
    """The user id of ``gochat/v1/presence/{user_id}``; None for anything else."""
    parts = _split(topic, 4, "presence")
    if parts is None or not is_user_id(parts[3]):
        return None
    return parts[3]


def parse_room_state(topic: str) -> str | None:
    """The room id of ``gochat/v1/room/{room_id}/state``; None for anything else."""
    parts = _split(topic, 5, "room")
    if parts is None or parts[4] != "state" or not parts[3]:
        return None
    return parts[3]


@dataclass(frozen=True, slots=True)
class AudioTopic:
    """A parsed audio topic."""

    room_id: str
    user_id: str


def parse_audio(topic: str) -> AudioTopic | None:
    """Parse ``gochat/v1/room/{room_id}/audio/{user_id}``; None for anything else."""
    parts = _split(topic, 6, "room")
    if parts is None or parts[4] != "audio" or not is_user_id(parts[5]):
        return None
    return AudioTopic(parts[3], parts[5])


def _split(topic: str, count: int, kind: str) -> list[str] | None:
    parts = topic.split("/")
    if len(parts) != count or f"{parts[0]}/{parts[1]}" != ROOT or parts[2] != kind:
        return None
    return parts
