"""Inbox pushes, published in order, a slice at a time, with few awaiting their PUBACK.

A voice-key rotation in a room of 5,000 members is 5,000 ``media_key`` pushes. Handed
to paho in one go they cost far more than their publishing: paho holds every QoS 1
message past the broker's window in its own queue, and on each PUBACK walks its whole
table of unacknowledged messages to find the next one to send, so a burst of n costs
n * window steps (a rotation to 3,000 members held the server's loop for ~1 s, and a
paced join storm's p99 went from a few ms to ~700 ms). The outbox instead

* keeps all pushes in one queue, so each user still gets its pushes in the order they
  were made (answers to requests are not queued here: they go out at once);
* hands paho at most :data:`WINDOW` pushes awaiting their PUBACK, so paho never queues
  and its walk stays short;
* publishes at most :data:`SLICE` per pass of the event loop, so the answers to requests
  that arrive meanwhile go out between the slices.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

SLICE = 128  # pushes per pass of the event loop: a few ms of publishing
WINDOW = 128  # pushes awaiting their PUBACK (the broker grants the server far more)

Publish = Callable[[str, bytes], int | None]
"""Publish at QoS 1; the message id whose PUBACK :meth:`Outbox.acknowledged` will be
told of, or None if the client refused the message (nothing will be acknowledged)."""


class Outbox:
    """A FIFO of ``(topic, payload)`` QoS 1 publishes, drained as the window allows."""

    def __init__(
        self,
        publish: Publish,
        loop: asyncio.AbstractEventLoop,
        *,
        slice_size: int = SLICE,
        window: int = WINDOW,
    ) -> None:
        self._publish = publish
        self._loop = loop
        self._slice = slice_size
        self._window = window
        self._queue: deque[tuple[str, bytes]] = deque()
        self._unacked: set[int] = set()
        self._scheduled = False
        self._online = False  # nothing is handed over while there is no connection

    @property
    def pending(self) -> int:
        """Pushes not yet handed to the MQTT client."""
        return len(self._queue)

    def send(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Queue ``messages`` behind everything queued before; what the window and the
        slice allow goes out now (a small outcome, the usual case, all of it)."""
        self._queue.extend(messages)
        if not self._scheduled:
            self._drain()

    def acknowledged(self, mid: int) -> None:
        """The broker acknowledged message ``mid`` (any message of the client: those
        that are not ours are ignored)."""
        if mid in self._unacked:
            self._unacked.discard(mid)
            self._schedule()

    def connected(self) -> None:
        """A (new) connection: paho resends what was unacknowledged on its own, and its
        acknowledgements may never name the old ids; start the window afresh."""
        self._online = True
        self._unacked.clear()
        self._schedule()

    def disconnected(self) -> None:
        """No connection: keep the queue here rather than in paho's."""
        self._online = False

    def flush(self) -> None:
        """Hand everything queued to the client (at shutdown)."""
        while self._queue:
            self._publish(*self._queue.popleft())

    def _schedule(self) -> None:
        if self._queue and self._online and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if not self._online:
            return
        room = min(self._slice, self._window - len(self._unacked), len(self._queue))
        for _ in range(max(0, room)):
            mid = self._publish(*self._queue.popleft())
            if mid is not None:
                self._unacked.add(mid)
        if len(self._unacked) < self._window:
            self._schedule()  # more queued than a slice: the rest on the next pass
