"""A request flood from one user, in a child process, and an honest user's latencies.

:class:`Flood` runs ``flood_main`` in its own process (so its publishing loop never
shares a GIL with the server or the honest client under test): one paho client as
``user``, publishing ``heartbeat`` requests as fast as it can for ``seconds``, with
valid ResponseTopic and CorrelationData over TLS, alternating bursts of QoS 0 and QoS 1.
:func:`heartbeat_latencies` sends an honest user's heartbeats at a steady pace and
returns their round-trip times.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from appliance.client import GoChatClient
from appliance.mqtt import new_client, publish_properties
from appliance.protocol import topics

BURST = 200  # messages per QoS before switching to the other


def flood_main(  # noqa: PLR0917 (a multiprocessing target)
    host: str, port: int, user: str, password: str, seconds: float, ca_file: str, out: Any
) -> None:
    """The child process: flood, then put the number of messages sent on ``out``."""
    client = new_client(user)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=ca_file)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(2000)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    topic = topics.request(user, "heartbeat")
    resp = topics.response(user)
    sent = 0
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        qos = (i // BURST) % 2
        props = publish_properties(response_topic=resp, correlation=b"f%d" % i)
        info = client.publish(topic, b"{}", qos=qos, properties=props)
        i += 1
        if info.rc == paho.MQTT_ERR_SUCCESS:
            sent += 1
        else:
            time.sleep(0.0005)  # paho's queue is full: let the network thread drain it
    client.disconnect()
    client.loop_stop()
    out.put(sent)


@dataclass
class Flood:
    """One flooding user in a child process."""

    host: str
    port: int
    user: str
    password: str
    seconds: float
    ca_file: Path

    def start(self) -> Flood:
        ctx = multiprocessing.get_context("spawn")
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=flood_main,
            args=(
                self.host,
                self.port,
                self.user,
                self.password,
                self.seconds,
                str(self.ca_file),
                self._out,
            ),
            daemon=True,
        )
        self._proc.start()
        return self

    def join(self, timeout_s: float = 30.0) -> int:
        """Wait for the end; the number of messages published."""
        sent: int = self._out.get(timeout=timeout_s)
        self._proc.join(timeout_s)
        return sent

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()


def heartbeat_latencies(client: GoChatClient, seconds: float, every_s: float = 0.1) -> list[float]:
    """Round-trip times (s) of ``heartbeat`` requests sent every ``every_s`` for
    ``seconds``; an unanswered one (10 s) counts as 10 s."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            response = client.request("heartbeat", {}, timeout_s=10)
            assert response.code == 0, response
            latencies.append(time.monotonic() - start)
        except TimeoutError:
            latencies.append(10.0)
        next_at += every_s
        time.sleep(max(0.0, next_at - time.monotonic()))
    return latencies


def p(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
