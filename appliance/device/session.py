"""The daemon's MQTT side: one paho-mqtt 2 client, its network thread, and reconnects.

Events in, effects out
----------------------
Everything the broker tells us becomes an :mod:`~appliance.device.events` value handed
to the event loop with ``call_soon_threadsafe`` (``Connected``, ``Disconnected``,
``RoomStateReceived``, ``InboxReceived``, ``ResponseReceived``, ``RequestUndelivered``,
``PublishRefused``); the daemon carries the machine's MQTT effects out through
:meth:`MqttSession.send_request`, :meth:`~MqttSession.subscribe_room` and
:meth:`~MqttSession.unsubscribe_room`. Malformed pushes are dropped and counted
(:attr:`MqttSession.counters`), never raised.

Audio frames never touch the event loop: they go from paho's network thread straight
to the :class:`~appliance.device.audio_port.AudioPort` (``on_frame``), and the audio
side publishes with the thread-safe :meth:`MqttSession.publish_audio`.

The network thread
------------------
paho's own reconnect waits a fixed doubling delay with no jitter, so after a broker
restart every device would come back in the same instant. This module runs its own
thread instead, driving paho's documented external-loop API (``loop_read``,
``loop_write``, ``loop_misc``, ``want_write``) around a ``select`` that a
:func:`socket.socketpair` can wake:

* Every connection attempt uses a **fresh client**. paho keeps unacknowledged QoS 1
  messages and re-sends them on reconnect; a request the machine has already given up
  on must not reach the server later on a new session, so nothing survives a
  connection but the settings.
* Between attempts it waits :func:`backoff_delay` (jittered, 1 s doubling to 30 s),
  reset once a connection was accepted.
* A **session taken over** (DISCONNECT 0x8E: another client connected with our
  identity, a cloned SD card or a copied password file) is not an outage. Mosquitto
  2.0.11 closes the old connection without sending that DISCONNECT, so two accepted
  connections closed by the broker without a word within a minute count as a
  takeover too (and so does every such close within 30 minutes of a takeover). Reconnecting
  at once would throw the other device off in turn, for ever. The session logs one
  line ("another device is using the identity ..."), the machine shows the error
  pattern, and the next attempt waits 60-120 s, doubling with every takeover up to
  7.5-15 minutes; the count is forgotten only after a connection that lasted 30
  minutes. The two devices then take turns, ever more rarely, instead of fighting.
* Only this thread writes to the socket. Other threads (the event loop, the audio
  capture thread) queue packets with ``publish`` and wake it; paho would otherwise
  write from the publishing thread too, and two writers can interleave a partial
  write on the TCP stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from appliance.device.events import (
    Connected,
    Disconnected,
    Event,
    InboxReceived,
    PublishRefused,
    RequestUndelivered,
    ResponseReceived,
    RoomStateReceived,
)
from appliance.mqtt import backoff_delay, explain_error, make_client, publish_properties
from appliance.paho_internals import RawPublish, hook_incoming_publish, queue_qos0_publish
from appliance.protocol import topics
from appliance.protocol.models import Request, Response, RoomState, parse_inbox
from appliance.settings import BrokerSettings

log = logging.getLogger("gochat.device.mqtt")

FrameSink = Callable[[str, str, bytes, float], None]
"""``on_frame(room_id, user_id, payload, arrival)``, called on the network thread."""

NO_MATCHING_SUBSCRIBERS = 0x10
SESSION_TAKEN_OVER = 0x8E
TAKEOVER_FIRST_S = 120.0
"""After the first takeover the device waits 60-120 s; each further one doubles that."""
TAKEOVER_MAX_S = 900.0
"""... up to 7.5-15 minutes between attempts."""
TAKEOVER_FORGET_S = 1800.0
"""A connection that lasted this long resets the takeover count."""
SILENT_CLOSES_WINDOW_S = 60.0
"""Two accepted connections the broker closed without a word within this window mean
a takeover (brokers that do not send DISCONNECT 0x8E, such as Mosquitto 2.0.11)."""
SELECT_TIMEOUT_S = 1.0
"""Longest sleep of the network thread: keepalive pings are due at this resolution."""
CORRELATION_PREFIX_BYTES = 8
TAG_BYTES = 8
AUDIO_FILTER = f"{topics.ROOT}/room/+/audio/+"


_ROOM_PREFIX = f"{topics.ROOT}/room/".encode()
_AUDIO_LEVEL = b"/audio/"


@dataclass(frozen=True, slots=True)
class _Sent:
    """A QoS 1 publish awaiting its PUBACK."""

    what: str
    tag: int | None = None


class MqttSession:
    """The device's broker connection (see the module docstring).

    ``on_event`` runs on ``loop``; ``on_frame`` on the network thread. Build it on the
    loop's thread: the constructor reads the password file, so an unreadable one
    fails here, at start, not on the network thread.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        user_id: str,
        *,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[Event], object],
        on_frame: FrameSink,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.user_id = user_id
        self.counters: Counter[str] = Counter()
        """Loop-thread counters: drops, refusals, connections (see :meth:`stats`)."""
        self._broker = broker
        self._loop = loop
        self._on_event = on_event
        self._on_frame = on_frame
        self._rng = rng
        self._resp_topic = topics.response(user_id)
        self._inbox_topic = topics.inbox(user_id)
        self._presence_topic = topics.presence(user_id)
        self._prefix = os.urandom(CORRELATION_PREFIX_BYTES)
        self._client = self._new_client()  # fails early on an unreadable password file
        self._room: str | None = None
        self._link_up = False
        self._closing = False
        self._reported: str | None = None  # "up" / "down" / "refused", network thread
        self._refused_now = False  # this attempt was refused (network thread)
        self._was_up = False  # this attempt was accepted (network thread)
        self._taken_over_now = False  # this connection ended in a takeover (network thread)
        self._closed_silently = False  # ... or the broker closed it without DISCONNECT
        self._silent_closes: list[float] = []  # when, recently (network thread)
        self._takeovers = 0  # takeovers since the last long connection (network thread)
        self._last_takeover = -TAKEOVER_FORGET_S
        self._up_since = 0.0
        self._own_sub_mid: int | None = None
        self._lock = threading.Lock()
        self._inflight: dict[int, _Sent] = {}
        self._early: dict[int, ReasonCode] = {}
        # Network-thread counters (plain ints: one writer each).
        self.frames_in = 0
        self.frames_dropped_in = 0
        self.frames_out = 0
        self.frames_dropped_out = 0
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="mqtt-net", daemon=True)

    # ================================================================ loop thread

    def start(self) -> None:
        """Start the network thread: connect, and keep reconnecting until closed."""
        self._thread.start()

    @property
    def link_up(self) -> bool:
        """Whether a connection is accepted right now."""
        return self._link_up

    @property
    def alive(self) -> bool:
        """Whether the network thread runs (the watchdog checks it)."""
        return self._thread.is_alive()

    def send_request(self, tag: int, payload: Request) -> None:
        """Publish a request (QoS 1) whose answer comes back as ``ResponseReceived(tag)``."""
        if not self._link_up:
            # The machine already has (or is about to get) the Disconnected that
            # abandons this request; paho would queue it for the next connection.
            self.counters["requests_dropped_offline"] += 1
            return
        body = payload.model_dump_json(by_alias=True, exclude_none=True).encode()
        props = publish_properties(
            response_topic=self._resp_topic, correlation=self._correlation(tag)
        )
        client = self._client
        method = payload.method
        info = client.publish(topics.request(self.user_id, method), body, 1, False, props)
        self._wake()
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.counters["requests_dropped_offline"] += 1
            return
        self.counters["requests_sent"] += 1
        self._track(info.mid, _Sent(f"request {method}", tag))

    def subscribe_room(self, room_id: str) -> None:
        """Subscribe to the room's state (QoS 1) and voices (QoS 0, without our own)."""
        if not _topic_level(room_id):
            self.counters["bad_room_id"] += 1
            log.error("not subscribing to a room id unfit for a topic: %r", room_id[:64])
            return
        self._room = room_id
        subscriptions = [
            (topics.room_state(room_id), SubscribeOptions(qos=1)),
            (topics.room_audio_all(room_id), SubscribeOptions(qos=0, noLocal=True)),
        ]
        self._client.subscribe(subscriptions)
        self._wake()

    def unsubscribe_room(self, room_id: str) -> None:
        """Stop receiving the room's state and voices."""
        if self._room == room_id:
            self._room = None
        if _topic_level(room_id):
            self._client.unsubscribe([topics.room_state(room_id), topics.room_audio_all(room_id)])
            self._wake()

    async def close(self, timeout_s: float) -> bool:
        """Publish ``offline`` (retained), disconnect cleanly, stop the thread.

        Returns whether the broker acknowledged ``offline`` within ``timeout_s``. Never
        takes much longer than ``timeout_s``, whatever the broker does.
        """
        deadline = time.monotonic() + timeout_s
        self._closing = True
        acknowledged = False
        if self._link_up:
            info = self._client.publish(self._presence_topic, b"offline", 1, True)
            self._wake()
            while not info.is_published() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            acknowledged = info.is_published()
        # The network thread sends DISCONNECT (no Will: we said goodbye) and ends.
        self._stopping.set()
        self._wake()
        while self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()
        return acknowledged

    def stats(self) -> dict[str, int]:
        """Every counter of the session, for ``/counters`` and the logs."""
        return {
            **self.counters,
            "audio_frames_in": self.frames_in,
            "audio_frames_dropped_in": self.frames_dropped_in,
            "audio_frames_out": self.frames_out,
            "audio_frames_dropped_out": self.frames_dropped_out,
        }

    # ================================================================ any thread

    def publish_audio(self, room_id: str, payload: bytes) -> None:
        """Publish one audio frame (QoS 0). Thread-safe; never blocks; drops when the
        link is down or ``room_id`` is not the room we are in. Packed here and queued
        for the network thread as is: no message id, ``MQTTMessageInfo`` or
        ``on_publish`` call per frame, since nothing waits for a QoS 0 frame."""
        if not self._link_up or room_id != self._room:
            self.frames_dropped_out += 1
            return
        topic = topics.audio(room_id, self.user_id).encode()
        queued = queue_qos0_publish(self._client, topic, payload)
        self._wake()
        if queued:
            self.frames_out += 1
        else:
            self.frames_dropped_out += 1

    def _wake(self) -> None:
        # One byte is enough: the network thread drains them all and then looks at
        # everything that is queued.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _post(self, handler: Callable[..., object], *args: Any) -> None:
        """Run ``handler(*args)`` on the event loop (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
            self._loop.call_soon_threadsafe(handler, *args)

    def _emit(self, event: Event) -> None:
        self._post(self._on_event, event)

    def _correlation(self, tag: int) -> bytes:
        return self._prefix + tag.to_bytes(TAG_BYTES, "big")

    def _tag_of(self, correlation: bytes | None) -> int | None:
        if (
            correlation is None
            or len(correlation) != CORRELATION_PREFIX_BYTES + TAG_BYTES
            or not correlation.startswith(self._prefix)
        ):
            return None
        return int.from_bytes(correlation[CORRELATION_PREFIX_BYTES:], "big")

    def _track(self, mid: int, sent: _Sent) -> None:
        # The PUBACK may be handled on the network thread before publish() returned
        # its mid here; such early verdicts wait in _early. (Holding our lock around
        # publish() would deadlock: paho calls on_publish holding its own lock.)
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._inflight[mid] = sent
                return
        self._verdict(sent, early)

    def _verdict(self, sent: _Sent, reason: ReasonCode) -> None:
        if reason.value == NO_MATCHING_SUBSCRIBERS and sent.tag is not None:
            self._post(self._count, "requests_undelivered")
            self._emit(RequestUndelivered(sent.tag))
        elif reason.is_failure:
            self._post(self._refused, sent.what, str(reason), sent.tag)

    # ================================================================ network thread

    def _new_client(self) -> paho.Client:
        client = make_client(self._broker, self.user_id)
        hook_incoming_publish(client, self._take_audio)
        client.will_set(self._presence_topic, b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        # Non-None, so paho queues writes for this thread instead of writing from the
        # publishing thread (see the module docstring).
        client.on_socket_register_write = self._on_register_write
        client.message_callback_add(AUDIO_FILTER, self._on_audio)
        return client

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            was_up = self._connect_and_serve()
            if self._stopping.is_set():
                break
            if self._taken_over_now:
                self._stopping.wait(self._taken_over())
                continue
            failures = 0 if was_up else failures + 1
            delay = backoff_delay(max(failures - 1, 0), self._rng)
            log.info("reconnecting to the broker in %.1f s", delay)
            self._stopping.wait(delay)
        self._link_up = False

    def _silent_takeover(self) -> bool:
        """Whether the broker closing an accepted connection without a DISCONNECT looks
        like a takeover: the second such close within a minute, or any soon after a
        takeover. The first one is an ordinary loss (a broker restart, a network)."""
        if not self._closed_silently or self._closing:
            return False
        now = time.monotonic()
        recent = [t for t in self._silent_closes if now - t < SILENT_CLOSES_WINDOW_S]
        self._silent_closes = [*recent, now]
        return len(self._silent_closes) >= 2 or now - self._last_takeover < TAKEOVER_FORGET_S

    def _taken_over(self) -> float:
        """Another client took our identity's session: say so once, wait long."""
        now = time.monotonic()
        if now - self._up_since >= TAKEOVER_FORGET_S:
            self._takeovers = 0
        self._takeovers += 1
        self._last_takeover = now
        self._silent_closes = []
        delay = backoff_delay(
            self._takeovers - 1, self._rng, first_s=TAKEOVER_FIRST_S, cap_s=TAKEOVER_MAX_S
        )
        why = (
            "the broker handed it our session"
            if self._closed_silently is False
            else "the broker keeps closing our connection as soon as it is up"
        )
        log.error(
            "another device is using the identity %s (%s); trying again in %.0f s",
            self.user_id,
            why,
            delay,
        )
        self._reported = "down"
        self._emit(Disconnected(reason="session taken over by another device", taken_over=True))
        self._post(self._count, "takeovers")
        return delay

    def _connect_and_serve(self) -> bool:
        """One connection, from TCP connect to its end; True if it was accepted."""
        self._refused_now = False
        self._was_up = False
        self._taken_over_now = False
        self._closed_silently = False
        try:
            client = self._client if self._reported is None else self._new_client()
            self._client = client
            client.connect(
                self._broker.host,
                self._broker.port,
                keepalive=self._broker.keepalive_s,
                clean_start=True,
            )
        except Exception as exc:  # OSError, ssl.SSLError, an unreadable password file
            where = f"{self._broker.host}:{self._broker.port}"
            self._link_down(f"cannot connect to {where}: {explain_error(exc)}")
            return False
        try:
            self._serve(client)
        except Exception:
            log.exception("the MQTT network loop failed; reconnecting")
            with contextlib.suppress(Exception):
                client.disconnect()
        self._link_up = False
        if self._was_up and not self._taken_over_now and self._silent_takeover():
            self._taken_over_now = True
        if not self._closing and not self._refused_now and not self._taken_over_now:
            self._link_down("the connection was lost")
        return self._was_up

    def _serve(self, client: paho.Client) -> None:
        disconnecting = False
        while True:
            sock = client.socket()
            if sock is None:
                return
            if self._stopping.is_set() and not disconnecting:
                disconnecting = True
                client.disconnect()  # queued here, written below; paho then closes
            pending = getattr(sock, "pending", None)  # bytes already decrypted by TLS
            timeout = 0.0 if callable(pending) and pending() > 0 else SELECT_TIMEOUT_S
            wants = [sock] if client.want_write() else []
            try:
                readable, _, _ = select.select([sock, self._wake_r], wants, [], timeout)
            except (OSError, ValueError):
                return  # the socket was closed under us
            if self._wake_r in readable:
                self._drain_wake()
            if sock in readable or timeout == 0.0:
                client.loop_read()
            if client.want_write():
                client.loop_write()
            client.loop_misc()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _link_down(self, reason: str) -> None:
        """Report a lost or failed connection once per outage (a refusal already was)."""
        if self._reported in ("down", "refused"):
            log.debug("broker link still down: %s", reason)
            return
        log.warning("broker link down: %s", reason)
        self._reported = "down"
        self._emit(Disconnected(refused=False, reason=reason))

    # ---------------------------------------------------------------- paho callbacks

    def _on_register_write(self, _c: paho.Client, _u: object, _sock: object) -> None:
        if threading.current_thread() is not self._thread:
            self._wake()

    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        try:
            if reason.is_failure:
                self._connection_refused(reason)
                return
            self._link_up = True
            self._was_up = True
            self._up_since = time.monotonic()
            options = SubscribeOptions(qos=1)
            _rc, mid = client.subscribe([(self._resp_topic, options), (self._inbox_topic, options)])
            self._own_sub_mid = mid
            info = client.publish(self._presence_topic, b"online", 1, True)
            self._track(info.mid, _Sent("presence online"))
            log.info("connected to %s:%d as %s", self._broker.host, self._broker.port, self.user_id)
        except Exception:
            log.exception("on_connect failed")

    def _connection_refused(self, reason: ReasonCode) -> None:
        self._refused_now = True
        if self._reported != "refused":
            log.error("the broker refused the connection as %s: %s", self.user_id, reason)
            self._emit(Disconnected(refused=True, reason=str(reason)))
        self._reported = "refused"
        self._post(self._count, "connections_refused")

    def _on_subscribe(
        self, _c: paho.Client, _u: object, mid: int, reasons: list[ReasonCode], _p: object
    ) -> None:
        try:
            failed = [str(r) for r in reasons if r.is_failure]
            if failed:
                what = "own topics" if mid == self._own_sub_mid else "room topics"
                self._post(self._refused, f"subscription to {what}", ", ".join(failed), None)
            if mid == self._own_sub_mid:
                self._own_sub_mid = None
                self._reported = "up"
                self._emit(Connected())
                self._post(self._count, "connections")
        except Exception:
            log.exception("on_subscribe failed")

    def _on_disconnect(
        self, _c: paho.Client, _u: object, flags: object, reason: ReasonCode, _p: object
    ) -> None:
        self._link_up = False
        from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        if reason.value == SESSION_TAKEN_OVER and not self._closing:
            self._taken_over_now = True
        elif not from_server and not self._closing and not self._stopping.is_set():
            self._closed_silently = True
            log.debug("disconnected: %s", reason)
        elif not self._closing and not self._refused_now:
            log.debug("disconnected: %s", reason)

    def _on_publish(
        self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        try:
            with self._lock:
                sent = self._inflight.pop(mid, None)
                if sent is None:
                    if reason.value != 0:  # QoS 0 frames "succeed" and never wait here
                        self._early[mid] = reason
                    return
            self._verdict(sent, reason)
        except Exception:
            log.exception("on_publish failed")

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        try:
            props = message.properties
            correlation = getattr(props, "CorrelationData", None) if props else None
            payload = bytes(message.payload)
            self._post(self._dispatch, message.topic, payload, correlation)
        except Exception:
            log.exception("on_message failed")

    def _take_audio(self, raw: RawPublish) -> bool:
        """The short path of a QoS 0 audio frame, before paho decodes it: no
        ``MQTTMessage``, MQTT 5 ``Properties`` object (whose constructor builds its name
        tables per instance) or topic matching, about a quarter of this thread's CPU at
        150 frames a second (benchmarks.footprint). Frames carry no property we use.
        Anything else, and anything malformed, is left to paho (False)."""
        if raw.qos or not raw.topic.startswith(_ROOM_PREFIX) or _AUDIO_LEVEL not in raw.topic:
            return False
        payload = raw.payload()
        if payload is None:
            return False
        self._on_audio_frame(raw.topic, payload, raw.retain)
        return True

    def _on_audio(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        # An audio frame paho's own path delivered (QoS > 0 or an odd packet).
        try:
            topic = message.topic.encode()
        except UnicodeDecodeError:
            self.frames_dropped_in += 1
            return
        self._on_audio_frame(topic, bytes(message.payload), message.retain)

    def _on_audio_frame(self, topic: bytes, payload: bytes, retain: bool) -> None:
        # Hot path: 50 messages/s per speaker, on this thread, never via the loop.
        arrival = time.monotonic()
        try:
            if retain or not payload:
                # A retained frame is stale by definition (replayed to every new
                # subscriber): never played. The server's janitor clears it, which
                # reaches us as an empty message.
                self.frames_dropped_in += 1
                return
            try:
                parsed = topics.parse_audio(topic.decode())
            except UnicodeDecodeError:  # the broker checks UTF-8; counted all the same
                parsed = None
            if parsed is None or parsed.room_id != self._room or parsed.user_id == self.user_id:
                self.frames_dropped_in += 1
                return
            self.frames_in += 1
            self._on_frame(parsed.room_id, parsed.user_id, payload, arrival)
        except Exception:  # UnicodeDecodeError included
            self.frames_dropped_in += 1
            log.exception("the audio port failed on a frame")

    # ================================================================ loop thread again

    def _count(self, key: str) -> None:
        self.counters[key] += 1

    def _refused(self, what: str, reason: str, tag: int | None) -> None:
        self.counters["publishes_refused"] += 1
        log.error("the broker refused %s: %s", what, reason)
        self._on_event(PublishRefused(f"{what}: {reason}", tag))

    def _dispatch(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        """A non-audio message, on the loop: parse it into an event, or drop and count."""
        if topic == self._resp_topic:
            self._on_response(payload, correlation)
        elif topic == self._inbox_topic:
            self._on_inbox(payload)
        else:
            room_id = topics.parse_room_state(topic)
            if room_id is None:
                self._drop("unexpected_topic", topic)
            else:
                self._on_room_state(room_id, payload)

    def _on_response(self, payload: bytes, correlation: bytes | None) -> None:
        tag = self._tag_of(correlation)
        if tag is None:
            self._drop("unmatched_response", "a response without our correlation data")
            return
        try:
            response = Response.model_validate_json(payload)
        except ValidationError:
            self._drop("malformed_response", f"response to request {tag}")
            return
        self._on_event(ResponseReceived(tag, response))

    def _on_inbox(self, payload: bytes) -> None:
        try:
            command = parse_inbox(payload)
        except ValidationError:
            self._drop("malformed_inbox", "an inbox command")
            return
        self._on_event(InboxReceived(command))

    def _on_room_state(self, room_id: str, payload: bytes) -> None:
        if not payload:
            self.counters["room_state_cleared"] += 1  # a closed room's retained state ends
            return
        try:
            room = RoomState.model_validate_json(payload)
        except ValidationError:
            self._drop("malformed_room_state", f"room {room_id}")
            return
        if room.room_id != room_id:
            self._drop("malformed_room_state", f"room {room.room_id} on room {room_id}'s topic")
            return
        self._on_event(RoomStateReceived(room))

    def _drop(self, counter: str, what: str) -> None:
        self.counters[counter] += 1
        # The first of each kind is worth a warning; a flood is worth a counter.
        level = logging.WARNING if self.counters[counter] == 1 else logging.DEBUG
        log.log(level, "dropped %s (%s, %d so far)", what, counter, self.counters[counter])


def _topic_level(value: str) -> bool:
    """Whether ``value`` can stand as one topic level (no separators or wildcards)."""
    return bool(value) and not any(c in value for c in "/+#\0")


__all__ = ["FrameSink", "MqttSession"]
