"""PostgreSQL persistence shared by several server instances (``[store] url``).

The database is the truth; an instance keeps no state that a request relies on. Each
request is one transaction (:meth:`PostgresStore.scope`):

1. lock the requester's session row, find the open room it is in;
2. lock the rows of that room and of the rooms the request names, in ``room_id``
   order (so two transactions never wait on each other in a cycle);
3. load what it locked into the service, fresh: a room this instance already holds at
   the same ``rev`` is reused as it is, one at an older ``rev`` catches up by reading
   only the member rows written since (``schema``: ``rev``, ``gone``), so a join storm
   does not reread thousands of members per join;
4. run the rules, write what they changed with the room's ``rev`` raised, remember the
   answer by replay key, ``NOTIFY`` the changed rooms, commit (without waiting for
   the WAL flush: the row locks are released at once);
5. before the answers of a batch go out, :meth:`PostgresStore.flush` waits for one
   WAL flush, which covers every commit before it (group commit, as on SQLite).

Every change to a room therefore serialises on that room's row, and versions only go
up. Room states are published by the instance that owns the timers, from the
notifications (PostgreSQL delivers them in commit order), reading the room as
committed: one publisher reading the latest state, so the retained state never goes
back. The timers (invitation expiry, session TTL, retained-state clearing, deferred
key rotations) run where the lease ``timers`` is held: renewed every
:data:`LEASE_RENEW_S`, it lapses :data:`LEASE_TTL_S` after its holder stops renewing
(by PostgreSQL's clock), and any other instance then takes it.

Driver: psycopg 3 (``psycopg[binary]``): synchronous, which fits a server that
handles each message where it is read on one thread; libpq underneath, with its
notifications; statements prepared on the server after a few uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from appliance.server import schema
from appliance.server.domain import Invitation, MemberRecord, Room, Session
from appliance.server.rules import TOMBSTONE_TTL_S, RoomService
from appliance.server.schema import INVITATION_COLUMNS, MEMBER_COLUMNS, ROOM_COLUMNS
from appliance.server.store import Scope, StoreError, TimerDuty, Unit
from appliance.server.voicekeys import RoomKey

log = logging.getLogger("gochat.server.store")

LEASE = "timers"
LEASE_TTL_S = 3.0
LEASE_RENEW_S = 1.0
REPLY_TTL_S = 60.0  # as long as the in-memory replay cache remembers
PRUNE_EVERY_S = 10.0
DUE_BATCH = 200  # due items handled per tick, at most (the rest on the next)
CHANNEL = "gochat_rooms"
_MIGRATION_LOCK = 0x6763_6861  # pg_advisory_xact_lock key: one migrator at a time
_ROOM_SELECT = f"SELECT {ROOM_COLUMNS}, rev FROM rooms"  # noqa: S608


@dataclass(slots=True)
class _Held:
    """A room as committed at ``rev``, kept between requests."""

    rev: int
    room: Room
    key: RoomKey | None
    invitations: list[Invitation] = field(default_factory=list)


@dataclass(slots=True)
class _Begun:
    """What a scope loaded: each room's ``rev`` and version then, and the requester's
    last sign of life as stored."""

    revs: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    invitation_rooms: dict[str, str] = field(default_factory=dict)
    last_seen: float | None = None


class _Replies:
    """Answers by replay key, in the scope's transaction. The scope's own key was
    looked up with the session's lock (``recalled``)."""

    def __init__(self, conn: psycopg.Connection[Any], scope: Scope, recalled: bytes | None) -> None:
        self._conn = conn
        self._scope = scope
        self._recalled = recalled

    def recall(self, key: bytes) -> bytes | None:
        if not self._scope.changes:
            return None
        if key == self._scope.replay_key:
            return self._recalled
        row = self._conn.execute(
            "SELECT response FROM replies WHERE replay_key = %s", (key,)
        ).fetchone()
        return bytes(row[0]) if row else None

    def remember(self, key: bytes, response: bytes, now: float) -> None:
        if self._scope.changes:
            self._conn.execute(
                "INSERT INTO replies (replay_key, response, at) VALUES (%s, %s, %s)"
                " ON CONFLICT (replay_key) DO NOTHING",
                (key, response, now),
            )


class PostgresStore:
    """Rooms in PostgreSQL, shared by every instance that names the same ``url``."""

    shared = True

    def __init__(
        self, url: str, instance: str, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._url = url
        self.instance = instance
        self._monotonic = monotonic
        self._held: dict[str, _Held] = {}
        self._owner = False
        self._unflushed = False  # commits made without waiting for the WAL flush
        self._instances = 1
        self._next_renew = 0.0
        self._next_prune = 0.0
        self._listener: psycopg.Connection[Any] | None = None
        self._on_changed: Callable[[str], None] | None = None
        self._conn = self._connect()
        self._migrate()
        self._share_group = self._deployment_group()

    @property
    def owns_timers(self) -> bool:
        """Whether this instance held the timer lease at its last renewal."""
        return self._owner

    @property
    def share_group(self) -> str | None:
        """The instances' shared subscription group (made by the first one)."""
        return self._share_group

    def _deployment_group(self) -> str:
        with self._conn.transaction():
            self._conn.execute("LOCK TABLE deployment IN EXCLUSIVE MODE")
            row = self._conn.execute("SELECT share_group FROM deployment").fetchone()
            if row is not None:
                return str(row[0])
            group = f"gochat-{secrets.token_hex(12)}"
            self._conn.execute("INSERT INTO deployment VALUES (%s)", (group,))
            return group

    @property
    def instances(self) -> int:
        """Instances whose presence lease was live at the last renewal."""
        return self._instances

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            # Commits do not wait for the WAL flush: a change's answer waits for one
            # flush per batch instead (flush()), and a sign of life may be lost with
            # the database's power (it only shortens a session's TTL).
            conn.execute("SET synchronous_commit = off")
            return conn
        except psycopg.Error as exc:
            # libpq's message names host and database, never the password.
            raise StoreError(f"cannot open store: {str(exc).strip()}") from None

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection, opened again if it broke (the next request retries)."""
        if self._conn.closed or self._conn.broken:
            log.warning("store connection lost: reconnecting")
            self._conn = self._connect()
        return self._conn

    def _migrate(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = self._conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if not 0 <= version <= schema.SCHEMA_VERSION:
                raise StoreError(f"store has schema {version}, expected {schema.SCHEMA_VERSION}")
            for target in range(version + 1, schema.SCHEMA_VERSION + 1):
                for statement in _statements(schema.script(target, "postgresql")):
                    self._conn.execute(statement)
            self._conn.execute("DELETE FROM schema_version")
            self._conn.execute("INSERT INTO schema_version VALUES (%s)", (schema.SCHEMA_VERSION,))

    def close(self) -> None:
        """Close the connections (the lease lapses by itself)."""
        if self._listener is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
        self._conn.close()

    # ------------------------------------------------------------ the store protocol

    def load_into(self, service: RoomService) -> None:
        """Nothing: each scope loads what it needs."""

    def flush(self, service: RoomService) -> None:
        """Make the batch's commits durable: one transaction that waits for the WAL
        flush, which covers every commit before it (group commit: the answers of a
        batch wait for one flush, not one each)."""
        if not self._unflushed:
            return
        conn = self._connection()
        with conn.pipeline(), conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute("SELECT txid_current()")  # an xid: a commit record to flush
        self._unflushed = False

    @contextlib.contextmanager
    def scope(self, service: RoomService, scope: Scope) -> Iterator[Unit]:
        """A change: one transaction (lock and load, yield to the rules, write and
        commit). A read (``scope.changes`` False): no transaction and no lock, one
        statement that records the sign of life and reads the rooms, then the rules.

        Pipeline mode: statements go out together and wait only where a result is
        read, so a change costs three round trips (four when a room moved on
        elsewhere) and a heartbeat one."""
        conn = self._connection()
        service.forget()
        begun = _Begun()
        try:
            with conn.pipeline():
                if not scope.changes:
                    self._load_read(conn, service, scope, begun)
                    yield _Replies(conn, scope, None)
                    self._write(conn, service, scope, begun)
                    return
                with conn.transaction():
                    recalled = self._load(conn, service, scope, begun)
                    yield _Replies(conn, scope, recalled)
                    self._write(conn, service, scope, begun)
            self._unflushed = True
        except BaseException:
            for room_id in begun.revs:  # the rules may have half-changed these
                self._held.pop(room_id, None)
            raise

    def timers(self, service: RoomService, now: float) -> TimerDuty:
        """Renew (or take) the lease when due; if held, the scopes of what is due."""
        duty = TimerDuty()
        if self._monotonic() >= self._next_renew:
            duty.taken_over = self._renew_lease(service, now)
            self._next_renew = self._monotonic() + LEASE_RENEW_S
        if not self._owner:
            return duty
        conn = self._connection()
        limits = service.limits
        due = {
            "now": now,
            "deadline": now - limits.session_ttl_s,
            "clear": now - limits.retained_clear_after_s,
            "tomb": now - TOMBSTONE_TTL_S,
            "n": DUE_BATCH,
        }
        users = conn.execute(
            "SELECT user_id FROM sessions WHERE last_seen <= %(deadline)s LIMIT %(n)s", due
        ).fetchall()
        rooms = conn.execute(
            "SELECT room_id FROM invitations WHERE (state = 'open' AND expires_at <= %(now)s)"
            " OR created_at <= %(tomb)s"
            " UNION SELECT room_id FROM rooms WHERE voice_rotate_at <= %(now)s"
            " OR (closed_at IS NOT NULL AND (closed_at <= %(tomb)s"
            " OR (retained_cleared = 0 AND closed_at <= %(clear)s)))"
            " LIMIT %(n)s",
            due,
        ).fetchall()
        duty.scopes = [Scope(user_id=u) for (u,) in users]
        duty.scopes += [Scope(room_ids=(r,)) for (r,) in rooms]
        if self._monotonic() >= self._next_prune:
            self._next_prune = self._monotonic() + PRUNE_EVERY_S
            conn.execute("DELETE FROM replies WHERE at < %s", (now - REPLY_TTL_S,))
        return duty

    def room(self, service: RoomService, room_id: str) -> Room | None:
        """The room as last committed (its row share-locked while it is read, so the
        members match the version)."""
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(f"{_ROOM_SELECT} WHERE room_id = %s FOR SHARE", (room_id,))
            found = row.fetchone()
            if found is None:
                self._held.pop(room_id, None)
                return None
            return self._refresh(conn, found).room

    def published_rooms(self, service: RoomService) -> list[str]:
        """Every room whose retained state has not been cleared."""
        rows = self._connection().execute(
            "SELECT room_id FROM rooms WHERE retained_cleared = 0 ORDER BY created_at"
        )
        return [room_id for (room_id,) in rows]

    def watch_rooms(self, on_changed: Callable[[str], None]) -> None:
        """Listen for committed room changes; pass them on while owning the timers."""
        self._on_changed = on_changed
        loop = asyncio.get_running_loop()
        try:
            self._listener = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            self._listener.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error:
            log.exception("cannot listen for room changes: retrying in 1 s")
            loop.call_later(1.0, self.watch_rooms, on_changed)
            return
        loop.add_reader(self._listener.fileno(), self._notified)
        self._owner = False  # the next renewal republishes everything (none was missed)

    def _notified(self) -> None:
        assert self._listener is not None
        pgconn = self._listener.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error:
            log.warning("room-change listener lost: listening again")
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            if self._on_changed is not None:
                self.watch_rooms(self._on_changed)
            return
        while (note := pgconn.notifies()) is not None:
            if self._owner and self._on_changed is not None:
                self._on_changed(note.extra.decode())

    # ------------------------------------------------------------ the lease

    def _renew_lease(self, service: RoomService, now: float) -> bool:
        """Renew or take the lease; True if it was just taken (not renewed)."""
        was_owner = self._owner
        conn = self._connection()
        with conn.transaction():
            old = conn.execute(
                "SELECT holder, expires_at, extract(epoch FROM clock_timestamp())::float8"
                " FROM leases WHERE name = %s FOR UPDATE",
                (LEASE,),
            ).fetchone()
            row = conn.execute(
                "INSERT INTO leases (name, holder, expires_at)"
                " VALUES (%(name)s, %(me)s,"
                " extract(epoch FROM clock_timestamp())::float8 + %(ttl)s)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE leases.holder = excluded.holder"
                " OR leases.expires_at < extract(epoch FROM clock_timestamp())::float8"
                " RETURNING holder",
                {"name": LEASE, "me": self.instance, "ttl": LEASE_TTL_S},
            ).fetchone()
            self._owner = row is not None
            if self._owner and old is not None and old[0] != self.instance:
                log.info("took the timers over from %s", old[0])
            if self._owner and (
                old is None or old[2] - old[1] > service.limits.heartbeat_interval_s
            ):
                # Nobody ran the timers for a while (every instance was down): sessions
                # could not show signs of life then, so their TTLs count from now.
                conn.execute("UPDATE sessions SET last_seen = %s WHERE last_seen < %s", (now, now))
            # Each instance's own lease says it is alive: the rate limit is shared out.
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at)"
                " VALUES (%(name)s, %(me)s,"
                " extract(epoch FROM clock_timestamp())::float8 + %(ttl)s)"
                " ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
                {"name": f"instance:{self.instance}", "me": self.instance, "ttl": LEASE_TTL_S},
            )
            (self._instances,) = conn.execute(
                "SELECT count(*) FROM leases WHERE name LIKE 'instance:%%'"
                " AND expires_at >= extract(epoch FROM clock_timestamp())::float8"
            ).fetchone() or (1,)
        return self._owner and not was_owner

    # ------------------------------------------------------------ load

    def _load(
        self, conn: psycopg.Connection[Any], service: RoomService, scope: Scope, begun: _Begun
    ) -> bytes | None:
        """Lock the requester's session, then (in ``room_id`` order) the rooms it names
        and the one it is in, and load them; the answer already given to the scope's
        replay key, if any. One round trip: each statement runs after the one before
        it has its locks."""
        user_id, named = scope.user_id, sorted(scope.room_ids)
        session = replies = None
        if user_id is not None:
            session = conn.execute(
                "SELECT name, logged_in_at, last_seen FROM sessions WHERE user_id = %s FOR UPDATE",
                (user_id,),
            )
            if scope.replay_key is not None:
                replies = conn.execute(
                    "SELECT response FROM replies WHERE replay_key = %s", (scope.replay_key,)
                )
        rooms = conn.execute(
            f"{_ROOM_SELECT} WHERE room_id = ANY(%(named)s) OR room_id IN"  # noqa: S608
            " (SELECT m.room_id FROM members m WHERE m.user_id = %(user)s AND m.gone = 0)"
            " ORDER BY room_id FOR UPDATE",
            {"named": named, "user": user_id},
        )
        row = session.fetchone() if session is not None else None
        if row is not None:
            self._open_session(service, user_id or "", row, begun)
        recalled = replies.fetchone() if replies is not None else None
        self._hold_all(conn, service, rooms.fetchall(), begun, user_id)
        return bytes(recalled[0]) if recalled else None

    def _load_read(
        self, conn: psycopg.Connection[Any], service: RoomService, scope: Scope, begun: _Begun
    ) -> None:
        """Record the requester's sign of life and read its rooms, unlocked."""
        user_id = scope.user_id
        if user_id is None:
            return
        rows = conn.execute(
            "WITH s AS (UPDATE sessions SET last_seen = GREATEST(last_seen, %(now)s)"  # noqa: S608
            " WHERE user_id = %(user)s RETURNING name, logged_in_at, last_seen)"
            " SELECT s.name, s.logged_in_at, s.last_seen, r.* FROM s LEFT JOIN LATERAL"
            f" ({_ROOM_SELECT} WHERE room_id = ANY(%(named)s) OR room_id IN"
            " (SELECT m.room_id FROM members m WHERE m.user_id = %(user)s AND m.gone = 0)"
            " ) r ON true",
            {"now": scope.now, "user": user_id, "named": list(scope.room_ids)},
        ).fetchall()
        if not rows:
            return  # not logged in: the rules answer 401
        self._open_session(service, user_id, rows[0][:3], begun)
        if scope.every_room:
            rooms = conn.execute(
                f"{_ROOM_SELECT} WHERE closed_at IS NULL ORDER BY created_at, room_id"
            ).fetchall()
        else:
            rooms = [r[3:] for r in rows if r[3] is not None]
        self._hold_all(conn, service, rooms, begun, user_id)

    @staticmethod
    def _open_session(
        service: RoomService, user_id: str, row: Sequence[Any], begun: _Begun
    ) -> None:
        """The session of a ``(name, logged_in_at, last_seen)`` row."""
        name, logged_in_at, last_seen = row[:3]
        seen = last_seen if last_seen is not None else logged_in_at
        service.sessions[user_id] = Session(user_id, name, logged_in_at, seen)
        begun.last_seen = seen

    def _hold_all(
        self,
        conn: psycopg.Connection[Any],
        service: RoomService,
        rows: Sequence[Sequence[Any]],
        begun: _Begun,
        user_id: str | None,
    ) -> None:
        """Put the rooms of ``rows`` into ``service``; the user's room is the open one
        it is a member of."""
        for row in rows:
            self._hold(conn, service, row, begun)
        session = service.sessions.get(user_id) if user_id is not None else None
        if session is not None:
            session.room_id = next(
                (
                    r.room_id
                    for r in service.rooms.values()
                    if not r.closed and user_id in r.members
                ),
                None,
            )

    def _hold(
        self,
        conn: psycopg.Connection[Any],
        service: RoomService,
        row: Sequence[Any],
        begun: _Begun,
    ) -> None:
        """Put a locked room, fresh, into ``service``."""
        held = self._refresh(conn, row)
        room = held.room
        service.rooms[room.room_id] = room
        begun.revs[room.room_id] = held.rev
        begun.versions[room.room_id] = room.version
        if held.key is not None:
            service.voice.restore(room.room_id, held.key)
        for invitation in held.invitations:
            service.invitations[invitation.invitation_id] = invitation
            begun.invitation_rooms[invitation.invitation_id] = room.room_id
            if invitation.state.value == "open":
                service.open_invitation_of[invitation.invitee_id] = invitation.invitation_id

    def _refresh(self, conn: psycopg.Connection[Any], row: Sequence[Any]) -> _Held:
        """The room of ``row`` (a :data:`_ROOM_SELECT` row) as committed, reusing what
        this instance holds of it."""
        loaded = schema.room_of(row)
        rev = int(row[-1])
        room_id = loaded.room.room_id
        held = self._held.get(room_id)
        if held is not None and held.rev == rev:
            return held
        # Both queries go out before either result is read: one round trip.
        since = held.rev if held is not None else -1
        changed = conn.execute(
            f"SELECT {MEMBER_COLUMNS}, gone FROM members WHERE room_id = %s AND rev > %s"  # noqa: S608 (column lists)
            " ORDER BY rev, joined_at, user_id",
            (room_id, since),
        )
        invitations = conn.execute(
            f"SELECT {INVITATION_COLUMNS} FROM invitations WHERE room_id = %s",  # noqa: S608 (column lists)
            (room_id,),
        )
        rows = changed.fetchall()
        if held is None:
            room = loaded.room
            live = sorted((r for r in rows if not r[8]), key=lambda r: (r[4], r[1]))
            room.members = {m.user_id: m for m in map(schema.member_of, live)}
            schema.arrange(room)
            held = _Held(rev, room, loaded.key)
        else:
            _catch_up(held.room, loaded.room, rows)
            held.rev, held.key = rev, loaded.key
        held.invitations = [schema.invitation_of(r) for r in invitations.fetchall()]
        self._held[room_id] = held
        return held

    # ------------------------------------------------------------ write

    def _write(
        self, conn: psycopg.Connection[Any], service: RoomService, scope: Scope, begun: _Begun
    ) -> None:
        dirty = service.dirty
        rooms = set(dirty.rooms) | {room_id for room_id, _ in dirty.members}
        for invitation_id in dirty.invitations:
            invitation = service.invitations.get(invitation_id)
            room_id = (
                invitation.room_id if invitation else begun.invitation_rooms.get(invitation_id)
            )
            if room_id is not None:
                rooms.add(room_id)
        for room_id in sorted(rooms):
            self._write_room(conn, service, room_id, begun)
        for user_id in dirty.sessions:
            self._write_session(conn, service.sessions.get(user_id), user_id)
        me = service.sessions.get(scope.user_id) if scope.user_id else None
        fresher = me is not None and (begun.last_seen is None or me.last_seen > begun.last_seen)
        if me is not None and fresher and me.user_id not in dirty.sessions:
            conn.execute(
                "UPDATE sessions SET last_seen = %s WHERE user_id = %s",
                (me.last_seen, me.user_id),
            )
        service.dirty = type(dirty)()

    def _write_room(
        self, conn: psycopg.Connection[Any], service: RoomService, room_id: str, begun: _Begun
    ) -> None:
        room = service.rooms.get(room_id)
        if room is None:
            for table in ("members", "invitations", "rooms"):
                conn.execute(f"DELETE FROM {table} WHERE room_id = %s", (room_id,))  # noqa: S608 (column lists)
            self._held.pop(room_id, None)
            return
        key = service.voice.keys.get(room_id)
        rev = begun.revs.get(room_id, 0) + 1
        values = (*schema.room_values(room, key), rev)
        if room_id in begun.revs:
            conn.execute(
                f"UPDATE rooms SET ({ROOM_COLUMNS}, rev) ="  # noqa: S608 (column lists)
                " (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) WHERE room_id = %s",
                (*values, room_id),
            )
        else:  # a new room: an id taken already fails the transaction (never overwrites)
            conn.execute(
                f"INSERT INTO rooms ({ROOM_COLUMNS}, rev)"  # noqa: S608 (column lists)
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                values,
            )
        self._write_members(conn, service, room, rev)
        self._write_invitations(conn, service, room_id)
        if room.version != begun.versions.get(room_id):
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, room_id))
        self._held[room_id] = _Held(
            rev,
            room,
            key,
            [i for i in service.invitations.values() if i.room_id == room_id],
        )

    @staticmethod
    def _write_members(
        conn: psycopg.Connection[Any], service: RoomService, room: Room, rev: int
    ) -> None:
        joined: list[tuple[Any, ...]] = []
        gone: list[tuple[Any, ...]] = []
        for room_id, user_id in service.dirty.members:
            if room_id != room.room_id:
                continue
            member = room.members.get(user_id)
            if member is None:
                gone.append((rev, room_id, user_id))
            else:
                joined.append((*schema.member_values(room_id, member), rev))
        with conn.cursor() as cur:
            if joined:
                cur.executemany(
                    f"INSERT INTO members ({MEMBER_COLUMNS}, rev, gone)"  # noqa: S608 (column lists)
                    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,0)"
                    " ON CONFLICT (room_id, user_id) DO UPDATE SET name = excluded.name,"
                    " role = excluded.role, joined_at = excluded.joined_at,"
                    " mic_on = excluded.mic_on, raised_at = excluded.raised_at,"
                    " onstage_at = excluded.onstage_at, rev = excluded.rev, gone = 0",
                    joined,
                )
            if gone:
                cur.executemany(
                    "UPDATE members SET gone = 1, rev = %s WHERE room_id = %s AND user_id = %s",
                    gone,
                )

    @staticmethod
    def _write_invitations(
        conn: psycopg.Connection[Any], service: RoomService, room_id: str
    ) -> None:
        for invitation_id in service.dirty.invitations:
            invitation = service.invitations.get(invitation_id)
            if invitation is None:
                conn.execute("DELETE FROM invitations WHERE invitation_id = %s", (invitation_id,))
            elif invitation.room_id == room_id:
                conn.execute(
                    f"INSERT INTO invitations ({INVITATION_COLUMNS})"  # noqa: S608 (column lists)
                    " VALUES (%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (invitation_id) DO UPDATE SET state = excluded.state",
                    schema.invitation_values(invitation),
                )

    @staticmethod
    def _write_session(conn: psycopg.Connection[Any], s: Session | None, user_id: str) -> None:
        if s is None:
            conn.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
            return
        conn.execute(
            "INSERT INTO sessions (user_id, name, logged_in_at, last_seen) VALUES (%s,%s,%s,%s)"
            " ON CONFLICT (user_id) DO UPDATE SET name = excluded.name,"
            " logged_in_at = excluded.logged_in_at, last_seen = excluded.last_seen",
            (s.user_id, s.name, s.logged_in_at, s.last_seen),
        )


def _catch_up(room: Room, row: Room, changed: Sequence[Sequence[Any]]) -> None:
    """Bring ``room`` up to ``row``: its fields, then the member rows (and ``gone``)
    written since it was held."""
    room.subject, room.host_id, room.max_seats = row.subject, row.host_id, row.max_seats
    room.version, room.updated_at = row.version, row.updated_at
    room.closed_at, room.retained_cleared = row.closed_at, row.retained_cleared
    rearrange = False
    for r in changed:
        member = schema.member_of(r)
        before = room.members.get(member.user_id)
        rearrange = rearrange or _placed(before) or (not r[8] and _placed(member))
        if r[8]:
            room.members.pop(member.user_id, None)
        else:
            room.members[member.user_id] = member
    if rearrange:
        schema.arrange(room)


def _placed(member: MemberRecord | None) -> bool:
    """Whether ``member`` holds a seat or a raised hand (``seats``/``hands`` list it)."""
    return member is not None and (member.seated or member.raised_at is not None)


def _statements(script: str) -> Iterable[str]:
    return (s.strip() for s in script.split(";") if s.strip())
