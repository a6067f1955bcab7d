"""Fairness: one device flooding requests far past its rate limit does not keep the
server from answering everyone else, and the flooder is told (docs/protocol.md 3.7);
a server offered more than it can answer sheds requests unread.

The flood (testbed/flood.py) runs in its own process at 10,000 requests/s while an
honest user heartbeats every 100 ms. On the shipped broker its plugin refuses the
flood past 40 requests/s, so the server sees no more of it than that; on a broker
without the plugin the server's gate drops the excess from its topic bytes alone.
Either way every honest request is answered. How fast is benchmarks/flood_fairness.py's
question (README), not a test's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.protocol.models import RATE_LIMIT_PER_S
from appliance.server.app import SHED_BACKLOG
from testbed import Broker
from testbed.flood import Flood, FloodPlan, FloodReport, heartbeat_latencies
from testbed.server import RunningServer, connect

FLOOD_S = 2.0
RATE = 10_000.0
BROKER_LIMIT = 40  # requests/s, plugin_opt_limits in the shipped configuration
UNANSWERED = 10.0  # what heartbeat_latencies counts for a request never answered


@dataclass
class Outcome:
    latencies: list[float]  # the honest user's round trips during the flood
    flood: FloodReport
    counters: Counter[str]  # the server's


def flood_beside_an_honest_user(broker: Broker, tmp_path: Path, qos: int) -> Outcome:
    """A server, an honest user heartbeating, and one flood at ``qos`` meanwhile."""
    server = RunningServer(broker, tmp_path / "server.db").start()
    honest = connect(broker, "honest")
    flood = Flood(FloodPlan.against(broker, FLOOD_S + 1.0, qos=qos, rate=RATE)).start()
    try:
        server.wait_until(lambda service: "flooder" in service.sessions, 20.0)  # it is on
        latencies = heartbeat_latencies(honest, FLOOD_S - 0.5)
        report = flood.join()
        assert server.server is not None
        counters = server.server.counters.copy()
    finally:
        flood.kill()
        honest.close()
        server.stop()
    assert report.sent > RATE * FLOOD_S / 2, "the flood was too weak to prove anything"
    assert UNANSWERED not in latencies, "an honest request went unanswered"
    return Outcome(latencies, report, counters)


@pytest.mark.parametrize("qos", [0, 1])
def test_the_broker_refuses_a_flood_and_the_server_keeps_answering(
    broker: Broker, tmp_path: Path, qos: int
) -> None:
    outcome = flood_beside_an_honest_user(broker, tmp_path, qos)
    report = outcome.flood
    # What the server saw of the flood: the broker's limit (two windows' slack).
    flood_seen = outcome.counters["requests"] - len(outcome.latencies) - 1  # honest login
    assert flood_seen <= BROKER_LIMIT * (FLOOD_S + 3), outcome.counters
    # The flooder was told: at QoS 1 by the broker, and by the server's 429s; within
    # the server's own limit it was served (its login and some heartbeats).
    if qos:
        assert report.refused_by_broker > report.sent / 2, report
    assert report.answers[429] > 0, report
    assert 0 < report.accepted <= RATE_LIMIT_PER_S * (FLOOD_S + 2), report


@pytest.mark.unguarded
def test_without_the_plugin_the_gate_drops_a_flood_unread(broker: Broker, tmp_path: Path) -> None:
    outcome = flood_beside_an_honest_user(broker, tmp_path, 0)
    report = outcome.flood
    # The flood reached the server and was limited there, not served: 20 accepted and
    # 20 refused (429) per second, the rest dropped from the topic, undecoded.
    assert outcome.counters["dropped_rate_limited"] > report.sent / 2
    assert report.answers[429] > 0
    assert report.accepted <= RATE_LIMIT_PER_S * (FLOOD_S + 2)


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
