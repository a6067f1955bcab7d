"""The shipped ACL's ``watcher`` account: it reads room state and nothing else, publishes
nothing, and watching throws no device off (docs/protocol.md section 2).

A real Mosquitto on the shipped config and ACL, as in ``test_broker_acl.py``; what was
*not* delivered is shown by a sentinel that was, after it, from the same publisher.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from testbed import Broker, MqttClientFactory, RecordingClient

SERVER = "gochat-server"
WATCHER = "watcher"
NOT_AUTHORIZED = 0x87
ROOT = "gochat/v1"


@pytest.fixture
def server(broker: Broker, mqtt_client: MqttClientFactory) -> RecordingClient:
    client = mqtt_client(broker, SERVER)
    assert [c.value for c in client.subscribe_wait("gochat/#")] == [1]
    return client


def topics_of(messages: list[mqtt.MQTTMessage]) -> list[str]:
    return [m.topic for m in messages]


def test_the_watcher_reads_room_state_but_no_voice_inbox_response_or_presence(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    server.publish_wait(f"{ROOT}/room/r1/state", b'{"version": 1}', retain=True)
    alice = mqtt_client(broker, "alice")
    watcher = mqtt_client(broker, WATCHER)
    codes = watcher.subscribe_wait([("gochat/#", 1)])
    assert [c.value for c in codes] == [1]
    retained = watcher.expect(f"{ROOT}/room/r1/state")
    assert retained.retain and retained.payload == b'{"version": 1}'

    alice.publish(f"{ROOT}/room/r1/audio/alice", b"\x01\x00\x00\x01opus", qos=0)
    assert alice.publish_wait(f"{ROOT}/presence/alice", b"online").value == 0
    assert alice.publish_wait(f"{ROOT}/req/alice/login", b"{}").value == 0
    for topic in (f"{ROOT}/resp/{WATCHER}", f"{ROOT}/user/{WATCHER}/inbox",
                  f"{ROOT}/resp/alice", f"{ROOT}/room/r1/audio/{SERVER}"):  # fmt: skip
        assert server.publish_wait(topic, b"x").value == 0
    server.publish_wait(f"{ROOT}/room/r2/state", b'{"version": 2}')
    # Once the server has alice's last message, the broker has routed all of hers:
    # anything the watcher were allowed to read would be queued before the sentinel.
    assert alice.publish_wait(f"{ROOT}/req/alice/ping", b"{}").value == 0
    server.collect_until(f"{ROOT}/req/alice/ping")
    server.publish_wait(f"{ROOT}/room/r3/state", b"sentinel")
    got = watcher.collect_until(f"{ROOT}/room/r3/state")
    assert topics_of(got) == [f"{ROOT}/room/r2/state", f"{ROOT}/room/r3/state"]


@pytest.mark.parametrize(
    ("topic", "retain"),
    [
        pytest.param(f"{ROOT}/req/{WATCHER}/login", False, id="own-request"),
        pytest.param(f"{ROOT}/presence/{WATCHER}", True, id="own-presence"),
        pytest.param(f"{ROOT}/room/r1/audio/{WATCHER}", False, id="own-voice"),
        pytest.param(f"{ROOT}/room/r1/state", True, id="room-state"),
        pytest.param(f"{ROOT}/req/alice/login", False, id="request-as-other"),
    ],
)
def test_the_watcher_publishes_nothing(
    broker: Broker,
    mqtt_client: MqttClientFactory,
    server: RecordingClient,
    topic: str,
    retain: bool,
) -> None:
    watcher = mqtt_client(broker, WATCHER)
    assert watcher.publish_wait(topic, b"forged", qos=1, retain=retain).value == NOT_AUTHORIZED
    watcher.publish(topic, b"forged-qos0", qos=0, retain=retain)
    # The watcher has no topic of its own to send a sentinel on; its QoS 1 verdict
    # above came after the QoS 0 one was handled, and the server's own sentinel
    # follows everything the broker accepted before it.
    assert watcher.publish_wait(topic, b"forged-again", qos=1).value == NOT_AUTHORIZED
    server.publish_wait(f"{ROOT}/room/sentinel/state", b"s")
    got = server.collect_until(f"{ROOT}/room/sentinel/state")
    assert topics_of(got) == [f"{ROOT}/room/sentinel/state"]


def test_watching_throws_no_device_off(
    broker: Broker, mqtt_client: MqttClientFactory, server: RecordingClient
) -> None:
    """Its client id is its username: it never takes a device's session, however it
    names itself (mosquitto_sub -i pi-ann), and watchers come and go five times."""
    alice = mqtt_client(broker, "alice")
    for _ in range(5):
        watcher = mqtt_client(broker, WATCHER, client_id="alice")
        watcher.subscribe_wait(f"{ROOT}/room/+/state")
        server.publish_wait(f"{ROOT}/room/r1/state", b"{}")
        assert watcher.expect(f"{ROOT}/room/r1/state").payload == b"{}"
        watcher.disconnect()
    assert alice.is_connected() and alice.disconnects.empty()
    assert alice.publish_wait(f"{ROOT}/req/alice/ping", b"{}").value == 0
