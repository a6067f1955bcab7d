"""Hostile input: every bad request is answered or dropped and counted, and the
server keeps serving everyone else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.client import GoChatClient
from appliance.protocol import topics
from appliance.protocol.models import Request
from appliance.server.rules import Outcome, RoomService
from testbed import Broker
from testbed.server import RunningServer, connect

Users = Callable[..., GoChatClient]


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        (b"{not json", "payload"),
        (b"\xff\xfe\x00", "payload"),
        (b"[1, 2]", "payload"),
        (b"[" * 3000 + b"]" * 3000, "payload"),
        (b'{"name": 42}', "name"),
        (b'{"name": ""}', "name"),
        (b'{"name": "x" }' + b" " * 10, ""),
        (b'{"name": "ok", "admin": true}', "admin"),
        (b"{}", "name"),
    ],
)
def test_malformed_login_is_a_400_naming_the_field(
    users: Users, payload: bytes, names: str
) -> None:
    client = users("mallory", login=False)
    response = client.request("login", payload)
    if names == "":
        assert response.code == 0  # trailing whitespace is still valid JSON
        return
    assert response.code == 400 and response.data is None
    assert response.message.startswith(names), response.message


def test_wrong_types_and_unknown_fields_in_room_methods(users: Users) -> None:
    client = users("mallory")
    cases = {
        "create_room": ({"subject": "x", "max_seats": "8"}, "max_seats"),
        "operate_raise_hand": ({"room_id": "r", "raise": "yes"}, "raise"),
        "invite_onstage": ({"room_id": "r", "user_id": "bad id!"}, "user_id"),
        "get_room_list": ({"page_size": 0}, "page_size"),
        "set_user_info": ({"room_id": "r", "user_id": "u", "role": "king"}, "role"),
        "heartbeat": ({"extra": 1}, "extra"),
    }
    for method, (payload, field) in cases.items():
        response = client.request(method, payload)
        assert response.code == 400, (method, response)
        assert response.message.startswith(field), (method, response.message)


def test_oversize_payload_is_refused(users: Users) -> None:
    client = users("mallory")
    response = client.request("create_room", {"subject": "x" * 5000})
    assert response.code == 400 and "4096" in response.message


def test_unknown_method(users: Users) -> None:
    response = users("mallory").request("become_admin", {})
    assert response.code == 400 and "unknown method" in response.message


def test_missing_routing_is_answered_when_it_can_be(users: Users, server: RunningServer) -> None:
    client = users("mallory")
    req = topics.request("mallory", "heartbeat")
    client.publish_raw(req, b"{}", correlation=b"c1")  # no ResponseTopic
    client.publish_raw(req, b"{}", response_topic=topics.response("mallory"))  # no correlation
    client.publish_raw(req, b"{}", response_topic=topics.response("victim"), correlation=b"c2")
    answers = [json.loads(client.raw.get(timeout=5).payload) for _ in range(3)]
    assert [a["code"] for a in answers] == [400, 400, 400]
    messages = sorted(a["message"].split(":")[0] for a in answers)
    assert messages == ["CorrelationData", "ResponseTopic", "ResponseTopic"]
    assert server.counters()["malformed"] >= 3


@pytest.mark.unguarded  # the plugin would stop this flood at the broker (test_broker_guard)
def test_flood_is_limited_and_others_are_still_served(users: Users, server: RunningServer) -> None:
    flooder, bystander = users("flooder"), users("bystander")
    req = topics.request("flooder", "heartbeat")
    for i in range(300):
        flooder.publish_raw(
            req, b"{}", qos=0, response_topic=topics.response("flooder"), correlation=b"%d" % i
        )
    assert bystander.call("heartbeat") == {"room_id": None, "room_version": None}
    codes: list[int] = []
    while True:
        try:
            codes.append(json.loads(flooder.raw.get(timeout=1).payload)["code"])
        except Exception:
            break
    counters = server.counters()
    assert codes.count(0) <= 40 and 429 in codes
    assert counters["dropped_rate_limited"] > 0
    assert len(codes) + counters["dropped_rate_limited"] == 300
    assert bystander.call("get_room_list")["rooms"] == []


def test_garbage_on_presence_and_unknown_topics_is_ignored(
    users: Users, server: RunningServer
) -> None:
    client = users("mallory")
    client.publish_raw(topics.presence("mallory"), b"\x00" * 100, retain=True)
    client.publish_raw(topics.request("mallory", ""), b"{}")
    assert client.call("heartbeat")["room_id"] is None


class FaultyService(RoomService):
    """Injects a fault into one method, to prove the adapter's 500 path."""

    def handle(self, user_id: str, request: Request, now: float) -> Outcome:
        if request.method == "get_room_list":
            raise RuntimeError("injected fault: secret stack detail")
        return super().handle(user_id, request, now)


def test_an_internal_error_is_a_500_with_a_request_id_and_no_trace(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RunningServer(broker, tmp_path / "s.db", service=FaultyService).start()
    client = connect(broker, "mallory")
    try:
        response = client.request("get_room_list", {})
        assert response.code == 500 and response.data is None
        assert "request id" in response.message and "secret" not in response.message
        request_id = response.message.rsplit(" ", 1)[-1].rstrip(")")
        assert request_id in caplog.text and "injected fault" in caplog.text
        assert client.call("heartbeat") == {"room_id": None, "room_version": None}
    finally:
        client.close()
        server.stop()


UNSAFE = ["\x00", "\x1b[2J", "\x7f", "\x85", "\u202e", "\u202a", "\u2066", "\u2069",
          "\u200b", "\ufeff", "\u2028", "\n", "\t"]  # fmt: skip


@pytest.mark.parametrize("bad", UNSAFE, ids=[f"U+{ord(c[0]):04X}" for c in UNSAFE])
def test_names_and_subjects_with_control_or_format_characters_are_a_400(
    users: Users, bad: str
) -> None:
    client = users("mallory", login=False)
    response = client.request("login", {"name": f"Mal{bad}lory"})
    assert response.code == 400 and response.message.startswith("name: must not contain")
    assert f"U+{ord(bad[0]):04X}" in response.message
    client.login("Mallory")
    response = client.request("create_room", {"subject": f"{bad}Room"})
    assert response.code == 400 and response.message.startswith("subject: must not contain")
    assert client.call("get_room_list")["rooms"] == []


def test_ordinary_names_and_subjects_pass(users: Users) -> None:
    client = users("zoe", login=False)
    for name in ("Zoë", "会議室\u3000一", "🎙️ Anne-Marie", "a\u00a0b", "  spaced  "):
        assert client.request("login", {"name": name}).code == 0, name
    room = client.call("create_room", subject="Zoë's café ☕ 会議")["room"]
    assert room["subject"] == "Zoë's café ☕ 会議"
