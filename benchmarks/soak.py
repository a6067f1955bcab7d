"""Chaos soak: a room world runs for a set time while faults hit it on a seeded schedule.

The world (all real, on loopback): a private Mosquitto with the shipped config, the
server as its own process, three appliance daemons on stand-in hardware (``--mock-hw``,
microphone hearing a tone), each hosting a room, and 30 lightweight protocol clients,
ten per room, that keep joining, leaving, raising and lowering hands and heartbeating,
following their daemon's room wherever it goes (a restarted host opens a new one).

Faults, one at a time, in a seeded order that gives each kind its share:

- ``broker``: Mosquitto SIGKILLed (nothing saved since its last autosave) and started
  again on the same ports;
- ``server``: the server SIGKILLed and started again;
- ``daemon-kill``: a daemon SIGKILLed and started again (it hosts a new room, since
  ``room.mode = host`` runs at start-up; the old room closes);
- ``daemon-stop``: a daemon frozen with SIGSTOP for 20 s, then SIGCONT;
- ``hostile``: a burst of hostile requests (random bytes, truncated and deep JSON,
  wrong types, huge strings, unknown methods, bad CorrelationData, malformed topics,
  retained requests, a packet over the broker's limit).

Invariants, checked every second; a disagreement is a violation once it has lasted
longer than its grace, counted from when it began or from the end of the last fault,
whichever is later:

- **devices agree** (5 s): each daemon's CoAP ``/status`` is online and names the room
  whose retained server state has it as host, and no other open room is hosted by it;
- **room counts** (5 s): each room's ``member_count`` and ``raised_hand_count`` equal
  what the answered requests of the clients imply (a room with a request in doubt is
  not judged until it is resolved): an answered request that was lost shows here;
- **sessions**: no client, heartbeating every few seconds, is ever told 401;
- **audio** (2 s): after the broker's return every hosting daemon's frames reach a
  subscriber again within 2 s of the broker listening;
- **no traceback** in the server's, the daemons' or the broker's log.

Printed: the machine and date, per-fault recovery times (fault end until every
invariant agrees), violations, request totals, and the RSS of the server, the broker
and each daemon over time with its drift per hour (least squares over the longest
stretch one process lived without a restart).

Run (from the repository root)::

    .venv/bin/python -m benchmarks.soak [--quick] [--minutes 30] [--seed 1]

``--smoke`` (for the test suite): one daemon, three clients, 10 s and one hostile burst;
the faults themselves are tests/test_soak.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from appliance.client import GoChatClient
from appliance.mqtt import new_client, publish_properties
from appliance.protocol import models as m
from appliance.protocol import topics
from benchmarks._common import (
    add_smoke_flag,
    drain_datagrams,
    machine_header,
    markdown_table,
    process_rss_bytes,
)
from testbed import Broker
from testbed.daemons import CoapClient, DaemonProcess
from testbed.server import ServerProcess

DEVICES = 3
CLIENTS_PER_ROOM = 10
STATE_GRACE_S = 5.0
AUDIO_GRACE_S = 2.0
FREEZE_S = 20.0
CLIENT_TIMEOUT_S = 5.0
KINDS = ("broker", "server", "daemon-kill", "daemon-stop", "hostile")
SMOKE_S = 10.0
SMOKE_PLAN = [(4.0, "hostile")]


def now() -> float:
    """The soak's clock (monotonic seconds)."""
    return time.monotonic()


# --------------------------------------------------------------------- observation


class Observer:
    """Follows every room's retained state and who is sending audio, reconnecting fast."""

    def __init__(self, broker: Broker, user: str) -> None:
        self.lock = threading.Lock()
        self.states: dict[str, m.RoomState] = {}
        self.last_frame: dict[str, float] = {}  # sender user id -> monotonic time
        self.client = new_client(user)
        self.client.username_pw_set(user, broker.password(user))
        self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *_args: object) -> None:
        client.subscribe([(topics.room_state("+"), 1), (topics.AUDIO_ALL, 0)])

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if (room_id := topics.parse_room_state(msg.topic)) is not None:
            with self.lock:
                if not msg.payload:
                    self.states.pop(room_id, None)
                    return
                state = m.RoomState.model_validate_json(msg.payload)
                old = self.states.get(room_id)
                if old is None or state.version >= old.version:
                    self.states[room_id] = state
        elif (audio := topics.parse_audio(msg.topic)) is not None and not msg.retain:
            with self.lock:
                self.last_frame[audio.user_id] = now()

    def hosted_by(self, user: str) -> list[str]:
        """The open rooms whose host is ``user``."""
        with self.lock:
            return [r for r, s in self.states.items() if not s.closed and s.host_id == user]

    def state(self, room_id: str) -> m.RoomState | None:
        with self.lock:
            return self.states.get(room_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------- clients


@dataclass
class Tally:
    """Request outcomes over the run (shared by every client; under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: int = 0
    timeouts: int = 0
    by_code: dict[int, int] = field(default_factory=dict)
    unexpected_401: list[str] = field(default_factory=list)

    def count(self, code: int | None) -> None:
        with self.lock:
            if code is None:
                self.timeouts += 1
                return
            self.answered += 1
            self.by_code[code] = self.by_code.get(code, 0) + 1


class SoakClient(threading.Thread):
    """One lightweight member: follows its daemon's room, churns, keeps its session.

    ``member_of`` and ``hand`` are what its *answered* requests say; ``doubt`` is set
    while a request that changes them has gone unanswered (it may or may not have
    been applied) and cleared by the next definitive answer.
    """

    def __init__(
        self, world: World, user: str, device: str, rng: random.Random, tally: Tally
    ) -> None:
        super().__init__(name=user, daemon=True)
        self.world, self.user, self.device, self.rng, self.tally = world, user, device, rng, tally
        self.member_of: str | None = None
        self.hand = False
        self.doubt = False
        self.logged_in = False
        self.churned = False  # left its room on purpose; back on a later tick
        self.stopping = threading.Event()
        password = world.broker.password(user)
        self.gc = GoChatClient(
            world.broker.host,
            world.broker.port,
            user,
            password,
            timeout_s=CLIENT_TIMEOUT_S,
            tls_ca_file=world.broker.ca_file,
        )
        self.gc._mqtt.reconnect_delay_set(1, 2)

    def call(self, method: m.Method, **payload: Any) -> m.Response | None:
        """One request; None when unanswered in time."""
        try:
            response = self.gc.request(method, payload)
        except TimeoutError:
            self.tally.count(None)
            return None
        self.tally.count(response.code)
        if response.code == m.Code.NOT_LOGGED_IN and method is not m.Method.LOGIN:
            if self.logged_in:
                with self.tally.lock:
                    self.tally.unexpected_401.append(f"{self.user} {method.value}")
            self.logged_in = False
            self.member_of, self.hand, self.doubt = None, False, False
        return response

    def run(self) -> None:
        with contextlib.suppress(Exception):
            self.gc.connect()
        last_heartbeat = 0.0
        while not self.stopping.wait(self.rng.uniform(0.5, 1.5)):
            self.drain_inbox()
            if not self.gc._mqtt.is_connected():
                continue
            if not self.logged_in:
                response = self.call(m.Method.LOGIN, name=self.user)
                self.logged_in = response is not None and response.code == 0
                continue
            target = self.world.room_of(self.device)
            if self.doubt or self.member_of != target:
                self.settle(target)
            elif now() - last_heartbeat > 3.0 or self.rng.random() < 0.6:
                if self.call(m.Method.HEARTBEAT) is not None:
                    last_heartbeat = now()
            elif self.rng.random() < 0.5:
                self.toggle_hand()
            else:
                self.leave()
                self.churned = True

    def drain_inbox(self) -> None:
        while True:
            try:
                command = self.gc.inbox.get_nowait()
            except Exception:
                return
            if isinstance(command, m.RoomClosed) and command.room_id == self.member_of:
                self.member_of, self.hand = None, False
            elif isinstance(command, m.HandLowered) and command.room_id == self.member_of:
                self.hand = False

    def settle(self, target: str | None) -> None:
        """Resolve any doubt, then be in ``target`` (or in no room)."""
        if self.member_of is not None and (self.member_of != target or self.doubt):
            self.leave()
            return
        if target is None:
            self.doubt = False
            return
        response = self.call_in_doubt(m.Method.LOGIN_ROOM, room_id=target)
        if response is not None and response.code == 0:
            self.member_of, self.hand, self.churned = target, False, False

    def leave(self) -> None:
        room = self.member_of
        if room is None:
            self.doubt = False
            return
        response = self.call_in_doubt(m.Method.QUIT_ROOM, room_id=room)
        if response is not None and response.code in (0, 403, 404, 410):
            self.member_of, self.hand = None, False

    def call_in_doubt(self, method: m.Method, **payload: Any) -> m.Response | None:
        """A room change: until it is answered, whether it happened is in doubt."""
        self.doubt = True
        response = self.call(method, **payload)
        if response is not None:
            self.doubt = False
        return response

    def toggle_hand(self) -> None:
        room, want = self.member_of, not self.hand
        if room is None:
            return
        self.doubt = True
        response = self.call(m.Method.OPERATE_RAISE_HAND, room_id=room, **{"raise": want})
        if response is None:
            return
        self.doubt = False
        if response.code == 0:
            self.hand = want
        elif response.code in (403, 404, 410):
            self.member_of, self.hand = None, False

    def stop(self) -> None:
        self.stopping.set()
        self.join(CLIENT_TIMEOUT_S * 3)
        with contextlib.suppress(Exception):
            self.gc.close(offline=False)


# --------------------------------------------------------------------- hostile burst


def hostile_burst(broker: Broker, user: str, rng: random.Random, count: int = 600) -> int:
    """Publish ``count`` hostile messages as ``user`` as fast as they go; returns sent."""
    client = new_client(user)
    client.username_pw_set(user, broker.password(user))
    client.tls_set(ca_certs=str(broker.ca_file))
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    deadline = now() + 5
    while not client.is_connected() and now() < deadline:
        time.sleep(0.01)
    resp = topics.response(user)
    deep = b"[" * 5000 + b"]" * 5000
    bodies: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randint(1, 300)),
        lambda: b'{"name": "trunc',
        lambda: deep,
        lambda: json.dumps({"room_id": 12, "raise": "yes"}).encode(),
        lambda: json.dumps({"name": "x" * 3000}).encode(),
        lambda: b"{}",
        lambda: b"\xff\xfe" * 50,
    ]
    methods = ["login", "login_room", "heartbeat", "nope", "operate_raise_hand", ""]
    sent = 0
    for i in range(count):
        method = rng.choice(methods)
        topic = topics.request(user, method) if method else f"{topics.ROOT}/req/{user}/a/b"
        correlation = rng.choice([None, b"c%d" % i, b"x" * 100])
        props = publish_properties(
            response_topic=rng.choice([resp, "gochat/v1/resp/x"]), correlation=correlation
        )
        payload = rng.choice(bodies)()
        retain = rng.random() < 0.05
        info = client.publish(
            topic, payload, qos=rng.choice([0, 1]), retain=retain, properties=props
        )
        sent += info.rc == paho.MQTT_ERR_SUCCESS
    # Last: a packet over the broker's limit, which ends this connection.
    client.publish(topics.request(user, "login"), b"x" * 70_000, qos=1)
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    return sent


# --------------------------------------------------------------------- the world


@dataclass
class Device:
    """A daemon of the world; ``frozen``/``down`` while a fault has it stopped or dead."""

    name: str
    proc: DaemonProcess
    frozen: bool = False
    down: bool = False


class World:
    """Everything that runs; the faults act on it and the checks read it."""

    def __init__(
        self,
        workdir: Path,
        seed: int,
        *,
        devices: int = DEVICES,
        clients_per_room: int = CLIENTS_PER_ROOM,
        freeze_s: float = FREEZE_S,
    ) -> None:
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.freeze_s = freeze_s
        self.broker = Broker(workdir / "broker")
        self.broker.start()
        users = ["soak-observer", "soak-mallory"]
        users += [f"soak-c{i:02d}" for i in range(devices * clients_per_room)]
        self.broker.add_users(*users)
        self.server = ServerProcess(
            broker=self.broker, db_path=workdir / "server.db", log_path=workdir / "server.log"
        ).start()
        self.coap = CoapClient()
        self.observer = Observer(self.broker, "soak-observer")
        self.devices = [self._device(i) for i in range(devices)]
        for device in self.devices:  # in parallel: a start costs a few seconds
            device.proc.start(wait_ready=False)
        for device in self.devices:
            self._start_device(device, started=True)
        self.tally = Tally()
        self.clients = [
            SoakClient(
                self,
                f"soak-c{i:02d}",
                self.devices[i % devices].name,
                random.Random(seed * 1000 + i),
                self.tally,
            )
            for i in range(devices * clients_per_room)
        ]
        for client in self.clients:
            client.start()

    def _device(self, i: int) -> Device:
        name = f"pi-soak{i}"
        proc = DaemonProcess(
            self.broker,
            name,
            self.workdir / "devices",
            mode="host",
            subject=f"Soak {i}",
            cert=True,
            env={"GOCHAT_AUDIO__MOCK_INPUT": "tone:440:0.3"},
        )
        return Device(name, proc)

    def _start_device(self, device: Device, *, started: bool = False) -> None:
        """Start ``device`` (unless ``started``) and wait for its READY=1."""
        if not started:
            if device.proc.notify is not None:
                device.proc.notify.close()
            device.proc.start(wait_ready=False)
        assert device.proc.notify is not None
        device.proc.notify.wait_for("READY=1", 30.0)
        drain_datagrams(device.proc.notify.sock)  # systemd always reads its socket
        device.down = False

    def room_of(self, device: str) -> str | None:
        rooms = self.observer.hosted_by(device)
        return rooms[0] if len(rooms) == 1 else None

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {"broker": self.broker.pid}
        out["server"] = self.server.proc.pid if self.server.proc else None
        for d in self.devices:
            out[d.name] = d.proc.proc.pid if d.proc.proc and d.proc.proc.poll() is None else None
        return out

    # --- faults -------------------------------------------------------------------

    def fault(self, kind: str) -> str:
        """Inflict one fault and undo it; returns what was done."""
        if kind == "broker":
            self.broker.kill()
            self.broker.start()
            return "broker SIGKILL, restarted"
        if kind == "server":
            assert self.server.proc is not None
            self.server.kill()
            self.server.start(timeout_s=30)
            return "server SIGKILL, restarted"
        device = self.rng.choice(self.devices)
        assert device.proc.proc is not None
        if kind == "daemon-kill":
            device.down = True
            device.proc.kill()
            self._start_device(device)
            return f"{device.name} SIGKILL, restarted"
        if kind == "daemon-stop":
            device.frozen = True
            device.proc.proc.send_signal(signal.SIGSTOP)
            time.sleep(self.freeze_s)
            device.proc.proc.send_signal(signal.SIGCONT)
            device.frozen = False
            return f"{device.name} SIGSTOP {self.freeze_s:.0f} s, SIGCONT"
        sent = hostile_burst(self.broker, "soak-mallory", self.rng)
        return f"{sent} hostile requests"

    def close(self) -> None:
        for client in self.clients:
            client.stopping.set()
        for client in self.clients:
            client.stop()
        for device in self.devices:
            if device.proc.proc is not None:
                with contextlib.suppress(Exception):
                    device.proc.proc.send_signal(signal.SIGCONT)
                with contextlib.suppress(Exception):
                    device.proc.terminate()
            device.proc.close()
        self.observer.close()
        self.coap.close()
        with contextlib.suppress(Exception):
            self.server.stop()
        self.broker.stop()

    def logs(self) -> dict[str, str]:
        out = {"server": self.server.log(), "broker": self.broker.log_text()}
        for d in self.devices:
            out[d.name] = d.proc.log()
        return out


# --------------------------------------------------------------------- invariants


@dataclass
class Violation:
    """An invariant broken: seconds into the run, which one, and what was seen."""

    at_s: float
    invariant: str
    detail: str


class Checker:
    """Evaluates the invariants every second; keeps violations and recovery times."""

    def __init__(self, world: World, started: float) -> None:
        self.world = world
        self.started = started
        self.violations: list[Violation] = []
        self.fault_end = started
        self.fault_active = False
        self.since: dict[str, float] = {}
        self.reported: set[str] = set()
        self.last_ok = started
        self.tracebacks: dict[str, int] = {}
        self.status_errors = 0

    def problems(self) -> dict[str, str]:
        """Every disagreement at this moment, by a stable key."""
        found: dict[str, str] = {}
        w = self.world
        for device in w.devices:
            if device.frozen or device.down:
                continue
            found.update(self._device_problems(device))
        for device in w.devices:
            room = w.room_of(device.name)
            if room is not None:
                found.update(self._count_problems(device.name, room))
        with w.tally.lock:
            for entry in w.tally.unexpected_401:
                found[f"401 {entry}"] = f"session lost: {entry}"
            w.tally.unexpected_401.clear()
        return found

    def _device_problems(self, device: Device) -> dict[str, str]:
        key = f"device {device.name}"
        try:
            status = self.world.coap.request(
                device.proc.coap_port, "GET", "/status", timeout_s=3.0
            ).body
        except Exception as exc:
            self.status_errors += 1
            return {key: f"no /status: {exc!r}"}
        hosted = self.world.observer.hosted_by(device.name)
        if status.get("connection") != "online":
            return {key: f"connection {status.get('connection')}"}
        if len(hosted) != 1 or status.get("room_id") != hosted[0] or status.get("role") != "host":
            return {
                key: f"status room {status.get('room_id')} as {status.get('role')};"
                f" server: host of {hosted}"
            }
        return {}

    def _count_problems(self, device: str, room: str) -> dict[str, str]:
        members = [c for c in self.world.clients if c.device == device]
        if any(c.doubt for c in members):
            return {}
        state = self.world.observer.state(room)
        if state is None:
            return {}
        inside = [c for c in members if c.member_of == room]
        want = (len(inside) + 1, sum(c.hand for c in inside))
        got = (state.member_count, state.raised_hand_count)
        if want != got:
            return {f"count {room}": f"members/hands expected {want}, server state {got}"}
        return {}

    def tick(self) -> None:
        t = now()
        found = {} if self.fault_active else self.problems()
        for key in list(self.since):
            if key not in found:
                del self.since[key]
                self.reported.discard(key)
        for key, detail in found.items():
            began = max(self.since.setdefault(key, t), self.fault_end)
            grace = 0.0 if key.startswith("401") else STATE_GRACE_S
            if t - began > grace and key not in self.reported:
                self.reported.add(key)
                self.violations.append(Violation(t - self.started, key.split()[0], detail))
        if not found and not self.fault_active:
            self.last_ok = t
        self.scan_logs()

    def scan_logs(self) -> None:
        for name, text in self.world.logs().items():
            n = text.count("Traceback")
            if n > self.tracebacks.get(name, 0):
                tail = text[text.rindex("Traceback") :][:300]
                self.violations.append(
                    Violation(now() - self.started, "traceback", f"{name}: {tail!r}")
                )
            self.tracebacks[name] = n

    def strays(self) -> list[str]:
        """Clients not (yet) back in their daemon's room, other than by choice."""
        return [
            c.user
            for c in self.world.clients
            if not c.churned and (c.doubt or c.member_of != self.world.room_of(c.device))
        ]

    def recovered_within(self, limit_s: float) -> tuple[float | None, float | None]:
        """Seconds after the fault's end until every invariant agreed (None: not within
        ``limit_s``), and until every client was also back in its room (None: not
        within 3 x ``limit_s``; clients wait up to 5 s for an answer lost in a fault)."""
        agreed: float | None = None
        while (waited := now() - self.fault_end) < 3 * limit_s:
            if agreed is None and waited <= limit_s and not self.problems():
                agreed = waited
            if (agreed is not None or waited > limit_s) and not self.strays():
                return agreed, waited
            time.sleep(0.2)
        return agreed, None

    def audio_back(self, since: float) -> dict[str, float | None]:
        """Per hosting daemon: seconds from ``since`` until a frame of it arrived."""
        out: dict[str, float | None] = {}
        deadline = since + AUDIO_GRACE_S + 3.0
        pending = {d.name for d in self.world.devices if not d.frozen and not d.down}
        while pending and now() < deadline:
            with self.world.observer.lock:
                frames = dict(self.world.observer.last_frame)
            for name in list(pending):
                if frames.get(name, 0.0) > since:
                    out[name] = frames[name] - since
                    pending.discard(name)
            time.sleep(0.02)
        out.update(dict.fromkeys(pending))
        return out


# --------------------------------------------------------------------- RSS


@dataclass
class RssSeries:
    """(seconds since start, pid, bytes) samples of one role."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def drift_mib_per_h(self) -> float | None:
        """Least-squares slope over the longest stretch of one pid (>= 4 samples)."""
        runs: dict[int, list[tuple[float, int]]] = {}
        for t, pid, rss in self.samples:
            runs.setdefault(pid, []).append((t, rss))
        best = max(runs.values(), key=lambda r: r[-1][0] - r[0][0], default=[])
        if len(best) < 4:
            return None
        n = len(best)
        mt = sum(t for t, _ in best) / n
        mr = sum(r for _, r in best) / n
        den = sum((t - mt) ** 2 for t, _ in best)
        if den == 0:
            return None
        slope = sum((t - mt) * (r - mr) for t, r in best) / den
        return slope * 3600 / 2**20


# --------------------------------------------------------------------- the run


@dataclass
class FaultRecord:
    """One fault: when, what, and how long the world took to agree again."""

    at_s: float
    kind: str
    what: str
    recovered_s: float | None
    settled_s: float | None
    audio_s: dict[str, float | None] = field(default_factory=dict)


def schedule(rng: random.Random, seconds: float, quick: bool) -> Iterator[tuple[float, str]]:
    """(offset, kind) pairs: every kind once per shuffled round, spaced by seeded gaps."""
    t = 25.0  # warm-up: every client in its room
    gap = (20.0, 25.0) if quick else (45.0, 90.0)
    while True:
        kinds = list(KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            if t + (FREEZE_S if kind == "daemon-stop" else 0) + 10 > seconds:
                return
            yield t, kind
            t += rng.uniform(*gap) + (FREEZE_S if kind == "daemon-stop" else 0)


def run(
    seconds: float, seed: int, workdir: Path, out: Callable[[str], None], *, smoke: bool = False
) -> int:
    """Run the soak; print the report; return the number of violations. ``smoke``: a
    small world for ``seconds`` with one hostile burst (see the module doc)."""
    world = (
        World(workdir, seed, devices=1, clients_per_room=3, freeze_s=2.0)
        if smoke
        else World(workdir, seed)
    )
    started = now()
    checker = Checker(world, started)
    rss: dict[str, RssSeries] = {}
    faults: list[FaultRecord] = []
    sample_every = 10.0 if seconds <= 600 else 30.0
    next_sample = started
    plan = (
        list(SMOKE_PLAN) if smoke else list(schedule(random.Random(seed), seconds, seconds <= 600))
    )
    out(f"soak: {seconds / 60:.0f} min, seed {seed}, {len(plan)} faults, workdir {workdir}")
    try:
        while (elapsed := now() - started) < seconds:
            if now() >= next_sample:
                for role, pid in world.pids().items():
                    if pid is not None and (value := process_rss_bytes(pid)):
                        rss.setdefault(role, RssSeries()).samples.append((elapsed, pid, value))
                next_sample += sample_every
            if plan and elapsed >= plan[0][0]:
                _, kind = plan.pop(0)
                faults.append(inflict(world, checker, kind, started, out))
                continue
            checker.tick()
            time.sleep(max(0.0, 1.0 - (now() - started - elapsed)))
        checker.tick()
    finally:
        world.close()
    checker.scan_logs()
    report(world, checker=checker, faults=faults, rss=rss, seconds=seconds, seed=seed, out=out)
    return len(checker.violations)


def inflict(
    world: World, checker: Checker, kind: str, started: float, out: Callable[[str], None]
) -> FaultRecord:
    """One fault of ``kind``, then the audio and agreement checks that follow it."""
    at = now() - started
    checker.fault_active = True
    try:
        what = world.fault(kind)
    finally:
        checker.fault_end = now()
        checker.fault_active = False
    audio = checker.audio_back(checker.fault_end) if kind == "broker" else {}
    for name, delay in audio.items():
        if delay is None or delay > AUDIO_GRACE_S:
            shown = "none" if delay is None else f"{delay:.2f} s"
            checker.violations.append(
                Violation(now() - started, "audio", f"{name}: first frame after {shown}")
            )
    recovered, settled = checker.recovered_within(STATE_GRACE_S)
    if recovered is None:
        checker.violations.append(
            Violation(now() - started, "agreement", f"not within {STATE_GRACE_S:.0f} s of: {what}")
        )
    record = FaultRecord(at, kind, what, recovered, settled, audio)
    shown = "not within 5 s" if recovered is None else f"{recovered:.1f} s"
    back = "not within 15 s" if settled is None else f"{settled:.1f} s"
    out(f"  {at:7.1f} s {kind:12} {what}: agreed after {shown}, clients back after {back}")
    return record


def report(
    world: World,
    *,
    checker: Checker,
    faults: list[FaultRecord],
    rss: dict[str, RssSeries],
    seconds: float,
    seed: int,
    out: Callable[[str], None],
) -> None:
    out(machine_header(f"Chaos soak, {seconds / 60:.0f} min, seed {seed}"))
    rows = []
    for kind in KINDS:
        done = [f for f in faults if f.kind == kind]
        times = [f.recovered_s for f in done if f.recovered_s is not None]
        settled = [f.settled_s for f in done if f.settled_s is not None]
        audio = [v for f in done for v in f.audio_s.values() if v is not None]
        rows.append(
            (
                kind,
                len(done),
                f"{max(times):.1f} s" if times else "—",
                sum(f.recovered_s is None for f in done),
                f"{max(audio):.2f} s" if audio else "—",
                f"{max(settled):.1f} s" if settled else "—",
            )
        )
    out(
        markdown_table(
            [
                "fault",
                "n",
                "all agree after (max)",
                "not within 5 s",
                "audio back (max)",
                "all clients back (max)",
            ],
            rows,
        )
    )
    kinds = sorted({v.invariant for v in checker.violations})
    out(
        f"\nInvariant violations: **{len(checker.violations)}**"
        + (f" ({', '.join(kinds)})" if kinds else "")
    )
    for v in checker.violations[:20]:
        out(f"- {v.at_s:.0f} s {v.invariant}: {v.detail}")
    t = world.tally
    codes = ", ".join(f"{c}: {n}" for c, n in sorted(t.by_code.items()))
    out(
        f"\nClient requests answered: {t.answered} ({codes}); unanswered in"
        f" {CLIENT_TIMEOUT_S:.0f} s: {t.timeouts} (during faults)"
    )
    headers = ["process"] + [f"RSS MiB @{p}%" for p in (0, 25, 50, 75, 100)] + ["drift MiB/h"]
    table = []
    for role, series in rss.items():
        cells: list[object] = [role]
        values = series.samples
        for q in (0, 0.25, 0.5, 0.75, 1.0):
            cells.append(
                f"{values[min(len(values) - 1, int(q * (len(values) - 1)))][2] / 2**20:.1f}"
            )
        drift = series.drift_mib_per_h()
        cells.append("—" if drift is None else f"{drift:+.1f}")
        table.append(cells)
    out("\n" + markdown_table(headers, table))
    out(
        "(RSS sampled every 10-30 s; drift: least squares over the longest life of one"
        " process, since faults restart them)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 minutes")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this dir")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    seconds = SMOKE_S if args.smoke else 180.0 if args.quick else args.minutes * 60
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        violations = run(
            seconds, args.seed, workdir, lambda s: print(s, flush=True), smoke=args.smoke
        )
    return 0 if os.environ.get("SOAK_FAIL_ON_VIOLATION") != "1" or not violations else 1


if __name__ == "__main__":
    sys.exit(main())
