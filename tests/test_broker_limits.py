"""The shipped broker limits (config/mosquitto/mosquitto.conf) against the protocol.

``max_packet_size`` must sit just above the largest message the protocol can produce,
computed here from the real models with worst-case values: the largest legitimate
message still crosses a real broker, one byte more is refused, and the retained flood
of 750 messages of 100 KiB that once took a broker from 8.6 to 84.6 MB leaves nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.deploy.brokerconf import SHIPPED_CONF
from appliance.protocol.models import (
    AttendeeListData,
    Code,
    HostRef,
    Member,
    Role,
    RoomListData,
    RoomSummary,
)
from appliance.server.app import envelope
from testbed import Broker, MqttClientFactory

ROOT = "gochat/v1"
SERVER = "gochat-server"
WIDE = "\U0001f600"  # 4 bytes of UTF-8: the most one character of a name can cost
LONG_ID = "u" * 64  # the longest user id
CORRELATION = b"c" * 64  # the longest CorrelationData
# Fixed header (1 + up to 4 length bytes), topic length, packet id, properties length,
# CorrelationData property (1 + 2 + 64): what a response adds to its payload, rounded up.
PUBLISH_OVERHEAD = 5 + 2 + len(f"{ROOT}/resp/{LONG_ID}") + 2 + 4 + 3 + len(CORRELATION)


def shipped_limit(name: str) -> int:
    """The value of a numeric option of the shipped configuration."""
    text = Path(SHIPPED_CONF).read_text(encoding="utf-8")
    match = re.search(rf"^{name}\s+(\d+)\s*$", text, re.MULTILINE)
    assert match is not None, f"{name} is not set in {SHIPPED_CONF}"
    return int(match.group(1))


def largest_room_list() -> bytes:
    """A get_room_list answer at its limits: 100 rooms, every text as wide as allowed."""
    room = RoomSummary(
        room_id="r" * 32,
        subject=WIDE * 64,
        host=HostRef(user_id=LONG_ID, name=WIDE * 32),
        seat_count=16,
        member_count=10**6,
        created_at=1_790_000_000.1234567,
    )
    return envelope(Code.OK, "ok", RoomListData(rooms=[room] * 100, next_cursor="c" * 128))


def largest_attendee_page() -> bytes:
    """A get_attendee_list answer at its limits: 200 members, every text as wide."""
    members = [
        Member(
            user_id=f"{i:0>64}",
            name=WIDE * 32,
            role=Role.LISTENER,
            mic_on=False,
            hand_raised=False,
            joined_at=1_790_000_000.1234567,
        )
        for i in range(200)
    ]
    return envelope(Code.OK, "ok", AttendeeListData(attendees=members, next_cursor="c" * 128))


def correlation(data: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = data
    return props


def test_max_packet_size_is_just_above_the_largest_legitimate_message() -> None:
    limit = shipped_limit("max_packet_size")
    largest = max(len(largest_room_list()), len(largest_attendee_page())) + PUBLISH_OVERHEAD
    assert largest < limit, f"a legal answer of {largest} B would be refused ({limit})"
    # "Just above": under 10 % headroom, so a client cannot park much more per packet.
    assert limit < largest * 1.1, f"{limit} B is loose for a largest message of {largest} B"


def test_largest_legitimate_message_crosses_the_broker(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    device = mqtt_client(broker, LONG_ID)
    device.subscribe_wait(f"{ROOT}/resp/{LONG_ID}")
    server = mqtt_client(broker, SERVER)
    payload = largest_room_list()
    server.publish_wait(f"{ROOT}/resp/{LONG_ID}", payload, properties=correlation(CORRELATION))
    got = device.expect(f"{ROOT}/resp/{LONG_ID}")
    assert got.payload == payload
    assert server.disconnects.empty()


def test_a_packet_over_the_limit_disconnects_its_sender_and_is_not_delivered(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    limit = shipped_limit("max_packet_size")
    props = mqtt_client(broker, "alice").connack_properties
    assert props is not None and getattr(props, "MaximumPacketSize", None) == limit
    server = mqtt_client(broker, SERVER)
    server.subscribe_wait(f"{ROOT}/req/#")
    alice = mqtt_client(broker, "alice")
    # A payload that alone fills the limit: the packet is a few dozen bytes over it.
    alice.publish(f"{ROOT}/req/alice/login", b"x" * limit, qos=1)
    assert alice.disconnects.get(timeout=5).is_failure
    # A later request from someone else arrives, and nothing came before it.
    bob = mqtt_client(broker, "bob")
    bob.publish_wait(f"{ROOT}/req/bob/heartbeat", b"{}")
    got = server.collect_until(f"{ROOT}/req/bob/heartbeat")
    assert [m.topic for m in got] == [f"{ROOT}/req/bob/heartbeat"]


def test_retained_flood_of_big_messages_leaves_nothing(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    # The reproduction: one device leaves 750 retained messages of 100 KiB on its own
    # request and audio topics, as fast as it can.
    rss_before = broker.rss_kib()
    mallory = mqtt_client(broker, "mallory")
    junk = b"\0" * 100 * 1024
    for i in range(750):
        topic = f"{ROOT}/req/mallory/m{i}" if i % 2 else f"{ROOT}/room/r{i}/audio/mallory"
        mallory.publish(topic, junk, qos=1, retain=True)
    assert mallory.disconnects.get(timeout=10).is_failure
    # A new subscriber gets no retained "frame" and no retained request.
    server = mqtt_client(broker, SERVER)
    # (A plain subscription has retain handling 0: retained messages are sent.)
    server.subscribe_wait([(f"{ROOT}/room/+/audio/+", 1), (f"{ROOT}/req/#", 1)])
    server.publish_wait(f"{ROOT}/req/{SERVER}/sentinel", b"{}")
    got = server.collect_until(f"{ROOT}/req/{SERVER}/sentinel")
    assert [m.topic for m in got] == [f"{ROOT}/req/{SERVER}/sentinel"]
    # And the broker holds no copy of them (the flood was 73 MiB).
    growth_mib = (broker.rss_kib() - rss_before) / 1024
    assert growth_mib < 4, f"broker RSS grew by {growth_mib:.1f} MiB"


@pytest.mark.parametrize("listener", ["plain_port", "port", "cert_port", "ws_port", "wss_port"])
def test_every_listener_caps_its_connections(broker: Broker, listener: str) -> None:
    text = broker.conf_path.read_text(encoding="utf-8")
    block = text.split(f"listener {getattr(broker, listener)} ")[1].split("\nlistener ")[0]
    assert f"max_connections {shipped_limit('max_connections')}" in block


def test_memory_limit_disconnects_a_client_parking_retained_messages(
    tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    """On a broker without the plugin (which refuses them outright: test_broker_guard),
    retained messages just under the packet limit are the residual way to fill a
    broker; memory_limit stops it. The shipped conf with the limit scaled down to 4 MB
    so that the test publishes 4 MB rather than 256."""
    limit = shipped_limit("memory_limit")
    assert 64 * 2**20 <= limit <= 512 * 2**20
    shipped = Path(SHIPPED_CONF).read_text(encoding="utf-8")
    template = tmp_path / "mosquitto.conf"
    template.write_text(shipped.replace(f"memory_limit {limit}", "memory_limit 4000000"))
    with Broker(tmp_path / "broker", conf_template=template, guard=False) as small:
        mallory = mqtt_client(small, "mallory")
        junk = b"\0" * (shipped_limit("max_packet_size") - 1024)
        for i in range(200):  # 12 MB offered
            mallory.publish(f"{ROOT}/req/mallory/m{i}", junk, qos=1, retain=True)
        assert mallory.disconnects.get(timeout=10).is_failure
        assert "disconnected due to out of memory" in small.log_text()
        # The broker still serves everyone else.
        bob = mqtt_client(small, "bob")
        assert not bob.publish_wait(f"{ROOT}/req/bob/heartbeat", b"{}").is_failure
