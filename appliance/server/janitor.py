"""The retained-message janitor: nothing retained may sit on a request or audio topic.

A client may publish a request or an audio frame with the retain flag (the broker
ACL cannot forbid it). Such a message would be delivered again to every new
subscriber: a request executed again after a server restart, a stale voice played to
every device joining the room. The server never acts on one (it subscribes to
requests with retain handling 2 and drops any request that carries the retain flag,
devices drop retained frames), and this janitor removes them: it clears every
retained message it is shown (an empty retained publish), counts it per user and
logs it, at most one line per :data:`LOG_EVERY_S`.

The server shows it the retained requests it drops, and sweeps both kinds of topic
(:data:`~appliance.protocol.topics.RETAINED_SWEEP`) on every connection and every
:data:`SWEEP_EVERY_S`: for :data:`SWEEP_WINDOW_S` the request subscription has retain
handling 0 and an audio subscription exists, so the broker sends what is retained.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from appliance.protocol import topics

log = logging.getLogger("gochat.server.janitor")

LOG_EVERY_S = 60.0
"""At most one log line per this many seconds (a flood of retained messages is a
counter, not a flood of log lines)."""
SWEEP_EVERY_S = 600.0
"""How often the server looks for retained messages that arrived while it was away."""
SWEEP_WINDOW_S = 2.0
"""How long a sweep subscription lives: the broker sends retained messages right
after the SUBACK."""


class Janitor:
    """Collects retained messages to clear; the server publishes the clears.

    ``clear(topic)`` publishes the empty retained message; the janitor calls it at
    most once per topic per :meth:`flush`, so a flood of retained publishes on one
    topic costs one clear per batch.
    """

    def __init__(
        self,
        clear: Callable[[str], None],
        counters: Counter[str],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clear = clear
        self._counters = counters
        self._monotonic = monotonic
        self._due: dict[str, str] = {}  # topic -> user, in arrival order
        self.by_user: Counter[str] = Counter()
        self._last_log = -LOG_EVERY_S
        self._unlogged = 0

    @property
    def pending(self) -> bool:
        """Whether clears wait for the next :meth:`flush`."""
        return bool(self._due)

    def found(self, topic: str, payload: bytes | bytearray) -> None:
        """A retained message was delivered on ``topic``: clear it (unless it is a clear)."""
        if not payload:
            return  # an empty retained message is itself a clear
        user = topics.retained_owner(topic) or "?"
        self._counters["retained_cleared"] += 1
        self.by_user[user] += 1
        self._due.setdefault(topic, user)
        self._unlogged += 1
        now = self._monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            log.warning(
                "cleared %d retained message(s); latest left by user %s on %s"
                " (retained requests and frames are never acted on)",
                self._unlogged,
                user,
                topic,
            )
            self._last_log = now
            self._unlogged = 0

    def flush(self) -> None:
        """Publish the clears collected since the last flush."""
        due, self._due = self._due, {}
        for topic in due:
            self._clear(topic)
