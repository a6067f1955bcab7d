"""SQLite persistence of the room service (WAL mode): the embedded default store.

The service holds every record, loaded at start-up; the store writes what
:attr:`RoomService.dirty` names in one transaction per batch of requests, before any
reply of that batch is sent: a reply is a promise that the change survives a crash.
``synchronous=NORMAL`` makes a commit durable against a killed process (the WAL is in
the OS page cache) without an fsync per commit; a power cut may lose the last commits,
which clients see as unanswered requests and retry.

The database holds the rooms' voice keys (PROTOCOL.md 6.1), so it is created mode 0600
and an existing one loses any group/other access when opened (SQLite gives its -wal
and -shm files the database's mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.server import schema
from appliance.server.domain import Invitation, InvitationState, MemberRecord, Room, Session
from appliance.server.rules import RoomService
from appliance.server.schema import INVITATION_COLUMNS, MEMBER_COLUMNS, ROOM_COLUMNS
from appliance.server.store import Scope, StoreError, TimerDuty, Unit
from appliance.server.voicekeys import RoomKey

SCHEMA_VERSION = schema.SCHEMA_VERSION


class _Unremembered:
    """A single instance's replays are the server's in-memory cache: nothing here."""

    def recall(self, key: bytes) -> bytes | None:
        return None

    def remember(self, key: bytes, response: bytes, now: float) -> None:
        pass


class SqliteStore:
    """Loads a :class:`RoomService` from SQLite and writes its changes back."""

    shared = False
    share_group = None
    owns_timers = True
    instances = 1

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
            self._db.executescript(schema.script(1, "sqlite"))  # version 1's tables
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step: a crash mid-migration leaves the old version.
            self._db.executescript(
                f"BEGIN; {schema.script(target, 'sqlite')} PRAGMA user_version={target}; COMMIT;"
            )

    # ------------------------------------------------------------ the store protocol

    @contextlib.contextmanager
    def scope(self, service: RoomService, scope: Scope) -> Iterator[Unit]:
        """Everything is in ``service`` already; changes wait for :meth:`flush`."""
        yield _Unremembered()

    def timers(self, service: RoomService, now: float) -> TimerDuty:
        """The one instance owns the timers: one scope, the whole service."""
        return TimerDuty([Scope()])

    def room(self, service: RoomService, room_id: str) -> Room | None:
        """The room as the service holds it."""
        return service.rooms.get(room_id)

    def published_rooms(self, service: RoomService) -> list[str]:
        """Every room whose retained state has not been cleared."""
        return [r.room_id for r in service.rooms.values() if not r.retained_cleared]

    def watch_rooms(self, on_changed: Callable[[str], None]) -> None:
        """One instance: it publishes its own changes."""

    # ------------------------------------------------------------ load

    def load_into(self, service: RoomService) -> None:
        """Fill an empty ``service`` with everything stored."""
        db = self._db
        for user_id, name, logged_in_at in db.execute(
            "SELECT user_id, name, logged_in_at FROM sessions"
        ):
            service.sessions[user_id] = Session(user_id, name, logged_in_at, logged_in_at)
        rows = db.execute(f"SELECT {ROOM_COLUMNS} FROM rooms ORDER BY created_at, room_id")  # noqa: S608
        for row in rows:
            loaded = schema.room_of(row)
            service.rooms[loaded.room.room_id] = loaded.room
            if loaded.key is not None:
                service.voice.restore(loaded.room.room_id, loaded.key)
        self._load_members(service)
        for row in db.execute(f"SELECT {INVITATION_COLUMNS} FROM invitations"):  # noqa: S608
            invitation = schema.invitation_of(row)
            service.invitations[invitation.invitation_id] = invitation
            if invitation.state is InvitationState.OPEN:
                service.open_invitation_of[invitation.invitee_id] = invitation.invitation_id

    def _load_members(self, service: RoomService) -> None:
        rows = self._db.execute(
            f"SELECT {MEMBER_COLUMNS} FROM members WHERE gone = 0 ORDER BY joined_at, user_id"  # noqa: S608
        ).fetchall()
        for row in rows:
            room = service.rooms.get(row[0])
            if room is None:
                continue
            member = schema.member_of(row)
            room.members[member.user_id] = member
            if member.user_id in service.sessions:
                service.sessions[member.user_id].room_id = room.room_id
        for room in service.rooms.values():
            schema.arrange(room)

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
            "INSERT OR REPLACE INTO sessions (user_id, name, logged_in_at, last_seen)"
            " VALUES (?,?,?,?)",
            (s.user_id, s.name, s.logged_in_at, s.last_seen),
        )

    def _write_room(self, r: Room | None, room_id: str, key: RoomKey | None) -> None:
        if r is None:
            self._db.execute("DELETE FROM rooms WHERE room_id=?", (room_id,))
            self._db.execute("DELETE FROM members WHERE room_id=?", (room_id,))
            self._db.execute("DELETE FROM invitations WHERE room_id=?", (room_id,))
            return
        self._db.execute(
            f"INSERT OR REPLACE INTO rooms ({ROOM_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            schema.room_values(r, key),
        )

    def _write_member(self, m: MemberRecord | None, room_id: str, user_id: str) -> None:
        if m is None:
            self._db.execute(
                "DELETE FROM members WHERE room_id=? AND user_id=?", (room_id, user_id)
            )
            return
        self._db.execute(
            f"INSERT OR REPLACE INTO members ({MEMBER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",  # noqa: S608
            schema.member_values(room_id, m),
        )

    def _write_invitation(self, i: Invitation | None, invitation_id: str) -> None:
        if i is None:
            self._db.execute("DELETE FROM invitations WHERE invitation_id=?", (invitation_id,))
            return
        self._db.execute(
            f"INSERT OR REPLACE INTO invitations ({INVITATION_COLUMNS}) VALUES (?,?,?,?,?,?,?)",  # noqa: S608
            schema.invitation_values(i),
        )


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
