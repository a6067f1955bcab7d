"""paho-mqtt 2 client construction shared by the server and the appliance.

MQTT 5 only; the client id is the username (the broker enforces it too), and TLS is
on when a CA file is configured.
"""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.settings import BrokerSettings

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


def new_client(client_id: str) -> paho.Client:
    """A bare MQTT 5 paho client with Nagle's algorithm off.

    paho leaves TCP_NODELAY unset, and small MQTT packets then wait for delayed ACKs:
    about 40 ms per request/response round trip on Linux, for nothing.
    """
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    client.on_socket_open = set_no_delay
    return client


def set_no_delay(_client: paho.Client, _userdata: object, sock: object) -> None:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(broker: BrokerSettings, username: str) -> paho.Client:
    """A configured, not yet connected MQTT 5 client for ``username``."""
    client = new_client(username)
    password = broker.password()
    client.username_pw_set(username, password.get_secret_value() if password else None)
    if broker.tls_ca_file is not None:
        client.tls_set(
            ca_certs=str(broker.tls_ca_file),
            certfile=str(broker.tls_cert_file) if broker.tls_cert_file else None,
            keyfile=str(broker.tls_key_file) if broker.tls_key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    # Requests and responses are small; a deep queue only hides a dead link.
    client.max_queued_messages_set(1000)
    return client


def publish_properties(
    *, response_topic: str | None = None, correlation: bytes | None = None
) -> Properties:
    """PUBLISH properties carrying request/response routing."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def routing_of(message: paho.MQTTMessage) -> tuple[str | None, bytes | None]:
    """The ResponseTopic and CorrelationData of a received message (None if absent)."""
    props = message.properties
    if props is None:
        return None, None
    topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    return topic, bytes(correlation) if correlation is not None else None
