"""Request validation and topic parsing: anything a client sends is either a valid
request or a BadRequestError naming the field, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protocol import models as m
from appliance.protocol import topics

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.sampled_from(sorted(m.METHODS)), st.dictionaries(st.text(max_size=12), json_values))
def test_any_json_object_is_a_request_or_a_named_400(
    method: str, payload: dict[str, object]
) -> None:
    raw = json.dumps(payload).encode()
    try:
        request = m.parse_request(method, raw)
    except m.BadRequestError as exc:
        assert str(exc) and ":" in str(exc)
        return
    assert isinstance(request, m.METHODS[method])


@given(st.binary(max_size=200))
def test_any_bytes_are_a_request_or_a_400(raw: bytes) -> None:
    try:
        request = m.parse_request("login", raw)
    except m.BadRequestError as exc:
        assert str(exc).split(":")[0] in ("payload", "name") or "unknown field" in str(exc)
        return
    assert isinstance(request, m.LoginRequest) and 1 <= len(request.name) <= 32


def test_raise_travels_under_its_wire_name() -> None:
    request = m.OperateRaiseHandRequest(room_id="r", raise_=True)
    assert json.loads(m.dump(request))["raise"] is True
    assert m.parse_request("operate_raise_hand", b'{"room_id": "r", "raise": false}') == (
        m.OperateRaiseHandRequest(room_id="r", raise_=False)
    )


def test_received_shapes_ignore_unknown_fields() -> None:
    member = {"user_id": "u", "name": "U", "role": "listener", "mic_on": False,
              "hand_raised": False, "joined_at": 1.0, "new_field": [1, 2]}  # fmt: skip
    assert m.Member.model_validate(member).user_id == "u"
    command = m.parse_inbox(b'{"type": "muted", "room_id": "r", "by": "h", "extra": 1}')
    assert command == m.Muted(room_id="r", by="h")


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("gochat/v1/req/alice/login", topics.RequestTopic("alice", "login")),
        ("gochat/v1/req/alice/", None),
        ("gochat/v1/req/bad id/login", None),
        ("gochat/v2/req/alice/login", None),
        ("gochat/v1/req/alice/login/extra", None),
    ],
)
def test_request_topics(topic: str, parsed: topics.RequestTopic | None) -> None:
    assert topics.parse_request(topic) == parsed


def test_topic_builders_and_parsers_agree() -> None:
    assert topics.parse_request(topics.request("a.b-c_d", "heartbeat")) == topics.RequestTopic(
        "a.b-c_d", "heartbeat"
    )
    assert topics.parse_presence(topics.presence("pi-1")) == "pi-1"
    assert topics.parse_room_state(topics.room_state("R1")) == "R1"
    assert topics.parse_audio(topics.audio("R1", "pi-1")) == topics.AudioTopic("R1", "pi-1")
    assert topics.parse_audio(topics.room_state("R1")) is None
    assert topics.is_user_id("x" * 64) and not topics.is_user_id("x" * 65)
