"""Fairness under a flood: one user floods requests; how much slower are others?

A private Mosquitto (shipped config), the server as its own process, one honest user
sending ``heartbeat`` every 100 ms, and one flooding user in its own process publishing
``heartbeat`` as fast as paho can (bursts of 200 at QoS 0, then 200 at QoS 1). The
honest user's round trips are measured for ``--seconds`` without the flood, then for
``--seconds`` under it. Reported: p50/p99/max of both, the p99 ratio, the flood's
rate, and what the server made of it (its counters, from its log at exit).

Run (from the repository root)::

    .venv/bin/python -m benchmarks.flood_fairness [--seconds 8] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import add_smoke_flag, machine_header, markdown_table
from testbed import Broker
from testbed.flood import Flood, heartbeat_latencies, p
from testbed.server import ServerProcess, connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement (8)")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds = 0.5
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        server = ServerProcess(broker, Path(tmp) / "s.db", Path(tmp) / "s.log").start()
        honest = connect(broker, "honest")
        password = broker.add_user("flooder")
        try:
            heartbeat_latencies(honest, 1.0)  # warm up
            calm = heartbeat_latencies(honest, args.seconds)
            seconds = args.seconds + 1
            flood = Flood(broker.host, broker.port, "flooder", password, seconds, broker.ca_file)
            flood.start()
            time.sleep(1.0)  # the flood is up to speed
            stormy = heartbeat_latencies(honest, args.seconds)
            sent = flood.join()
        finally:
            honest.close()
            server.stop()
        counters = [line for line in server.log().splitlines() if "counters" in line]
    span = args.seconds + 1
    print(machine_header("Fairness under a flood"))
    print(f"flood: {sent} requests in {span:.0f} s ({sent / span:,.0f}/s)\n")
    rows = [
        [name, len(v), *(f"{s * 1e3:.1f}" for s in (p(v, 0.5), p(v, 0.99), max(v)))]
        for name, v in (("unloaded", calm), ("under flood", stormy))
    ]
    print(markdown_table(["honest heartbeat", "n", "p50 ms", "p99 ms", "max ms"], rows))
    print(f"p99 ratio (flood / unloaded): {p(stormy, 0.99) / p(calm, 0.99):.1f}")
    print(counters[-1] if counters else "(no counters in the server log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
