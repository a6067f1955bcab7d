"""Load benchmark of the GoChat business server: heartbeat load and a join storm.

What it measures (docs/protocol.md section 3 requests, over a real Mosquitto):

1. **Heartbeat load.** Simulated clients send ``heartbeat {}`` requests at a fixed
   aggregate rate (default 3,000 req/s for 20 s, then a step up to 5,000 req/s to
   show where it saturates). Sending is open-loop: request *i* is due at
   ``start + i / rate`` whether or not earlier ones were answered, and its latency is
   measured from that due time to its response, so a slow server cannot hide behind
   a sender that waits for it (no coordinated omission). Reported: responses per
   second, p50/p99/max latency, unanswered requests, non-zero codes, and the CPU%
   and RSS of the server, the broker and the load generators.
2. **Join storms.** A host creates a room and watches its retained state; then N
   listeners (default 5,000, connected and logged in beforehand, not timed) each send
   one ``login_room``: once paced at 1,000 joins/s (twice the target rate), once all
   at once (``--join-rates``). Reported per storm: joins/s from the first send to the
   last response, p50/p99/max join latency, room-state publishes/s seen by the host
   (the server coalesces them to at most one per 50 ms per room) and the final
   ``member_count`` (should be N + 1). The listeners do not subscribe to the room
   state: the broker would then fan ~20 publishes/s out to every one of them, which
   measures the broker, not the server.

Targets (reported, never asserted): one server process sustains >= 3,000 req/s with
p99 <= 25 ms; 5,000 listeners join one room at >= 500 joins/s with p99 <= 100 ms.

How: a private Mosquitto (``tests/support/broker.py``) on a free loopback port, the
server as its own process (``python -m appliance.server``, temp SQLite file), and
``--workers`` load-generator processes. Each worker drives all its MQTT connections
(paho-mqtt 2, MQTT 5, client id = username) from one epoll loop with ``loop_read``,
``loop_write`` and ``loop_misc``: no thread per client. The server rate-limits each
user to 20 req/s, so load is spread over enough users to stay at <= 5 req/s each.
Everything runs on this machine: broker, server and load generators share its cores,
and the CPU table shows where the time went.

Run (from the repository root)::

    .venv/bin/python benchmarks/server_load.py --quick    # smoke run, < 60 s
    .venv/bin/python benchmarks/server_load.py            # full run, about 2 minutes

Options: ``--rate`` and ``--step-up`` (heartbeat req/s), ``--duration`` (s per rate),
``--listeners``, ``--join-rates`` (e.g. ``500,1000,0``), ``--workers`` (load-generator
processes), ``--broker-conf`` (try another mosquitto.conf). ``--help`` lists them.
The report (Markdown) goes to stdout, progress to stderr.

Exit status: 0 when the benchmark ran (whatever the figures), 1 on a real error (the
server or broker would not start, a load generator failed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import selectors
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.protocol import topics
from appliance.server.app import SHED_BACKLOG
from benchmarks._common import (
    add_smoke_flag,
    machine_cpu_seconds,
    machine_header,
    markdown_table,
    percentile,
    process_cpu_seconds,
    process_rss_bytes,
    raise_open_files_limit,
    thread_cpu_seconds,
    verdict,
)
from testbed.broker import Broker
from testbed.server import ServerProcess

# --- knobs ---------------------------------------------------------------------------

TARGET_RPS = 3_000
TARGET_RPS_P99_MS = 25.0
TARGET_JOINS_PER_S = 500
TARGET_JOIN_P99_MS = 100.0
STATE_MIN_INTERVAL_S = 0.05  # the server's room-state coalescing (publisher.py)
# An open-loop sender offering exactly the target rate can never measure more than it,
# and the response-time tail stretches the window: throughput within 1 % counts as met.
RATE_TOLERANCE = 0.99

PER_USER_RATE = 5.0  # req/s per simulated user (the server allows 20)
PREP_RATE = 1_500.0  # req/s of the untimed logins before each phase
DRAIN_S = 10.0  # after its last send, a worker waits this long for answers
KEEPALIVE_S = 60
CONNECT_BATCH = 100  # connections opened at once per worker (no SYN storm)
CONNECT_TIMEOUT_S = 30.0
SEND_BURST = 200  # sends between two socket polls when behind schedule
MISC_INTERVAL_S = 1.0  # loop_misc (keepalive pings) for every connection
HOST_USER = "bench-host"
HOST_HEARTBEAT_S = 10.0

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


def log(message: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark could not run (not a missed target)."""


@dataclass(frozen=True, slots=True)
class Config:
    """What to run, from the command line."""

    rates: tuple[float, ...]  # heartbeat phases, req/s offered
    duration_s: float
    listeners: int
    workers: int
    join_rates: tuple[float, ...]  # one storm each, joins/s offered; 0 = all at once
    broker_conf: Path | None  # None: the shipped config/mosquitto/mosquitto.conf
    store_url: str | None = None  # PostgreSQL (benchmarks/scale_out.py); None: SQLite
    instances: int = 1  # server processes sharing the requests (PostgreSQL only)

    @property
    def users(self) -> int:
        """Simulated users: the listeners, or more if the heartbeat rate needs them."""
        return max(self.listeners, math.ceil(max(self.rates) / PER_USER_RATE))


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line (``--quick`` sets small defaults for what is not given)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run: small numbers, < 60 s")
    add_smoke_flag(parser)
    parser.add_argument("--rate", type=float, help="heartbeat req/s (default 3000; quick 500)")
    parser.add_argument(
        "--step-up", type=float, help="a second, higher rate; 0 skips (default 5000; quick 1000)"
    )
    parser.add_argument("--duration", type=float, help="s per heartbeat rate (20; quick 5)")
    parser.add_argument("--listeners", type=int, help="join-storm listeners (5000; quick 500)")
    parser.add_argument(
        "--join-rates",
        default="1000,0",
        help="one join storm per rate, joins/s offered; 0 = all at once (default 1000,0)",
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument(
        "--broker-conf", type=Path, help="mosquitto.conf template to try instead of the shipped one"
    )
    args = parser.parse_args(argv)

    def pick(value: float | None, full: float, quick: float, smoke: float) -> float:
        if value is not None:
            return value
        return smoke if args.smoke else quick if args.quick else full

    rate = pick(args.rate, 3_000, 500, 100)
    step = pick(args.step_up, 5_000, 1_000, 200)
    try:
        join_rates = tuple(max(0.0, float(r)) for r in args.join_rates.split(",") if r.strip())
    except ValueError:
        parser.error(f"--join-rates: not a comma-separated list of numbers: {args.join_rates}")
    config = Config(
        rates=(rate, step) if step > rate else (rate,),
        duration_s=pick(args.duration, 20.0, 5.0, 1.0),
        listeners=int(pick(args.listeners, 5_000, 500, 20)),
        workers=max(1, args.workers),
        join_rates=join_rates,
        broker_conf=args.broker_conf,
    )
    if rate <= 0 or config.duration_s <= 0 or config.listeners < 1 or not config.join_rates:
        parser.error("--rate, --duration, --listeners and --join-rates must be given and positive")
    return config


# =====================================================================================
# Load-generator side: one process, many connections, one epoll loop
# =====================================================================================


@dataclass(frozen=True, slots=True)
class Plan:
    """What one worker sends in a phase: request ``i`` goes to user ``i % users``."""

    method: str
    payload: bytes | None  # None: each user's own login payload
    count: int
    rate: float  # req/s from this worker; 0 = all at once (latency from actual send)
    start_at: float  # time.monotonic() of request 0 (the clock is system-wide)
    drain_s: float = DRAIN_S


@dataclass(slots=True)
class Sample:
    """What one worker (or, merged, all of them) measured in a phase."""

    sent: int = 0
    send_errors: int = 0
    unanswered: int = 0
    stray: int = 0  # responses nobody was waiting for
    disconnects: int = 0
    latencies: list[float] = field(default_factory=list)  # s, answered requests only
    lags: list[float] = field(default_factory=list)  # s, actual send - due time
    codes: Counter[int] = field(default_factory=Counter)
    pushes: Counter[str] = field(default_factory=Counter)  # inbox pushes by type
    first_due: float = math.inf
    last_answer: float = 0.0

    def merge(self, other: Sample) -> None:
        """Add ``other`` into this sample."""
        self.sent += other.sent
        self.send_errors += other.send_errors
        self.unanswered += other.unanswered
        self.stray += other.stray
        self.disconnects += other.disconnects
        self.latencies += other.latencies
        self.lags += other.lags
        self.codes.update(other.codes)
        self.pushes.update(other.pushes)
        self.first_due = min(self.first_due, other.first_due)
        self.last_answer = max(self.last_answer, other.last_answer)


class Conn:
    """One simulated user: a paho client plus what the worker tracks about it."""

    __slots__ = (
        "client",
        "failed",
        "inbox_topic",
        "login_payload",
        "ready",
        "response_topic",
        "user",
        "writing",
    )

    def __init__(self, worker: LoadWorker, user: str, password: str) -> None:
        self.user = user
        self.ready = False  # connected and subscribed to its responses
        self.failed = False
        self.writing = False  # registered for EVENT_WRITE
        self.response_topic = topics.response(user)
        self.inbox_topic = topics.inbox(user)
        self.login_payload = json.dumps({"name": user[:32]}).encode()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=user,
            protocol=paho.MQTTv5,
            userdata=self,
        )
        client.username_pw_set(user, password)
        client.on_socket_open = worker.on_socket_open
        client.on_socket_close = worker.on_socket_close
        client.on_connect = worker.on_connect
        client.on_subscribe = worker.on_subscribe
        client.on_disconnect = worker.on_disconnect
        client.on_message = worker.on_message
        self.client = client


class LoadWorker:
    """Many MQTT connections on one selector, sending on a schedule.

    paho writes a packet at once when it is queued outside a callback and no
    ``on_socket_register_write`` is set; what it cannot write then (a full socket
    buffer, or a SUBSCRIBE queued inside ``on_connect``) shows as ``want_write()``,
    and only then is the socket registered for EVENT_WRITE (:meth:`_sync_write`).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.failures: list[str] = []
        self.disconnects = 0
        self._corr = itertools.count(1)
        self._pending: dict[bytes, int] = {}  # correlation -> request index
        self._answered: list[float] = []
        self._codes: list[int] = []
        self._stray = 0
        self._pushes: Counter[str] = Counter()
        self._next_misc = 0.0

    # --- paho callbacks (userdata is the Conn) ----------------------------------------

    def on_socket_open(self, _c: paho.Client, conn: Conn, sock: Any) -> None:
        self.selector.register(sock, READ, conn)
        conn.writing = False

    def on_socket_close(self, _c: paho.Client, _conn: Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def on_connect(self, client: paho.Client, conn: Conn, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            conn.failed = True
            self.failures.append(f"{conn.user}: CONNACK {reason}")
            return
        # The inbox too, as a device does: the join storm's media_key pushes are real load.
        client.subscribe([(conn.response_topic, 1), (conn.inbox_topic, 1)])

    def on_subscribe(self, _c: paho.Client, conn: Conn, _m: int, reasons: Any, _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            conn.failed = True
            self.failures.append(f"{conn.user}: SUBACK {reasons}")
        else:
            conn.ready = True

    def on_disconnect(self, _c: paho.Client, conn: Conn, _f: Any, _r: Any, _p: Any) -> None:
        conn.ready = False
        self.disconnects += 1

    def on_message(self, _c: paho.Client, conn: Conn, message: paho.MQTTMessage) -> None:
        if message.topic == conn.inbox_topic:
            self._pushes[_push_type(message.payload)] += 1
            return
        correlation = getattr(message.properties, "CorrelationData", None)
        index = self._pending.pop(bytes(correlation), None) if correlation is not None else None
        if index is None:
            self._stray += 1
            return
        self._answered[index] = time.monotonic()
        self._codes[index] = _code_of(message.payload)

    # --- the loop ---------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for socket events and handle them."""
        for key, mask in self.selector.select(timeout):
            conn: Conn = key.data
            if mask & READ:
                conn.client.loop_read()
            if mask & WRITE and conn.client.socket() is not None:
                conn.client.loop_write()
            self._sync_write(conn)
        now = time.monotonic()
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            for conn in self.conns:
                conn.client.loop_misc()
                self._sync_write(conn)

    def _sync_write(self, conn: Conn) -> None:
        want = conn.client.want_write()
        if want == conn.writing:
            return
        sock = conn.client.socket()
        if sock is None:
            conn.writing = False
            return
        self.selector.modify(sock, READ | (WRITE if want else 0), conn)
        conn.writing = want

    # --- commands ---------------------------------------------------------------------

    def connect(self, users: list[tuple[str, str]]) -> dict[str, Any]:
        """Connect and subscribe every user, ``CONNECT_BATCH`` at a time."""
        for start in range(0, len(users), CONNECT_BATCH):
            batch = [self._open(u, p) for u, p in users[start : start + CONNECT_BATCH]]
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while time.monotonic() < deadline and any(not (c.ready or c.failed) for c in batch):
                self.poll(0.02)
        ready = sum(c.ready for c in self.conns)
        return {"ready": ready, "failures": self.failures[:5], "failed": len(users) - ready}

    def _open(self, user: str, password: str) -> Conn:
        conn = Conn(self, user, password)
        self.conns.append(conn)
        try:
            conn.client.connect(self.host, self.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            conn.failed = True
            self.failures.append(f"{user}: {exc}")
        self._sync_write(conn)
        return conn

    def run(self, plan: Plan) -> Sample:
        """Send ``plan`` on schedule, then wait for the answers (open loop)."""
        conns = [c for c in self.conns if c.ready]
        if not conns:
            raise RuntimeError("no connected users")
        step = 1.0 / plan.rate if plan.rate > 0 else 0.0
        self._pending.clear()
        self._answered = [0.0] * plan.count
        self._codes = [-1] * plan.count
        self._stray = 0
        self._pushes.clear()
        disconnects_before = self.disconnects
        basis = [0.0] * plan.count  # due time (paced) or actual send time (burst)
        sample = Sample()
        i = 0
        while i < plan.count:
            now = time.monotonic()
            end = min(plan.count, i + SEND_BURST)
            while i < end and plan.start_at + i * step <= now:
                due = plan.start_at + i * step
                if not self._send(conns[i % len(conns)], plan, i):
                    sample.send_errors += 1
                sent = time.monotonic()
                basis[i] = due if step else sent
                sample.lags.append(sent - due)
                i += 1
            wait = plan.start_at + i * step - time.monotonic() if i < plan.count else 0.0
            self.poll(max(0.0, min(wait, 0.05)))
        deadline = time.monotonic() + plan.drain_s
        while self._pending and time.monotonic() < deadline:
            self.poll(0.02)
        return self._summarise(plan, basis, sample, disconnects_before)

    def _send(self, conn: Conn, plan: Plan, index: int) -> bool:
        correlation = next(self._corr).to_bytes(8, "big")
        # A fresh Properties each time: paho keeps a reference for a queued QoS 1 message.
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = conn.response_topic
        props.CorrelationData = correlation
        payload = conn.login_payload if plan.payload is None else plan.payload
        self._pending[correlation] = index
        info = conn.client.publish(
            topics.request(conn.user, plan.method), payload, qos=1, properties=props
        )
        self._sync_write(conn)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._pending.pop(correlation, None)
            return False
        return True

    def _summarise(
        self, plan: Plan, basis: list[float], sample: Sample, disconnects_before: int
    ) -> Sample:
        sample.sent = plan.count - sample.send_errors
        for sent_at, answered, code in zip(basis, self._answered, self._codes, strict=True):
            if code == -1:
                continue
            sample.latencies.append(answered - sent_at)
            sample.codes[code] += 1
            sample.last_answer = max(sample.last_answer, answered)
        sample.unanswered = len(self._pending)
        sample.first_due = basis[0] if basis else math.inf
        sample.stray = self._stray
        sample.pushes = Counter(self._pushes)
        sample.disconnects = self.disconnects - disconnects_before
        self._pending.clear()
        return sample

    def close(self) -> None:
        """Say goodbye on every connection."""
        for conn in self.conns:
            if conn.client.socket() is not None:
                conn.client.disconnect()
        end = time.monotonic() + 0.5
        while time.monotonic() < end and any(c.client.socket() for c in self.conns):
            self.poll(0.02)
        self.selector.close()


def _code_of(payload: bytes | bytearray) -> int:
    try:
        return int(json.loads(payload)["code"])
    except (ValueError, KeyError, TypeError):
        return -2  # not a protocol envelope


def _push_type(payload: bytes | bytearray) -> str:
    try:
        return str(json.loads(payload)["type"])
    except (ValueError, KeyError, TypeError):
        return "unreadable"


def worker_main(host: str, port: int, pipe: Connection) -> None:
    """A load-generator process: obeys ``(command, argument)`` messages on ``pipe``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator stops us
    raise_open_files_limit()
    worker = LoadWorker(host, port)
    try:
        while True:
            while not pipe.poll():
                worker.poll(0.05)
            command, argument = pipe.recv()
            if command == "stop":
                break
            if command == "connect":
                pipe.send(("ok", worker.connect(argument)))
            elif command == "run":
                pipe.send(("ok", worker.run(argument)))
    except EOFError:
        pass  # the coordinator went away
    except Exception:
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
    finally:
        worker.close()


# =====================================================================================
# Coordinator side
# =====================================================================================


class WorkerPool:
    """The load-generator processes and their command pipes."""

    def __init__(self, count: int, host: str, port: int) -> None:
        ctx = mp.get_context("fork")  # inherits sys.path and the raised RLIMIT_NOFILE
        self.procs: list[mp.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        for index in range(count):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(host, port, theirs), name=f"load-{index}", daemon=True
            )
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.pipes.append(ours)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, command: str, arguments: Sequence[object]) -> None:
        """Send one command to each worker (``arguments[k]`` to worker ``k``)."""
        for pipe, argument in zip(self.pipes, arguments, strict=True):
            pipe.send((command, argument))

    def receive(self, timeout_s: float) -> list[Any]:
        """Every worker's answer to the last command."""
        deadline = time.monotonic() + timeout_s
        answers = []
        for index, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"load worker {index} did not answer within {timeout_s:.0f} s")
            try:
                status, value = pipe.recv()
            except EOFError:
                raise BenchError(f"load worker {index} died") from None
            if status != "ok":
                raise BenchError(f"load worker {index} failed:\n{value}")
            answers.append(value)
        return answers

    def close(self) -> None:
        """Stop every worker: politely, then by its pid."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        deadline = time.monotonic() + 2.0  # a worker in the middle of a phase won't listen
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)


@dataclass(frozen=True, slots=True)
class StateSeen:
    """One room-state message as the host received it."""

    at: float  # time.monotonic()
    room_id: str
    version: int
    member_count: int
    retained: bool  # delivered from the retained store on subscribe, not live


class HostProbe:
    """The rooms' host, in the coordinator: creates each room, watches its state.

    A threaded paho client (it sees at most ~20 state publishes/s per room); every
    room-state message is recorded in :attr:`states`. Heartbeats every 10 s keep its
    session, and so its room, alive.
    """

    def __init__(self, broker: Broker, user: str) -> None:
        self.user = user
        self.states: list[StateSeen] = []
        self._cond = threading.Condition()
        self._answers: dict[bytes, dict[str, Any]] = {}
        self._corr = itertools.count(1)
        self._subscribed = 0
        self._stop = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5
        )
        self._client.username_pw_set(user, broker.password(user))
        self._client.tls_set_context(broker.tls_context())
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.connect(broker.host, broker.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        self._subscribe(topics.response(user))
        threading.Thread(target=self._heartbeats, daemon=True, name="host-heartbeat").start()

    def call(self, method: str, payload: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """A request; its ``data`` (BenchError on a non-zero code or no answer)."""
        correlation = next(self._corr).to_bytes(8, "big")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = topics.response(self.user)
        props.CorrelationData = correlation
        body = json.dumps(payload).encode()
        self._client.publish(topics.request(self.user, method), body, qos=1, properties=props)
        with self._cond:
            if not self._cond.wait_for(lambda: correlation in self._answers, timeout_s):
                raise BenchError(f"host: no answer to {method}")
            answer = self._answers.pop(correlation)
        if answer.get("code") != 0:
            raise BenchError(f"host: {method} -> {answer.get('code')} {answer.get('message')}")
        return dict(answer.get("data") or {})

    def watch(self, room_id: str) -> None:
        """Follow the room's state."""
        self._subscribe(topics.room_state(room_id))

    def wait_member_count(self, room_id: str, count: int, timeout_s: float) -> None:
        """Wait until a state of ``room_id`` with ``member_count >= count`` arrived (or
        the timeout)."""

        def seen() -> bool:
            return any(s.room_id == room_id and s.member_count >= count for s in self.states)

        with self._cond:
            self._cond.wait_for(seen, timeout_s)

    def close(self) -> None:
        """Disconnect."""
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()

    def _subscribe(self, topic: str) -> None:
        with self._cond:
            wanted = self._subscribed + 1
        self._client.subscribe(topic, qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: self._subscribed >= wanted, 10.0):
                raise BenchError(f"host: no SUBACK for {topic}")

    def _heartbeats(self) -> None:
        while not self._stop.wait(HOST_HEARTBEAT_S):
            with contextlib.suppress(BenchError):
                self.call("heartbeat", {})

    def _on_subscribe(self, *_args: Any) -> None:
        with self._cond:
            self._subscribed += 1
            self._cond.notify_all()

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        with self._cond:
            if message.topic == topics.response(self.user):
                correlation = getattr(message.properties, "CorrelationData", b"")
                self._answers[bytes(correlation)] = json.loads(message.payload)
            elif message.payload:
                state = json.loads(message.payload)
                self.states.append(
                    StateSeen(
                        now,
                        state["room_id"],
                        state["version"],
                        state["member_count"],
                        bool(message.retain),
                    )
                )
            self._cond.notify_all()


SERVER_MAIN = "  server: main thread (asyncio, rules, SQLite)"
SERVER_OTHER = "  server: other threads (paho network loop)"


@dataclass(slots=True)
class Usage:
    """CPU and memory of each component over one phase."""

    wall_s: float
    cpu_pct: dict[str, float]  # % of one core, per group (and the server's threads)
    rss: dict[str, int]  # per group
    machine_busy_pct: float  # % of all cores

    @property
    def unaccounted_pct(self) -> float:
        """Busy CPU not in any measured process (kernel softirq, other processes), % of
        one core."""
        measured = sum(v for k, v in self.cpu_pct.items() if k in self.rss)
        return self.machine_busy_pct * (os.cpu_count() or 1) - measured


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float
    cpu: dict[str, float]  # CPU seconds so far
    rss: dict[str, int]
    machine: tuple[float, float]  # (busy, total) CPU seconds of all cores


class CpuMeter:
    """Samples the CPU time of groups of processes every 0.1 s on a thread, so that
    :meth:`usage` can report any window afterwards (e.g. up to the last response).
    The server's main thread and its other threads are also shown apart."""

    def __init__(self, groups: dict[str, list[int]], server_pid: int) -> None:
        self.groups = groups
        self.server_pid = server_pid
        self._snapshots: list[_Snapshot] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True, name="cpu")
        self._thread.start()

    def usage(self, t0: float, t1: float) -> Usage:
        """CPU% and RSS between ``t0`` and ``t1`` (``time.monotonic()``), which must be
        in the past."""
        self._take()
        with self._lock:
            snaps = list(self._snapshots)
        first = max((s for s in snaps if s.at <= t0), key=lambda s: s.at, default=snaps[0])
        last = min((s for s in snaps if s.at >= t1), key=lambda s: s.at, default=snaps[-1])
        wall = max(last.at - first.at, 1e-9)
        busy = last.machine[0] - first.machine[0]
        total = last.machine[1] - first.machine[1]
        return Usage(
            wall_s=wall,
            cpu_pct={k: 100.0 * (last.cpu[k] - first.cpu[k]) / wall for k in last.cpu},
            rss=dict(last.rss),
            machine_busy_pct=100.0 * busy / max(total, 1e-9),
        )

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(2)

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.1):
            self._take()

    def _take(self) -> None:
        cpu = {k: sum(process_cpu_seconds(p) for p in pids) for k, pids in self.groups.items()}
        threads = thread_cpu_seconds(self.server_pid)
        cpu[SERVER_MAIN] = threads.pop(self.server_pid, math.nan)
        cpu[SERVER_OTHER] = sum(threads.values())
        rss = {k: sum(process_rss_bytes(p) for p in pids) for k, pids in self.groups.items()}
        snapshot = _Snapshot(time.monotonic(), cpu, rss, machine_cpu_seconds())
        with self._lock:
            self._snapshots.append(snapshot)


@dataclass(slots=True)
class HeartbeatResult:
    """Phase 1 at one offered rate."""

    offered: float
    duration_s: float
    sample: Sample
    usage: Usage


@dataclass(slots=True)
class StormResult:
    """Phase 2, one storm."""

    listeners: int
    offered: float  # joins/s; 0 = all at once
    sample: Sample
    usage: Usage
    states: list[StateSeen]  # of this storm's room
    expected_members: int

    @property
    def label(self) -> str:
        """The storm's column heading."""
        if self.offered:
            return f"{self.listeners:,} at {self.offered:,.0f}/s"
        return f"{self.listeners:,} all at once"


class Bench:
    """Owns the broker, the server and the workers; runs the phases."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stack = contextlib.ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix="gochat-bench-"))
        self.stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.broker = (
            Broker(self.tmp / "broker", conf_template=config.broker_conf)
            if config.broker_conf is not None
            else Broker(self.tmp / "broker")
        )
        self.server: ServerProcess | None = None  # the first of :attr:`servers`
        self.servers: list[ServerProcess] = []  # made once the broker has its port
        # More processes to meter (a database's), listed once the servers are up.
        self.extra_groups: dict[str, Callable[[], list[int]]] = {}
        self.users = [f"bench-{i:05d}" for i in range(config.users)]
        self.pool: WorkerPool | None = None
        self.meter: CpuMeter | None = None
        self.host: HostProbe | None = None
        self.server_counters: dict[str, int] = {}
        self.broker_warnings: list[str] = []

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stack.close()

    # --- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        """Accounts, broker, server, workers; every user connected and logged in."""
        started = time.monotonic()
        self.broker.add_users(*self.users, HOST_USER, topics.SERVER_USER_ID)
        log(f"{len(self.users) + 2} broker accounts in {time.monotonic() - started:.1f} s")
        self.broker.start()
        self.stack.callback(self.broker.stop)
        self.stack.callback(self._stop_server)
        for n in range(1, self.config.instances + 1):
            log_name = "server.log" if n == 1 else f"server{n}.log"
            self.server = ServerProcess(
                self.broker,
                self.tmp / "server.db",
                self.tmp / log_name,
                store_url=self.config.store_url,
                instance=n,
            )
            self.servers.append(self.server)
            try:
                self.server.start()
            except TimeoutError as exc:
                raise BenchError(f"server did not start: {exc}\n{self.server_log_tail()}") from None
        self.server = self.servers[0]
        log(f"broker on port {self.broker.port} (pid {self.broker.pid}); server pid {self._spid}")
        # The load's thousands of clients use the shipped plain loopback listener (they
        # are on the broker's host): this measures the server, not TLS handshakes.
        self.pool = WorkerPool(self.config.workers, self.broker.host, self.broker.plain_port)
        self.stack.callback(self.pool.close)
        self.meter = CpuMeter(
            {
                "server": [p.proc.pid for p in self.servers if p.proc is not None],
                **{name: pids() for name, pids in self.extra_groups.items()},
                "broker": [self.broker.pid or 0],
                f"load generators ({self.config.workers})": self.pool.pids,
                "coordinator + host": [os.getpid()],
            },
            self._spid,
        )
        self.stack.callback(self.meter.close)
        self._connect_all()
        self._prep("login", None, len(self.users))

    @property
    def _spid(self) -> int:
        assert self.server is not None and self.server.proc is not None
        return self.server.proc.pid

    def _connect_all(self) -> None:
        assert self.pool is not None
        workers = self.config.workers
        shares = [
            [(u, self.broker.password(u)) for u in self.users[k::workers]] for k in range(workers)
        ]
        started = time.monotonic()
        self.pool.send("connect", shares)
        answers = self.pool.receive(CONNECT_TIMEOUT_S * (1 + len(self.users) // CONNECT_BATCH))
        ready = sum(a["ready"] for a in answers)
        failed = sum(a["failed"] for a in answers)
        if failed:
            reasons = [f for a in answers for f in a["failures"]]
            raise BenchError(f"{failed} users could not connect, e.g. {reasons}")
        log(f"{ready} users connected in {time.monotonic() - started:.1f} s")

    def _prep(
        self, method: str, payload: bytes | None, first_n: int, ok: tuple[int, ...] = (0,)
    ) -> None:
        """One ``method`` request from each of the first ``first_n`` users, untimed, at
        ``PREP_RATE`` (``payload`` None: each user's login payload); every answer must
        have a code in ``ok``."""
        assert self.pool is not None
        workers = self.config.workers
        counts = [len(range(k, first_n, workers)) for k in range(workers)]
        start = time.monotonic() + 0.2
        plans = [Plan(method, payload, n, PREP_RATE / workers, start) for n in counts]
        self.pool.send("run", plans)
        total = Sample()
        for sample in self.pool.receive(first_n / PREP_RATE + DRAIN_S + 30):
            total.merge(sample)
        self._check_alive()
        good = sum(total.codes[code] for code in ok)
        if good != first_n:
            raise BenchError(
                f"{method} (untimed preparation): {good}/{first_n} ok, "
                f"codes {dict(total.codes)}, {total.unanswered} unanswered"
            )
        log(f"{first_n} users: {method} done")

    # --- phases -----------------------------------------------------------------------

    def heartbeat_phase(self, rate: float) -> HeartbeatResult:
        """Open-loop heartbeats at ``rate`` req/s for the configured duration."""
        assert self.pool is not None and self.meter is not None
        workers, duration = self.config.workers, self.config.duration_s
        per_worker = rate / workers
        start = time.monotonic() + 1.0
        # Workers interleave: worker k starts k/rate later, so sends are evenly spaced.
        plans = [
            Plan("heartbeat", b"{}", round(per_worker * duration), per_worker, start + k / rate)
            for k in range(workers)
        ]
        log(f"heartbeat: {rate:,.0f} req/s for {duration:.0f} s")
        self.pool.send("run", plans)
        total = Sample()
        for sample in self.pool.receive(duration + DRAIN_S + 60):
            total.merge(sample)
        usage = self.meter.usage(start, start + duration)
        self._check_alive()
        return HeartbeatResult(rate, duration, total, usage)

    def join_storms(self) -> list[StormResult]:
        """One storm per ``--join-rates`` entry, each into a new room."""
        results: list[StormResult] = []
        previous: str | None = None
        for offered in self.config.join_rates:
            result, previous = self.join_storm(offered, previous)
            results.append(result)
        return results

    def join_storm(self, offered: float, previous_room: str | None) -> tuple[StormResult, str]:
        """The host creates a room; the listeners join it. Returns the room id too."""
        assert self.pool is not None and self.meter is not None
        listeners, workers = self.config.listeners, self.config.workers
        # Untimed: sessions may have aged since setup, and the last storm's room is left.
        self._prep("login", None, listeners)
        if previous_room is not None:
            leave = json.dumps({"room_id": previous_room}).encode()
            self._prep("quit_room", leave, listeners, ok=(0, 404))  # 404: it never got in
        host = self._host()
        room_id = host.call("create_room", {"subject": "storm"})["room"]["room_id"]
        host.watch(room_id)
        host.wait_member_count(room_id, 1, 5.0)
        counts = [len(range(k, listeners, workers)) for k in range(workers)]
        payload = json.dumps({"room_id": room_id}).encode()
        start = time.monotonic() + 1.0
        plans = [
            Plan(
                "login_room", payload, n, offered / workers, start + (k / offered if offered else 0)
            )
            for k, n in enumerate(counts)
        ]
        pace = f"{offered:,.0f} joins/s" if offered else "all at once"
        log(f"join storm: {listeners:,} listeners into room {room_id}, {pace}")
        self.pool.send("run", plans)
        total = Sample()
        for sample in self.pool.receive(listeners / 100 + DRAIN_S + 60):
            total.merge(sample)
        host.wait_member_count(room_id, listeners + 1, 5.0)
        usage = self.meter.usage(start, max(total.last_answer, start + 0.1))
        self._check_alive()
        states = [s for s in host.states if s.room_id == room_id]
        return StormResult(listeners, offered, total, usage, states, listeners + 1), room_id

    def _host(self) -> HostProbe:
        if self.host is None:
            self.host = HostProbe(self.broker, HOST_USER)
            self.stack.callback(self.host.close)
            self.host.call("login", {"name": "Storm host"})
        return self.host

    # --- the server -------------------------------------------------------------------

    def server_died(self) -> bool:
        """Whether the server process was started and has exited."""
        return any(p.proc is not None and p.proc.poll() is not None for p in self.servers)

    def _check_alive(self) -> None:
        if self.server_died():
            raise BenchError(f"the server exited\n{self.server_log_tail()}")
        if not self.broker.running:
            raise BenchError(f"the broker exited\n{self.broker.log_text()[-3000:]}")

    def finish(self) -> None:
        """Stop the server (to read its counters) and collect the broker's warnings."""
        self._stop_server()
        total: Counter[str] = Counter()
        for server in self.servers:
            for line in server.log().splitlines():
                if "stopped; counters:" in line:
                    with contextlib.suppress(ValueError, SyntaxError):
                        total.update(ast.literal_eval(line.split("counters:", 1)[1].strip()))
        self.server_counters = dict(total)
        self.broker_warnings = [
            line
            for line in self.broker.log_text().splitlines()
            if ("warning" in line.lower() or "dropped" in line) and "ACL pattern" not in line
        ]

    def _stop_server(self) -> None:
        for server in self.servers:
            if server.proc is not None:
                server.stop()  # also fine if it has exited already

    def server_log_tail(self, lines: int = 40) -> str:
        """The end of the server's output."""
        try:
            text = self.server.log() if self.server is not None else ""
        except OSError:
            return "(no server log)"
        return "--- server log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


# =====================================================================================
# Report
# =====================================================================================


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table cell."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:,.1f} ms"


def latency_stats(sample: Sample) -> tuple[float, float, float]:
    """(p50, p99, max) latency in seconds."""
    values = sorted(sample.latencies)
    return percentile(values, 50), percentile(values, 99), values[-1] if values else math.nan


def other_codes(sample: Sample) -> str:
    """Non-zero response codes, e.g. ``429x3``, or ``none``."""
    bad = {code: n for code, n in sorted(sample.codes.items()) if code != 0}
    return ", ".join(f"{code} x{n}" for code, n in bad.items()) or "none"


def answered_rate(sample: Sample) -> float:
    """Responses per second, from the first due send to the last response."""
    span = sample.last_answer - sample.first_due
    return len(sample.latencies) / span if span > 0 else 0.0


def rate_verdict(achieved: float, result: HeartbeatResult) -> str:
    """Whether a heartbeat run shows the target throughput (see ``RATE_TOLERANCE``)."""
    if result.offered < TARGET_RPS:
        return "offered less"
    return verdict(achieved >= TARGET_RPS * RATE_TOLERANCE and result.sample.unanswered == 0)


def heartbeat_table(results: list[HeartbeatResult]) -> str:
    """Phase 1: one column per offered rate."""
    rows: list[list[str]] = []

    def row(name: str, target: str, cells: Iterator[str]) -> None:
        rows.append([name, target, *cells])

    stats = [latency_stats(r.sample) for r in results]
    rates = [answered_rate(r.sample) for r in results]
    row(
        "Requests/s answered",
        f"≥ {TARGET_RPS:,}",
        (f"{x:,.0f} ({rate_verdict(x, r)})" for x, r in zip(rates, results, strict=True)),
    )
    row("Latency p50", "", (ms(s[0]) for s in stats))
    row(
        "Latency p99",
        f"≤ {TARGET_RPS_P99_MS:.0f} ms",
        (f"{ms(s[1])} ({verdict(s[1] * 1000 <= TARGET_RPS_P99_MS)})" for s in stats),
    )
    row("Latency max", "", (ms(s[2]) for s in stats))
    row(
        "Sent / answered", "", (f"{r.sample.sent:,} / {len(r.sample.latencies):,}" for r in results)
    )
    row("Unanswered after 10 s", "0", (f"{r.sample.unanswered:,}" for r in results))
    row("Non-zero codes", "none", (other_codes(r.sample) for r in results))
    row("Client disconnects", "0", (f"{r.sample.disconnects:,}" for r in results))
    row(
        "Sender lag p99 / max",
        "",
        (
            f"{ms(percentile(sorted(r.sample.lags), 99))} / {ms(max(r.sample.lags))}"
            for r in results
        ),
    )
    server_cpu = (r.usage.cpu_pct["server"] for r in results)
    row("Server CPU (1 core = 100 %)", "", (f"{x:.0f} %" for x in server_cpu))
    row("Server RSS", "", (f"{r.usage.rss['server'] / 2**20:.0f} MiB" for r in results))
    headers = ["Heartbeat load", "Target", *(f"offered {r.offered:,.0f} req/s" for r in results)]
    return markdown_table(headers, rows)


def state_cell(states: list[StateSeen], since: float) -> str:
    """Live (not retained) room-state publishes received after ``since``, and whether
    their number fits the coalescing: at most one per 50 ms after the first, plus one
    for arrival jitter (a delayed publish and its on-time successor arrive closer)."""
    times = sorted(s.at for s in states if not s.retained and s.at >= since)
    span = times[-1] - times[0] if times else 0.0
    rate = f" = {(len(times) - 1) / span:.1f}/s" if span > 0 else ""
    fits = len(times) <= 2 + span / STATE_MIN_INTERVAL_S
    return f"{len(times)} in {span:.2f} s{rate} ({verdict(fits)})"


def storm_table(results: list[StormResult]) -> str:
    """Phase 2: one column per storm."""
    rows: list[list[str]] = []

    def row(name: str, target: str, cells: Iterator[str]) -> None:
        rows.append([name, target, *cells])

    stats = [latency_stats(r.sample) for r in results]
    joins = [answered_rate(r.sample) for r in results]
    finals = [
        max(r.states, key=lambda s: s.version).member_count if r.states else 0 for r in results
    ]
    row(
        "Joins answered ok / sent",
        "all",
        (f"{r.sample.codes[0]:,} / {r.sample.sent:,}" for r in results),
    )
    row(
        "Joins/s (first send → last response)",
        f"≥ {TARGET_JOINS_PER_S}",
        (
            f"{x:,.0f} ({verdict(x >= TARGET_JOINS_PER_S and r.sample.codes[0] == r.listeners)})"
            for x, r in zip(joins, results, strict=True)
        ),
    )
    row("Join latency p50", "", (ms(s[0]) for s in stats))
    row(
        "Join latency p99",
        f"≤ {TARGET_JOIN_P99_MS:.0f} ms",
        (f"{ms(s[1])} ({verdict(s[1] * 1000 <= TARGET_JOIN_P99_MS)})" for s in stats),
    )
    row("Join latency max", "", (ms(s[2]) for s in stats))
    row("Unanswered after 10 s", "0", (f"{r.sample.unanswered:,}" for r in results))
    row("Non-zero codes", "none", (other_codes(r.sample) for r in results))
    row("Client disconnects", "0", (f"{r.sample.disconnects:,}" for r in results))
    row(
        "Voice-key pushes (media_key) received",
        "",
        (f"{r.sample.pushes['media_key']:,}" for r in results),
    )
    row(
        "Room-state publishes seen by host",
        f"≤ {1 / STATE_MIN_INTERVAL_S:.0f}/s (coalesced)",
        (state_cell(r.states, r.sample.first_due) for r in results),
    )
    row(
        "Final member_count",
        " / ".join(sorted({f"{r.expected_members:,}" for r in results})),
        (
            f"{final:,} ({verdict(final == r.expected_members)})"
            for final, r in zip(finals, results, strict=True)
        ),
    )
    row(
        "Server CPU / RSS",
        "",
        (
            f"{r.usage.cpu_pct['server']:.0f} % / {r.usage.rss['server'] / 2**20:.0f} MiB"
            for r in results
        ),
    )
    return markdown_table(["Join storm", "Target", *(r.label for r in results)], rows)


def rest_cell(usage: Usage) -> str:
    """Busy CPU outside the measured processes; tick-based counters make short windows
    (and small differences) noise, shown as such."""
    if usage.wall_s < 1:
        return "n/a"
    rest = usage.unaccounted_pct
    return f"{rest:.0f} %" if rest >= 0 else "≈ 0 %"


def cpu_table(labels: list[str], usages: list[Usage]) -> str:
    """Where the CPU went, per phase."""
    rows = []
    names = [
        n
        for g in usages[0].rss
        for n in ((g, SERVER_MAIN, SERVER_OTHER) if g == "server" else (g,))
    ]
    for name in names:
        cells = []
        for u in usages:
            rss = f" ({u.rss[name] / 2**20:.0f} MiB)" if name in u.rss else ""
            cells.append(f"{u.cpu_pct[name]:.0f} %{rss}")
        rows.append([name, *cells])
    rows.append(
        [
            "rest: kernel, other processes (windows ≥ 1 s)",
            *(rest_cell(u) for u in usages),
        ]
    )
    rows.append(
        ["whole machine busy, % of all cores", *(f"{u.machine_busy_pct:.0f} %" for u in usages)]
    )
    rows.append(["window", *(f"{u.wall_s:.1f} s" for u in usages)])
    return markdown_table(["CPU, % of one core (RSS)", *labels], rows)


def counters_table(counters: dict[str, int]) -> str:
    """The server's own counters, from its log at shutdown."""
    rows = [[k, f"{v:,}"] for k, v in sorted(counters.items())]
    return markdown_table(["Server counter (whole run)", "Value"], rows)


def print_report(bench: Bench, beats: list[HeartbeatResult], storms: list[StormResult]) -> None:
    """Everything, as Markdown, on stdout."""
    config = bench.config
    print("\n## Phase 1: heartbeat load (open loop)\n")
    print(
        f"{config.users:,} users, each sending at most {max(config.rates) / config.users:.1f} "
        f"req/s, over {config.workers} load-generator processes; latency from each request's "
        "due time to its response. Throughput counts as meeting the target within 1 % "
        "(an open-loop sender offering exactly the target cannot measure more).\n"
    )
    print(heartbeat_table(beats))
    print("## Phase 2: join storm\n")
    print(
        "Before each storm the listeners log in again and leave the previous storm's room "
        "(not timed). They do not subscribe to the room state (the broker would fan "
        "~20 publishes/s out to each of them); only the host does. A paced storm measures "
        "latency from each join's due time, an all-at-once storm from its actual send.\n"
    )
    print(storm_table(storms))
    print("## Where the CPU went\n")
    print(
        f"Broker, server, load generators and coordinator all share this machine's "
        f"{os.cpu_count()} cores; 100 % = one core fully busy (sampled every 0.1 s).\n"
    )
    labels = [f"heartbeat {r.offered:,.0f}/s" for r in beats] + [r.label for r in storms]
    print(cpu_table(labels, [r.usage for r in beats] + [r.usage for r in storms]))
    print_server_side(bench)


def print_server_side(bench: Bench) -> None:
    """The server's counters and the broker's complaints, with what they mean."""
    counters = bench.server_counters
    if counters:
        print(counters_table(counters))
    if counters.get("publish_errors"):
        print(
            "`publish_errors`: answers (or pushes) the server's paho client refused to queue "
            "(e.g. with all 65,535 message ids waiting for the broker): the request was "
            "applied and committed, its answer lost.\n"
        )
    if counters.get("dropped_overload"):
        print(
            "`dropped_overload`: requests the server dropped unread, neither applied nor "
            f"answered, while {SHED_BACKLOG:,} of its messages waited for the broker "
            "(`SHED_BACKLOG` in appliance/server/app.py); their senders retry.\n"
        )
    if bench.broker_warnings:
        print(f"Broker log warnings and drops: {len(bench.broker_warnings)}, e.g.:\n")
        for line in bench.broker_warnings[:5]:
            print(f"    {line}")
        print()
    if any("dropped for client gochat-server" in line for line in bench.broker_warnings):
        print(
            "Mosquitto dropped requests on their way to the server: it holds at most "
            "`max_inflight_messages` + `max_queued_messages` (1,000 + 10,000 in the shipped "
            "mosquitto.conf) unacknowledged QoS 1 messages per client.\n"
        )


def run(config: Config) -> int:
    """Set up, run both phases, report, clean up."""
    print(machine_header("GoChat server load benchmark"))
    with Bench(config) as bench:
        try:
            bench.setup()
            beats = [bench.heartbeat_phase(rate) for rate in config.rates]
            storms = bench.join_storms()
            bench.finish()
        except BenchError as exc:
            if bench.server_died() and "server log" not in str(exc):
                print(bench.server_log_tail(), file=sys.stderr)
            raise
        print_report(bench, beats, storms)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    config = parse_args(argv)
    limit = raise_open_files_limit()  # before the broker starts: mosquitto inherits it
    if limit < config.users + 256:
        log(f"warning: open-files limit {limit} is low for {config.users} connections")
    try:
        return run(config)
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
