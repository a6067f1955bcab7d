"""Everything that reaches into paho-mqtt's private members, in one file.

Two hot paths cannot afford paho's per-message work: the server's rate limit (a
flooding client must cost a counter bump, not an ``MQTTMessage`` with an MQTT 5
``Properties`` object) and the device's audio frames (50 a second per speaker, both
ways). Both need the same three things paho does not offer:

* :func:`hook_incoming_publish`: see every incoming PUBLISH as raw bytes
  (:class:`RawPublish`) before paho decodes it, and take it (paho then skips it; a
  QoS 1 one is still acknowledged) or leave it to paho;
* :func:`queue_qos0_publish`: queue a pre-packed QoS 0 PUBLISH, with no message id,
  ``MQTTMessageInfo`` or ``on_publish`` call;
* :func:`unacknowledged`: how many QoS 1 messages wait for the broker's PUBACK.

These use ``Client._handle_publish``, ``_in_packet``, ``_send_puback``,
``_packet_queue``, ``_sock`` and ``_out_messages``, read in paho-mqtt
:data:`CHECKED_VERSIONS`. Importing this module checks the installed paho against
them (:func:`check_paho`) and refuses any other version with
:class:`PahoInternalsError`: a new paho release is a deliberate step (read its
``client.py`` for these members, then add it here and to pyproject's pin), never a
silent change of behaviour.
"""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import MQTTErrorCode

CHECKED_VERSIONS = ((2, 1), (2, 2))
"""paho-mqtt releases (major, minor) whose internals this module was written against."""

CLIENT_METHODS = ("_handle_publish", "_send_puback", "_packet_queue")
CLIENT_STATE = ("_in_packet", "_sock", "_out_messages")
"""The private members used: methods of the class, and attributes of an instance."""


class PahoInternalsError(ImportError):
    """The installed paho-mqtt is not one whose internals this module was checked against."""


def check_paho(version: str = paho_version) -> None:
    """Raise :class:`PahoInternalsError` unless paho ``version`` is a checked one and
    its client class still has the private methods used here."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    if major_minor not in CHECKED_VERSIONS:
        checked = ", ".join(f"{major}.{minor}" for major, minor in CHECKED_VERSIONS)
        raise PahoInternalsError(
            f"paho-mqtt {version} is installed; {__name__} reaches into paho's private"
            f" members and was checked against {checked} only: read the new release's"
            " client.py for the members its docstring names, then add the version to"
            " CHECKED_VERSIONS and to pyproject.toml's pin"
        )
    missing = [name for name in CLIENT_METHODS if not callable(getattr(paho.Client, name, None))]
    if missing:
        raise PahoInternalsError(f"paho-mqtt {version}'s Client has no {', '.join(missing)}")


check_paho()


class RawPublish:
    """An incoming PUBLISH as it came off the wire (MQTT 5), read no further than asked.

    A plain class, not a frozen dataclass: one is made per message on the flood path,
    where a frozen dataclass's constructor cost half as much again as the gate itself.
    """

    __slots__ = ("body", "header", "topic")

    def __init__(self, header: int, body: bytes | bytearray, topic: bytes) -> None:
        self.header = header  # the fixed header's first byte: type, DUP, QoS, RETAIN
        self.body = body  # variable header and payload
        self.topic = topic

    @property
    def qos(self) -> int:
        return (self.header >> 1) & 0x03

    @property
    def retain(self) -> bool:
        return bool(self.header & 0x01)

    @property
    def packet_id(self) -> int | None:
        """The packet identifier (None at QoS 0)."""
        if not self.qos:
            return None
        at = 2 + len(self.topic)
        return int.from_bytes(self.body[at : at + 2], "big")

    def payload(self) -> bytes | None:
        """The application payload, past the properties (None if malformed)."""
        at = 2 + len(self.topic) + (2 if self.qos else 0)
        length, shift = 0, 0  # the properties' length: a variable byte integer
        while True:
            if at >= len(self.body) or shift > 21:
                return None
            byte = self.body[at]
            length |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not byte & 0x80:
                break
        start = at + length
        return bytes(self.body[start:]) if start <= len(self.body) else None


def parse_publish(header: int, body: bytes | bytearray) -> RawPublish | None:
    """The topic of a PUBLISH (the rest is read on demand); None if it is cut short."""
    if len(body) < 2:
        return None
    end = 2 + int.from_bytes(body[:2], "big")
    if end > len(body):
        return None
    return RawPublish(header, body, bytes(body[2:end]))


PublishHook = Callable[[RawPublish], bool]
"""Called on paho's reading thread with every incoming PUBLISH; True: taken (paho skips
it, acknowledging it at QoS 1), False: paho handles it as usual."""


def hook_incoming_publish(client: paho.Client, hook: PublishHook) -> None:
    """Run ``hook`` on every PUBLISH ``client`` reads, before paho decodes it.

    A taken QoS 2 message would need the PUBREC/PUBREL exchange: QoS 2 is always left
    to paho, whatever the hook says. Raises :class:`PahoInternalsError` if the
    instance lacks the state this relies on.
    """
    missing = [name for name in CLIENT_STATE if not hasattr(client, name)]
    if missing:
        raise PahoInternalsError(f"this paho Client instance has no {', '.join(missing)}")
    decode: Callable[[], MQTTErrorCode] = client._handle_publish

    def handle_publish() -> MQTTErrorCode:
        packet = client._in_packet
        raw = parse_publish(packet["command"], packet["packet"])
        if raw is None or raw.qos == 2 or not hook(raw):
            return decode()
        packet_id = raw.packet_id
        if packet_id is None:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        acknowledged: MQTTErrorCode = client._send_puback(packet_id)
        return acknowledged

    client._handle_publish = handle_publish  # type: ignore[method-assign]


def queue_qos0_publish(client: paho.Client, topic: bytes, payload: bytes) -> bool:
    """Queue a QoS 0 PUBLISH without properties, written as is by whichever thread
    writes ``client``'s socket; safe from any thread. False without a connection."""
    if client._sock is None:
        return False
    remaining = 2 + len(topic) + 1 + len(payload)
    packet = bytearray((_PUBLISH_QOS0,))
    while True:  # the remaining length: a variable byte integer
        remaining, byte = remaining >> 7, remaining & 0x7F
        packet.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    packet += len(topic).to_bytes(2, "big")
    packet += topic
    packet.append(0)  # properties: none
    packet += payload
    # Queued as a raw packet (command 0): no message id, no publish bookkeeping.
    client._packet_queue(0, packet, 0, 0)
    return True


def unacknowledged(client: paho.Client) -> int:
    """Messages handed to ``client`` and not yet acknowledged by the broker (its
    outgoing table, which only shrinks as PUBACKs arrive)."""
    return len(client._out_messages)


_PUBLISH_QOS0 = 0x30
