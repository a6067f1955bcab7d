"""What stands between the broker and the rules: rate limits and duplicate requests.

Pure code on an injected clock, so a flood is a fast unit test.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import Enum

from appliance.protocol.models import RATE_LIMIT_PER_S


class Verdict(Enum):
    """What to do with a request that arrived."""

    ALLOW = "allow"
    REJECT = "reject"  # answer 429
    DROP = "drop"  # over the limit so far that even a 429 costs too much


@dataclass(slots=True)
class _Window:
    accepted: deque[float]
    rejected: deque[float]


class RateLimiter:
    """At most ``per_second`` requests in any one-second window per user (exact, not a
    token bucket: a bucket lets twice the rate through across a window boundary).

    Past the limit the first ``per_second`` refusals in a window are answered 429;
    the rest of a flood is dropped so a flooding client costs one counter bump each.
    """

    def __init__(self, per_second: int = RATE_LIMIT_PER_S, window_s: float = 1.0) -> None:
        self.limit = per_second
        self.per_second = per_second
        self.window_s = window_s
        self._users: dict[str, _Window] = {}

    def share(self, instances: int) -> None:
        """Enforce this instance's share of the limit when ``instances`` servers take
        requests from one shared subscription: the broker deals each user's requests
        out among them in turn, so shares of ``limit / instances`` add up to the limit."""
        per_second = max(1, -(-self.limit // max(1, instances)))
        if per_second != self.per_second:
            self.per_second = per_second
            self._users.clear()  # windows are sized by the old share

    def check(self, user_id: str, now: float) -> Verdict:
        """Count one request from ``user_id`` at ``now`` and say what to do with it."""
        window = self._users.get(user_id)
        if window is None:
            window = _Window(deque(maxlen=self.per_second), deque(maxlen=self.per_second))
            self._users[user_id] = window
        if self._has_room(window.accepted, now):
            window.accepted.append(now)
            return Verdict.ALLOW
        if self._has_room(window.rejected, now):
            window.rejected.append(now)
            return Verdict.REJECT
        return Verdict.DROP

    def _has_room(self, times: deque[float], now: float) -> bool:
        return len(times) < self.per_second or now - times[0] >= self.window_s

    def prune(self, now: float) -> None:
        """Forget users idle for a whole window (bounded memory)."""
        idle = [
            uid
            for uid, w in self._users.items()
            if not w.accepted or now - w.accepted[-1] >= self.window_s
        ]
        for uid in idle:
            del self._users[uid]


class ReplayCache:
    """Answers a repeated request (same user, correlation data, method and payload)
    with the response already given, without applying it twice.

    QoS 1 is at-least-once, and a client may resend a request whose answer it missed.
    Keys include a digest of the payload, so a client that reuses correlation data for
    a different request is never given a stale answer.
    """

    def __init__(self, ttl_s: float = 60.0, max_entries: int = 20_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    @staticmethod
    def key(user_id: str, correlation: bytes, method: str, payload: bytes) -> bytes:
        """The cache key of one request."""
        h = hashlib.blake2b(digest_size=16)
        for part in (user_id.encode(), correlation, method.encode(), payload):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def get(self, key: bytes, now: float) -> bytes | None:
        """The response given to this request, if still remembered."""
        entry = self._entries.get(key)
        if entry is None or now - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, key: bytes, response: bytes, now: float) -> None:
        """Remember the response to a request."""
        self._entries[key] = (now, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest[0] <= self.ttl_s:
                break
            self._entries.popitem(last=False)
