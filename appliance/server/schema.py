"""The store's one schema and its migrations, for SQLite and PostgreSQL alike.

Each migration is written once; :func:`script` spells it in a dialect by filling in
the few words the two engines spell differently (a byte string, a float, SQLite's
``WITHOUT ROWID``). Both stores therefore have the same tables and columns at the same
version, and the same code turns a row into a record (:func:`room_of`, ...).

Version 3 adds what several server instances sharing one PostgreSQL need; SQLite has
the same columns and tables and leaves them at their defaults:

* ``rooms.rev``, ``members.rev``, ``members.gone``: every transaction that changes a
  room raises its ``rev`` and stamps the member rows it writes with it; a member who
  leaves is marked ``gone`` at that ``rev`` rather than deleted. An instance that
  holds a room at ``rev`` r catches up by reading the member rows above r alone.
* ``sessions.last_seen``: session TTLs are counted by whichever instance owns the
  timers, from what any instance saw. Not indexed on purpose: every heartbeat writes
  it, and an unindexed column is updated in place (PostgreSQL's HOT updates), which
  costs far less than the timer owner's scan of the table four times a second.
* ``replies``: the answer to each changing request, by its replay key, so a retry that
  reaches another instance is answered, not applied again.
* ``leases``: who owns the timers, until when (PostgreSQL's clock).
* ``deployment``: the instances' shared subscription group, a random secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.protocol.models import Role
from appliance.server.domain import Invitation, InvitationState, MemberRecord, Room
from appliance.server.voicekeys import RoomKey

Dialect = Literal["sqlite", "postgresql"]
SCHEMA_VERSION = 3

_WORDS: dict[Dialect, dict[str, str]] = {
    "sqlite": {"blob": "BLOB", "real": "REAL", "without_rowid": "WITHOUT ROWID"},
    "postgresql": {"blob": "BYTEA", "real": "DOUBLE PRECISION", "without_rowid": ""},
}

# Version 1: sessions, rooms, members, invitations.
_V1 = """
CREATE TABLE IF NOT EXISTS sessions (
    user_id TEXT PRIMARY KEY, name TEXT NOT NULL, logged_in_at {real} NOT NULL
) {without_rowid};
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY, subject TEXT NOT NULL, host_id TEXT NOT NULL,
    max_seats INTEGER NOT NULL, created_at {real} NOT NULL, version INTEGER NOT NULL,
    updated_at {real} NOT NULL, closed_at {real}, retained_cleared INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room_id TEXT NOT NULL, user_id TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    joined_at {real} NOT NULL, mic_on INTEGER NOT NULL, raised_at {real}, onstage_at {real},
    PRIMARY KEY (room_id, user_id)
) {without_rowid};
CREATE TABLE IF NOT EXISTS invitations (
    invitation_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, inviter_id TEXT NOT NULL,
    invitee_id TEXT NOT NULL, created_at {real} NOT NULL, expires_at {real} NOT NULL,
    state TEXT NOT NULL
) {without_rowid};
"""
# Migrations: version -> the script that brings version - 1 up to it.
_MIGRATIONS = {
    # Version 2: each room's voice key (PROTOCOL.md 6.1). NULL for a closed room, and
    # for the open rooms of a version 1 store until the service gives them a key.
    2: """
ALTER TABLE rooms ADD COLUMN voice_key {blob};
ALTER TABLE rooms ADD COLUMN voice_epoch INTEGER;
ALTER TABLE rooms ADD COLUMN voice_since {real};
ALTER TABLE rooms ADD COLUMN voice_rotate_at {real};
""",
    # Version 3: several instances on one store (module docstring).
    3: """
ALTER TABLE rooms ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN gone INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN last_seen {real};
CREATE INDEX IF NOT EXISTS members_of_user ON members (user_id);
CREATE INDEX IF NOT EXISTS invitations_of_room ON invitations (room_id);
CREATE TABLE IF NOT EXISTS replies (
    replay_key {blob} PRIMARY KEY, response {blob} NOT NULL, at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_by_age ON replies (at);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment (share_group TEXT NOT NULL);
""",
}

ROOM_COLUMNS = (
    "room_id, subject, host_id, max_seats, created_at, version, updated_at, closed_at, "
    "retained_cleared, voice_key, voice_epoch, voice_since, voice_rotate_at"
)
MEMBER_COLUMNS = "room_id, user_id, name, role, joined_at, mic_on, raised_at, onstage_at"
INVITATION_COLUMNS = "invitation_id, room_id, inviter_id, invitee_id, created_at, expires_at, state"


def script(version: int, dialect: Dialect) -> str:
    """The SQL that brings a store of ``version - 1`` up to ``version`` (1: create)."""
    text = _V1 if version == 1 else _MIGRATIONS[version]
    return text.format(**_WORDS[dialect])


# ---------------------------------------------------------------- rows <-> records


@dataclass(frozen=True, slots=True)
class RoomRow:
    """A ``rooms`` row as records: the room and its voice key (None: none stored)."""

    room: Room
    key: RoomKey | None


def room_of(row: Sequence[Any]) -> RoomRow:
    """A row of :data:`ROOM_COLUMNS` as a :class:`Room` (no members yet) and its key."""
    room = Room(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], bool(row[8]))
    key_bytes, epoch, since, rotate_at = row[9:13]
    key = None
    if key_bytes is not None and not room.closed:
        key = RoomKey(epoch, bytes(key_bytes), since, rotate_at)
    return RoomRow(room, key)


def room_values(room: Room, key: RoomKey | None) -> tuple[Any, ...]:
    """The values of :data:`ROOM_COLUMNS` for ``room``."""
    voice = (key.key, key.epoch, key.since, key.rotate_at) if key else (None,) * 4
    return (
        room.room_id, room.subject, room.host_id, room.max_seats, room.created_at,
        room.version, room.updated_at, room.closed_at, int(room.retained_cleared), *voice,
    )  # fmt: skip


def member_of(row: Sequence[Any]) -> MemberRecord:
    """A row of :data:`MEMBER_COLUMNS` (room id first) as a :class:`MemberRecord`."""
    _room, user_id, name, role, joined_at, mic_on, raised_at, onstage_at = row[:8]
    return MemberRecord(user_id, name, Role(role), joined_at, bool(mic_on), raised_at, onstage_at)


def member_values(room_id: str, m: MemberRecord) -> tuple[Any, ...]:
    """The values of :data:`MEMBER_COLUMNS` for ``m`` in ``room_id``."""
    return (
        room_id, m.user_id, m.name, m.role.value, m.joined_at, int(m.mic_on),
        m.raised_at, m.onstage_at,
    )  # fmt: skip


def invitation_of(row: Sequence[Any]) -> Invitation:
    """A row of :data:`INVITATION_COLUMNS` as an :class:`Invitation`."""
    inv_id, room_id, inviter, invitee, created, expires, state = row[:7]
    return Invitation(inv_id, room_id, inviter, invitee, created, expires, InvitationState(state))


def invitation_values(i: Invitation) -> tuple[Any, ...]:
    """The values of :data:`INVITATION_COLUMNS` for ``i``."""
    return (
        i.invitation_id, i.room_id, i.inviter_id, i.invitee_id, i.created_at,
        i.expires_at, i.state.value,
    )  # fmt: skip


def arrange(room: Room) -> None:
    """Rebuild ``room.seats`` (host first, then speakers by time on stage) and
    ``room.hands`` (oldest first) from its members."""
    seated = [m for m in room.members.values() if m.seated]
    seated.sort(key=lambda m: (m.role is not Role.HOST, m.onstage_at or 0.0))
    room.seats = [m.user_id for m in seated]
    hands = sorted(
        (m.raised_at, m.user_id) for m in room.members.values() if m.raised_at is not None
    )
    room.hands = {user_id: at for at, user_id in hands}
