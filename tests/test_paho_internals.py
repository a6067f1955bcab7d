"""The one module that reaches into paho: its version check, and its raw PUBLISH reader.

The hooks themselves run in every server and device test (the server's gate, the
device's audio short path, both ways); here, what guards them: an unchecked paho
release is refused loudly, and malformed packets are left to paho.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import paho.mqtt.client as paho
import pytest

from appliance import paho_internals
from appliance.mqtt import new_client
from appliance.paho_internals import (
    CLIENT_STATE,
    PahoInternalsError,
    RawPublish,
    check_paho,
    hook_incoming_publish,
    parse_publish,
)
from appliance.protocol import topics

AUDIO = topics.audio("r-1", "bob").encode()


def test_the_installed_paho_is_one_whose_internals_were_checked() -> None:
    check_paho()
    client = new_client("probe")
    assert all(hasattr(client, name) for name in CLIENT_STATE)


@pytest.mark.parametrize("version", ["2.3.0", "3.0.0", "1.6.1", "2", "dev"])
def test_any_other_paho_release_is_refused_loudly(version: str) -> None:
    with pytest.raises(PahoInternalsError, match=f"paho-mqtt {version} is installed"):
        check_paho(version)


def test_a_release_without_the_private_methods_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(paho.Client, "_send_puback")
    with pytest.raises(PahoInternalsError, match="no _send_puback"):
        check_paho()


def test_a_client_without_the_private_state_is_refused() -> None:
    stranger = cast(paho.Client, SimpleNamespace(_handle_publish=lambda: None))
    with pytest.raises(PahoInternalsError, match="_in_packet, _sock, _out_messages"):
        hook_incoming_publish(stranger, lambda raw: True)


def _body(topic: bytes, properties: bytes, payload: bytes, packet_id: bytes = b"") -> bytes:
    return len(topic).to_bytes(2, "big") + topic + packet_id + properties + payload


def test_a_raw_publish_is_read_no_further_than_asked() -> None:
    raw = parse_publish(0x30, _body(AUDIO, b"\x00", b"frame"))
    assert raw is not None
    assert (raw.topic, raw.qos, raw.retain, raw.packet_id) == (AUDIO, 0, False, None)
    assert raw.payload() == b"frame"
    long_props = b"\x80\x01" + bytes(128)  # a 128-byte properties block, skipped unread
    assert _payload(0x30, _body(AUDIO, long_props, b"f")) == b"f"
    assert _payload(0x30, _body(AUDIO, b"\x00", b"")) == b""
    at_qos1 = parse_publish(0x33, _body(AUDIO, b"\x00", b"x", packet_id=b"\x01\x02"))
    assert at_qos1 is not None
    assert (at_qos1.qos, at_qos1.retain, at_qos1.packet_id) == (1, True, 0x0102)
    assert at_qos1.payload() == b"x"


def test_malformed_publishes_are_left_to_paho() -> None:
    # A cut properties length, properties longer than the packet, a runaway length:
    # no payload; a topic longer than the packet, or no topic length: no packet.
    assert _payload(0x30, _body(AUDIO, b"\x80", b"")) is None
    assert _payload(0x30, _body(AUDIO, b"\x05", b"abc")) is None
    assert _payload(0x30, _body(AUDIO, b"\xff\xff\xff\xff\x01", b"x")) is None
    assert _payload(0x30, _body(AUDIO, b"", b"")) is None  # no properties at all
    assert parse_publish(0x30, b"\x00\xff" + AUDIO) is None
    assert parse_publish(0x30, b"\x00") is None


def _payload(header: int, body: bytes) -> bytes | None:
    raw = parse_publish(header, body)
    assert isinstance(raw, RawPublish)
    return raw.payload()


def test_the_module_names_every_member_it_uses() -> None:
    # What the docstring promises a reader of the next paho release: the list is whole.
    text = Path(paho_internals.__file__).read_text(encoding="utf-8")
    used = set(re.findall(r"client\.(_\w+)", text))
    assert used == set(paho_internals.CLIENT_METHODS) | set(CLIENT_STATE)
