"""How big a room one broker carries: voice fan-out to N listeners through Mosquitto.

One room, 4 seated speakers, N listeners. The speakers send sealed frame-v2 audio
(docs/protocol.md section 7: real Opus packets, AES-256-GCM with the room's voice key,
QoS 0) every 20 ms; the broker fans every frame out to every listener. N is stepped up
(100, 250, 500, 1,000, 2,000, ...) until fewer than 99.9 % of the frames the speakers
sent arrive at the listeners within 50 ms of their send time. Two loads per step:

- **talk**: all 4 speakers talk all the time: 200 frames/s into the room;
- **dtx**: each speaker is silent 90 % of the time (one 0.4 s talk spurt every 4 s,
  in turn) and sends one packet per second while silent, as Opus DTX allows: about
  24 frames/s into the room.

Reported per step: frames within 50 ms (and p50/p99/p99.9 of the delay, a missing
frame counting as infinitely late), frames the broker delivered per second, the
CPU (% of one core) and RSS of Mosquitto, the CPU of the listener processes, the
machine's load average; then the largest N that holds per load.

How (everything real but the client side of the listeners): a private Mosquitto with
the shipped configuration (``testbed.broker.Broker``: TLS on every remote listener),
the business server as its own process (``testbed.server.ServerProcess``, a temp
SQLite file). The speakers are :class:`appliance.client.GoChatClient` connections in
one process: the host creates the room, the three others join, are invited on stage
and accept, so all four hold a seat with the microphone on; each seals with the
room's current key (``media`` answers and ``media_key`` pushes) and follows a fixed
schedule: packet *k* of speaker *j* is due at ``base + j * 5 ms + k * 20 ms``, its
timestamp is ``ts0_j + 960 k`` (silence advances it too), and it is sent as close to
that as the process manages. The delay of a frame is its arrival minus that due time
(the clock is system-wide), so a late sender shows as late frames, never as a lower
rate. The listeners are lightweight MQTT 5 clients (a minimal packet codec over
non-blocking TLS sockets, many per process, one epoll loop each; paho tops out near
20,000 messages/s per process): each connects with its own password on the broker's
TLS port, logs in and joins the room through the server (``login``, ``login_room``;
subscribed to its response, inbox, the room state and ``audio/+`` with No Local, as a
member is), heartbeats every 10 s and keeps the voice keys it is given; every 97th
frame is opened (authenticated and decrypted) with them as a check.

All of this shares the machine's cores: a listener process near 100 % of a core
means the load generator, not the broker, limits that step (the table shows it).

Run (from the repository root)::

    .venv/bin/python -m benchmarks.fanout --quick    # smoke run, about a minute
    .venv/bin/python -m benchmarks.fanout            # full ladder, 5-15 minutes

The report (Markdown) goes to stdout, progress to stderr. Exit status: 0 when the
benchmark ran (whatever the figures), 1 on a real error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import secrets
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio import opus
from appliance.client import GoChatClient
from appliance.protocol import topics, voice
from benchmarks._common import (
    add_smoke_flag,
    machine_cpu_seconds,
    machine_header,
    markdown_table,
    process_cpu_seconds,
    process_rss_bytes,
    raise_open_files_limit,
)
from testbed.broker import Broker
from testbed.server import ServerProcess
from testbed.voice import media_key_pushes

# --- knobs ---------------------------------------------------------------------------

LADDER = (100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 8_000)
QUICK_LADDER = (20, 60)
SMOKE_LADDER = (4,)
HOLD_FRACTION = 0.999  # of the frames sent, at every listener ...
HOLD_MS = 50  # ... within this many ms of their due time
SPEAKERS = 4
PACKET_S = 0.020
TS_PER_PACKET = 960  # 20 ms at 48 kHz
STAGGER_S = 0.005  # speaker j's packets are due j * 5 ms after speaker 0's
U32 = 0xFFFFFFFF
DTX_CYCLE = 200  # packets (4 s): each speaker talks for TALK_PACKETS of them, in turn
DTX_TALK = 20  # 0.4 s: 10 % of the time
DTX_SILENT_EVERY = 50  # one packet per second while silent
MODES = ("talk", "dtx")
HIST_MS = 2_000  # delay histogram, 1 ms bins; the last bin holds everything later
BATCH_S = 0.002  # a listener process pauses this long between busy passes
VERIFY_EVERY = 97  # listeners open every 97th frame they receive
HEARTBEAT_S = 10.0
KEEPALIVE_S = 60
JOIN_RATE = 300.0  # listener connects and joins/s, all processes together (untimed)
SETTLE_S = 2.5  # after the last join: key rotations (>= 2 s apart) settle
GRACE_S = 1.0  # after the last send, before the listeners report
QUIET_S = 1.0  # before a measurement, nothing received for this long
DRAIN_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 20.0

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

    ladder: tuple[int, ...]
    duration_s: float
    workers: int
    repeat: int
    modes: tuple[str, ...]
    batch_ms: float = BATCH_S * 1000
    plain: bool = False  # listeners on the plain loopback listener instead of TLS


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line (``--quick`` sets small defaults for what is not given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 20 and 60 listeners")
    add_smoke_flag(parser)
    parser.add_argument("--ladder", help="listener counts, e.g. 100,250,500 (default up to 8000)")
    parser.add_argument("--duration", type=float, help="s of audio per measurement (10; quick 3)")
    parser.add_argument("--workers", type=int, default=2, help="listener processes (2)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measurements per step and load; the best counts"
    )
    parser.add_argument("--modes", default="talk,dtx", help="loads to run (talk,dtx)")
    parser.add_argument(
        "--plain", action="store_true", help="listeners without TLS (loopback listener)"
    )
    parser.add_argument(
        "--batch-ms",
        type=float,
        default=BATCH_S * 1000,
        help="pause of a listener process after a short pass (2; 0 = none)",
    )
    args = parser.parse_args(argv)
    try:
        ladder = (
            tuple(sorted({int(n) for n in args.ladder.split(",") if n.strip()}))
            if args.ladder
            else (SMOKE_LADDER if args.smoke else QUICK_LADDER if args.quick else LADDER)
        )
    except ValueError:
        parser.error(f"--ladder: not a comma-separated list of integers: {args.ladder}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not ladder or ladder[0] < 1 or not modes or not set(modes) <= set(MODES):
        parser.error("--ladder must be positive integers; --modes a subset of talk,dtx")
    short = 1.0 if args.smoke else 3.0 if args.quick else 10.0
    duration = args.duration if args.duration is not None else short
    if duration <= 0:
        parser.error("--duration must be positive")
    return Config(
        ladder,
        duration,
        max(1, args.workers),
        max(1, args.repeat),
        modes,
        max(0.0, args.batch_ms),
        args.plain,
    )


# =====================================================================================
# The schedule, shared by speakers and listeners
# =====================================================================================


def sends(mode: str, speaker: int, k: int) -> tuple[bool, bool]:
    """(sent, talking) for packet slot ``k`` of speaker number ``speaker``."""
    if mode == "talk":
        return True, True
    talking = (k + speaker * DTX_CYCLE // SPEAKERS) % DTX_CYCLE < DTX_TALK
    return talking or k % DTX_SILENT_EVERY == 0, talking


def packets() -> tuple[list[bytes], list[bytes]]:
    """Real Opus packets (48 kHz, 20 ms, FEC and DTX on): (talk, silence).

    Talk is a voiced buzz (harmonics of 140 Hz at a syllable rate of 4 Hz, a little
    noise); silence is room noise at about -60 dBFS, of which only the packets DTX
    does not suppress (more than 2 bytes) are kept.
    """
    rate, n = 48_000, 960
    rng = np.random.default_rng(7)
    t = np.arange(rate * 2) / rate
    voiced = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    speech = 6000 * voiced * envelope + rng.normal(0, 300, t.size)
    quiet = rng.normal(0, 30, rate * 4)
    encoder = opus.Encoder(dtx=True)
    talk = [
        encoder.encode(np.ascontiguousarray(speech[i : i + n], dtype=np.int16))
        for i in range(0, speech.size, n)
    ]
    hush = [
        encoder.encode(np.ascontiguousarray(quiet[i : i + n], dtype=np.int16))
        for i in range(0, quiet.size, n)
    ]
    silence = [p for p in hush if len(p) > 2] or talk[:1]
    return [p for p in talk if len(p) > 2], silence


# =====================================================================================
# Speakers: one process, four GoChatClients
# =====================================================================================


@dataclass(frozen=True, slots=True)
class Account:
    """What a process needs to log a user in over TLS."""

    user: str
    password: str


class Speakers:
    """The host and three speakers, seated with their microphones on."""

    def __init__(self, host: str, port: int, ca_file: Path, accounts: list[Account]) -> None:
        self.clients = [
            GoChatClient(host, port, a.user, a.password, timeout_s=20.0, tls_ca_file=ca_file)
            for a in accounts
        ]
        self.sealers: list[voice.Sealer] = []
        self.ts0 = [secrets.randbits(32) for _ in accounts]
        self.seq = [secrets.randbits(16) for _ in accounts]
        self.talk, self.silence = packets()
        self.room_id = ""
        self._stop = threading.Event()
        self._heartbeats = threading.Thread(target=self._beat, name="heartbeats", daemon=True)

    def seat(self) -> str:
        """Create the room and seat everyone; returns the room id."""
        for client in self.clients:
            client.connect().login(client.user_id[:32])
        host, *others = self.clients
        created = host.call("create_room", subject="fan-out", max_seats=8)
        self.room_id = created["room"]["room_id"]
        media = [created["media"]]
        for client in others:
            media.append(client.call("login_room", room_id=self.room_id)["media"])
            invitation = host.call("invite_onstage", room_id=self.room_id, user_id=client.user_id)
            client.call(
                "response_onstage_invite",
                room_id=self.room_id,
                invitation_id=invitation["invitation_id"],
                accept=True,
            )
        for client, key in zip(self.clients, media, strict=True):
            sealer = voice.Sealer(topics.audio(self.room_id, client.user_id))
            sealer.set_key(int(key["epoch"]), base64.b64decode(key["key"]))
            sealer.open_capture()
            self.sealers.append(sealer)
        self._heartbeats.start()
        return self.room_id

    def run(self, mode: str, base: float, start: float, end: float) -> dict[str, Any]:
        """Send every packet due in [start, end) on the schedule; returns counts."""
        slots = sorted(
            (base + j * STAGGER_S + k * PACKET_S, j, k)
            for j in range(SPEAKERS)
            for k in range(
                math.ceil((start - base - j * STAGGER_S) / PACKET_S),
                math.ceil((end - base - j * STAGGER_S) / PACKET_S),
            )
        )
        sent = [0] * SPEAKERS
        lag_max = 0.0
        for due, j, k in slots:
            send, talking = sends(mode, j, k)
            if not send:
                continue
            self._take_keys(j)
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            pool = self.talk if talking else self.silence
            packet = pool[k % len(pool)]
            frame = self.sealers[j].seal(
                self.seq[j],
                self.ts0[j] + k * TS_PER_PACKET,
                packet,
                fec=opus.packet_has_fec(packet),
            )
            self.seq[j] = (self.seq[j] + 1) & 0xFFFF
            self.clients[j].publish_raw(self.sealers[j].topic, frame, qos=0)
            sent[j] += 1
            lag_max = max(lag_max, time.monotonic() - due)
        return {"sent": sent, "lag_max_s": lag_max, "epochs": [s.epoch for s in self.sealers]}

    def _take_keys(self, j: int) -> None:
        for push in media_key_pushes(self.clients[j], self.room_id):
            self.sealers[j].set_key(push.epoch, base64.b64decode(push.key))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for client in self.clients:
                with contextlib.suppress(Exception):
                    client.call("heartbeat")

    def close(self) -> None:
        """Stop heartbeats and disconnect."""
        self._stop.set()
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()


def speakers_main(
    host: str, port: int, ca_file: Path, accounts: list[Account], pipe: Connection
) -> None:
    """The speakers' process: seat them, report the schedule, then run on command."""
    speakers = Speakers(host, port, ca_file, accounts)
    try:
        room_id = speakers.seat()
        base = time.monotonic() + 1.0
        schedule = {
            topics.audio(room_id, a.user): (speakers.ts0[j], base + j * STAGGER_S)
            for j, a in enumerate(accounts)
        }
        pipe.send({"room_id": room_id, "base": base, "schedule": schedule})
        while True:
            command, arguments = pipe.recv()
            if command == "stop":
                return
            pipe.send(speakers.run(*arguments))
    except Exception as exc:  # reported to the coordinator, which fails the run
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        speakers.close()


# =====================================================================================
# Listeners: a minimal MQTT 5 client, many per process
# =====================================================================================


def varint(value: int) -> bytes:
    """An MQTT variable byte integer."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(buf: bytearray | bytes, pos: int) -> tuple[int, int] | None:
    """(value, next position) of the variable byte integer at ``pos``; None if the
    buffer ends first."""
    value, shift = 0, 0
    while pos < len(buf):
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    return None


def mqtt_str(text: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string (or binary data)."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def packet(first: int, body: bytes) -> bytes:
    """A control packet: fixed header, remaining length, ``body``."""
    return bytes([first]) + varint(len(body)) + body


def connect_packet(user: str, password: str) -> bytes:
    """CONNECT: MQTT 5, Clean Start, username and password, client id = username."""
    flags = 0x80 | 0x40 | 0x02
    body = mqtt_str("MQTT") + bytes([5, flags]) + KEEPALIVE_S.to_bytes(2, "big") + b"\x00"
    return packet(0x10, body + mqtt_str(user) + mqtt_str(user) + mqtt_str(password))


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE with (topic filter, options byte) pairs."""
    body = packet_id.to_bytes(2, "big") + b"\x00"
    body += b"".join(mqtt_str(f) + bytes([options]) for f, options in filters)
    return packet(0x82, body)


def request_packet(user: str, packet_id: int, method: str, payload: bytes, corr: bytes) -> bytes:
    """A QoS 1 request (section 3.1): ResponseTopic and CorrelationData set."""
    props = b"\x08" + mqtt_str(topics.response(user)) + b"\x09" + mqtt_str(corr)
    body = mqtt_str(topics.request(user, method)) + packet_id.to_bytes(2, "big")
    return packet(0x32, body + varint(len(props)) + props + payload)


# Property identifiers by value type (MQTT 5 section 2.2.2.2), to skip or read them.
_PROP_SIZES = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
}


def correlation_of(props: bytes) -> bytes | None:
    """The CorrelationData in a block of properties, if any."""
    pos = 0
    while pos < len(props):
        ident = props[pos]
        pos += 1
        if ident in _PROP_SIZES:
            pos += _PROP_SIZES[ident]
        elif ident == 0x0B:
            parsed = read_varint(props, pos)
            pos = parsed[1] if parsed else len(props)
        elif ident == 0x26:  # user property: two strings
            for _ in range(2):
                pos += 2 + int.from_bytes(props[pos : pos + 2], "big")
        else:  # strings and binary data
            size = int.from_bytes(props[pos : pos + 2], "big")
            if ident == 0x09:
                return props[pos + 2 : pos + 2 + size]
            pos += 2 + size
    return None


@dataclass(slots=True)
class Listener:
    """One listener connection and where it is in its login."""

    index: int
    user: str
    sock: socket.socket  # an ssl.SSLSocket unless on the plain loopback listener
    stage: str = "login"  # login -> join -> joined (or failed)
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    writing: bool = False
    next_id: int = 1
    next_heartbeat: float = 0.0
    frames: int = 0  # in the current window

    def packet_id(self) -> int:
        """The next packet identifier (1..65535)."""
        value = self.next_id
        self.next_id = value % 0xFFFF + 1
        return value


@dataclass(slots=True)
class Tally:
    """What a listener process measured in one window."""

    hist: list[int] = field(default_factory=lambda: [0] * (HIST_MS + 1))
    frames: int = 0  # due inside the window
    outside: int = 0  # due outside it (earlier or later windows, stray)
    opened: int = 0
    open_failed: int = 0


class ListenerProcess:
    """Many :class:`Listener` on one selector, counting audio frames per window."""

    def __init__(self, host: str, port: int, ca_file: Path | None, pipe: Connection) -> None:
        self.host, self.port = host, port
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.pipe = pipe
        self.selector = selectors.DefaultSelector()
        self.selector.register(pipe.fileno(), READ, None)
        self.listeners: list[Listener] = []
        self.room_id = ""
        self.schedule: dict[bytes, tuple[int, float]] = {}  # audio topic -> (ts0, t0)
        self.opener = voice.Opener()
        self.newest_epoch = 0
        self.window: tuple[float, float] | None = None
        self.tally = Tally()
        self.seen = 0  # audio frames received, for the sampled check
        self.errors: list[str] = []
        self.codes: dict[int, int] = {}  # non-zero response codes
        self.disconnects = 0
        self.adding: list[Listener] = []
        self.adding_deadline = math.inf
        self.last_packet = 0.0  # when the last PUBLISH of any kind arrived
        self.draining: tuple[float, float] | None = None  # (quiet s wanted, deadline)
        self.reported = 0  # window frames counted when the tally was reported
        self.batch_s = BATCH_S
        self.stopped = False

    # --- commands from the coordinator -----------------------------------------------

    def serve(self) -> None:
        """The loop: sockets, the coordinator's pipe, heartbeats; until ``stop``."""
        next_beat = 0.0
        while not self.stopped:
            events = self.selector.select(0.2)
            began = time.monotonic()
            for key, mask in events:
                if key.data is None:
                    self.command(*self.pipe.recv())
                    continue
                listener: Listener = key.data
                if mask & WRITE:
                    self.flush(listener)
                if mask & READ:
                    self.receive(listener)
            now = time.monotonic()
            if events and now - began < self.batch_s:
                # A short pass: let packets gather, so that one wake-up, recv and parse
                # serve several (at most batch_s more measured delay; a process that
                # is behind never pauses).
                time.sleep(self.batch_s - (now - began))
                now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 0.5
                self.heartbeats(now)
            if self.adding and (
                now > self.adding_deadline
                or all(x.stage in ("joined", "failed") for x in self.adding)
            ):
                self.report_added()
            if self.draining is not None:
                self.check_quiet(now)

    def command(self, name: str, arguments: Any) -> None:
        """One command from the coordinator."""
        if name == "setup":
            self.room_id, self.schedule, self.batch_s = arguments
        elif name == "add":
            self.add(*arguments)
        elif name == "window":
            self.window, self.tally = arguments, Tally()
            for listener in self.listeners:
                listener.frames = 0
        elif name == "report":
            self.pipe.send(self.report())
            self.reported = self.tally.frames
        elif name == "drain":
            quiet_s, timeout_s = arguments
            self.draining = (quiet_s, time.monotonic() + timeout_s)
        elif name == "stop":
            self.stopped = True

    def add(self, accounts: list[Account], rate: float) -> None:
        """Connect ``accounts`` at ``rate`` per second, each then logging in and joining
        (pipelined: the answers are handled by the loop)."""
        pause = 1.0 / rate
        self.adding_deadline = time.monotonic() + len(accounts) * pause + 60.0
        for account in accounts:
            started = time.monotonic()
            try:
                listener = self.open(account)
            except (OSError, BenchError) as exc:
                self.errors.append(f"{account.user}: {exc}")
                continue
            self.listeners.append(listener)
            self.adding.append(listener)
            self.send(listener, self.request(listener, "login", {"name": listener.user}))
            # Serve what is already connected while pacing the next connect.
            while (left := started + pause - time.monotonic()) > 0:
                for key, mask in self.selector.select(left):
                    if key.data is not None:
                        if mask & WRITE:
                            self.flush(key.data)
                        if mask & READ:
                            self.receive(key.data)
        if not self.adding:
            self.report_added()

    def report_added(self) -> None:
        """Tell the coordinator how the last ``add`` went."""
        joined = sum(x.stage == "joined" for x in self.adding)
        failed = len(self.adding) - joined
        self.pipe.send({"joined": joined, "failed": failed, "errors": self.errors[-5:]})
        self.adding = []

    def check_quiet(self, now: float) -> None:
        """Answer a ``drain`` once nothing has arrived for the time asked (or at its
        deadline): with the window's frames that came after its report (late), and
        whether it got quiet at all. The window closes then."""
        assert self.draining is not None
        quiet_s, deadline = self.draining
        quiet = now - self.last_packet >= quiet_s
        if quiet or now > deadline:
            late = self.tally.frames - self.reported if self.window is not None else 0
            self.pipe.send({"late": late, "quiet": quiet})
            self.draining, self.window, self.reported = None, None, 0

    def report(self) -> dict[str, Any]:
        """The window's tally, with this process's CPU time so far."""
        frames = [x.frames for x in self.listeners if x.stage == "joined"]
        return {
            "hist": self.tally.hist,
            "frames": self.tally.frames,
            "outside": self.tally.outside,
            "opened": self.tally.opened,
            "open_failed": self.tally.open_failed,
            "listeners": len(frames),
            "min_frames": min(frames, default=0),
            "codes": dict(self.codes),
            "disconnects": self.disconnects,
        }

    # --- connections ------------------------------------------------------------------

    def open(self, account: Account) -> Listener:
        """TCP, TLS, CONNECT/CONNACK and the personal subscriptions, blocking (setup
        only: no audio is being measured meanwhile); then non-blocking."""
        raw = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.context.wrap_socket(raw, server_hostname=self.host) if self.context else raw
        listener = Listener(len(self.listeners), account.user, sock)
        sock.sendall(connect_packet(account.user, account.password))
        connack = self.read_packet(listener, 0x20)
        if len(connack) < 2 or connack[1] != 0:
            sock.close()
            raise BenchError(f"CONNACK reason {connack[1:2].hex()}")
        personal = [(topics.response(account.user), 1), (topics.inbox(account.user), 1)]
        sock.sendall(subscribe_packet(listener.packet_id(), personal))
        self.read_packet(listener, 0x90)
        sock.setblocking(False)
        self.selector.register(sock, READ, listener)
        return listener

    def read_packet(self, listener: Listener, kind: int) -> bytes:
        """Blocking: the body of the next packet of type ``kind`` (others are dropped)."""
        while True:
            parsed = read_varint(listener.rbuf, 1) if len(listener.rbuf) >= 2 else None
            if parsed is not None and len(listener.rbuf) >= parsed[1] + parsed[0]:
                size, start = parsed
                first, body = listener.rbuf[0], bytes(listener.rbuf[start : start + size])
                del listener.rbuf[: start + size]
                if first & 0xF0 == kind:
                    return body
                continue
            data = listener.sock.recv(65536)
            if not data:
                raise BenchError("connection closed during setup")
            listener.rbuf += data

    def request(self, listener: Listener, method: str, payload: dict[str, Any]) -> bytes:
        """A request packet; the correlation data names the method."""
        corr = f"{method}:{secrets.token_hex(4)}".encode()
        data = json.dumps(payload).encode()
        return request_packet(listener.user, listener.packet_id(), method, data, corr)

    def send(self, listener: Listener, data: bytes) -> None:
        """Queue ``data`` and write what the socket takes."""
        listener.wbuf += data
        self.flush(listener)

    def flush(self, listener: Listener) -> None:
        """Write queued bytes; wait for EVENT_WRITE only while some are left."""
        try:
            while listener.wbuf:
                sent = listener.sock.send(listener.wbuf)
                del listener.wbuf[:sent]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        except OSError:
            self.drop(listener)
            return
        want = bool(listener.wbuf)
        if want != listener.writing:
            listener.writing = want
            self.selector.modify(listener.sock, READ | (WRITE if want else 0), listener)

    def drop(self, listener: Listener) -> None:
        """The broker closed the connection (counted; the listener is lost)."""
        if listener.stage == "gone":
            return
        self.disconnects += 1
        listener.stage = "failed" if listener.stage != "joined" else "gone"
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(listener.sock)
        listener.sock.close()

    def heartbeats(self, now: float) -> None:
        """``heartbeat`` every 10 s per joined listener (section 6.4)."""
        for listener in self.listeners:
            if listener.stage == "joined" and now >= listener.next_heartbeat:
                listener.next_heartbeat = now + HEARTBEAT_S
                self.send(listener, self.request(listener, "heartbeat", {}))

    # --- receiving --------------------------------------------------------------------

    def receive(self, listener: Listener) -> None:
        """Read everything the socket has, then handle each complete packet."""
        buf = listener.rbuf
        try:
            while True:
                data = listener.sock.recv(262144)
                if not data:
                    self.drop(listener)
                    return
                buf += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except OSError:
            self.drop(listener)
            return
        now = self.last_packet = time.monotonic()
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 2:
            parsed = read_varint(buf, pos + 1)
            if parsed is None or parsed[1] + parsed[0] > end_of_data:
                break
            size, start = parsed
            first, pos = buf[pos], start + size
            if first >> 4 == 3:
                self.publish(listener, first, start, pos, now)
        del buf[:pos]

    def publish(self, listener: Listener, first: int, start: int, end: int, now: float) -> None:
        """One incoming PUBLISH (at ``start:end`` of the read buffer): audio is counted,
        the rest handled."""
        buf = listener.rbuf
        cut = start + 2 + ((buf[start] << 8) | buf[start + 1])
        topic = bytes(buf[start + 2 : cut])
        if first & 0x06:  # QoS 1: acknowledge
            packet_id = bytes(buf[cut : cut + 2])
            self.send(listener, b"\x40\x02" + packet_id)
            cut += 2
        parsed = read_varint(buf, cut)
        if parsed is None:
            return
        props_end = parsed[1] + parsed[0]
        timing = self.schedule.get(topic)
        if timing is not None:
            self.audio(listener, topic, timing, bytes(buf[props_end:end]), now)
            return
        props = bytes(buf[parsed[1] : props_end])
        self.control(listener, topic, props, bytes(buf[props_end:end]))

    def audio(
        self, listener: Listener, topic: bytes, timing: tuple[int, float], frame: bytes, now: float
    ) -> None:
        """Count one frame and its delay against the due time of its slot."""
        ts0, t0 = timing
        due = t0 + ((int.from_bytes(frame[4:8], "big") - ts0) & U32) / 48_000
        window, tally = self.window, self.tally
        if window is None or not window[0] <= due < window[1]:
            tally.outside += 1
            return
        tally.frames += 1
        listener.frames += 1
        delay_ms = int((now - due) * 1000)
        tally.hist[min(max(delay_ms, 0), HIST_MS)] += 1
        self.seen += 1
        if self.seen % VERIFY_EVERY == 0:
            try:
                self.opener.open(frame, topic.decode())
                tally.opened += 1
            except voice.VoiceError:
                tally.open_failed += 1

    def control(self, listener: Listener, topic: bytes, props: bytes, payload: bytes) -> None:
        """Responses (login -> join), inbox keys; room states are only acknowledged."""
        name = topic.decode()
        if name == topics.inbox(listener.user):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                command = json.loads(payload)
                if command.get("type") == "media_key" and command.get("room_id") == self.room_id:
                    self.take_key(command)
            return
        if name != topics.response(listener.user):
            return
        corr = correlation_of(props) or b""
        method = corr.split(b":", 1)[0].decode(errors="replace")
        try:
            answer = json.loads(payload)
            code = int(answer["code"])
        except (ValueError, KeyError, TypeError):
            code = -1
        if code != 0:
            self.codes[code] = self.codes.get(code, 0) + 1
            if listener.stage in ("login", "join"):
                self.errors.append(f"{listener.user}: {method} answered {payload[:120]!r}")
                listener.stage = "failed"
            return
        if method == "login" and listener.stage == "login":
            listener.stage = "join"
            shared = [
                (topics.room_state(self.room_id), 1),
                (topics.room_audio_all(self.room_id), 0x04),  # QoS 0, No Local
            ]
            self.send(listener, subscribe_packet(listener.packet_id(), shared))
            self.send(listener, self.request(listener, "login_room", {"room_id": self.room_id}))
        elif method == "login_room" and listener.stage == "join":
            self.take_key(answer["data"]["media"])
            listener.stage = "joined"
            listener.next_heartbeat = time.monotonic() + HEARTBEAT_S

    def take_key(self, media: dict[str, Any]) -> None:
        """Keep a voice key (every listener here is in the same room: one keyring)."""
        epoch = int(media["epoch"])
        if epoch > self.newest_epoch:
            self.opener.add_key(epoch, base64.b64decode(media["key"]))
            self.newest_epoch = epoch


def listeners_main(host: str, port: int, ca_file: Path | None, pipe: Connection) -> None:
    """A listener process: serve until told to stop."""
    raise_open_files_limit()
    process = ListenerProcess(host, port, ca_file, pipe)
    try:
        process.serve()
    except Exception as exc:  # reported to the coordinator, which fails the run
        with contextlib.suppress(OSError):
            pipe.send({"error": f"{type(exc).__name__}: {exc}"})


# =====================================================================================
# Coordinator
# =====================================================================================


@dataclass(slots=True)
class Step:
    """One measurement: N listeners, one load."""

    listeners: int
    mode: str
    duration_s: float
    sent: int  # frames the speakers sent in the window
    lag_max_s: float  # the speakers' worst send lag behind the schedule
    hist: list[int]
    received: int  # within the window and its grace
    late: int  # after that, while draining the broker's backlog
    quiet: bool  # whether the backlog drained within DRAIN_TIMEOUT_S
    opened: int
    open_failed: int
    min_frames: int  # the least any one listener received
    codes: dict[int, int]
    disconnects: int
    broker_cpu_pct: float
    broker_rss: int
    others_cpu_pct: float  # server and speakers
    listeners_cpu_pct: list[float]
    machine_busy_pct: float
    load_avg: float

    @property
    def expected(self) -> int:
        """Frames that should have arrived: every frame sent, at every listener."""
        return self.sent * self.listeners

    @property
    def on_time(self) -> float:
        """The fraction of expected frames that arrived within ``HOLD_MS``."""
        return sum(self.hist[: HOLD_MS + 1]) / self.expected if self.expected else 0.0

    @property
    def holds(self) -> bool:
        """Whether this step meets the bar."""
        return self.on_time >= HOLD_FRACTION

    @property
    def broker_us_per_delivery(self) -> float:
        """Mosquitto's CPU time per frame delivered to one listener (µs)."""
        rate = (self.received + self.late) / self.duration_s
        return self.broker_cpu_pct / 100 / rate * 1e6 if rate else math.nan

    def delay_ms(self, q: float) -> float:
        """The ``q`` quantile of the delay (ms), a missing frame counting as infinite."""
        need, total = q * self.expected, 0
        for ms, count in enumerate(self.hist):
            total += count
            if total >= need and ms < HIST_MS:
                return float(ms)
        return math.inf


class Bench:
    """Owns the broker, the server, the speakers' and the listeners' processes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stack = contextlib.ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix="gochat-fanout-"))
        self.stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.broker = Broker(self.tmp / "broker", persistence=False)
        self.server: ServerProcess | None = None
        self.speaker_pipe: Connection | None = None
        self.pipes: list[Connection] = []
        self.pids: list[int] = []
        self.base = 0.0
        self.listeners = 0

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stack.close()

    def setup(self) -> None:
        """Broker, server, the seated speakers, idle listener processes."""
        speakers = [f"spk-{j}" for j in range(SPEAKERS)]
        self.broker.add_users(topics.SERVER_USER_ID, *speakers)
        self.broker.start()
        self.stack.callback(self.broker.stop)
        self.server = ServerProcess(self.broker, self.tmp / "server.db", self.tmp / "server.log")
        self.stack.callback(self._stop_server)
        try:
            self.server.start()
        except TimeoutError as exc:
            raise BenchError(f"server did not start: {exc}") from None
        accounts = [Account(u, self.broker.password(u)) for u in speakers]
        args: tuple[Any, ...] = (self.broker.host, self.broker.port, self.broker.ca_file)
        self.speaker_pipe = self._spawn(speakers_main, (*args, accounts), "speakers")
        ready = self._receive(self.speaker_pipe, 60.0)
        self.base = ready["base"]
        log(f"room {ready['room_id']}: 4 speakers seated; broker pid {self.broker.pid}")
        for k in range(self.config.workers):
            where = (self.broker.host, self.broker.plain_port, None) if self.config.plain else args
            pipe = self._spawn(listeners_main, where, f"listeners-{k}")
            setup = (ready["room_id"], _encoded(ready["schedule"]), self.config.batch_ms / 1000)
            pipe.send(("setup", setup))
            self.pipes.append(pipe)

    def _spawn(self, target: Any, args: tuple[Any, ...], name: str) -> Connection:
        ours, theirs = mp.Pipe()
        process = mp.get_context("fork").Process(
            target=target, args=(*args, theirs), name=name, daemon=True
        )
        process.start()
        self.pids.append(process.pid or 0)

        def end() -> None:
            with contextlib.suppress(OSError, BrokenPipeError):
                ours.send(("stop", None))
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)

        self.stack.callback(end)
        return ours

    @staticmethod
    def _receive(pipe: Connection, timeout_s: float) -> Any:
        if not pipe.poll(timeout_s):
            raise BenchError(f"no answer within {timeout_s:.0f} s")
        answer = pipe.recv()
        if isinstance(answer, dict) and "error" in answer:
            raise BenchError(answer["error"])
        return answer

    def grow(self, total: int) -> None:
        """Add listeners until there are ``total``, joined to the room."""
        names = [f"lis-{i:05d}" for i in range(self.listeners, total)]
        if not names:
            return
        started = time.monotonic()
        passwords = self.broker.add_load_users(names)
        workers = len(self.pipes)
        rate = JOIN_RATE / workers
        for k, pipe in enumerate(self.pipes):
            share = [Account(n, passwords[n]) for n in names[k::workers]]
            pipe.send(("add", (share, rate)))
        answers = [self._receive(p, len(names) / JOIN_RATE * 2 + 120) for p in self.pipes]
        joined = sum(a["joined"] for a in answers)
        if joined != len(names):
            errors = [e for a in answers for e in a["errors"]]
            raise BenchError(f"{len(names) - joined} of {len(names)} listeners failed: {errors}")
        self.listeners = total
        took = time.monotonic() - started
        time.sleep(SETTLE_S)
        _, quiet = self.drain()
        log(
            f"{total:,} listeners in the room ({len(names):,} joined in {took:.1f} s"
            f"{'' if quiet else '; still receiving room traffic'})"
        )

    def measure(self, mode: str) -> Step:
        """One window of ``mode`` audio at the current number of listeners."""
        assert self.speaker_pipe is not None
        duration = self.config.duration_s
        start = time.monotonic() + 0.5
        end = start + duration
        for pipe in self.pipes:
            pipe.send(("window", (start, end)))
        watched = self._watched()
        cpu0 = [process_cpu_seconds(p) for p in watched]
        busy0, all0 = machine_cpu_seconds()
        t0 = time.monotonic()
        self.speaker_pipe.send(("run", (mode, self.base, start, end)))
        spoken = self._receive(self.speaker_pipe, duration + 30)
        time.sleep(GRACE_S)
        cpu1 = [process_cpu_seconds(p) for p in watched]
        busy1, all1 = machine_cpu_seconds()
        wall = time.monotonic() - t0
        rss = process_rss_bytes(watched[0])
        for pipe in self.pipes:
            pipe.send(("report", None))
        reports = [self._receive(p, 30) for p in self.pipes]
        late, quiet = self.drain()
        if not self.broker.running:
            raise BenchError(f"the broker exited\n{self.broker.log_text()[-2000:]}")
        hist = [sum(col) for col in zip(*(r["hist"] for r in reports), strict=True)]
        pct = [(b - a) / wall * 100 for a, b in zip(cpu0, cpu1, strict=True)]
        codes: dict[int, int] = {}
        for r in reports:
            for code, n in r["codes"].items():
                codes[code] = codes.get(code, 0) + n
        return Step(
            # All that joined, connected or not: a dropped listener's frames are lost.
            listeners=self.listeners,
            mode=mode,
            duration_s=duration,
            sent=sum(spoken["sent"]),
            lag_max_s=spoken["lag_max_s"],
            hist=hist,
            received=sum(r["frames"] for r in reports),
            late=late,
            quiet=quiet,
            opened=sum(r["opened"] for r in reports),
            open_failed=sum(r["open_failed"] for r in reports),
            min_frames=min(r["min_frames"] for r in reports),
            codes=codes,
            disconnects=sum(r["disconnects"] for r in reports),
            broker_cpu_pct=pct[0],
            broker_rss=rss,
            others_cpu_pct=pct[1] + pct[2],
            listeners_cpu_pct=pct[3:],
            machine_busy_pct=(busy1 - busy0) / max(all1 - all0, 1e-9) * 100,
            load_avg=os.getloadavg()[0],
        )

    def _watched(self) -> list[int]:
        """Broker, server, speakers, then the listener processes."""
        server = self.server.proc.pid if self.server and self.server.proc else 0
        return [self.broker.pid or 0, server, *self.pids]

    def drain(self) -> tuple[int, bool]:
        """Wait until no listener has received anything for ``QUIET_S`` (a backlog in
        the broker from the last step would otherwise spill into the next); returns
        the last window's frames that arrived only now, and whether all got quiet."""
        for pipe in self.pipes:
            pipe.send(("drain", (QUIET_S, DRAIN_TIMEOUT_S)))
        answers = [self._receive(p, DRAIN_TIMEOUT_S + 30) for p in self.pipes]
        return sum(a["late"] for a in answers), all(a["quiet"] for a in answers)

    def _stop_server(self) -> None:
        if self.server is not None and self.server.proc is not None:
            self.server.stop()


def _encoded(schedule: dict[str, tuple[int, float]]) -> dict[bytes, tuple[int, float]]:
    return {topic.encode(): timing for topic, timing in schedule.items()}


# =====================================================================================
# Report
# =====================================================================================


def ms_cell(value: float) -> str:
    """A delay for a table cell."""
    return "lost" if math.isinf(value) else f"{value:.0f} ms"


def step_row(step: Step, attempts: list[Step]) -> list[str]:
    """One table row."""
    tries = " / ".join(f"{s.on_time * 100:.2f}" for s in attempts)
    verdict = "holds" if step.holds else "**fails**"
    return [
        f"{step.listeners:,}",
        step.mode,
        f"{step.sent / step.duration_s:.0f}",
        f"{step.received / step.duration_s:,.0f}",
        f"{step.on_time * 100:.2f} % ({verdict})" + (f" [{tries}]" if len(attempts) > 1 else ""),
        f"{ms_cell(step.delay_ms(0.5))} / {ms_cell(step.delay_ms(0.99))} / "
        f"{ms_cell(step.delay_ms(0.999))}",
        f"{step.broker_cpu_pct:.0f} % / {step.broker_rss / 2**20:.0f} MiB",
        f"{step.broker_us_per_delivery:.1f} µs",
        " + ".join(f"{p:.0f}" for p in step.listeners_cpu_pct) + " %",
        f"{step.others_cpu_pct:.0f} %",
        f"{step.machine_busy_pct:.0f} % / {step.load_avg:.2f}",
        f"{step.lag_max_s * 1000:.0f} ms",
        f"{step.late:,}" + ("" if step.quiet else " (backlog left)"),
        f"{step.opened:,} / {step.open_failed:,}",
    ]


HEADERS = [
    "Listeners",
    "Load",
    "Frames/s sent",
    "Deliveries/s",
    f"Within {HOLD_MS} ms (≥ {HOLD_FRACTION * 100:.1f} %)",
    "Delay p50 / p99 / p99.9",
    "Mosquitto CPU / RSS",
    "Mosquitto CPU per delivery",
    "Listener procs CPU",
    "Server + speakers CPU",
    "Machine busy / load avg",
    "Speaker lag max",
    "Frames later than 1 s",
    "Frames opened ok / failed",
]


def largest_holding(steps: list[Step], mode: str) -> str:
    """The largest N that held, below the first that failed."""
    best = None
    for step in (s for s in steps if s.mode == mode):
        if not step.holds:
            return f"{best:,}" if best else f"below {step.listeners:,}"
        best = step.listeners
    return f"{best:,} (the largest tried; it held)" if best else "n/a"


def ceiling(steps: list[Step], mode: str) -> str:
    """The listener count at which Mosquitto alone would use a whole core, from its
    median CPU per delivery over the steps of ``mode`` (a projection for a broker
    with a core to itself: delays grow well before that)."""
    costs = sorted(
        s.broker_us_per_delivery
        for s in steps
        if s.mode == mode and s.received > 1_000 and not math.isnan(s.broker_us_per_delivery)
    )
    if not costs:
        return "n/a"
    cost = costs[len(costs) // 2]
    rate = next(s.sent / s.duration_s for s in steps if s.mode == mode)
    return f"≈ {1e6 / cost / rate:,.0f} ({cost:.1f} µs per delivery, {rate:.0f} frames/s)"


def print_report(config: Config, steps: list[Step], attempts: dict[int, list[Step]]) -> None:
    """Everything, as Markdown, on stdout."""
    print(
        f"\nOne room, {SPEAKERS} seated speakers (20 ms Opus packets, sealed frame v2, "
        f"QoS 0), N listeners over {config.workers} listener processes, all over TLS "
        f"(the shipped Mosquitto configuration). {config.duration_s:.0f} s of audio per "
        f"measurement. **talk**: all speakers talk; **dtx**: each is silent 90 % of the "
        "time and then sends 1 packet/s. Delay = arrival minus the packet's due time on "
        "the speakers' schedule; a frame not received counts as lost (infinitely late). "
        "CPU in % of one core over the window; Mosquitto is single-threaded, so ~100 % "
        "is its ceiling.\n"
    )
    rows = [step_row(s, attempts[id(s)]) for s in steps]
    print(markdown_table(HEADERS, rows))
    summary = [[mode, largest_holding(steps, mode), ceiling(steps, mode)] for mode in config.modes]
    heads = [
        "Load",
        f"Largest N with ≥ {HOLD_FRACTION * 100:.1f} % within {HOLD_MS} ms (measured)",
        "N at which Mosquitto alone would fill one core (projected)",
    ]
    print(markdown_table(heads, summary))
    bad = {code: n for s in steps for code, n in s.codes.items()}
    lost = sum(s.disconnects for s in steps[-1:])
    if bad or lost:
        print(f"Non-zero response codes: {bad or 'none'}; listener disconnects: {lost}\n")


def run(config: Config) -> int:
    """Set up, walk the ladder, report, clean up."""
    print(machine_header("GoChat fan-out benchmark: how big a room one broker carries"))
    steps: list[Step] = []
    attempts: dict[int, list[Step]] = {}
    with Bench(config) as bench:
        bench.setup()
        active = list(config.modes)
        for total in config.ladder:
            if not active:
                break
            bench.grow(total)
            for mode in list(active):
                tries = [bench.measure(mode) for _ in range(config.repeat)]
                best = max(tries, key=lambda s: s.on_time)
                attempts[id(best)] = tries
                steps.append(best)
                log(
                    f"{total:,} listeners, {mode}: {best.on_time * 100:.2f} % within "
                    f"{HOLD_MS} ms; Mosquitto {best.broker_cpu_pct:.0f} % CPU, "
                    f"{best.broker_rss / 2**20:.0f} MiB; load {best.load_avg:.2f}"
                )
                if not best.holds:
                    active.remove(mode)
        print_report(config, steps, attempts)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    config = parse_args(argv)
    limit = raise_open_files_limit()  # before the broker starts: mosquitto inherits it
    if limit < max(config.ladder) + 256:
        log(f"warning: open-files limit {limit} is low for {max(config.ladder)} listeners")
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
