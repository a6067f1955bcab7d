"""The seed's flows end to end: three MQTT clients, real broker, real server."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from appliance.client import GoChatClient
from appliance.protocol import models as m
from testbed.server import RunningServer

Users = Callable[..., GoChatClient]

# The protocol against both stores: SQLite, and two instances on PostgreSQL.
pytestmark = pytest.mark.parametrize("server", ["sqlite", "postgresql"], indirect=True)


def seats(state: m.RoomState) -> list[tuple[str, str, bool]]:
    return [(s.user_id, s.role.value, s.mic_on) for s in state.seats]


def open_room(users: Users) -> tuple[GoChatClient, GoChatClient, GoChatClient, str]:
    """Host creates a room; two listeners find it in the list and join."""
    host, ann, bob = users("host"), users("ann"), users("bob")
    room = host.call("create_room", subject="Morning talk")["room"]
    room_id = room["room_id"]
    assert room["seats"][0]["role"] == "host" and room["seats"][0]["mic_on"] is True
    for client in (host, ann, bob):
        client.watch_room(room_id)
    listed = ann.call("get_room_list")["rooms"]
    assert [r["room_id"] for r in listed] == [room_id]
    assert listed[0]["host"] == {"user_id": "host", "name": "Host"}
    for listener in (ann, bob):
        joined = listener.call("login_room", room_id=room_id)
        assert joined["me"]["role"] == "listener" and joined["room"]["room_id"] == room_id
    attendees = ann.call("get_attendee_list", room_id=room_id)["attendees"]
    assert [(a["user_id"], a["role"]) for a in attendees] == [
        ("host", "host"),
        ("ann", "listener"),
        ("bob", "listener"),
    ]
    host.wait_room(room_id, lambda s: s.member_count == 3)
    return host, ann, bob, room_id


def test_host_creates_and_listeners_join(users: Users) -> None:
    _, ann, _, room_id = open_room(users)
    state = ann.wait_room(room_id, lambda s: s.member_count == 3)
    assert seats(state) == [("host", "host", True)] and state.subject == "Morning talk"
    assert ann.call("heartbeat") == {"room_id": room_id, "room_version": state.version}


def test_raise_hand_invite_accept(users: Users) -> None:
    host, ann, bob, room_id = open_room(users)
    ann.call("operate_raise_hand", room_id=room_id, **{"raise": True})
    state = host.wait_room(room_id, lambda s: s.raised_hand_count == 1)
    assert [h.user_id for h in state.raised_hands] == ["ann"]
    invitation = host.call("invite_onstage", room_id=room_id, user_id="ann")
    invite = ann.next_inbox("invite_onstage")
    assert isinstance(invite, m.InviteOnstage)
    assert invite.invitation_id == invitation["invitation_id"] and invite.from_user_id == "host"
    me = ann.call(
        "response_onstage_invite",
        room_id=room_id,
        invitation_id=invite.invitation_id,
        accept=True,
    )["me"]
    assert me["role"] == "speaker" and me["mic_on"] is True and me["hand_raised"] is False
    answer = host.next_inbox("invite_response")
    assert isinstance(answer, m.InviteResponse) and answer.accepted and answer.user_id == "ann"
    state = bob.wait_room(room_id, lambda s: len(s.seats) == 2)
    assert seats(state) == [("host", "host", True), ("ann", "speaker", True)]
    assert state.raised_hand_count == 0


def test_invite_decline(users: Users) -> None:
    host, _, bob, room_id = open_room(users)
    host.call("invite_onstage", room_id=room_id, user_id="bob")
    invite = bob.next_inbox("invite_onstage")
    assert isinstance(invite, m.InviteOnstage)
    me = bob.call(
        "response_onstage_invite",
        room_id=room_id,
        invitation_id=invite.invitation_id,
        accept=False,
    )["me"]
    assert me["role"] == "listener"
    answer = host.next_inbox("invite_response")
    assert isinstance(answer, m.InviteResponse) and not answer.accepted
    again = bob.request(
        "response_onstage_invite",
        {"room_id": room_id, "invitation_id": invite.invitation_id, "accept": True},
    )
    assert again.code == 409
    assert len(host.call("get_attendee_list", room_id=room_id)["attendees"]) == 3
    assert [s.user_id for s in host.wait_room(room_id, lambda s: True).seats] == ["host"]


def test_guest_quits_the_stage(users: Users) -> None:
    host, ann, _, room_id = open_room(users)
    _seat(host, ann, room_id)
    ann.call("set_user_info", room_id=room_id, user_id="ann", role="listener")
    state = host.wait_room(room_id, lambda s: len(s.seats) == 1)
    assert seats(state) == [("host", "host", True)]


def test_host_removes_a_guest(users: Users) -> None:
    host, ann, _, room_id = open_room(users)
    _seat(host, ann, room_id)
    host.call("set_user_info", room_id=room_id, user_id="ann", role="listener")
    removed = ann.next_inbox("removed_from_stage")
    assert removed == m.RemovedFromStage(room_id=room_id, by="host")
    state = ann.wait_room(room_id, lambda s: len(s.seats) == 1)
    assert state.seat_of("ann") is None


def test_host_mutes_a_guest(users: Users) -> None:
    host, ann, bob, room_id = open_room(users)
    _seat(host, ann, room_id)
    host.call("set_user_info", room_id=room_id, user_id="ann", mic_on=False)
    assert ann.next_inbox("muted") == m.Muted(room_id=room_id, by="host")
    state = bob.wait_room(room_id, lambda s: not s.is_heard("ann") and s.seat_of("ann") is not None)
    assert seats(state) == [("host", "host", True), ("ann", "speaker", False)]


def test_room_closed_by_host_then_retained_state_cleared(
    users: Users, server: RunningServer
) -> None:
    host, ann, bob, room_id = open_room(users)
    host.call("close_room", room_id=room_id)
    for client in (host, ann, bob):
        assert client.next_inbox("room_closed") == m.RoomClosed(room_id=room_id)
    state = bob.wait_room(room_id, lambda s: s.closed)
    assert state.member_count == 0 and state.seats == []
    assert ann.request("login_room", {"room_id": room_id}).code == 410
    server.advance(61)
    _wait_for(lambda: room_id in bob.room_clears)


def _seat(host: GoChatClient, guest: GoChatClient, room_id: str) -> None:
    host.call("invite_onstage", room_id=room_id, user_id=guest.user_id)
    invite = guest.next_inbox("invite_onstage")
    assert isinstance(invite, m.InviteOnstage)
    guest.call(
        "response_onstage_invite", room_id=room_id, invitation_id=invite.invitation_id, accept=True
    )
    host.wait_room(room_id, lambda s: s.seat_of(guest.user_id) is not None)


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
