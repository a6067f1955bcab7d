"""Retained junk: what one device can leave on the broker, with and without its plugin.

One device publishes ``--count`` retained messages just under the broker's packet limit
(default 750 of 63 KiB, 46 MiB) on its own request and audio topics, at QoS 1 and as
fast as the broker acknowledges them; no server runs, so no janitor clears anything.
Then a new subscriber to every request and audio topic (retain handling 0) counts what
it is sent. Reported per broker (shipped, with its plugin; without it): the time the
flood took, how the broker answered, the broker's resident memory before and after,
and what the new subscriber got.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.retained_junk [--count 750] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from appliance.protocol import topics
from benchmarks._common import add_smoke_flag, machine_header, markdown_table
from testbed import Broker, RecordingClient, connect_client

PACKET_LIMIT = 65536  # max_packet_size in the shipped configuration
JUNK = b"\0" * (PACKET_LIMIT - 2048)
NOT_AUTHORIZED = 0x87


def flood(device: RecordingClient, count: int) -> float:
    """Publish ``count`` retained junk messages (QoS 1); the seconds until all are acked."""
    started = time.monotonic()
    infos = []
    for i in range(count):
        own = topics.request(device.user, f"m{i}") if i % 2 else topics.audio(f"r{i}", device.user)
        infos.append(device.publish(own, JUNK, qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    return time.monotonic() - started


def stored(broker: Broker) -> tuple[int, int]:
    """(messages, bytes) a new subscriber to every request and audio topic is sent."""
    watcher = connect_client(broker, topics.SERVER_USER_ID)
    try:
        retained = watcher.retained(list(topics.RETAINED_SWEEP), timeout=60)
    finally:
        watcher.close()
    return len(retained), sum(len(msg.payload) for msg in retained)


def run(guarded: bool, count: int) -> list[str]:
    """One broker's row of the table."""
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "b", guard=guarded) as broker:
        broker.add_users("mallory", topics.SERVER_USER_ID)
        device = connect_client(broker, "mallory")
        rss_before = broker.rss_kib()
        seconds = flood(device, count)
        refused_probe = device.publish_wait(topics.request("mallory", "probe"), JUNK, retain=True)
        rss_after = broker.rss_kib()
        messages, size = stored(broker)
        device.close()
    return [
        "shipped (plugin)" if guarded else "without the plugin",
        f"{count} x {len(JUNK) // 1024} KiB in {seconds:.1f} s",
        "PUBACK 0x87" if refused_probe.value == NOT_AUTHORIZED else str(refused_probe),
        f"{rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB",
        f"{messages} ({size / 2**20:.1f} MiB)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=750)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.count = 10
    rows = [run(guarded, args.count) for guarded in (True, False)]
    print(machine_header("Retained junk from one device"))
    head = ["broker", "retained flood", "answer", "broker RSS", "a new subscriber gets"]
    print(markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
