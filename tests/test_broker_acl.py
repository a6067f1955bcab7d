"""The shipped broker configuration and ACL do exactly what docs/protocol.md section 2 says.

A real Mosquitto runs ``config/mosquitto/mosquitto.conf`` and ``config/mosquitto/acl``
(only ports and paths changed); accounts come from ``appliance.deploy.accounts``. Nothing is
proven by sleeping: to show a message was *not* delivered, the same publisher then
sends a sentinel that *is* delivered, and the subscriber's messages up to the
sentinel are checked (Mosquitto keeps one publisher's order towards a subscriber).

Mosquitto 2.0.11 facts pinned here:
- a denied QoS 1 PUBLISH is answered PUBACK 0x87 (Not authorized) and dropped;
- a subscription to another user's topic, or a wildcard over all users, is
  *granted* (SUBACK 0x01): every message is checked against ``read`` on delivery;
- a wrong password or unknown user gets CONNACK 0x87 (Not authorized) in MQTT 5;
- a second login as the same user (any client id) takes the session over: the
  old socket is closed without a DISCONNECT packet.
"""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from testbed import Broker, MqttClientFactory, RecordingClient

SERVER = "gochat-server"
NOT_AUTHORIZED = 0x87
SESSION_TAKEN_OVER = 0x8E
ROOT = "gochat/v1"


def topics_of(messages: list[mqtt.MQTTMessage]) -> set[str]:
    return {m.topic for m in messages}


def sentinel_topic(user: str) -> str:
    """A topic ``user`` may publish on and the server reads: a fresh request."""
    return f"{ROOT}/req/{user}/sentinel-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server(broker: Broker, mqtt_client: MqttClientFactory) -> RecordingClient:
    """The server account, subscribed to everything under gochat/."""
    client = mqtt_client(broker, SERVER)
    assert [c.value for c in client.subscribe_wait("gochat/#")] == [1]
    return client


# --- what a client may write -----------------------------------------------------


def test_client_publishes_requests_presence_and_audio_as_itself(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    alice = mqtt_client(broker, "alice")
    own = [
        (f"{ROOT}/req/alice/login", 1, False),
        (f"{ROOT}/req/alice/set_user_info", 1, False),
        (f"{ROOT}/presence/alice", 1, True),
        (f"{ROOT}/room/r1/audio/alice", 1, False),
    ]
    for topic, qos, retain in own:
        assert alice.publish_wait(topic, b"x", qos=qos, retain=retain).value == 0, topic
    alice.publish_wait(f"{ROOT}/room/r2/audio/alice", b"\x01\x00", qos=0)  # audio is QoS 0
    got = server.collect_until(f"{ROOT}/room/r2/audio/alice")
    assert topics_of(got) == {t for t, _, _ in own} | {f"{ROOT}/room/r2/audio/alice"}


FORBIDDEN_WRITES = [
    pytest.param(f"{ROOT}/req/bob/login", False, id="request-as-other"),
    pytest.param(f"{ROOT}/presence/bob", True, id="presence-of-other"),
    pytest.param(f"{ROOT}/room/r1/audio/bob", False, id="audio-as-other"),
    pytest.param(f"{ROOT}/resp/alice", False, id="forged-response"),
    pytest.param(f"{ROOT}/user/bob/inbox", False, id="inbox-command"),
    pytest.param(f"{ROOT}/user/alice/inbox", False, id="own-inbox-command"),
    pytest.param(f"{ROOT}/room/r1/state", True, id="room-state"),
    pytest.param(f"{ROOT}/req/bob", False, id="request-root-of-other"),
    pytest.param(f"{ROOT}/presence/alice/extra", False, id="presence-subtopic"),
    pytest.param(f"{ROOT}/room/r1/audio/alice/extra", False, id="audio-subtopic"),
    pytest.param("gochat/v1/other", False, id="outside-protocol"),
]


@pytest.mark.parametrize(("topic", "retain"), FORBIDDEN_WRITES)
def test_client_cannot_publish_as_another_user(
    broker: Broker,
    mqtt_client: MqttClientFactory,
    server: RecordingClient,
    topic: str,
    retain: bool,
) -> None:
    alice = mqtt_client(broker, "alice")
    # QoS 1 to see the broker's verdict; Mosquitto 2.0 answers a denied publish
    # with PUBACK "Not authorized" rather than disconnecting.
    assert alice.publish_wait(topic, b"forged", qos=1, retain=retain).value == NOT_AUTHORIZED
    alice.publish(topic, b"forged-qos0", qos=0, retain=retain)
    sentinel = sentinel_topic("alice")
    assert alice.publish_wait(sentinel, b"s").value == 0
    got = server.collect_until(sentinel)
    assert topics_of(got) == {sentinel}, "a forbidden publish reached the server"
    if retain:
        # Nor was it stored: a new subscription gets no retained copy. (Another
        # server connection would take this one's session over: same client id.)
        # Retained messages follow the SUBACK, so a later publish is a sentinel.
        server.subscribe_wait(topic)
        server.publish_wait(topic, b"sentinel")
        assert [m.payload for m in server.collect_until(topic)] == [b"sentinel"]


def test_will_is_bound_to_own_presence(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    will = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    # A Will on somebody else's presence: accepted at CONNECT, never published.
    mallory = mqtt_client(broker, "mallory", will=(f"{ROOT}/presence/bob", b"offline", 1, True))
    mallory.disconnect(reasoncode=will)
    # Mallory's next session exists only once the broker is done with the last
    # one (Will included), so its first publish is a sentinel for the Will.
    again = mqtt_client(broker, "mallory")
    sentinel = sentinel_topic("mallory")
    again.publish_wait(sentinel, b"s")
    assert topics_of(server.collect_until(sentinel)) == {sentinel}
    # The protocol's Will: offline, retained, on the client's own presence topic.
    alice = mqtt_client(broker, "alice", will=(f"{ROOT}/presence/alice", b"offline", 1, True))
    alice.disconnect(reasoncode=will)
    got = server.expect(f"{ROOT}/presence/alice")
    assert got.payload == b"offline"


# --- what a client may read --------------------------------------------------------


def test_client_reads_only_its_own_responses_and_inbox(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    mqtt_client(broker, "bob")
    alice = mqtt_client(broker, "alice")
    filters = [
        f"{ROOT}/user/+/inbox",
        f"{ROOT}/resp/+",
        f"{ROOT}/user/bob/inbox",
        f"{ROOT}/resp/bob",
        f"{ROOT}/req/+/+",
        "gochat/#",
        "#",
    ]
    # Granted (QoS 1): Mosquitto filters on delivery, not at subscribe time.
    codes = alice.subscribe_wait([(f, 1) for f in filters])
    assert [c.value for c in codes] == [1] * len(filters)
    for topic in (
        f"{ROOT}/user/bob/inbox",
        f"{ROOT}/resp/bob",
        f"{ROOT}/req/bob/login",
        f"{ROOT}/user/alice/inbox",
        f"{ROOT}/resp/alice",
    ):
        assert server.publish_wait(topic, b"x").value == 0
    server.publish_wait(f"{ROOT}/room/r1/state", b"sentinel")
    got = alice.collect_until(f"{ROOT}/room/r1/state")
    assert topics_of(got) == {
        f"{ROOT}/user/alice/inbox",
        f"{ROOT}/resp/alice",
        f"{ROOT}/room/r1/state",
    }


def test_client_cannot_read_presence(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    bob = mqtt_client(broker, "bob")
    alice = mqtt_client(broker, "alice")
    assert bob.publish_wait(f"{ROOT}/presence/bob", b"online", retain=True).value == 0
    assert alice.publish_wait(f"{ROOT}/presence/alice", b"online", retain=True).value == 0
    # Retained copies (others' and its own) would follow the SUBACK...
    alice.subscribe_wait([(f"{ROOT}/presence/+", 1), (f"{ROOT}/presence/bob", 1)])
    alice.subscribe_wait(f"{ROOT}/user/alice/inbox")
    # ...and a live one would be queued before bob's PUBACK.
    bob.publish_wait(f"{ROOT}/presence/bob", b"offline", retain=True)
    server.publish_wait(f"{ROOT}/user/alice/inbox", b"sentinel")
    got = alice.collect_until(f"{ROOT}/user/alice/inbox")
    assert topics_of(got) == {f"{ROOT}/user/alice/inbox"}
    # ...while the server sees everyone's presence, retained ones included.
    server.collect_until(f"{ROOT}/user/alice/inbox")
    server.subscribe_wait(f"{ROOT}/presence/+")
    retained = [server.expect(f"{ROOT}/presence/+") for _ in range(2)]
    assert all(m.retain for m in retained)
    assert {(m.topic, m.payload) for m in retained} == {
        (f"{ROOT}/presence/alice", b"online"),
        (f"{ROOT}/presence/bob", b"offline"),
    }


def test_client_reads_every_room_state_and_voice(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    bob = mqtt_client(broker, "bob")
    server.publish_wait(f"{ROOT}/room/r1/state", b'{"version": 1}', retain=True)
    alice = mqtt_client(broker, "alice")
    codes = alice.subscribe_wait([(f"{ROOT}/room/+/state", 1), (f"{ROOT}/room/+/audio/+", 0)])
    assert [c.value for c in codes] == [1, 0]
    retained = alice.expect(f"{ROOT}/room/r1/state")
    assert retained.retain and retained.payload == b'{"version": 1}'
    bob.publish(f"{ROOT}/room/r1/audio/bob", b"\x01\x00\x00\x01opus", qos=0)
    alice.publish(f"{ROOT}/room/r1/audio/alice", b"\x01\x00\x00\x01opus", qos=0)
    voices = {alice.expect(f"{ROOT}/room/r1/audio/+").topic for _ in range(2)}
    assert voices == {f"{ROOT}/room/r1/audio/bob", f"{ROOT}/room/r1/audio/alice"}


# --- the server account ------------------------------------------------------------


def test_server_reads_and_writes_all_of_gochat(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    topics = [
        f"{ROOT}/resp/alice",
        f"{ROOT}/user/alice/inbox",
        f"{ROOT}/room/r1/state",
        f"{ROOT}/room/r1/audio/alice",
        f"{ROOT}/presence/alice",
        f"{ROOT}/req/alice/login",
        "gochat/v2/anything",
    ]
    for topic in topics:
        assert server.publish_wait(topic, b"x").value == 0, topic
    got = server.collect_until("gochat/v2/anything")  # no_local is off: it hears itself
    assert topics_of(got) == set(topics)
    # ...and nothing outside gochat/.
    assert server.publish_wait("other/topic", b"x").value == NOT_AUTHORIZED


# --- identity ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [
        pytest.param("alice", "wrong-password", id="wrong-password"),
        pytest.param("alice", "", id="empty-password"),
        pytest.param("nobody", "whatever", id="unknown-user"),
        pytest.param(SERVER, "guess", id="server-wrong-password"),
    ],
)
def test_bad_credentials_are_refused(
    broker: Broker, mqtt_client: MqttClientFactory, user: str, password: str
) -> None:
    broker.add_users("alice", SERVER)
    client = mqtt_client(broker, user, password=password, expect_success=False)
    assert client.connack is not None
    # 2.0.11 says 0x87 "Not authorized"; later 2.0.x may say 0x86 "Bad user name
    # or password". Either way: refused, and no session.
    assert client.connack.value in (0x86, NOT_AUTHORIZED)
    assert not client.is_connected()


def test_anonymous_is_refused(broker: Broker) -> None:
    # MQTT 3.1.1 CONNECT with an empty username, by hand: paho always sends one.
    assert broker.probe_login("", "") not in (0, -1)


def test_client_id_is_replaced_by_the_username(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    first = mqtt_client(broker, "alice", client_id="alice-laptop")
    # bob claiming alice's client id gets his own session (id "bob"): alice stays.
    bob = mqtt_client(broker, "bob", client_id="alice")
    # A second alice login under yet another client id is still id "alice", so it
    # takes the session over and the first connection is dropped.
    second = mqtt_client(broker, "alice", client_id="alice-phone")
    code = first.disconnects.get(timeout=5)
    # 2.0.11 just closes the old socket (paho reports 0x80); later versions send
    # DISCONNECT 0x8E "Session taken over" first.
    assert code.value in (SESSION_TAKEN_OVER, 0x80)
    assert second.is_connected() and bob.is_connected()
    assert bob.disconnects.empty()


# --- the fixture's own promises (used by every broker test) ----------------------------


def test_users_added_after_start_work_and_connections_survive_reload(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    alice = mqtt_client(broker, "alice")
    password = broker.add_user("carol")  # SIGHUP reload
    assert broker.password_file("carol").read_text().strip() == password
    carol = mqtt_client(broker, "carol")
    assert carol.publish_wait(f"{ROOT}/req/carol/login", b"{}").value == 0
    assert alice.publish_wait(f"{ROOT}/req/alice/login", b"{}").value == 0
    assert alice.disconnects.empty()
    broker.remove_user("carol")
    late = mqtt_client(broker, "carol", password=password, expect_success=False)
    assert late.connack is not None and late.connack.is_failure


def test_restart_keeps_retained_messages_and_port(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    broker.add_user(SERVER)
    with mqtt_client(broker, SERVER) as server:
        server.publish_wait(f"{ROOT}/room/r1/state", b'{"version": 7}', retain=True)
    port = broker.port
    broker.restart()
    assert broker.port == port
    watcher = mqtt_client(broker, SERVER)
    watcher.subscribe_wait(f"{ROOT}/room/+/state")
    assert watcher.expect(f"{ROOT}/room/r1/state").payload == b'{"version": 7}'


def test_broker_limits_come_from_the_shipped_conf(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    alice = mqtt_client(broker, "alice")
    props = alice.connack_properties
    assert props is not None and getattr(props, "MaximumPacketSize", None) == 65536
    # Bigger than that: the broker drops the connection (test_broker_limits.py: and
    # nothing is delivered).
    alice.publish(f"{ROOT}/req/alice/login", b"x" * 70_000, qos=1)
    assert alice.disconnects.get(timeout=5).is_failure
