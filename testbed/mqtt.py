"""A paho-mqtt 2 client for tests that records what it receives and what it is told.

:class:`RecordingClient` *is* a ``paho.mqtt.client.Client`` (callback API
VERSION2, MQTT 5, client id = username), so it can stand in anywhere a real
client is expected, and it adds blocking helpers with short bounded waits:

- :meth:`~RecordingClient.subscribe_wait` -> SUBACK reason codes
- :meth:`~RecordingClient.publish_wait` -> PUBACK reason code (QoS 1)
- :meth:`~RecordingClient.publish_many_wait` -> PUBACK reason codes of a burst
- :meth:`~RecordingClient.expect` -> the next message on a topic filter
- :meth:`~RecordingClient.collect_until` -> everything up to a sentinel message,
  which is how a test shows that something was *not* delivered without sleeping;
  :meth:`~RecordingClient.retained` -> what the broker holds retained, the same way.

Every received message also goes to :attr:`~RecordingClient.messages`, a
thread-safe ``queue.Queue``. Read messages through either the queue or
``expect``/``collect_until``, not both.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.mqtt import set_no_delay

from .broker import Broker

DEFAULT_TIMEOUT = 5.0


class MqttWaitError(AssertionError):
    """A bounded wait ran out (an AssertionError, so pytest shows it as a failure)."""


class RecordingClient(mqtt.Client):
    """A paho client (VERSION2 callbacks, MQTTv5) that records everything it gets.

    Use :func:`connect_client` (or the ``mqtt_client`` fixture) to make one.
    """

    def __init__(self, user: str, *, client_id: str | None = None) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2,
            client_id=user if client_id is None else client_id,
            protocol=mqtt.MQTTv5,
            # A refused login must stay refused: no silent retry loop in a test.
            reconnect_on_failure=False,
        )
        self.user = user
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: queue.Queue[ReasonCode] = queue.Queue()
        self.connack: ReasonCode | None = None
        self.connack_properties: Properties | None = None
        self._connack_event = threading.Event()
        self._stash: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, list[ReasonCode]] = {}
        self._acks_cond = threading.Condition()
        self.on_connect = self._record_connect
        self.on_disconnect = self._record_disconnect
        self.on_message = self._record_message
        self.on_publish = self._record_publish
        self.on_subscribe = self._record_subscribe
        self.on_socket_open = set_no_delay

    # --- callbacks (paho's network thread) -----------------------------------------

    def _record_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connack = reason_code
        self.connack_properties = properties
        self._connack_event.set()

    def _record_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.disconnects.put(reason_code)

    def _record_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _record_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ack(mid, [reason_code])

    def _record_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._ack(mid, list(reason_codes))

    def _ack(self, mid: int, codes: list[ReasonCode]) -> None:
        # The ack can arrive before publish()/subscribe() has returned its mid to
        # the caller, so acks are parked by mid and picked up by _wait_ack.
        with self._acks_cond:
            self._acks[mid] = codes
            self._acks_cond.notify_all()

    def _wait_ack(self, mid: int, timeout: float, what: str) -> list[ReasonCode]:
        with self._acks_cond:
            if not self._acks_cond.wait_for(lambda: mid in self._acks, timeout):
                raise MqttWaitError(f"{self.user}: no {what} for mid {mid} within {timeout} s")
            return self._acks.pop(mid)

    # --- blocking helpers ----------------------------------------------------------

    def wait_connack(self, timeout: float = DEFAULT_TIMEOUT) -> ReasonCode:
        """The CONNACK reason code (waits for it)."""
        if not self._connack_event.wait(timeout) or self.connack is None:
            raise MqttWaitError(f"{self.user}: no CONNACK within {timeout} s")
        return self.connack

    def subscribe_wait(
        self,
        topic: str | list[tuple[str, int]],
        qos: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes (one per filter)."""
        if isinstance(topic, str):
            rc, mid = self.subscribe(topic, qos)
        else:
            rc, mid = self.subscribe(topic)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise MqttWaitError(f"{self.user}: subscribe failed locally: {rc}")
        return self._wait_ack(mid, timeout, "SUBACK")

    def publish_wait(
        self,
        topic: str,
        payload: bytes | str | None = None,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ReasonCode:
        """Publish; for QoS 1 return the PUBACK reason code, for QoS 0 once sent."""
        info = self.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttWaitError(f"{self.user}: publish failed locally: {info.rc}")
        return self._wait_ack(info.mid, timeout, "PUBACK")[0]

    def publish_many_wait(
        self, topic: str, payloads: list[bytes], *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[ReasonCode]:
        """Publish every payload at QoS 1 without waiting in between (a burst), then
        return their PUBACK reason codes in order."""
        infos = [self.publish(topic, payload, qos=1) for payload in payloads]
        if any(info.rc != mqtt.MQTT_ERR_SUCCESS for info in infos):
            raise MqttWaitError(f"{self.user}: publish failed locally")
        return [self._wait_ack(info.mid, timeout, "PUBACK")[0] for info in infos]

    def expect(self, topic_filter: str = "#", timeout: float = DEFAULT_TIMEOUT) -> mqtt.MQTTMessage:
        """The next received message whose topic matches ``topic_filter``.

        Messages on other topics that arrive meanwhile are kept for later calls.
        """
        for i, msg in enumerate(self._stash):
            if mqtt.topic_matches_sub(topic_filter, msg.topic):
                return self._stash.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [m.topic for m in self._stash]
                raise MqttWaitError(
                    f"{self.user}: nothing on {topic_filter!r} within {timeout} s"
                    f" (other topics received: {seen})"
                )
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if mqtt.topic_matches_sub(topic_filter, msg.topic):
                return msg
            self._stash.append(msg)

    def collect_until(
        self,
        sentinel: Callable[[mqtt.MQTTMessage], bool] | str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[mqtt.MQTTMessage]:
        """Every message received up to and including the first sentinel.

        ``sentinel`` is a predicate, or a topic filter. Mosquitto delivers one
        publisher's messages to one subscriber in order, so if a forbidden
        publish had been delivered, it is in this list, ahead of the sentinel
        published after it.
        """
        is_sentinel: Callable[[mqtt.MQTTMessage], bool]
        if isinstance(sentinel, str):
            topic_filter = sentinel

            def is_sentinel(m: mqtt.MQTTMessage) -> bool:
                return mqtt.topic_matches_sub(topic_filter, m.topic)
        else:
            is_sentinel = sentinel
        got: list[mqtt.MQTTMessage] = []
        while self._stash:
            got.append(self._stash.pop(0))
            if is_sentinel(got[-1]):
                return got
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MqttWaitError(
                    f"{self.user}: no sentinel within {timeout} s; got {[m.topic for m in got]}"
                )
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            got.append(msg)
            if is_sentinel(msg):
                return got

    def retained(
        self, filters: list[str], timeout: float = DEFAULT_TIMEOUT
    ) -> list[mqtt.MQTTMessage]:
        """What the broker holds retained under ``filters`` (empty clears left out): it
        is sent on subscribing (QoS 1, retain handling 0), ahead of a sentinel this
        client publishes after the SUBACK on a topic of its own (it must be allowed to
        write and read ``gochat/v1/room/zz-sentinel/audio/{user}``)."""
        sentinel = f"gochat/v1/room/zz-sentinel/audio/{self.user}"
        self.subscribe_wait([(f, 1) for f in [*filters, sentinel]])
        self.publish_wait(sentinel, b"sentinel")
        got = self.collect_until(lambda msg: msg.topic == sentinel, timeout)
        return [msg for msg in got if msg.retain and msg.payload]

    def close(self) -> None:
        """Disconnect cleanly (no Will) and stop the network thread. Idempotent."""
        if self.is_connected():
            self.disconnect()
        self.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MqttClientFactory(Protocol):
    """The ``mqtt_client`` fixture: ``mqtt_client(broker, user, **connect_client_kw)``."""

    def __call__(self, broker: Broker, user: str, **kwargs: Any) -> RecordingClient: ...


def connect_client(
    broker: Broker,
    user: str,
    *,
    password: str | None = None,
    client_id: str | None = None,
    will: tuple[str, bytes | str, int, bool] | None = None,
    clean_start: bool = True,
    session_expiry_s: int | None = None,
    keepalive: int = 15,
    expect_success: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    cert: bool = False,
) -> RecordingClient:
    """A :class:`RecordingClient` for ``user``, connected and its loop started.

    ``password`` defaults to the broker's record for ``user`` (which must then
    have been added with ``broker.add_user``). ``will`` is (topic, payload, qos,
    retain). With ``expect_success`` (default) a refused CONNACK raises; without
    it, check ``client.connack`` yourself. The caller closes the client
    (:meth:`RecordingClient.close`, or ``with``).

    Always TLS, verifying the broker: with a password on ``broker.port``, or with
    ``cert`` as the holder of ``user``'s client certificate (issued if missing) on
    ``broker.cert_port``.
    """
    client = RecordingClient(user, client_id=client_id)
    port = broker.port
    if cert:
        cert_file, key_file = broker.device_files(user)
        if not cert_file.exists():
            broker.issue_device(user)
        client.tls_set_context(_cert_context(broker, cert_file, key_file))
        port = broker.cert_port
    else:
        client.tls_set_context(broker.tls_context())
        client.username_pw_set(user, broker.password(user) if password is None else password)
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)
    properties: Properties | None = None
    if session_expiry_s is not None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
    client.connect(
        broker.host,
        port,
        keepalive=keepalive,
        clean_start=clean_start,
        properties=properties,
    )
    client.loop_start()
    try:
        code = client.wait_connack(timeout)
    except BaseException:
        client.loop_stop()
        raise
    if expect_success and code.is_failure:
        client.loop_stop()
        raise MqttWaitError(f"{user}: CONNACK refused: {code} ({code.value:#04x})")
    return client


def _cert_context(broker: Broker, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = broker.tls_context()
    context.load_cert_chain(str(cert_file), str(key_file))
    return context
