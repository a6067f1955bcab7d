"""Pushes and timers over the real broker: coalesced room state, invitation expiry,
session TTL after a Will, on the server's offset clock."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from appliance.client import GoChatClient
from appliance.protocol import models as m
from appliance.protocol import topics
from testbed import Broker
from testbed.server import RunningServer, connect

Users = Callable[..., GoChatClient]

# The protocol against both stores: SQLite, and two instances on PostgreSQL.
pytestmark = pytest.mark.parametrize("server", ["sqlite", "postgresql"], indirect=True)


def test_a_burst_is_coalesced_and_ends_on_the_latest_version(
    broker: Broker, users: Users, mqtt_client: Callable[..., object]
) -> None:
    host = users("host")
    room_id = host.call("create_room", subject="Burst")["room"]["room_id"]
    watcher = mqtt_client(broker, "watcher")
    watcher.subscribe_wait(topics.room_state(room_id))  # type: ignore[attr-defined]
    watcher.expect(topics.room_state(room_id))  # type: ignore[attr-defined]  # the retained one
    joiners = [connect(broker, f"j{i}") for i in range(30)]
    try:
        start = time.monotonic()
        for joiner in joiners:
            joiner.publish_raw(
                topics.request(joiner.user_id, "login_room"),
                json.dumps({"room_id": room_id}).encode(),
                response_topic=topics.response(joiner.user_id),
                correlation=b"1",
            )
        seen: list[tuple[float, m.RoomState]] = []
        while not seen or seen[-1][1].member_count < 31:
            message = watcher.expect(topics.room_state(room_id))  # type: ignore[attr-defined]
            seen.append((time.monotonic(), m.RoomState.model_validate_json(message.payload)))
        elapsed = seen[-1][0] - start
    finally:
        for joiner in joiners:
            joiner.close()
    versions = [state.version for _, state in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert len(seen) < 30 and len(seen) <= 2 + elapsed / 0.05, (len(seen), elapsed)
    assert seen[-1][1].member_count == 31


def test_an_isolated_change_is_published_at_once(users: Users) -> None:
    host, ann = users("host"), users("ann")
    room_id = host.call("create_room", subject="Quick")["room"]["room_id"]
    ann.watch_room(room_id)
    first = ann.wait_room(room_id, lambda s: True)
    time.sleep(0.06)  # the room is quiet: the next change must not wait
    started = time.monotonic()
    ann.call("login_room", room_id=room_id)
    ann.wait_room(room_id, lambda s: s.version > first.version)
    assert time.monotonic() - started < 0.04


def test_invitation_expires_for_both_sides(users: Users, server: RunningServer) -> None:
    host, ann = users("host"), users("ann")
    room_id = host.call("create_room", subject="Wait")["room"]["room_id"]
    ann.call("login_room", room_id=room_id)
    invitation = host.call("invite_onstage", room_id=room_id, user_id="ann")
    ann.next_inbox("invite_onstage")
    server.advance(20)
    for client in (host, ann):
        client.call("heartbeat")
    server.advance(11)
    expected = m.InviteExpired(invitation_id=invitation["invitation_id"], room_id=room_id)
    assert ann.next_inbox("invite_expired") == expected
    assert host.next_inbox("invite_expired") == expected
    late = ann.request(
        "response_onstage_invite",
        {"room_id": room_id, "invitation_id": invitation["invitation_id"], "accept": True},
    )
    assert late.code == 409


def test_a_dead_client_has_a_ttl_to_come_back(
    broker: Broker, users: Users, server: RunningServer
) -> None:
    host = users("host")
    room_id = host.call("create_room", subject="Ttl")["room"]["room_id"]
    ann = connect(broker, "ann")
    ann.call("login_room", room_id=room_id)
    host.watch_room(room_id)
    host.wait_room(room_id, lambda s: s.member_count == 2)
    killed_at = server.clock()
    ann.kill()  # no DISCONNECT: the broker publishes ann's Will, "offline"
    server.wait_presence("ann", killed_at)
    server.advance(25)
    host.call("heartbeat")
    back = connect(broker, "ann")  # within the TTL: same room, same role
    try:
        assert back.call("heartbeat")["room_id"] == room_id
        killed_at = server.clock()
        back.kill()
        server.wait_presence("ann", killed_at)
        server.advance(20)
        host.call("heartbeat")
        server.advance(11)  # 31 s since ann's last sign of life
        state = host.wait_room(room_id, lambda s: s.member_count == 1)
        assert state.seats[0].user_id == "host"
    finally:
        back.close(offline=False)


def test_a_dead_host_closes_its_room(broker: Broker, users: Users, server: RunningServer) -> None:
    ann = users("ann")
    host = connect(broker, "host")
    room_id = host.call("create_room", subject="Gone")["room"]["room_id"]
    ann.call("login_room", room_id=room_id)
    killed_at = server.clock()
    host.kill()
    server.wait_presence("host", killed_at)
    server.advance(20)
    ann.call("heartbeat")
    server.advance(11)
    assert ann.next_inbox("room_closed") == m.RoomClosed(room_id=room_id)
