"""Fairness: one user flooding requests (QoS 0 and QoS 1, far past its rate limit)
does not keep the server from answering everyone else promptly (docs/protocol.md 3.7),
and a server offered more than it can answer sheds requests unread.

The flood runs in its own process for a few seconds while an honest user heartbeats
every 100 ms; every honest request must be answered, and quickly. The bounds are
generous (the whole stack shares this machine's cores); without the server's gate,
which drops a flooding user's excess from its topic alone, the honest user waits
behind tens of thousands of fully decoded messages: p50 above 0.5 s, p99 above 1 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.server.app import SHED_BACKLOG
from testbed import Broker
from testbed.flood import Flood, heartbeat_latencies, p
from testbed.server import RunningServer, connect

FLOOD_S = 5.0


@pytest.mark.unguarded  # the plugin stops such a flood at the broker
def test_a_flooding_user_does_not_slow_the_others_down(broker: Broker, tmp_path: Path) -> None:
    server = RunningServer(broker, tmp_path / "server.db").start()
    honest = connect(broker, "honest")
    password = broker.add_user("flooder")
    flood = Flood(broker.host, broker.port, "flooder", password, FLOOD_S, broker.ca_file).start()
    try:
        assert server.server is not None
        counters = server.server.counters
        deadline = time.monotonic() + 20
        while counters["dropped_rate_limited"] < 1000:  # the flood is on
            assert time.monotonic() < deadline, "the flood never reached the server"
            heartbeat_latencies(honest, 0.2)
        latencies = heartbeat_latencies(honest, FLOOD_S - 2.0)
        sent = flood.join()
    finally:
        flood.kill()
        honest.close()
        server.stop()
    assert sent > 10_000, "the flood was too weak to prove anything"
    assert max(latencies) < 5.0, "an honest request went unanswered"
    assert p(latencies, 0.5) < 0.1, sorted(latencies)
    assert p(latencies, 0.99) < 0.5, sorted(latencies)
    # The flood was limited, not served: 20 accepted and 20 refused (429) per second.
    assert counters["dropped_rate_limited"] > sent / 2


def test_an_overloaded_server_drops_requests_unread_until_its_answers_drain(
    broker: Broker, tmp_path: Path
) -> None:
    # Past SHED_BACKLOG answers waiting for the broker, a request is neither applied nor
    # answered (its sender retries): never committed with an answer that cannot go out.
    server = RunningServer(broker, tmp_path / "server.db").start()
    ann = connect(broker, "ann")
    try:
        assert server.server is not None
        counters = server.server.counters
        server.server.shed_backlog = 0  # as if the backlog had reached the bound
        with pytest.raises(TimeoutError):
            ann.request("create_room", {"subject": "Overload"}, timeout_s=1.0)
        assert counters["dropped_overload"] == 1
        assert not server.server.service.rooms  # dropped unread: nothing was applied
        server.server.shed_backlog = SHED_BACKLOG  # the answers drained
        assert ann.request("create_room", {"subject": "Overload"}, timeout_s=5).code == 0
        assert len(server.server.service.rooms) == 1
    finally:
        ann.close()
        server.stop()
