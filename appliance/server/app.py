"""The business server process: the MQTT adapter around the pure rules.

paho runs on the asyncio loop (:class:`~appliance.mqtt.LoopDriver`), so everything
happens on one thread and a message is handled where it is read. Requests are handled
as they come and their effects batched: once the loop has drained what arrived, the
store commits the batch (SQLite: one transaction for all; PostgreSQL: each request
committed in its own scope already), and only then are the replies, inbox commands
and room states sent (a reply promises the change survives a crash).

With a shared store (:attr:`Store.shared <appliance.server.store.Store.shared>`)
several instances take requests and presence from one MQTT 5 shared subscription
(``$share/{group}/...``, the group a secret kept in the database: a client that
joined a guessable group would be dealt requests it may not read, and the broker
would drop them), each under its own broker account; the instance that
owns the timers also publishes every room's retained state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel

from appliance.mqtt import LoopDriver, make_client, publish_properties, routing_of
from appliance.paho_internals import RawPublish, hook_incoming_publish, unacknowledged
from appliance.protocol import models as m
from appliance.protocol import topics
from appliance.protocol.models import Code
from appliance.server.gate import RateLimiter, ReplayCache, Verdict
from appliance.server.janitor import SWEEP_EVERY_S, SWEEP_WINDOW_S, Janitor
from appliance.server.outbox import Outbox
from appliance.server.publisher import RoomStatePublisher
from appliance.server.rules import Outcome, RoomService
from appliance.server.settings import ServerSettings
from appliance.server.store import Scope, Store

log = logging.getLogger("gochat.server")

Clock = Callable[[], float]
TICK_INTERVAL_S = 0.25
COUNTER_REPORT_S = 60.0  # how often changed counters are logged
SERVER_INFLIGHT = 1000  # QoS 1 answers awaiting PUBACK (the broker grants as many)
# Messages queued for the broker past which new requests are dropped unread: ~3 s of
# answers at this server's capacity. Past it, an overloaded server would commit requests
# whose answers only pile up (paho runs out of message ids at 65,535 and refuses them).
SHED_BACKLOG = 10_000
SERVING_SUBSCRIPTION = 1  # MQTT 5 subscription identifiers: requests and presence
SWEEP_SUBSCRIPTION = 2  # the janitor's short-lived look at retained messages
BAD_TOPIC = "topic: must be gochat/v1/req/{user_id}/{method}"


@dataclass(slots=True)
class _Reply:
    user_id: str
    correlation: bytes | None
    payload: bytes


def envelope(code: Code, message: str, data: BaseModel | None) -> bytes:
    """A response's JSON: ``{"code", "message", "data"}``."""
    body = data.model_dump_json(by_alias=True) if data is not None else "null"
    return b'{"code":%d,"message":%s,"data":%s}' % (
        int(code),
        _json_str(message),
        body.encode(),
    )


def _json_str(text: str) -> bytes:
    return json.dumps(text).encode()


class Server:
    """Carries MQTT messages into the :class:`RoomService` and its outcomes back out."""

    def __init__(
        self,
        settings: ServerSettings,
        service: RoomService,
        store: Store,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.service = service
        self.store = store
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.limiter = RateLimiter()
        self.replays = ReplayCache()
        self.connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._client = make_client(settings.broker, settings.username)
        # The server answers everyone: a deep window and no cap on its outgoing queue,
        # which would otherwise drop answers to requests already committed.
        self._client.max_inflight_messages_set(SERVER_INFLIGHT)
        self._client.max_queued_messages_set(0)
        self._driver = LoopDriver(self._client, self._loop)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._gated: Verdict | None = None  # the gate's verdict on the message at hand
        self.shed_backlog = SHED_BACKLOG
        hook_incoming_publish(self._client, self._gate)
        self.publisher = RoomStatePublisher(self._publish_state, self._loop)
        self._replies: list[_Reply] = []
        self._pending: list[Outcome] = []
        self._flush_scheduled = False
        self.outbox = Outbox(self._publish, self._loop)
        self.janitor = Janitor(self._clear_retained, self.counters)
        self._sweeps: list[asyncio.TimerHandle] = []
        group = store.share_group
        self._requests = _shared(group, topics.REQUESTS_TREE) if group else topics.REQUESTS_TREE
        self._presence = _shared(group, topics.PRESENCE_ALL) if group else topics.PRESENCE_ALL

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Restore state, then connect (in the background, retrying until it works)."""
        self._absorb(self.service.restarted(self.clock()))
        self._flush()
        self.store.watch_rooms(self.publisher.changed)
        broker = self.settings.broker
        self._driver.connect(broker.host, broker.port, broker.keepalive_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick the rules until ``stop`` is set."""
        next_report = self._loop.time() + COUNTER_REPORT_S
        reported: Counter[str] = Counter()
        while not stop.is_set():
            self._run_timers()
            self.limiter.share(self.store.instances)
            self.limiter.prune(self.clock())
            self._schedule_flush()
            if self._loop.time() >= next_report:
                next_report += COUNTER_REPORT_S
                if self.counters != reported:
                    log.info("counters: %s", dict(self.counters))
                    reported = self.counters.copy()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_INTERVAL_S)

    def _run_timers(self) -> None:
        """Tick the rules in each scope where something is due (SQLite: one, the whole
        service; shared: none unless this instance owns the timers)."""
        now = self.clock()
        try:
            duty = self.store.timers(self.service, now)
            if duty.taken_over:
                self._republish()
            for scope in duty.scopes:
                with self.store.scope(self.service, scope):
                    outcome = self.service.tick(now)
                self._absorb(outcome)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("timers failed; retrying on the next tick")

    def close(self) -> None:
        """Commit what is pending, send it, disconnect and close the store."""
        self._flush()
        self.outbox.flush()
        self._cancel_sweeps()
        self._driver.stop()
        self.store.close()

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        _props: object,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            self._driver.disconnected()
            return
        self._driver.connected()
        client.subscribe(
            [
                (self._requests, _request_options(retained=False, shared=self.store.shared)),
                (self._presence, SubscribeOptions(qos=1)),
            ],
            properties=_subscription_id(SERVING_SUBSCRIPTION),
        )
        self._cancel_sweeps()
        self._sweep()
        self.outbox.connected()
        self._connected()

    def _on_disconnect(
        self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        log.warning("disconnected from the broker: %s", reason)
        self.connected.clear()
        self.outbox.disconnected()
        self._cancel_sweeps()
        self._driver.disconnected()

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        self._dispatch(message)

    def _gate(self, raw: RawPublish) -> bool:
        """The rate limit of a raw PUBLISH, before paho decodes it (docs/protocol.md
        3.7); True: dropped here (a QoS 1 one is still acknowledged). Decoding the MQTT
        5 properties is most of what a message costs the server, so a flood past the
        limit is dropped from its topic bytes alone and cannot crowd out other users'
        requests. Any other verdict goes to :meth:`_handle_request` through
        ``_gated``. Not a request: left alone. Retained ones count too: one that passes
        goes to the janitor, one dropped here stays retained until the next sweep
        (never acted on meanwhile).
        """
        self._gated = None  # a verdict is about one message: the one at hand
        topic = raw.topic
        if not topic.startswith(_REQUEST_PREFIX):
            return False
        user_id = topic[len(_REQUEST_PREFIX) :].split(b"/", 1)[0]
        try:
            owner = user_id.decode("ascii")
        except UnicodeDecodeError:
            return False
        if not topics.is_user_id(owner):
            return False
        self.counters["requests"] += 1
        if unacknowledged(self._client) >= self.shed_backlog:
            self.counters["dropped_overload"] += 1  # unread and uncommitted: it is retried
            return True
        verdict = self.limiter.check(owner, self.clock())
        if verdict is Verdict.DROP:
            self.counters["dropped_rate_limited"] += 1
            return True
        self._gated = verdict
        return False

    def _connected(self) -> None:
        log.info("connected to the broker")
        self.connected.set()
        # The broker may have lost retained states (restarted without persistence).
        if self.store.owns_timers:
            self._republish()

    def _republish(self) -> None:
        """Publish every room's retained state again (from the store: the latest)."""
        try:
            for room_id in self.store.published_rooms(self.service):
                self.publisher.changed(room_id)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("cannot list the rooms to republish")

    # ------------------------------------------------------------ the janitor

    def _sweep(self) -> None:
        """Look for retained messages where none may be, so the janitor clears them.

        Requests: the request subscription is renewed with retain handling 0, so the
        broker sends what is retained there, flagged retained; such a request is never
        executed (:meth:`_handle_request`), only cleared. Renewing the same filter
        adds no second subscription, hence no duplicate of any live request. Audio: a
        subscription of its own, at QoS 0, for :data:`SWEEP_WINDOW_S`. Instances on a
        shared subscription sweep audio only: the broker never sends a retained
        message to a shared subscription, so a retained request is never executed
        (one published live is seen and cleared as above).
        """
        if not self.store.shared:
            self._client.subscribe(
                [(topics.REQUESTS_TREE, _request_options(retained=True))],
                properties=_subscription_id(SERVING_SUBSCRIPTION),
            )
        self._client.subscribe(
            [(topics.AUDIO_ALL, SubscribeOptions(qos=0, noLocal=True))],
            properties=_subscription_id(SWEEP_SUBSCRIPTION),
        )
        self._sweeps = [
            self._loop.call_later(SWEEP_WINDOW_S, self._end_sweep),
            self._loop.call_later(SWEEP_EVERY_S, self._sweep),
        ]

    def _end_sweep(self) -> None:
        if not self.store.shared:
            self._client.subscribe(
                [(topics.REQUESTS_TREE, _request_options(retained=False))],
                properties=_subscription_id(SERVING_SUBSCRIPTION),
            )
        self._client.unsubscribe(topics.AUDIO_ALL)

    def _cancel_sweeps(self) -> None:
        for handle in self._sweeps:
            handle.cancel()
        self._sweeps = []

    def _clear_retained(self, topic: str) -> None:
        self._publish(topic, b"", retain=True)

    # ------------------------------------------------------------ messages

    def _dispatch(self, message: paho.MQTTMessage) -> None:
        topic = message.topic
        try:
            if _only_sweep(message):
                # The janitor's copy: live messages also come through the serving
                # subscription; only a retained one matters here.
                if message.retain:
                    self.janitor.found(topic, message.payload)
                return
            owner = topics.request_owner(topic)
            if owner is not None:
                self._handle_request(owner, topic, message)
                return
            user_id = topics.parse_presence(topic)
            if user_id is not None:
                now = self.clock()
                with self.store.scope(self.service, Scope(user_id, changes=False, now=now)):
                    outcome = self.service.presence_changed(user_id, now)
                self._absorb(outcome)
                return
            self.counters["dropped_unknown_topic"] += 1
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("failed to handle a message on %s", topic)
        finally:
            self._schedule_flush()

    def _handle_request(self, user_id: str, topic: str, message: paho.MQTTMessage) -> None:
        """Any message on ``gochat/v1/req/{user_id}/...``. The cheap checks come first,
        from the topic and flags alone: a flood past the rate limit costs a counter
        increment per message, before its properties or payload are looked at."""
        if message.retain:
            # Published with the retain flag (seen live, thanks to retain-as-published):
            # never executed, and cleared so that no subscriber ever gets it again.
            if not message.payload:
                return  # a clear (a shared subscription cannot refuse our own: No Local)
            self.counters["dropped_retained"] += 1
            self.janitor.found(topic, message.payload)
            return
        now = self.clock()
        verdict, self._gated = self._gated, None
        if verdict is None:  # not seen by the gate (a packet it could not read)
            self.counters["requests"] += 1
            verdict = self.limiter.check(user_id, now)
        if verdict is Verdict.DROP:
            self.counters["dropped_rate_limited"] += 1
            return
        response_topic, correlation = routing_of(message)
        if verdict is Verdict.REJECT:
            self._refuse(user_id, correlation, Code.RATE_LIMITED, "rate limited")
            return
        request = topics.parse_request(topic)
        if request is None:
            # req/USER, req/USER/, req/USER/a/b: answered only on the user's own
            # response topic, and only if the request asked for it there.
            self.counters["malformed"] += 1
            if response_topic == topics.response(user_id):
                self._refuse(user_id, correlation, Code.BAD_REQUEST, BAD_TOPIC)
            return
        method = request.method
        problem = self._routing_problem(user_id, response_topic, correlation)
        if problem is not None:
            self.counters["malformed"] += 1
            self._refuse(user_id, correlation, Code.BAD_REQUEST, problem)
            return
        assert correlation is not None  # checked by _routing_problem
        self._apply(user_id, method, bytes(message.payload), correlation, now)

    @staticmethod
    def _routing_problem(
        user_id: str, response_topic: str | None, correlation: bytes | None
    ) -> str | None:
        if response_topic is None:
            return "ResponseTopic: missing"
        if response_topic != topics.response(user_id):
            return f"ResponseTopic: must be {topics.response(user_id)}"
        if correlation is None:
            return "CorrelationData: missing"
        if len(correlation) > m.MAX_CORRELATION_BYTES:
            return f"CorrelationData: longer than {m.MAX_CORRELATION_BYTES} bytes"
        return None

    def _apply(
        self, user_id: str, method: str, payload: bytes, correlation: bytes, now: float
    ) -> None:
        key = ReplayCache.key(user_id, correlation, method, payload)
        replayed = self.replays.get(key, now)
        if replayed is not None:
            self.counters["replayed"] += 1
            self._replies.append(_Reply(user_id, correlation, replayed))
            return
        response = self._execute(user_id, method, payload, key, now)
        if response is None:
            return  # not committed: no answer, so the client retries
        self.replays.put(key, response, now)
        self._replies.append(_Reply(user_id, correlation, response))

    def _execute(
        self, user_id: str, method: str, payload: bytes, key: bytes, now: float
    ) -> bytes | None:
        if len(payload) > m.MAX_PAYLOAD_BYTES:
            self.counters["malformed"] += 1
            return envelope(
                Code.BAD_REQUEST, f"payload: larger than {m.MAX_PAYLOAD_BYTES} bytes", None
            )
        try:
            request = m.parse_request(method, payload)
        except m.BadRequestError as exc:
            self.counters["malformed"] += 1
            return envelope(Code.BAD_REQUEST, str(exc), None)
        try:
            with self.store.scope(
                self.service, Scope.of_request(user_id, request, now, key)
            ) as unit:
                answered = unit.recall(key)
                if answered is not None:  # applied by another instance: a retry
                    self.counters["replayed"] += 1
                    return answered
                try:
                    outcome = self.service.handle(user_id, request, now)
                except Exception as exc:
                    raise _RuleError from exc  # a shared store undoes what it changed
                response = envelope(outcome.code, outcome.message, outcome.data)
                unit.remember(key, response, now)
        except _RuleError as failure:
            request_id = uuid.uuid4().hex[:12]
            self.counters["internal_errors"] += 1
            log.error(
                "request %s (%s from %s) failed",
                request_id, method, user_id, exc_info=failure.__cause__,
            )  # fmt: skip
            return envelope(Code.INTERNAL, f"internal error (request id {request_id})", None)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("store failed on %s from %s; no answer (it is retried)", method, user_id)
            return None
        self.counters[f"code_{int(outcome.code)}"] += 1
        self._absorb(outcome)
        return response

    def _refuse(self, user_id: str, correlation: bytes | None, code: Code, why: str) -> None:
        self._replies.append(_Reply(user_id, correlation, envelope(code, why, None)))

    def _absorb(self, outcome: Outcome) -> None:
        if outcome.inbox or outcome.rooms_changed or outcome.retained_to_clear:
            self._pending.append(outcome)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and (
            self._replies or self._pending or self.service.dirty or self.janitor.pending
        ):
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Commit the batch, then send what it produced, in order."""
        self._flush_scheduled = False
        try:
            self.store.flush(self.service)
        except Exception:
            # Nothing is sent for a batch that did not commit: clients time out and
            # retry, rather than being told of changes a restart would forget.
            self.counters["store_errors"] += 1
            log.exception("store commit failed; %d replies withheld", len(self._replies))
            self._replies.clear()
            self._pending.clear()
            return
        replies, self._replies = self._replies, []
        pending, self._pending = self._pending, []
        for reply in replies:
            self._publish(
                topics.response(reply.user_id),
                reply.payload,
                publish_properties(correlation=reply.correlation)
                if reply.correlation is not None
                else None,
            )
        for outcome in pending:
            self._send_outcome(outcome)
        self.janitor.flush()

    def _send_outcome(self, outcome: Outcome) -> None:
        dumped: dict[int, bytes] = {}  # a rotation pushes one command to every member

        def payload(command: BaseModel) -> bytes:
            if id(command) not in dumped:
                dumped[id(command)] = m.dump(command)
            return dumped[id(command)]

        self.outbox.send([(topics.inbox(user), payload(cmd)) for user, cmd in outcome.inbox])
        if not self.store.shared:  # shared: the timer owner publishes, from notifications
            for room_id in outcome.rooms_changed:
                self.publisher.changed(room_id)
        for room_id in outcome.retained_to_clear:
            self.publisher.clear(room_id)

    def _publish_state(self, room_id: str, clear: bool) -> None:
        if clear:
            self._publish(topics.room_state(room_id), b"", retain=True)
            return
        try:
            room = self.store.room(self.service, room_id)
        except Exception:
            self.counters["store_errors"] += 1
            log.exception("cannot read room %s to publish its state", room_id)
            return
        if room is None:
            return
        self.counters["room_state_publishes"] += 1
        self._publish(topics.room_state(room_id), m.dump(room.to_state()), retain=True)

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        self.outbox.acknowledged(mid)

    def _publish(
        self,
        topic: str,
        payload: bytes,
        props: Properties | None = None,
        *,
        retain: bool = False,
    ) -> int | None:
        """Publish at QoS 1; the message id, or None (counted) if paho refused it."""
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.counters["publish_errors"] += 1
            return None
        return info.mid


class _RuleError(Exception):
    """The rules raised (a bug): answered 500, and a shared store rolls back."""


def _shared(group: str, topic_filter: str) -> str:
    return f"$share/{group}/{topic_filter}"


def _request_options(*, retained: bool, shared: bool = False) -> SubscribeOptions:
    """Options of the request subscription. Normally retain handling 2: no retained
    request is ever sent to the server. Retain As Published, so a request published
    with the retain flag is seen as such (and dropped); No Local, since the janitor's
    clears land there too (not on a shared subscription, where MQTT 5 forbids it).
    ``retained``: retain handling 0, for the janitor's sweep."""
    return SubscribeOptions(
        qos=1,
        noLocal=not shared,
        retainAsPublished=True,
        retainHandling=(
            SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
            if retained
            else SubscribeOptions.RETAIN_DO_NOT_SEND
        ),
    )


def _subscription_id(value: int) -> Properties:
    props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
    props.SubscriptionIdentifier = value
    return props


def _only_sweep(message: paho.MQTTMessage) -> bool:
    """Whether ``message`` came through the janitor's sweep subscription alone."""
    props = message.properties
    ids = getattr(props, "SubscriptionIdentifier", None) if props is not None else None
    if not ids:
        return False
    if isinstance(ids, int):
        ids = [ids]
    return SERVING_SUBSCRIPTION not in ids


_REQUEST_PREFIX = topics.REQUEST_PREFIX.encode()
