"""Room-state publishing, coalesced per room.

A throttle, not a delay: an isolated change is published at once; changes that
follow within ``min_interval_s`` wait for the interval to end and then go out as one
publish of the latest version. A burst therefore costs at most one publish per
interval per room, and always ends on the newest state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

MIN_INTERVAL_S = 0.05

PublishFn = Callable[[str, bool], None]  # (room_id, clear) -> None


class Timer(Protocol):
    """A cancellable scheduled call (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the publisher needs of an event loop (an asyncio loop is one)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[str], None], arg: str, /) -> Timer: ...


class RoomStatePublisher:
    """Decides when each room's retained state is (re)published."""

    def __init__(
        self,
        publish: PublishFn,
        loop: Scheduler | asyncio.AbstractEventLoop,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self._publish = publish
        self._loop = loop
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}
        self._scheduled: dict[str, Timer] = {}

    def changed(self, room_id: str) -> None:
        """``room_id`` has a new version to publish."""
        if room_id in self._scheduled:
            return  # the scheduled publish will carry the newest version
        wait = self._last.get(room_id, -1e9) + self.min_interval_s - self._loop.time()
        if wait <= 0:
            self._send(room_id)
        else:
            self._scheduled[room_id] = self._loop.call_later(wait, self._send, room_id)

    def clear(self, room_id: str) -> None:
        """Remove ``room_id``'s retained state (publish an empty retained message)."""
        handle = self._scheduled.pop(room_id, None)
        if handle is not None:
            handle.cancel()
        self._last.pop(room_id, None)
        self._publish(room_id, True)

    def _send(self, room_id: str) -> None:
        self._scheduled.pop(room_id, None)
        self._last[room_id] = self._loop.time()
        self._publish(room_id, False)
