"""The broker plugin (broker-plugin/gochat_guard.c) on a real Mosquitto with the shipped
configuration: retained messages only where the protocol retains them, and floods
(requests, audio frames) refused at the broker. What the server does on a broker without the plugin is
tests/server/test_retained.py and test_fairness.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.protocol import topics
from testbed import Broker, BrokerError, MqttClientFactory, RecordingClient
from testbed.broker import SHIPPED_ACL, SHIPPED_CONF

SERVER = topics.SERVER_USER_ID
NOT_AUTHORIZED = 0x87
PACKET_LIMIT = 65536  # max_packet_size


def shipped_limits() -> dict[str, int]:
    """plugin_opt_limits of the shipped configuration: topic prefix -> per second."""
    match = re.search(r"^plugin_opt_limits (\S+)$", SHIPPED_CONF.read_text(), re.MULTILINE)
    assert match is not None
    pairs = (item.rsplit("=", 1) for item in match.group(1).split(","))
    return {prefix: int(per_s) for prefix, per_s in pairs}


LIMITS = shipped_limits()


def retained_topics(watcher: RecordingClient, filters: list[str]) -> dict[str, bytes]:
    """Topic -> payload of what the broker holds retained under ``filters``."""
    return {msg.topic: msg.payload for msg in watcher.retained(filters)}


def test_a_device_cannot_retain_on_its_request_or_audio_topics(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    mallory = mqtt_client(broker, "mallory")
    request, frame = topics.request("mallory", "logout"), topics.audio("r1", "mallory")
    for topic in (request, frame):
        assert mallory.publish_wait(topic, b"junk", retain=True).value == NOT_AUTHORIZED
        mallory.publish_wait(topic, b"junk", qos=0, retain=True)  # dropped, silently
    # Its own presence is where the protocol retains: stored as before.
    assert not mallory.publish_wait(topics.presence("mallory"), b"online", retain=True).is_failure
    # The live messages still pass: only the retain flag is refused.
    assert not mallory.publish_wait(request, b"{}").is_failure
    assert mallory.disconnects.empty()
    watcher = mqtt_client(broker, SERVER, client_id=f"{SERVER}-watch")
    seen = retained_topics(watcher, [*topics.RETAINED_SWEEP, topics.PRESENCE_ALL])
    assert seen == {topics.presence("mallory"): b"online"}
    assert "gochat_guard: refused 1 retained publish" in broker.log_text()


def test_only_the_servers_accounts_retain_anywhere(
    tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    # A second server instance's account (the ACL grants it as the first one); a
    # device whose name merely starts like one is a device.
    acl = tmp_path / "acl"
    acl.write_text(
        SHIPPED_ACL.read_text(encoding="utf-8")
        + "\nuser gochat-server-2\ntopic readwrite gochat/#\n",
        encoding="utf-8",
    )
    with Broker(tmp_path / "broker", acl_file=acl) as broker:
        state = topics.room_state("r1")
        for server in (SERVER, "gochat-server-2"):
            client = mqtt_client(broker, server)
            assert not client.publish_wait(state, b"{}", retain=True).is_failure, server
            own_request = topics.request(server, "x")
            assert not client.publish_wait(own_request, b"{}", retain=True).is_failure, server
        impostor = mqtt_client(broker, "gochat-serverx")
        refused = impostor.publish_wait(topics.request("gochat-serverx", "x"), b"{}", retain=True)
        assert refused.value == NOT_AUTHORIZED


def test_a_retained_junk_flood_leaves_the_broker_as_it_was(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    # 300 retained messages just under the packet limit (18 MB), on the sender's own
    # request and audio topics, at QoS 0 and 1: the broker once stored them all.
    mallory = mqtt_client(broker, "mallory")
    rss_before = broker.rss_kib()
    junk = b"\0" * (PACKET_LIMIT - 1024)
    sent = []
    for i in range(300):
        topic = topics.request("mallory", f"m{i}") if i % 2 else topics.audio(f"r{i}", "mallory")
        sent.append(mallory.publish(topic, junk, qos=i % 3 % 2, retain=True))
    for info in sent:
        info.wait_for_publish(10)
    assert mallory.disconnects.empty()  # refused message by message, not cut off
    watcher = mqtt_client(broker, SERVER)
    assert retained_topics(watcher, list(topics.RETAINED_SWEEP)) == {}
    growth_mib = (broker.rss_kib() - rss_before) / 1024
    assert growth_mib < 4, f"broker RSS grew by {growth_mib:.1f} MiB"


@pytest.mark.parametrize(
    ("prefix", "topic"),
    [
        (topics.REQUEST_PREFIX, topics.request("{}", "heartbeat")),
        (f"{topics.ROOT}/room/", topics.audio("r1", "{}")),
    ],
)
def test_a_flood_is_refused_at_the_broker_past_the_limit(
    broker: Broker, mqtt_client: MqttClientFactory, prefix: str, topic: str
) -> None:
    limit = LIMITS[prefix]
    flooder, bystander = mqtt_client(broker, "flooder"), mqtt_client(broker, "bystander")
    burst = flooder.publish_many_wait(topic.format("flooder"), [b"{}"] * 3 * limit)
    codes = [code.value for code in burst]
    # One fixed window per second: the first `limit` pass (a slow machine may start a
    # second window within the burst), the rest is refused, and nobody else is.
    passed = [code for code in codes if code != NOT_AUTHORIZED]
    assert limit <= len(passed) < len(codes) and codes[:limit] == passed[:limit]
    assert not bystander.publish_wait(topic.format("bystander"), b"{}").is_failure
    assert flooder.disconnects.empty()
    # Each prefix has its own window: the flooder's other topics are not limited.
    other = topics.request("flooder", "x") if "/room/" in topic else topics.audio("r1", "flooder")
    assert not flooder.publish_wait(other, b"{}").is_failure


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("plugin_opt_limits gochat/v1/req/=lots", "takes PREFIX=PER_SECOND"),
        ("plugin_opt_limits 40", "takes PREFIX=PER_SECOND"),
        ("plugin_opt_limit_per_s 40", "unknown option plugin_opt_limit_per_s"),
    ],
)
def test_a_bad_plugin_option_stops_the_broker_with_a_clear_error(
    tmp_path: Path, option: str, error: str
) -> None:
    template = tmp_path / "mosquitto.conf"
    template.write_text(
        re.sub(r"^plugin_opt_limits .*$", option, SHIPPED_CONF.read_text(), flags=re.MULTILINE),
        encoding="utf-8",
    )
    with pytest.raises(BrokerError, match=error):
        Broker(tmp_path / "broker", conf_template=template).start()
