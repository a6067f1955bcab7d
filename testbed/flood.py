"""A request flood from one user, in a child process, and an honest user's latencies.

:class:`Flood` runs :func:`flood_main` in its own process (so its loop never shares a
GIL with the server or the honest clients under test). It is a hostile client, not a
polite library: a hand-rolled MQTT 5 connection over TLS that writes pre-encoded
``heartbeat`` requests (valid ResponseTopic and CorrelationData) at ``rate`` per second
(or as fast as the socket takes them), at QoS 0, QoS 1, or alternating bursts of both,
keeping up to :data:`WINDOW` QoS 1 requests awaiting their PUBACK (paho, walking its
table of unacknowledged messages on every PUBACK, could not offer 10,000/s at QoS 1).
It subscribes to its own response topic and counts what it is told: PUBACK codes
(0x87: refused by the broker) and response codes (429: refused by the server).
:func:`heartbeat_latencies` sends an honest user's heartbeats at a steady pace and
returns their round-trip times.
"""

from __future__ import annotations

import multiprocessing
import re
import select
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.client import GoChatClient
from appliance.protocol import topics

from .broker import Broker

BURST = 200  # messages per QoS before switching to the other (qos=None)
WINDOW = 900  # QoS 1 requests in flight; the shipped broker grants 1,000
TICK_S = 0.001  # pacing: what is due is written every millisecond
REFUSED = 0x87  # PUBACK "not authorized": the broker refused the message
_CODE = re.compile(rb'"code":(\d+)')


@dataclass
class FloodReport:
    """What the flooder sent and what it was told."""

    sent: int = 0
    seconds: float = 0.0
    pubacks: Counter[int] = field(default_factory=Counter)  # reason code -> count
    answers: Counter[int] = field(default_factory=Counter)  # response code -> count
    disconnect: str = ""  # why the connection ended early, if it did

    @property
    def rate(self) -> float:
        """Requests written per second."""
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def refused_by_broker(self) -> int:
        return self.pubacks[REFUSED]

    @property
    def accepted(self) -> int:
        """Requests the server answered with code 0."""
        return self.answers[0]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, byte = value >> 7, value & 0x7F
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _utf8(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _connect_packet(user: str, password: str) -> bytes:
    # Protocol "MQTT" level 5; flags: username, password, clean start; keepalive 60 s;
    # no properties; payload: client id, username, password.
    header = _utf8("MQTT") + bytes((5, 0xC2)) + (60).to_bytes(2, "big") + b"\x00"
    return _packet(0x10, header + _utf8(user) + _utf8(user) + _utf8(password))


class _Requests:
    """Pre-encoded PUBLISH packets of one user's ``heartbeat`` requests."""

    def __init__(self, user: str) -> None:
        self._user = user
        self._topic = _utf8(topics.request(user, "heartbeat"))
        self._response_topic = b"\x08" + _utf8(topics.response(user))

    def publish(self, index: int, qos: int, packet_id: int) -> bytes:
        """The ``index``-th heartbeat request."""
        return self._publish(self._topic, b"f%d" % index, b"{}", qos, packet_id)

    def login(self) -> bytes:
        """A ``login`` request (QoS 0), so that heartbeats within the limit succeed."""
        topic = _utf8(topics.request(self._user, "login"))
        return self._publish(topic, b"login", b'{"name": "Flooder"}', 0, 0)

    def _publish(
        self, topic: bytes, correlation: bytes, payload: bytes, qos: int, pid: int
    ) -> bytes:
        props = self._response_topic + b"\x09" + _utf8(correlation)
        body = topic + (pid.to_bytes(2, "big") if qos else b"")
        body += _varint(len(props)) + props + payload
        return _packet(0x30 | (qos << 1), body)


class _Reader:
    """Splits the bytes from the broker into packets and counts what they say."""

    def __init__(self, report: FloodReport) -> None:
        self.report = report
        self.buffer = bytearray()
        self.acked = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while (packet := self._next()) is not None:
            self._count(*packet)

    def _next(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        length, shift, at = 0, 0, 1
        while True:
            if at >= len(buf):
                return None
            byte = buf[at]
            length |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not byte & 0x80:
                break
        if len(buf) < at + length:
            return None
        packet = (buf[0], bytes(buf[at : at + length]))
        del buf[: at + length]
        return packet

    def _count(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 4:  # PUBACK: packet id, then a reason code unless it is 0
            self.acked += 1
            self.report.pubacks[body[2] if len(body) > 2 else 0] += 1
        elif kind == 3:  # a response (QoS 0: the subscription's)
            match = _CODE.search(body)
            self.report.answers[int(match.group(1)) if match else -1] += 1
        elif kind == 14:  # DISCONNECT
            self.report.disconnect = f"DISCONNECT 0x{body[0]:02x}" if body else "DISCONNECT"


@dataclass(frozen=True)
class FloodPlan:
    """Who floods where, for how long, how (see :class:`Flood`)."""

    host: str
    port: int
    user: str
    password: str
    seconds: float
    ca_file: Path
    qos: int | None = None  # None: alternate bursts of QoS 0 and QoS 1
    rate: float | None = None  # requests/s offered; None: as fast as the socket takes

    @classmethod
    def against(
        cls, broker: Broker, seconds: float, *, qos: int | None, rate: float | None
    ) -> FloodPlan:
        """A flood on ``broker``'s TLS port by user ``flooder`` (made if missing)."""
        user = "flooder"
        password = broker.password(user) if broker.has_user(user) else broker.add_user(user)
        return cls(broker.host, broker.port, user, password, seconds, broker.ca_file, qos, rate)


def flood_main(plan: FloodPlan, out: Any) -> None:
    """The child process: flood, then put a :class:`FloodReport` on ``out``."""
    report = FloodReport()
    try:
        _flood(plan, report)
    except OSError as exc:
        report.disconnect = report.disconnect or f"connection lost: {exc}"
    out.put(report)


def _flood(plan: FloodPlan, report: FloodReport) -> None:
    context = ssl.create_default_context(cafile=str(plan.ca_file))
    raw = socket.create_connection((plan.host, plan.port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with context.wrap_socket(raw, server_hostname=plan.host) as sock:
        reader = _Reader(report)
        sock.sendall(_connect_packet(plan.user, plan.password))
        own = _utf8(topics.response(plan.user))
        sock.sendall(_packet(0x82, b"\x00\x01\x00" + own + b"\x00"))  # SUBSCRIBE, QoS 0
        requests = _Requests(plan.user)
        sock.sendall(requests.login())
        _read_available(sock, reader, 0.2)  # logged in before the flood starts
        start = time.monotonic()
        end = start + plan.seconds
        sent = qos1_sent = 0
        while (now := time.monotonic()) < end and not report.disconnect:
            due = int((now - start) * plan.rate) + 1 if plan.rate else sent + BURST
            batch = bytearray()
            while sent < due:
                level = plan.qos if plan.qos is not None else (sent // BURST) % 2
                if level and qos1_sent - reader.acked >= WINDOW:
                    break  # the broker's Receive Maximum: wait for PUBACKs
                packet_id = qos1_sent % 65535 + 1
                batch += requests.publish(sent, level, packet_id)
                qos1_sent += level
                sent += 1
            if batch:
                sock.sendall(batch)
            _read_available(sock, reader, TICK_S if plan.rate or not batch else 0.0)
        report.sent = sent
        report.seconds = time.monotonic() - start
        _read_available(sock, reader, 0.5)  # the last answers
        sock.sendall(b"\xe0\x00")  # DISCONNECT


def _read_available(sock: ssl.SSLSocket, reader: _Reader, timeout_s: float) -> None:
    """Read whatever arrives within ``timeout_s`` (at least what is already there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(0.0, deadline - time.monotonic())
        if not sock.pending() and not select.select([sock], [], [], left)[0]:
            return
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("the broker closed the connection")
        reader.feed(data)


class Flood:
    """One flooding user in a child process (see the module docstring)."""

    def __init__(self, plan: FloodPlan) -> None:
        self.plan = plan
        ctx = multiprocessing.get_context("spawn")
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(target=flood_main, args=(plan, self._out), daemon=True)

    def start(self) -> Flood:
        self._proc.start()
        return self

    @property
    def pid(self) -> int | None:
        """The flooding process's id once started."""
        return self._proc.pid

    def join(self, timeout_s: float = 30.0) -> FloodReport:
        """Wait for the end; what was sent and answered."""
        report: FloodReport = self._out.get(timeout=timeout_s)
        self._proc.join(timeout_s)
        return report

    def kill(self) -> None:
        """End the flooding process now, if it was started and still runs."""
        if self._proc.pid is not None and self._proc.is_alive():
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
