"""The MQTT session against a real Mosquitto, the test playing the business server.

The stand-in server is a plain client logged in as ``gochat-server`` (the only account
the ACL lets read requests, presence and audio), so every message the session sends
is seen exactly as the broker delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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
from appliance.device.session import MqttSession
from appliance.mqtt import backoff_delay, publish_properties
from appliance.protocol import topics
from appliance.protocol.models import InviteExpired, SetUserInfoRequest, dump
from appliance.settings import BrokerSettings
from testbed import Broker, MqttClientFactory, RecordingClient
from testbed.broker import SHIPPED_ACL

USER = "pi-s"
SERVER = "gochat-server"
E = TypeVar("E")


class SessionRig:
    """An :class:`MqttSession` on its own event loop thread, recording what it emits."""

    def __init__(self, broker: Broker, user: str = USER, password_file: Path | None = None) -> None:
        if password_file is None:
            if not broker.has_user(user):
                broker.add_user(user)
            password_file = broker.password_file(user)
        self.settings = BrokerSettings(
            host=broker.host,
            port=broker.port,
            password_file=password_file,
            tls_ca_file=broker.ca_file,
            keepalive_s=5,
        )
        self.user = user
        self.events: queue.Queue[Event] = queue.Queue()
        self.frames: queue.Queue[tuple[str, str, bytes, str]] = queue.Queue()
        self._stash: list[Event] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.session: MqttSession = self.call(self._build)

    def _build(self) -> MqttSession:
        return MqttSession(
            self.settings,
            self.user,
            loop=self.loop,
            on_event=self.events.put,
            on_frame=self._frame,
        )

    def _frame(self, room_id: str, user_id: str, payload: bytes, arrival: float) -> None:
        assert arrival <= time.monotonic()
        self.frames.put((room_id, user_id, payload, threading.current_thread().name))

    def call(self, fn: Callable[[], E]) -> E:
        """Run ``fn`` on the loop's thread (where the daemon calls the session)."""

        async def run() -> E:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def expect(self, kind: type[E], timeout_s: float = 5.0) -> E:
        """The next event of ``kind`` (others are kept for later)."""
        for i, event in enumerate(self._stash):
            if isinstance(event, kind):
                return self._stash.pop(i)  # type: ignore[return-value]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind.__name__}; other events: {self._stash}") from None
            if isinstance(event, kind):
                return event
            self._stash.append(event)

    def close(self) -> bool:
        if not self._thread.is_alive():
            return False
        ok: bool = asyncio.run_coroutine_threadsafe(self.session.close(2.0), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        return ok


@pytest.fixture
def rigs() -> Iterator[Callable[..., SessionRig]]:
    made: list[SessionRig] = []

    def make(broker: Broker, **kwargs: Any) -> SessionRig:
        rig = SessionRig(broker, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def server_client(broker: Broker, mqtt_client: MqttClientFactory) -> RecordingClient:
    server = mqtt_client(broker, SERVER)
    server.subscribe_wait(f"{topics.ROOT}/#")
    return server


def in_room(rig: SessionRig, room_id: str = "r-1") -> None:
    """Start the session and, once connected, subscribe it to ``room_id``."""
    rig.call(rig.session.start)
    rig.expect(Connected)
    rig.call(lambda: rig.session.subscribe_room(room_id))


# ---------------------------------------------------------------- backoff


def test_backoff_doubles_from_one_second_to_thirty_with_jitter() -> None:
    low = [backoff_delay(n, lambda: 0.0) for n in range(8)]
    high = [backoff_delay(n, lambda: 1.0) for n in range(8)]
    assert high == [1, 2, 4, 8, 16, 30, 30, 30]
    assert low == [h / 2 for h in high]
    assert backoff_delay(10_000, lambda: 0.5) == 22.5  # no overflow, still capped


# ---------------------------------------------------------------- the session's own traffic


def test_presence_requests_and_responses(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    server = server_client(broker, mqtt_client)
    rig = rigs(broker)
    rig.call(rig.session.start)
    rig.expect(Connected)
    online = server.expect(topics.presence(USER))
    assert online.payload == b"online"

    payload = SetUserInfoRequest(room_id="r-1", user_id=USER, mic_on=False)
    rig.call(lambda: rig.session.send_request(7, payload))
    request = server.expect(topics.request(USER, "set_user_info"))
    assert json.loads(request.payload) == {"room_id": "r-1", "user_id": USER, "mic_on": False}
    assert request.qos == 1
    assert request.properties.ResponseTopic == topics.response(USER)
    correlation = bytes(request.properties.CorrelationData)

    props = publish_properties(correlation=correlation)
    answer = b'{"code":0,"message":"ok","data":{"member":null},"extra":1}'
    server.publish_wait(topics.response(USER), answer, properties=props)
    event = rig.expect(ResponseReceived)
    assert (event.tag, event.response.code, event.response.data) == (7, 0, {"member": None})


def test_malformed_pushes_are_dropped_and_counted(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    server = server_client(broker, mqtt_client)
    rig = rigs(broker)
    in_room(rig)
    server.expect(topics.presence(USER))
    time.sleep(0.1)  # the subscription is in place (SUBACK comes back on its own)
    bad = [
        (topics.inbox(USER), b"not json", None),
        (topics.inbox(USER), b'{"type": "no_such_command"}', None),
        (topics.response(USER), b'{"code":0,"message":"ok","data":null}', None),
        (topics.response(USER), b'{"code":0}', publish_properties(correlation=b"\x00" * 16)),
        (topics.room_state("r-1"), b'{"room_id": "r-1"}', None),
        (topics.room_state("r-1"), b"\xff\xfe", None),
    ]
    for topic, payload, props in bad:
        server.publish_wait(topic, payload, properties=props)
    sentinel = InviteExpired(invitation_id="i-1", room_id="r-1")
    server.publish_wait(topics.inbox(USER), dump(sentinel))
    assert rig.expect(InboxReceived).command == sentinel  # still alive, in order
    assert not any(isinstance(e, RoomStateReceived | ResponseReceived) for e in rig._stash)
    counters = rig.call(rig.session.stats)
    assert counters["malformed_inbox"] == 2
    assert counters["unmatched_response"] == 2
    assert counters["malformed_room_state"] == 2


def test_audio_frames_go_to_the_port_on_the_network_thread(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    server = server_client(broker, mqtt_client)
    rig = rigs(broker)
    in_room(rig)
    time.sleep(0.1)
    server.publish_wait(topics.audio("r-2", "bob"), b"other room", qos=0)
    server.publish_wait(topics.audio("r-1", "bob"), b"\x01\x00\x00\x01frame", qos=0)
    room_id, user_id, payload, thread = rig.frames.get(timeout=5)
    assert (room_id, user_id, payload, thread) == (
        "r-1",
        "bob",
        b"\x01\x00\x00\x01frame",
        "mqtt-net",
    )

    # Our own frames go out (from any thread) but never come back (No Local).
    sender = threading.Thread(target=rig.session.publish_audio, args=("r-1", b"mine"))
    sender.start()
    sender.join()
    ours = server.expect(topics.audio("r-1", USER))
    assert (ours.payload, ours.qos) == (b"mine", 0)
    rig.session.publish_audio("r-9", b"not our room")  # dropped and counted
    server.publish_wait(topics.audio("r-1", "bob"), b"second", qos=0)
    assert rig.frames.get(timeout=5)[2] == b"second"
    stats = rig.call(rig.session.stats)
    assert (stats["audio_frames_in"], stats["audio_frames_out"]) == (2, 1)
    assert stats["audio_frames_dropped_out"] == 1


@pytest.mark.unguarded  # a burst far past the broker plugin's rates, which would refuse it
def test_frames_and_requests_from_two_threads_arrive_whole_and_in_order(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    server = server_client(broker, mqtt_client)
    rig = rigs(broker)
    in_room(rig)
    frames = [i.to_bytes(2, "big") * 60 for i in range(400)]

    def capture() -> None:
        for frame in frames:
            rig.session.publish_audio("r-1", frame)

    sender = threading.Thread(target=capture)
    sender.start()
    for tag in range(100):  # QoS 1 requests queued by the event loop meanwhile
        request = SetUserInfoRequest(room_id="r-1", user_id=USER, mic_on=tag % 2 == 0)
        rig.call(lambda t=tag, r=request: rig.session.send_request(t, r))
    sender.join()
    ours = topics.audio("r-1", USER)
    assert [bytes(server.expect(ours).payload) for _ in frames] == frames
    assert rig.call(rig.session.stats)["audio_frames_out"] == len(frames)


def test_a_request_nobody_listens_to_is_undelivered_at_once(
    broker: Broker, rigs: Callable[..., SessionRig]
) -> None:
    rig = rigs(broker)
    rig.call(rig.session.start)
    rig.expect(Connected)
    payload = SetUserInfoRequest(room_id="r-1", user_id=USER, mic_on=True)
    rig.call(lambda: rig.session.send_request(3, payload))
    assert rig.expect(RequestUndelivered, timeout_s=2) == RequestUndelivered(3)


def test_a_publish_the_acl_denies_is_reported(
    tmp_path: Path, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    # An ACL without the presence rule: the broker answers our `online` with 0x87.
    acl = tmp_path / "acl"
    text = SHIPPED_ACL.read_text(encoding="utf-8")
    acl.write_text(text.replace("pattern write gochat/v1/presence/%u\n", ""), encoding="utf-8")
    with Broker(tmp_path / "broker", acl_file=acl) as broker:
        rig = rigs(broker)
        rig.call(rig.session.start)
        rig.expect(Connected)
        refused = rig.expect(PublishRefused)
        assert refused.tag is None
        assert "presence online" in refused.reason and "Not authorized" in refused.reason
        assert rig.call(rig.session.stats)["publishes_refused"] == 1
        rig.close()


def test_a_refused_login_is_reported_once_and_retried(
    broker: Broker, tmp_path: Path, rigs: Callable[..., SessionRig]
) -> None:
    broker.add_user(USER)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    rig = rigs(broker, password_file=wrong)
    rig.call(rig.session.start)
    event = rig.expect(Disconnected)
    assert event.refused
    assert "Bad user name or password" in event.reason or "Not authorized" in event.reason
    deadline = time.monotonic() + 2.5  # the second attempt comes 1-2 s later
    while rig.call(rig.session.stats).get("connections_refused", 0) < 2:
        assert time.monotonic() < deadline, "no second attempt"
        time.sleep(0.05)
    assert rig.events.empty()  # no second Disconnected: the outage is reported once


def test_reconnects_after_a_broker_restart_with_a_fresh_session(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    rig = rigs(broker)
    rig.call(rig.session.start)
    rig.expect(Connected)
    broker.restart()
    assert not rig.expect(Disconnected).refused
    rig.expect(Connected, timeout_s=5)  # backoff 0.5-1 s after the drop
    server = server_client(broker, mqtt_client)
    # The fresh connection works: requests go out and answers come back.
    payload = SetUserInfoRequest(room_id="r-1", user_id=USER, mic_on=True)
    rig.call(lambda: rig.session.send_request(11, payload))
    request = server.expect(topics.request(USER, "set_user_info"))
    props = publish_properties(correlation=bytes(request.properties.CorrelationData))
    server.publish_wait(topics.response(USER), b'{"code":0,"message":"ok"}', properties=props)
    assert rig.expect(ResponseReceived).tag == 11


def test_close_publishes_offline_and_disconnects_cleanly(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    rig = rigs(broker)
    rig.call(rig.session.start)
    rig.expect(Connected)
    assert rig.close() is True
    assert not rig.session.alive
    server = mqtt_client(broker, SERVER)
    server.subscribe_wait(topics.presence(USER))
    retained = server.expect(topics.presence(USER))
    assert (retained.payload, retained.retain) == (b"offline", True)
    # A clean DISCONNECT ("disconnected"), not a dropped link that fires the Will.
    deadline = time.monotonic() + 2
    while f"Client {USER} disconnected" not in broker.log_text():
        assert time.monotonic() < deadline, broker.log_text()[-800:]
        time.sleep(0.02)


def test_audio_frames_with_properties_or_qos_1_arrive_whole(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    server = server_client(broker, mqtt_client)
    rig = rigs(broker)
    in_room(rig)
    time.sleep(0.1)
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 5
    props.UserProperty = [("note", "x" * 300)]  # a properties length of two bytes
    server.publish_wait(topics.audio("r-1", "bob"), b"with properties", qos=0, properties=props)
    server.publish_wait(topics.audio("r-1", "bob"), b"at qos 1", qos=1)
    got = [rig.frames.get(timeout=5)[1:3] for _ in range(2)]
    assert got == [("bob", b"with properties"), ("bob", b"at qos 1")]
    assert rig.call(rig.session.stats)["audio_frames_in"] == 2


def test_a_retained_audio_frame_is_never_played(
    broker: Broker, mqtt_client: MqttClientFactory, rigs: Callable[..., SessionRig]
) -> None:
    server = server_client(broker, mqtt_client)
    server.publish_wait(topics.audio("r-1", "bob"), b"stale, retained", qos=1, retain=True)
    rig = rigs(broker)
    in_room(rig)
    deadline = time.monotonic() + 5
    while rig.call(rig.session.stats)["audio_frames_dropped_in"] < 1:  # the retained one
        assert time.monotonic() < deadline, "the retained frame never arrived"
        time.sleep(0.02)
    server.publish_wait(topics.audio("r-1", "bob"), b"live", qos=0)
    assert rig.frames.get(timeout=5)[2] == b"live"  # the first frame played is the live one
    assert rig.frames.empty()


def test_a_session_taken_over_waits_minutes_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that sends DISCONNECT 0x8E (newer Mosquitto does; 2.0.11 just closes):
    one takeover, reported at once, and no reconnect for a long while."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def fake_broker() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                conn.recv(4096)  # CONNECT
                conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
                time.sleep(0.2)
                conn.sendall(b"\xe0\x02\x8e\x00")  # DISCONNECT 0x8E, session taken over

    threading.Thread(target=fake_broker, daemon=True).start()
    password = tmp_path / "password"
    password.write_text("secret\n")
    fake = SimpleNamespace(host="127.0.0.1", port=listener.getsockname()[1], ca_file=None)
    rig = SessionRig(fake, password_file=password)  # type: ignore[arg-type]
    try:
        rig.call(rig.session.start)
        event = rig.expect(Disconnected)
        assert event.taken_over and not event.refused
        time.sleep(2.0)
        assert len(accepted) == 1, "reconnected at once: the clones would fight"
        assert rig.call(rig.session.stats)["takeovers"] == 1
        [line] = [r.message for r in caplog.records if "another device" in r.message]
        assert f"another device is using the identity {USER}" in line
        assert "handed it our session" in line
    finally:
        rig.close()
        listener.close()
        for conn in accepted:
            conn.close()
