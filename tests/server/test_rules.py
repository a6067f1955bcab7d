"""The room rules on a fake clock: every method, every refusal, every timer."""

from __future__ import annotations

import itertools
import json

import pytest
from pydantic import BaseModel

from appliance.protocol import models as m
from appliance.protocol.models import Code, Role
from appliance.server.rules import Limits, Outcome, RoomService

T0 = 1_800_000_000.0


class World:
    """A room service with a clock and helpers to speak as users."""

    def __init__(self) -> None:
        counter = itertools.count(1)
        self.service = RoomService(Limits(), new_id=lambda: f"id{next(counter)}")
        self.now = T0

    def call(self, user: str, method: str, **payload: object) -> Outcome:
        request = m.parse_request(method, json.dumps(payload).encode())
        return self.service.handle(user, request, self.now)

    def ok(self, user: str, method: str, **payload: object) -> BaseModel:
        out = self.call(user, method, **payload)
        assert out.code == Code.OK, out.message
        assert out.data is not None
        return out.data

    def code(self, user: str, method: str, **payload: object) -> Code:
        return self.call(user, method, **payload).code

    def login(self, *users: str) -> None:
        for user in users:
            self.ok(user, "login", name=user.title())

    def tick(self, seconds: float) -> Outcome:
        self.now += seconds
        return self.service.tick(self.now)

    def room(self, room_id: str) -> m.RoomState:
        return self.service.rooms[room_id].to_state()


@pytest.fixture
def w() -> World:
    return World()


@pytest.fixture
def room(w: World) -> str:
    """A room hosted by ``host`` with ``lis`` listening and ``spk`` on stage."""
    w.login("host", "spk", "lis")
    data = w.ok("host", "create_room", subject="Talk")
    assert isinstance(data, m.RoomData)
    room_id = data.room.room_id
    w.ok("spk", "login_room", room_id=room_id)
    w.ok("lis", "login_room", room_id=room_id)
    inv = w.ok("host", "invite_onstage", room_id=room_id, user_id="spk")
    assert isinstance(inv, m.InvitationData)
    w.ok(
        "spk",
        "response_onstage_invite",
        room_id=room_id,
        invitation_id=inv.invitation_id,
        accept=True,
    )
    return room_id


def inbox_types(out: Outcome) -> list[tuple[str, str]]:
    return [(user, cmd.type) for user, cmd in out.inbox]


# ------------------------------------------------------------------ sessions


def test_login_returns_identity_and_timings(w: World) -> None:
    data = w.ok("alice", "login", name="Alice")
    assert data == m.LoginData(user_id="alice", heartbeat_interval_s=10, session_ttl_s=30)


def test_every_method_but_login_needs_a_session(w: World) -> None:
    for method in m.METHODS:
        if method == "login":
            continue
        payload = (
            {"room_id": "r"}
            if "room" in method
            or method
            in (
                "get_attendee_list",
                "operate_raise_hand",
                "invite_onstage",
                "response_onstage_invite",
                "set_user_info",
            )
            else {}
        )
        out = w.service.handle("ghost", m.METHODS[method].model_construct(**payload), w.now)
        assert out.code == Code.NOT_LOGGED_IN, method


def test_heartbeat_reports_room_and_version(w: World, room: str) -> None:
    assert w.ok("lis", "heartbeat") == m.HeartbeatData(
        room_id=room, room_version=w.room(room).version
    )
    w.login("idle")
    assert w.ok("idle", "heartbeat") == m.HeartbeatData(room_id=None, room_version=None)


def test_logout_leaves_the_room(w: World, room: str) -> None:
    before = w.room(room).member_count
    w.ok("lis", "logout")
    assert w.room(room).member_count == before - 1
    assert w.code("lis", "heartbeat") == Code.NOT_LOGGED_IN


def test_session_expires_after_ttl_without_heartbeat(w: World, room: str) -> None:
    w.tick(20)
    w.ok("host", "heartbeat")
    w.ok("spk", "heartbeat")
    out = w.tick(11)  # lis silent for 31 s
    assert "lis" not in w.service.sessions
    assert room in out.rooms_changed
    assert w.room(room).member_count == 2


def test_presence_offline_gives_a_full_ttl_to_come_back(w: World, room: str) -> None:
    w.tick(25)
    w.service.presence_changed("lis", w.now)
    w.ok("host", "heartbeat")
    w.ok("spk", "heartbeat")
    w.tick(29)
    assert "lis" in w.service.sessions
    w.ok("lis", "login", name="Lis")  # back within the TTL: same room, same role
    assert w.ok("lis", "heartbeat") == m.HeartbeatData(
        room_id=room, room_version=w.room(room).version
    )


def test_host_session_expiry_closes_the_room(w: World, room: str) -> None:
    w.tick(20)
    w.ok("spk", "heartbeat")
    w.ok("lis", "heartbeat")
    out = w.tick(11)
    assert w.room(room).closed
    assert ("spk", "room_closed") in inbox_types(out)


def test_returning_member_keeps_its_role(w: World, room: str) -> None:
    w.ok("spk", "login", name="Spk")
    data = w.ok("spk", "login_room", room_id=room)
    assert isinstance(data, m.LoginRoomData)
    assert data.me.role is Role.SPEAKER


# ------------------------------------------------------------------ rooms


def test_create_room_seats_the_host_with_mic_on(w: World) -> None:
    w.login("host")
    data = w.ok("host", "create_room", subject="Hello", max_seats=4)
    assert isinstance(data, m.RoomData)
    state = data.room
    assert state.max_seats == 4 and state.host_id == "host" and not state.closed
    assert [(s.user_id, s.role, s.mic_on) for s in state.seats] == [("host", Role.HOST, True)]
    assert state.member_count == 1 and state.version >= 1


def test_creating_a_second_room_leaves_the_first(w: World, room: str) -> None:
    w.ok("lis", "create_room", subject="Mine")
    assert w.room(room).member_count == 2


def test_room_list_pages_open_rooms(w: World) -> None:
    users = [f"u{i}" for i in range(5)]
    w.login(*users)
    for user in users:
        w.ok(user, "create_room", subject=f"S {user}")
    w.ok("u0", "close_room", room_id="id1")
    first = w.ok("u1", "get_room_list", page_size=3)
    assert isinstance(first, m.RoomListData)
    assert [r.subject for r in first.rooms] == ["S u1", "S u2", "S u3"]
    assert first.rooms[0].host == m.HostRef(user_id="u1", name="U1")
    assert first.rooms[0].seat_count == 1 and first.rooms[0].member_count == 1
    rest = w.ok("u1", "get_room_list", cursor=first.next_cursor, page_size=3)
    assert isinstance(rest, m.RoomListData)
    assert [r.subject for r in rest.rooms] == ["S u4"] and rest.next_cursor is None
    assert w.code("u1", "get_room_list", cursor="bogus") == Code.BAD_REQUEST


def test_login_room_refusals(w: World, room: str) -> None:
    w.login("new")
    assert w.code("new", "login_room", room_id="nope") == Code.NOT_FOUND
    w.ok("host", "close_room", room_id=room)
    assert w.code("new", "login_room", room_id=room) == Code.GONE


def test_attendee_list_order_and_pages(w: World, room: str) -> None:
    w.login("lis2")
    w.ok("lis2", "login_room", room_id=room)
    data = w.ok("lis", "get_attendee_list", room_id=room, page_size=2)
    assert isinstance(data, m.AttendeeListData)
    assert [a.user_id for a in data.attendees] == ["host", "spk"]
    more = w.ok("lis", "get_attendee_list", room_id=room, cursor=data.next_cursor)
    assert isinstance(more, m.AttendeeListData)
    assert [a.user_id for a in more.attendees] == ["lis", "lis2"] and more.next_cursor is None
    assert w.code("lis", "get_attendee_list", room_id="nope") == Code.NOT_FOUND


def test_quit_room(w: World, room: str) -> None:
    w.ok("spk", "quit_room", room_id=room)
    state = w.room(room)
    assert [s.user_id for s in state.seats] == ["host"] and state.member_count == 2
    assert w.code("spk", "quit_room", room_id=room) == Code.NOT_FOUND
    assert w.code("spk", "quit_room", room_id="nope") == Code.NOT_FOUND


def test_host_quitting_closes_the_room(w: World, room: str) -> None:
    out = w.call("host", "quit_room", room_id=room)
    assert out.code == Code.OK
    assert sorted(inbox_types(out)) == [
        ("host", "room_closed"),
        ("lis", "room_closed"),
        ("spk", "room_closed"),
    ]
    state = w.room(room)
    assert state.closed and state.member_count == 0
    assert w.code("lis", "heartbeat") == Code.OK
    assert w.ok("lis", "heartbeat") == m.HeartbeatData(room_id=None, room_version=None)


def test_close_room_is_for_the_host(w: World, room: str) -> None:
    assert w.code("spk", "close_room", room_id=room) == Code.FORBIDDEN
    assert w.code("lis", "close_room", room_id=room) == Code.FORBIDDEN
    w.ok("host", "close_room", room_id=room)
    assert w.code("host", "close_room", room_id=room) == Code.GONE


def test_closed_room_state_is_cleared_after_60_s(w: World, room: str) -> None:
    w.ok("host", "close_room", room_id=room)
    assert w.tick(59).retained_to_clear == []
    assert w.tick(1).retained_to_clear == [room]
    assert w.code("host", "login_room", room_id=room) in (Code.GONE, Code.NOT_LOGGED_IN)
    assert w.tick(10).retained_to_clear == []


# ------------------------------------------------------------------ hands


def test_listener_raises_and_lowers_its_hand(w: World, room: str) -> None:
    data = w.ok("lis", "operate_raise_hand", room_id=room, **{"raise": True})
    assert isinstance(data, m.MemberData) and data.member.hand_raised
    state = w.room(room)
    assert [h.user_id for h in state.raised_hands] == ["lis"] and state.raised_hand_count == 1
    w.ok("lis", "operate_raise_hand", room_id=room, **{"raise": False})
    assert w.room(room).raised_hand_count == 0


def test_seated_members_cannot_raise_hands(w: World, room: str) -> None:
    assert w.code("spk", "operate_raise_hand", room_id=room, **{"raise": True}) == Code.FORBIDDEN
    assert w.code("host", "operate_raise_hand", room_id=room, **{"raise": True}) == Code.FORBIDDEN


def test_host_declines_a_hand(w: World, room: str) -> None:
    w.ok("lis", "operate_raise_hand", room_id=room, **{"raise": True})
    assert (
        w.code("spk", "operate_raise_hand", room_id=room, user_id="lis", **{"raise": False})
        == Code.FORBIDDEN
    )
    assert (
        w.code("host", "operate_raise_hand", room_id=room, user_id="lis", **{"raise": True})
        == Code.FORBIDDEN
    )
    assert (
        w.code("host", "operate_raise_hand", room_id=room, user_id="nobody", **{"raise": False})
        == Code.NOT_FOUND
    )
    assert (
        w.code("host", "operate_raise_hand", room_id=room, user_id="spk", **{"raise": False})
        == Code.CONFLICT
    )
    out = w.call("host", "operate_raise_hand", room_id=room, user_id="lis", **{"raise": False})
    assert out.code == Code.OK and inbox_types(out) == [("lis", "hand_lowered")]
    assert w.room(room).raised_hand_count == 0


def test_only_fifty_hands_are_shown_but_all_are_counted(w: World, room: str) -> None:
    users = [f"l{i:03}" for i in range(60)]
    w.login(*users)
    for user in users:
        w.ok(user, "login_room", room_id=room)
        w.ok(user, "operate_raise_hand", room_id=room, **{"raise": True})
        w.now += 0.01
    state = w.room(room)
    assert len(state.raised_hands) == 50 and state.raised_hand_count == 60
    assert state.raised_hands[0].user_id == "l000"


# ------------------------------------------------------------------ invitations


def test_invite_accept_seats_the_listener(w: World, room: str) -> None:
    w.ok("lis", "operate_raise_hand", room_id=room, **{"raise": True})
    out = w.call("host", "invite_onstage", room_id=room, user_id="lis")
    assert out.code == Code.OK and inbox_types(out) == [("lis", "invite_onstage")]
    assert isinstance(out.data, m.InvitationData) and out.data.expires_at == w.now + 30
    invite = out.inbox[0][1]
    assert (
        isinstance(invite, m.InviteOnstage)
        and invite.from_user_id == "host"
        and invite.from_name == "Host"
    )
    answer = w.call(
        "lis",
        "response_onstage_invite",
        room_id=room,
        invitation_id=out.data.invitation_id,
        accept=True,
    )
    assert answer.code == Code.OK and inbox_types(answer) == [("host", "invite_response")]
    assert isinstance(answer.data, m.MeData)
    assert (
        answer.data.me.role is Role.SPEAKER
        and answer.data.me.mic_on
        and not answer.data.me.hand_raised
    )
    state = w.room(room)
    assert [s.user_id for s in state.seats] == [
        "host",
        "spk",
        "lis",
    ] and state.raised_hand_count == 0


def test_invite_refusals(w: World, room: str) -> None:
    w.login("out")
    assert w.code("spk", "invite_onstage", room_id=room, user_id="lis") == Code.FORBIDDEN
    assert w.code("lis", "invite_onstage", room_id=room, user_id="lis") == Code.FORBIDDEN
    assert w.code("out", "invite_onstage", room_id=room, user_id="lis") == Code.FORBIDDEN
    assert w.code("host", "invite_onstage", room_id=room, user_id="out") == Code.NOT_FOUND
    assert w.code("host", "invite_onstage", room_id=room, user_id="spk") == Code.CONFLICT
    assert w.code("host", "invite_onstage", room_id=room, user_id="host") == Code.CONFLICT
    w.ok("host", "invite_onstage", room_id=room, user_id="lis")
    assert w.code("host", "invite_onstage", room_id=room, user_id="lis") == Code.CONFLICT


def test_decline_and_answer_refusals(w: World, room: str) -> None:
    inv = w.ok("host", "invite_onstage", room_id=room, user_id="lis")
    assert isinstance(inv, m.InvitationData)
    iid = inv.invitation_id
    assert (
        w.code("spk", "response_onstage_invite", room_id=room, invitation_id=iid, accept=True)
        == Code.FORBIDDEN
    )
    assert (
        w.code("lis", "response_onstage_invite", room_id=room, invitation_id="nope", accept=True)
        == Code.NOT_FOUND
    )
    out = w.call("lis", "response_onstage_invite", room_id=room, invitation_id=iid, accept=False)
    assert out.code == Code.OK and isinstance(out.inbox[0][1], m.InviteResponse)
    assert out.inbox[0][1].accepted is False
    assert (
        w.code("lis", "response_onstage_invite", room_id=room, invitation_id=iid, accept=True)
        == Code.CONFLICT
    )
    assert [s.user_id for s in w.room(room).seats] == ["host", "spk"]


def test_invitation_expires_after_30_s(w: World, room: str) -> None:
    inv = w.ok("host", "invite_onstage", room_id=room, user_id="lis")
    assert isinstance(inv, m.InvitationData)
    w.tick(15)
    for user in ("host", "spk", "lis"):
        w.ok(user, "heartbeat")
    assert w.tick(14.9).inbox == []
    out = w.tick(0.1)
    assert sorted(inbox_types(out)) == [("host", "invite_expired"), ("lis", "invite_expired")]
    late = w.code(
        "lis", "response_onstage_invite", room_id=room, invitation_id=inv.invitation_id, accept=True
    )
    assert late == Code.CONFLICT
    w.ok("host", "invite_onstage", room_id=room, user_id="lis")  # a new one may follow


def test_accept_needs_a_free_seat(w: World) -> None:
    w.login("host", "a", "b")
    data = w.ok("host", "create_room", subject="Small", max_seats=2)
    assert isinstance(data, m.RoomData)
    rid = data.room.room_id
    w.ok("a", "login_room", room_id=rid)
    w.ok("b", "login_room", room_id=rid)
    ia = w.ok("host", "invite_onstage", room_id=rid, user_id="a")
    ib = w.ok("host", "invite_onstage", room_id=rid, user_id="b")
    assert isinstance(ia, m.InvitationData) and isinstance(ib, m.InvitationData)
    w.ok("a", "response_onstage_invite", room_id=rid, invitation_id=ia.invitation_id, accept=True)
    full = w.code(
        "b", "response_onstage_invite", room_id=rid, invitation_id=ib.invitation_id, accept=True
    )
    assert full == Code.CONFLICT
    w.ok("a", "set_user_info", room_id=rid, user_id="a", role="listener")
    w.ok("b", "response_onstage_invite", room_id=rid, invitation_id=ib.invitation_id, accept=True)


def test_invitee_leaving_cancels_the_invitation(w: World, room: str) -> None:
    w.ok("host", "invite_onstage", room_id=room, user_id="lis")
    out = w.call("lis", "quit_room", room_id=room)
    assert sorted(inbox_types(out)) == [("host", "invite_expired"), ("lis", "invite_expired")]
    assert w.service.open_invitation_of == {}


# ------------------------------------------------------------------ set_user_info


def test_speaker_mutes_itself_and_leaves_the_stage(w: World, room: str) -> None:
    data = w.ok("spk", "set_user_info", room_id=room, user_id="spk", mic_on=False)
    assert isinstance(data, m.MemberData) and not data.member.mic_on
    w.ok("spk", "set_user_info", room_id=room, user_id="spk", mic_on=True)
    data = w.ok("spk", "set_user_info", room_id=room, user_id="spk", role="listener")
    assert isinstance(data, m.MemberData)
    assert (
        data.member.role is Role.LISTENER and not data.member.mic_on and not data.member.hand_raised
    )


def test_host_mutes_and_removes_a_speaker(w: World, room: str) -> None:
    out = w.call("host", "set_user_info", room_id=room, user_id="spk", mic_on=False)
    assert out.code == Code.OK and inbox_types(out) == [("spk", "muted")]
    assert (
        w.code("host", "set_user_info", room_id=room, user_id="spk", mic_on=True) == Code.FORBIDDEN
    )
    out = w.call("host", "set_user_info", room_id=room, user_id="spk", role="listener")
    assert out.code == Code.OK and inbox_types(out) == [("spk", "removed_from_stage")]
    assert [s.user_id for s in w.room(room).seats] == ["host"]


def test_host_mic_is_its_own(w: World, room: str) -> None:
    w.ok("host", "set_user_info", room_id=room, user_id="host", mic_on=False)
    assert not w.room(room).seats[0].mic_on
    w.ok("host", "set_user_info", room_id=room, user_id="host", mic_on=True)
    assert (
        w.code("host", "set_user_info", room_id=room, user_id="host", role="listener")
        == Code.FORBIDDEN
    )
    assert (
        w.code("spk", "set_user_info", room_id=room, user_id="host", mic_on=False) == Code.FORBIDDEN
    )


def test_set_user_info_refusals(w: World, room: str) -> None:
    assert (
        w.code("lis", "set_user_info", room_id=room, user_id="lis", role="speaker")
        == Code.FORBIDDEN
    )
    assert (
        w.code("host", "set_user_info", room_id=room, user_id="lis", role="speaker")
        == Code.FORBIDDEN
    )
    assert (
        w.code("lis", "set_user_info", room_id=room, user_id="lis", mic_on=True) == Code.FORBIDDEN
    )
    assert (
        w.code("lis", "set_user_info", room_id=room, user_id="spk", mic_on=False) == Code.FORBIDDEN
    )
    assert (
        w.code("spk", "set_user_info", room_id=room, user_id="lis", role="listener")
        == Code.FORBIDDEN
    )
    assert (
        w.code("host", "set_user_info", room_id=room, user_id="lis", mic_on=False) == Code.CONFLICT
    )
    assert (
        w.code("host", "set_user_info", room_id=room, user_id="ghost", mic_on=False)
        == Code.NOT_FOUND
    )
    assert w.code("host", "set_user_info", room_id=room, user_id="spk") == Code.BAD_REQUEST
    assert (
        w.code("host", "set_user_info", room_id="nope", user_id="spk", mic_on=False)
        == Code.NOT_FOUND
    )


# ------------------------------------------------------------------ versions


def test_every_change_raises_the_version_and_refusals_do_not(w: World, room: str) -> None:
    v = w.room(room).version
    assert w.code("lis", "close_room", room_id=room) == Code.FORBIDDEN
    assert w.room(room).version == v
    out = w.call("lis", "operate_raise_hand", room_id=room, **{"raise": True})
    assert out.rooms_changed == {room} and w.room(room).version == v + 1
    out = w.call("lis", "operate_raise_hand", room_id=room, **{"raise": True})
    assert out.rooms_changed == set() and w.room(room).version == v + 1


def test_restart_bumps_open_rooms(w: World, room: str) -> None:
    v = w.room(room).version
    out = w.service.restarted(w.now)
    assert out.rooms_changed == {room} and w.room(room).version == v + 1
