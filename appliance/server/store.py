"""SQLite persistence of the room service (WAL mode).

The store writes what :attr:`RoomService.dirty` names in one transaction per batch of
requests, before any reply of that batch is sent: a reply is a promise that the change
survives a crash. ``synchronous=NORMAL`` makes a commit durable against a killed
process (the WAL is in the OS page cache) without an fsync per commit; a power cut may
lose the last commits, which clients see as unanswered requests and retry.

The database holds the rooms' voice keys (PROTOCOL.md 6.1), so it is created mode 0600
and an existing one loses any group/other access when opened (SQLite gives its -wal
and -shm files the database's mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from appliance.protocol.models import Role
from appliance.server.domain import Invitation, InvitationState, MemberRecord, Room, Session
from appliance.server.rules import RoomService
from appliance.server.voicekeys import RoomKey

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    user_id TEXT PRIMARY KEY, name TEXT NOT NULL, logged_in_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY, subject TEXT NOT NULL, host_id TEXT NOT NULL,
    max_seats INTEGER NOT NULL, created_at REAL NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL, closed_at REAL, retained_cleared INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room_id TEXT NOT NULL, user_id TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    joined_at REAL NOT NULL, mic_on INTEGER NOT NULL, raised_at REAL, onstage_at REAL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invitations (
    invitation_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, inviter_id TEXT NOT NULL,
    invitee_id TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    state TEXT NOT NULL
) WITHOUT ROWID;
"""
# Schema migrations: version -> the script that brings version - 1 up to it.
_MIGRATIONS = {
    # Version 2: each room's voice key (PROTOCOL.md 6.1). NULL for a closed room, and
    # for the open rooms of a version 1 store until the service gives them a key.
    2: """
ALTER TABLE rooms ADD COLUMN voice_key BLOB;
ALTER TABLE rooms ADD COLUMN voice_epoch INTEGER;
ALTER TABLE rooms ADD COLUMN voice_since REAL;
ALTER TABLE rooms ADD COLUMN voice_rotate_at REAL;
""",
}
_ROOM_COLUMNS = (
    "room_id, subject, host_id, max_seats, created_at, version, updated_at, closed_at, "
    "retained_cleared, voice_key, voice_epoch, voice_since, voice_rotate_at"
)


class StoreError(RuntimeError):
    """The database cannot be opened or is of an unknown schema."""


class Store:
    """Loads a :class:`RoomService` from SQLite and writes its changes back."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _private(self.path)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_schema()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _check_schema(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if not 0 <= version <= SCHEMA_VERSION:
            raise StoreError(f"store {self.path} has schema {version}, expected {SCHEMA_VERSION}")
        if version == 0:
            self._db.executescript(_SCHEMA)  # version 1's tables
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step: a crash mid-migration leaves the old version.
            self._db.executescript(
                f"BEGIN; {_MIGRATIONS[target]} PRAGMA user_version={target}; COMMIT;"
            )

    # ------------------------------------------------------------ load

    def load_into(self, service: RoomService) -> None:
        """Fill an empty ``service`` with everything stored."""
        db = self._db
        for user_id, name, logged_in_at in db.execute("SELECT * FROM sessions"):
            service.sessions[user_id] = Session(user_id, name, logged_in_at, logged_in_at)
        rows = db.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms ORDER BY created_at, room_id")  # noqa: S608
        for row in rows:
            room = Room(
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], bool(row[8])
            )
            service.rooms[room.room_id] = room
            key, epoch, since, rotate_at = row[9:13]
            if key is not None and not room.closed:
                service.voice.restore(room.room_id, RoomKey(epoch, bytes(key), since, rotate_at))
        self._load_members(service)
        for inv_id, room_id, inviter, invitee, created, expires, state in db.execute(
            "SELECT * FROM invitations"
        ):
            invitation = Invitation(
                inv_id, room_id, inviter, invitee, created, expires, InvitationState(state)
            )
            service.invitations[invitation.invitation_id] = invitation
            if invitation.state is InvitationState.OPEN:
                service.open_invitation_of[invitation.invitee_id] = invitation.invitation_id

    def _load_members(self, service: RoomService) -> None:
        rows = self._db.execute("SELECT * FROM members ORDER BY joined_at, user_id").fetchall()
        for room_id, user_id, name, role, joined_at, mic_on, raised_at, onstage_at in rows:
            room = service.rooms.get(room_id)
            if room is None:
                continue
            member = MemberRecord(
                user_id, name, Role(role), joined_at, bool(mic_on), raised_at, onstage_at
            )
            room.members[user_id] = member
            if user_id in service.sessions:
                service.sessions[user_id].room_id = room_id
        for room in service.rooms.values():
            seated = [m for m in room.members.values() if m.seated]
            seated.sort(key=lambda m: (m.role is not Role.HOST, m.onstage_at or 0.0))
            room.seats = [m.user_id for m in seated]
            hands = sorted(
                (m.raised_at, m.user_id) for m in room.members.values() if m.raised_at is not None
            )
            room.hands = {user_id: at for at, user_id in hands}

    # ------------------------------------------------------------ write

    def flush(self, service: RoomService) -> None:
        """Write every dirty record of ``service`` in one transaction."""
        dirty = service.dirty
        if not dirty:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            for user_id in dirty.sessions:
                self._write_session(service.sessions.get(user_id), user_id)
            for room_id in dirty.rooms:
                key = service.voice.keys.get(room_id)
                self._write_room(service.rooms.get(room_id), room_id, key)
            for room_id, user_id in dirty.members:
                room = service.rooms.get(room_id)
                member = room.members.get(user_id) if room else None
                self._write_member(member, room_id, user_id)
            for invitation_id in dirty.invitations:
                self._write_invitation(service.invitations.get(invitation_id), invitation_id)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        service.dirty = type(dirty)()

    def _write_session(self, s: Session | None, user_id: str) -> None:
        if s is None:
            self._db.execute("DELETE FROM sessions WHERE user_id=?", (user_id,))
            return
        self._db.execute(
            "INSERT OR REPLACE INTO sessions VALUES (?,?,?)", (s.user_id, s.name, s.logged_in_at)
        )

    def _write_room(self, r: Room | None, room_id: str, key: RoomKey | None) -> None:
        if r is None:
            self._db.execute("DELETE FROM rooms WHERE room_id=?", (room_id,))
            self._db.execute("DELETE FROM members WHERE room_id=?", (room_id,))
            self._db.execute("DELETE FROM invitations WHERE room_id=?", (room_id,))
            return
        voice = (key.key, key.epoch, key.since, key.rotate_at) if key else (None,) * 4
        self._db.execute(
            f"INSERT OR REPLACE INTO rooms ({_ROOM_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            (
                r.room_id, r.subject, r.host_id, r.max_seats, r.created_at, r.version,
                r.updated_at, r.closed_at, int(r.retained_cleared), *voice,
            ),
        )  # fmt: skip

    def _write_member(self, m: MemberRecord | None, room_id: str, user_id: str) -> None:
        if m is None:
            self._db.execute(
                "DELETE FROM members WHERE room_id=? AND user_id=?", (room_id, user_id)
            )
            return
        self._db.execute(
            "INSERT OR REPLACE INTO members VALUES (?,?,?,?,?,?,?,?)",
            (
                room_id, m.user_id, m.name, m.role.value, m.joined_at, int(m.mic_on),
                m.raised_at, m.onstage_at,
            ),
        )  # fmt: skip

    def _write_invitation(self, i: Invitation | None, invitation_id: str) -> None:
        if i is None:
            self._db.execute("DELETE FROM invitations WHERE invitation_id=?", (invitation_id,))
            return
        self._db.execute(
            "INSERT OR REPLACE INTO invitations VALUES (?,?,?,?,?,?,?)",
            (
                i.invitation_id, i.room_id, i.inviter_id, i.invitee_id, i.created_at,
                i.expires_at, i.state.value,
            ),
        )  # fmt: skip


def _private(path: Path) -> None:
    """Create ``path`` mode 0600 if missing; otherwise drop group/other access."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Not ours to change (a shared deployment)? Keep working.
            with contextlib.suppress(PermissionError):
                path.chmod(mode & 0o700)
        return
    os.close(fd)
