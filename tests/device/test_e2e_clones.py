"""Two appliances with one identity (a cloned SD card): the broker lets only one
session live, and the device thrown off (DISCONNECT 0x8E) shows the error, says why
in one log line and waits minutes rather than throwing the other off in turn."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from testbed.daemons import InProcessDaemon, wait_until
from testbed.server import RunningServer

CALM_S = 10.0
"""How long the settled pair is watched: several of the ordinary 1-8 s reconnects."""


def takeovers(device: InProcessDaemon) -> int:
    session = device.daemon.session
    return 0 if session is None else session.stats().get("takeovers", 0)


def test_two_daemons_with_one_identity_settle_with_one_online(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = daemons("pi-clone")
    first.wait_status(lambda s: s["connection"] == "online")
    second = daemons("pi-clone", start=False).start(wait_ready=False)
    pair = (first, second)

    def settled() -> bool:
        online = [d for d in pair if d.status.get("connection") == "online"]
        return len(online) == 1 and sum(takeovers(d) for d in pair) >= 1

    wait_until(settled, bool, timeout_s=30, what="one of the clones online")
    count = sum(takeovers(d) for d in pair)
    winner = next(d for d in pair if d.status.get("connection") == "online")
    loser = first if winner is second else second
    assert loser.panel_patterns()["status"] == "blink-fast"  # the error pattern
    lines = [r for r in caplog.records if "another device is using the identity" in r.message]
    assert len(lines) == count and "pi-clone" in lines[0].message
    # The loser waits a minute or more before it tries again (not seconds, which
    # would throw the winner off in turn) ...
    waits = [float(m) for m in re.findall(r"trying again in (\d+) s", lines[-1].message)]
    assert waits and waits[0] >= 60, lines[-1].message

    # ... and meanwhile nobody throws anybody off.
    calm_until = time.monotonic() + CALM_S
    while time.monotonic() < calm_until:
        assert sum(takeovers(d) for d in pair) == count, "the clones keep fighting"
        assert winner.status.get("connection") == "online"
        time.sleep(0.25)
    assert loser.panel_patterns()["status"] == "blink-fast"
