"""The janitor's bookkeeping: one clear per topic per batch, counts per user, and at
most one log line a minute whatever the flood."""

from __future__ import annotations

from collections import Counter

import pytest

from appliance.protocol import topics
from appliance.server.janitor import LOG_EVERY_S, Janitor


def test_clears_once_per_batch_counts_per_user_and_logs_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    cleared: list[str] = []
    counters: Counter[str] = Counter()
    janitor = Janitor(cleared.append, counters, monotonic=lambda: now[0])
    req, frame = topics.request("mallory", "login"), topics.audio("r1", "eve")
    for _ in range(500):
        janitor.found(req, b"{}")
    janitor.found(frame, b"\x01")
    janitor.found(topics.request("bob", "x"), b"")  # an empty retained message is a clear
    assert janitor.pending
    janitor.flush()
    assert cleared == [req, frame] and not janitor.pending
    assert counters["retained_cleared"] == 501
    assert janitor.by_user == {"mallory": 500, "eve": 1}
    assert len(caplog.records) == 1 and "mallory" in caplog.records[0].message
    now[0] += LOG_EVERY_S
    janitor.found(frame, b"\x01")
    assert len(caplog.records) == 2 and "501 retained" in caplog.records[1].message  # since
