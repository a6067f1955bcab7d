"""Retained messages never act: a retained request is never executed (not even after a
server restart), and the server's janitor clears what is retained on request and
audio topics (docs/protocol.md 3.1).

On a broker without the plugin, which would refuse these messages before the server
sees them (tests/test_broker_guard.py): this is the second line.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import pytest

from appliance.client import GoChatClient
from appliance.mqtt import routing_of
from appliance.protocol import topics
from appliance.protocol.topics import SERVER_USER_ID
from testbed import Broker, connect_client
from testbed.server import RunningServer, connect

pytestmark = pytest.mark.unguarded


def _answers(client: GoChatClient, correlation: bytes, wait_s: float) -> list[int]:
    """Codes of the answers carrying ``correlation`` that arrive within ``wait_s``."""
    codes: list[int] = []
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = client.raw.get(timeout=left)
        except queue.Empty:
            break
        if routing_of(message)[1] == correlation:
            codes.append(json.loads(message.payload)["code"])
    return codes


def _retained(broker: Broker, filters: list[str], user: str = SERVER_USER_ID) -> list[str]:
    """Topics under ``filters`` that hold a retained message (asked as ``user``)."""
    watcher = connect_client(broker, user, client_id=f"{user}-watch")
    try:
        return [msg.topic for msg in watcher.retained(filters)]
    finally:
        watcher.close()


def test_a_retained_request_is_never_executed_not_even_after_a_restart(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "server.db"
    server = RunningServer(broker, db).start()
    host, bob = connect(broker, "host"), connect(broker, "bob")
    try:
        room_id = host.call("create_room", subject="Kept")["room"]["room_id"]
        bob.call("login_room", room_id=room_id)
        quit_topic = topics.request("bob", "quit_room")
        bob.publish_raw(
            quit_topic,
            json.dumps({"room_id": room_id}).encode(),
            response_topic=topics.response("bob"),
            correlation=b"retained-quit",
            retain=True,
        )
        first = _answers(bob, b"retained-quit", 1.0)
        assert first == [], "a retained request must not be executed"
        assert server.server is not None
        assert server.server.counters["dropped_retained"] == 1
        bob.call("login_room", room_id=room_id)  # harmless: bob is still a member

        server.stop()
        server = RunningServer(broker, db).start()

        # Nothing is executed again: no (second) answer, and bob keeps its room.
        assert _answers(bob, b"retained-quit", 1.5) == []
        assert bob.call("heartbeat")["room_id"] == room_id
    finally:
        host.close()
        bob.close()
        server.stop()
    assert _retained(broker, [topics.REQUESTS_TREE]) == []


def test_the_janitor_clears_what_was_retained_while_the_server_was_away(
    broker: Broker, tmp_path: Path
) -> None:
    if not broker.has_user(SERVER_USER_ID):
        broker.add_user(SERVER_USER_ID)
    mallory = connect(broker, "mallory", login=False)
    try:
        mallory.publish_raw(topics.audio("r1", "mallory"), b"\x01" * 40, retain=True)
        mallory.publish_raw(
            topics.request("mallory", "logout"),
            b"{}",
            response_topic=topics.response("mallory"),
            correlation=b"c",
            retain=True,
        )
        mallory.publish_raw(topics.request("mallory", "a/b"), b"{}", retain=True)
        assert len(_retained(broker, [*topics.RETAINED_SWEEP])) == 3
        server = RunningServer(broker, tmp_path / "server.db").start()
        try:
            deadline = time.monotonic() + 5
            assert server.server is not None
            while server.server.counters["retained_cleared"] < 3:
                assert time.monotonic() < deadline, server.server.counters
                time.sleep(0.05)
            assert server.server.janitor.by_user == {"mallory": 3}
            assert _answers(mallory, b"c", 0.5) == []  # never executed either
        finally:
            server.stop()
        assert _retained(broker, [*topics.RETAINED_SWEEP]) == []
    finally:
        mallory.close()


def test_malformed_request_topics_are_answered_on_the_own_response_topic(
    broker: Broker, tmp_path: Path
) -> None:
    server = RunningServer(broker, tmp_path / "server.db").start()
    mallory = connect(broker, "mallory")
    try:
        own = topics.response("mallory")
        for i, method in enumerate(["a/b", "", "login/x/y"]):
            mallory.publish_raw(
                topics.request("mallory", method), b"{}", response_topic=own,
                correlation=b"m%d" % i,
            )  # fmt: skip
            answer = mallory.raw.get(timeout=5)
            assert routing_of(answer)[1] == b"m%d" % i
            body = json.loads(answer.payload)
            assert body["code"] == 400 and body["message"].startswith("topic:"), body
        # Not the user's own response topic: dropped and counted, never followed.
        mallory.publish_raw(
            topics.request("mallory", "a/b"), b"{}", response_topic=topics.response("victim"),
            correlation=b"x",
        )  # fmt: skip
        assert mallory.call("heartbeat")["room_id"] is None
        assert mallory.raw.empty()
    finally:
        mallory.close()
        server.stop()
