"""The start-up room plan: what ``[room]`` asks for once the device is online.

``host`` creates a room, ``join`` with a room id joins it, ``join`` without one looks
for the first open room (every 1 s doubling to 10 s while there is none), ``idle``
waits for ``PUT /room``. The plan *settles* when its first step has an outcome; the
daemon sends READY=1 only then (docs/device.md, start-up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from appliance.device.effects import ApiReply
from appliance.device.events import CreateRequested, Event, JoinRequested, RoomListRequested
from appliance.device.settings import ApplianceSettings
from appliance.protocol.models import Code

log = logging.getLogger("gochat.device")

FIRST_ROOM_POLL_S = 1.0
"""Join mode without a room id: first wait before looking for an open room again."""
MAX_ROOM_POLL_S = 10.0
LIST_TIMEOUT_S = 15.0
"""How long one look at the room list may take."""

Call = Callable[[Callable[[int], Event], float | None], Awaitable[ApiReply]]
"""Feed a ticketed event to the machine and await its reply (``Daemon.call``)."""


class Machine(Protocol):
    """What the plan reads of the daemon."""

    @property
    def has_target(self) -> bool:
        """Whether the person already wants a room (then the plan stands down)."""
        ...

    async def online(self) -> None:
        """Return once the device is online (logged in)."""


class RoomPlan:
    """Runs the ``[room]`` step once; :attr:`settled` tells the daemon READY may go."""

    def __init__(self, settings: ApplianceSettings, call: Call, device: Machine) -> None:
        self._settings = settings
        self._call = call
        self._device = device
        self.settled = settings.room.mode == "idle"
        self.on_settled: Callable[[], None] = lambda: None

    async def run(self) -> None:
        """Carry out the plan (a task of the daemon; cancelled at shutdown)."""
        room = self._settings.room
        try:
            if room.mode == "host":
                subject = self._settings.subject
                reply = await self._call(lambda t: CreateRequested(subject, ticket=t), None)
                self._settle(f"hosting {subject!r}", reply)
            elif room.mode == "join" and room.room_id:
                reply = await self._call(joiner(room.room_id), None)
                self._settle(f"joining {room.room_id}", reply)
            elif room.mode == "join":
                await self._join_first_open_room()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the start-up room step failed")
            self._settle_now()

    async def _join_first_open_room(self) -> None:
        delay = FIRST_ROOM_POLL_S
        while not self._device.has_target:
            await self._device.online()
            listed = await self._call(RoomListRequested, LIST_TIMEOUT_S)
            room_id = first_room(listed)
            if room_id is not None and not self._device.has_target:
                reply = await self._call(joiner(room_id), None)
                self._settle(f"joining the first open room {room_id}", reply)
                if reply.code == Code.OK:
                    return
            elif listed.code == Code.OK and not self.settled:
                log.info("no open room yet; waiting for one")
                self._settle_now()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_ROOM_POLL_S)

    def _settle(self, what: str, reply: ApiReply) -> None:
        if reply.code == Code.OK:
            log.info("%s: done", what)
        else:
            log.warning("%s: %d %s", what, reply.code, reply.message)
        self._settle_now()

    def _settle_now(self) -> None:
        self.settled = True
        self.on_settled()


def joiner(room_id: str) -> Callable[[int], Event]:
    """A ticketed :class:`JoinRequested` maker for ``room_id``."""
    return lambda ticket: JoinRequested(room_id, ticket=ticket)


def first_room(reply: ApiReply) -> str | None:
    """The first room of a ``get_room_list`` reply (None: no open room, or a failure)."""
    if reply.code != Code.OK or reply.data is None:
        return None
    rooms = reply.data.get("rooms")
    if not isinstance(rooms, list) or not rooms or not isinstance(rooms[0], dict):
        return None
    first: dict[str, object] = rooms[0]
    room_id = first.get("room_id")
    return room_id if isinstance(room_id, str) else None
