"""The seam between the room rules and their storage: :class:`Store`, two engines.

The rules (:class:`~appliance.server.rules.RoomService`) work on records in memory.
A store decides what those records are when a request is applied and when its changes
become durable, so the server has one code path for both engines:

* :class:`~appliance.server.sqlite_store.SqliteStore` (the embedded default): the
  service holds everything, loaded at start-up; :meth:`Store.scope` is free and
  :meth:`Store.flush` commits a batch of requests at once (group commit).
* :class:`~appliance.server.pg_store.PostgresStore` (``[store] url``): several
  instances share the database. :meth:`Store.scope` is one transaction: it locks the
  requester's session and the rooms the request names, loads them fresh into the
  service, and commits what the rules changed when the scope ends; the timers run
  where the timer lease is held.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from appliance.protocol import models as m
from appliance.server.domain import Room
from appliance.server.rules import RoomService


class StoreError(RuntimeError):
    """The database cannot be opened or is of an unknown schema."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What one request, presence message or timer step may read and change.

    ``user_id``: the requester (its session is locked and loaded, and the room it is
    in). ``room_ids``: rooms the request names. ``every_room``: all open rooms (the
    room list), read without locks. ``changes``: False for a request that changes
    nothing but its session's last sign of life (its answer is not remembered).
    ``now``: the time of that sign of life. ``replay_key``: the request's (the store
    looks its answer up with the session's lock).
    """

    user_id: str | None = None
    room_ids: tuple[str, ...] = ()
    every_room: bool = False
    changes: bool = True
    now: float = 0.0
    replay_key: bytes | None = None

    @classmethod
    def of_request(cls, user_id: str, request: m.Request, now: float, key: bytes) -> Scope:
        """The scope of ``request`` from ``user_id`` at ``now``, replay key ``key``."""
        room_id: str | None = getattr(request, "room_id", None)
        changes = request.method not in READS
        return cls(
            user_id=user_id,
            room_ids=(room_id,) if room_id else (),
            every_room=request.method is m.Method.GET_ROOM_LIST,
            changes=changes,
            now=now,
            replay_key=key if changes else None,
        )


READS = frozenset({m.Method.HEARTBEAT, m.Method.GET_ROOM_LIST, m.Method.GET_ATTENDEE_LIST})
"""Methods that change nothing (but the session's last sign of life): answering a
retry again is as good as remembering the first answer."""


class Unit(Protocol):
    """The open scope: answers remembered by replay key, across instances."""

    def recall(self, key: bytes) -> bytes | None:
        """The answer already given to the request with this replay key, if any."""
        ...

    def remember(self, key: bytes, response: bytes, now: float) -> None:
        """Keep ``response`` as the answer to ``key`` (committed with the change)."""
        ...


@dataclass(slots=True)
class TimerDuty:
    """What the timers must do now: a scope per due item (empty unless this instance
    owns the timers); ``taken_over``: ownership was just gained (republish every
    room's state)."""

    scopes: list[Scope] = field(default_factory=list)
    taken_over: bool = False


class Store(Protocol):
    """What the server needs of a store (both engines implement it)."""

    shared: bool
    """Several instances may use this store: room states are published by the timer
    owner, from the commits' notifications, so versions never go back."""

    @property
    def share_group(self) -> str | None:
        """The MQTT 5 shared subscription group of the instances (None: one instance,
        a plain subscription). A secret: the broker's ACL cannot stop a client from
        joining a group, and a member that may not read a request makes the broker
        drop it."""
        ...

    @property
    def owns_timers(self) -> bool:
        """Whether this instance runs the timers and publishes room states."""
        ...

    @property
    def instances(self) -> int:
        """How many server instances are alive on this store (at least this one)."""
        ...

    def load_into(self, service: RoomService) -> None:
        """Fill an empty ``service`` at start-up (nothing, for a shared store)."""
        ...

    def scope(self, service: RoomService, scope: Scope) -> AbstractContextManager[Unit]:
        """Make ``service`` hold what ``scope`` names, fresh; on a clean exit, make what
        the rules changed durable (or, for a batching store, due at :meth:`flush`). An
        exception undoes it all and propagates."""
        ...

    def flush(self, service: RoomService) -> None:
        """Commit the changes of the batch (a store that commits per scope: nothing)."""
        ...

    def timers(self, service: RoomService, now: float) -> TimerDuty:
        """Renew or take the timer lease; the scopes in which ``service.tick`` is due."""
        ...

    def room(self, service: RoomService, room_id: str) -> Room | None:
        """The latest committed ``room_id`` (for publishing its state), or None."""
        ...

    def published_rooms(self, service: RoomService) -> list[str]:
        """Rooms whose retained state should be on the broker (republished on demand)."""
        ...

    def watch_rooms(self, on_changed: Callable[[str], None]) -> None:
        """Call ``on_changed(room_id)`` on the event loop after every committed change
        of a room, whichever instance made it (a store with one user: never)."""
        ...

    def close(self) -> None:
        """Release the database."""
        ...
