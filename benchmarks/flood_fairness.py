"""Fairness under a flood: one device floods requests; how much slower are the others?

A private Mosquitto (shipped config), the server as its own process, a few honest
users each sending ``heartbeat`` every 100 ms, and one flooding device in its own
process offering ``--rate`` requests/s (default 10,000) at QoS 0, then at QoS 1
(testbed/flood.py: a raw MQTT client, so the offered rate is not paho's limit). The
honest round trips are measured for ``--seconds`` without the flood, then for
``--seconds`` under it; each scenario on the shipped broker (with its plugin, which
refuses a client's requests past 40/s) and on a broker without the plugin (the server's
own gate is then the only line). Reported: honest p50/p99/max, what the flooder
offered and was told (PUBACK 0x87 from the broker, 429 from the server, requests
answered), and the server's own counters at exit.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.flood_fairness [--seconds 8] [--rate 10000] [--smoke]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.client import GoChatClient
from benchmarks._common import add_smoke_flag, machine_header, markdown_table, process_cpu_seconds
from testbed import Broker
from testbed.flood import Flood, FloodPlan, FloodReport, heartbeat_latencies, p
from testbed.server import ServerProcess, connect

HONEST_USERS = 4
TARGET_P99_MS = 100.0
CPU_OF = ("broker", "server", "flooder")


@dataclass
class Outcome:
    """One scenario: a broker, a flood QoS, what the honest users and the flooder saw."""

    guarded: bool
    qos: int
    calm: list[float]
    stormy: list[float]
    flood: FloodReport
    server_counters: str
    cpu: dict[str, float]  # % of one core during the flood: broker, server, flooder


def honest_latencies(clients: list[GoChatClient], seconds: float) -> list[float]:
    """Every honest user heartbeating every 100 ms for ``seconds``, in parallel."""
    results: list[list[float]] = [[] for _ in clients]

    def run(i: int) -> None:
        results[i] = heartbeat_latencies(clients[i], seconds)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [value for values in results for value in values]


def with_cpu(
    pids: dict[str, int], measure: Callable[[], list[float]]
) -> tuple[list[float], dict[str, float]]:
    """``measure()``, and the CPU each process used meanwhile (% of one core)."""
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = measure()
    elapsed = time.monotonic() - started
    used = {name: process_cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return result, {name: seconds / elapsed * 100 for name, seconds in used.items()}


def scenario(guarded: bool, qos: int, seconds: float, rate: float) -> Outcome:
    """One broker, one server, the honest users calm and then beside one flood."""
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "b", guard=guarded) as broker:
        server = ServerProcess(broker, Path(tmp) / "s.db", Path(tmp) / "s.log").start()
        honest = [connect(broker, f"honest-{i}") for i in range(HONEST_USERS)]
        flood = Flood(FloodPlan.against(broker, seconds + 2, qos=qos, rate=rate))
        try:
            honest_latencies(honest, 1.0)  # warm up
            calm = honest_latencies(honest, seconds)
            flood.start()
            time.sleep(1.0)  # the flood is up to speed
            assert broker.pid and server.proc and flood.pid
            pids = {"broker": broker.pid, "server": server.proc.pid, "flooder": flood.pid}
            stormy, cpu = with_cpu(pids, lambda: honest_latencies(honest, seconds))
            report = flood.join()
        finally:
            flood.kill()
            for client in honest:
                client.close()
            server.stop()
        counters = re.findall(r"stopped; counters: (.*)", server.log())
    return Outcome(guarded, qos, calm, stormy, report, counters[-1] if counters else "?", cpu)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def tables(outcomes: list[Outcome], rate: float) -> str:
    """The Markdown tables: honest latency and the flooder's lot, then CPU."""
    latency, cpu = [], []
    for o in outcomes:
        broker = "shipped (plugin)" if o.guarded else "without the plugin"
        f = o.flood
        ratio = p(o.stormy, 0.99) / p(o.calm, 0.99)
        met = "met" if p(o.stormy, 0.99) * 1e3 <= TARGET_P99_MS else "**not met**"
        latency.append([
            broker, f"QoS {o.qos}", f"{f.rate:,.0f}/s",
            f"{ms(p(o.calm, 0.5))} / {ms(p(o.calm, 0.99))}",
            f"{ms(p(o.stormy, 0.5))} / **{ms(p(o.stormy, 0.99))}** / {ms(max(o.stormy))}",
            f"{ratio:.1f}", met, f"{o.stormy.count(10.0)} of {len(o.stormy)}",
            f"{f.refused_by_broker:,}" if o.qos else "(QoS 0: none)",
            f"{f.answers[429]:,}", f"{f.accepted:,}",
        ])  # fmt: skip
        cpu.append(
            [broker, f"QoS {o.qos}", *(f"{o.cpu[k]:.0f} %" for k in CPU_OF), o.server_counters]
        )
    head = [
        "broker", "flood", "offered", "honest p50 / p99 ms, no flood",
        "under the flood: p50 / p99 / max ms", "p99 ÷ no-flood p99",
        f"p99 ≤ {TARGET_P99_MS:.0f} ms", "unanswered (10 s)", "flooder: PUBACK 0x87",
        "flooder: 429", "flooder: answered 0",
    ]  # fmt: skip
    return "\n".join([
        f"One device offers {rate:,.0f} heartbeat requests/s; {HONEST_USERS} honest users"
        " send a heartbeat every 100 ms each.\n",
        markdown_table(head, latency),
        "CPU during the flood (% of one core) and the server's counters at exit:\n",
        markdown_table(["broker", "flood", *CPU_OF, "server counters"], cpu),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement (8)")
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument(
        "--only", choices=["shipped", "unguarded"], help="one broker configuration only"
    )
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:  # both floods on the shipped broker, briefly
        args.seconds, args.only = 0.5, args.only or "shipped"
    guards = {"shipped": [True], "unguarded": [False], None: [True, False]}[args.only]
    outcomes = [
        scenario(guarded, qos, args.seconds, args.rate) for guarded in guards for qos in (0, 1)
    ]
    print(machine_header("Fairness under a one-device flood"))
    print(tables(outcomes, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
