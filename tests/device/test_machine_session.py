"""Session life on the pure state machine: joins, room closure, reconnects, CoAP calls."""

from __future__ import annotations

import pytest
from rig import (
    HOST,
    ME,
    SPEAKER,
    Rig,
    host_rig,
    listener_rig,
    member,
    of_type,
    replies,
    requests,
    room,
    speaker_rig,
    wire,
)

from appliance.device import view
from appliance.device.effects import (
    ApiReply,
    Leds,
    SetHeard,
    StartPublishing,
    StopPublishing,
    SubscribeRoom,
    UnsubscribeRoom,
)
from appliance.device.events import (
    Connected,
    CreateRequested,
    Disconnected,
    HostAction,
    JoinRequested,
    LeaveRequested,
    StopRequested,
)
from appliance.device.machine import DeviceMachine, MachineConfig
from appliance.protocol import models as m
from appliance.protocol.models import Role

LOGIN_DATA = {"user_id": ME, "heartbeat_interval_s": 10, "session_ttl_s": 30}

# ---------------------------------------------------------------- joining


def test_login_then_join_subscribes_and_answers_the_ticket() -> None:
    rig = Rig()
    rig.online()
    effects = rig.send(JoinRequested("r-1", ticket=7))
    assert of_type(effects, SubscribeRoom) == [SubscribeRoom("r-1")]
    [req] = requests(effects)
    assert (req.method, req.payload) == ("login_room", m.LoginRoomRequest(room_id="r-1"))
    effects = rig.answer_join(room(1))
    [reply] = replies(effects)
    assert (reply.ticket, reply.code) == (7, 0)
    assert rig.status["room_id"] == "r-1" and rig.status["role"] == "listener"
    assert view.is_ready(rig.state)


def test_a_room_requested_before_the_connection_is_joined_after_login() -> None:
    rig = Rig()
    rig.send(JoinRequested("r-1"))
    rig.online()
    assert rig.in_flight() == ["login_room"]


def test_joining_a_room_that_does_not_exist_is_an_error_until_another_room() -> None:
    rig = Rig()
    rig.online()
    rig.send(JoinRequested("nope", ticket=3))
    effects = rig.answer(rig.pending("login_room"), code=404, message="no such room")
    assert replies(effects) == [ApiReply(3, 404, "no such room")]
    assert rig.leds.status == "blink-fast"
    assert rig.status["room_id"] is None
    assert rig.in_flight() == []
    rig.join(room(1))
    assert rig.leds.status == "on"


def test_a_join_that_fails_for_now_is_retried_with_backoff() -> None:
    rig = Rig()
    rig.online()
    rig.send(JoinRequested("r-1"))
    rig.answer(rig.pending("login_room"), code=500, message="internal error")
    assert rig.in_flight() == []
    assert view.next_deadline(rig.state) == pytest.approx(rig.now + 1.0)
    assert not requests(rig.advance(0.9))
    assert [r.method for r in requests(rig.advance(0.1))] == ["login_room"]
    # While the retry is in flight, its past retry time must not wake the shell.
    deadline = view.next_deadline(rig.state)
    assert deadline is not None and deadline > rig.now
    rig.answer(rig.pending("login_room"), code=429, message="rate limited")
    assert not requests(rig.advance(1.9))
    assert [r.method for r in requests(rig.advance(0.1))] == ["login_room"]


def test_a_malformed_join_request_is_answered_at_once() -> None:
    rig = Rig()
    rig.online()
    effects = rig.send(JoinRequested("", ticket=4))
    [reply] = replies(effects)
    assert reply.code == 400 and "room_id" in reply.message
    assert not requests(effects)


def test_switching_rooms_quits_the_old_one_first_and_resets_versions() -> None:
    rig = listener_rig()
    rig.push(room(40))
    effects = rig.send(JoinRequested("r-2"))
    [quit_req] = requests(effects)
    assert quit_req.payload == m.QuitRoomRequest(room_id="r-1")
    effects = rig.answer(quit_req, {})
    assert of_type(effects, UnsubscribeRoom) == [UnsubscribeRoom("r-1")]
    assert of_type(effects, SubscribeRoom) == [SubscribeRoom("r-2")]
    rig.answer_join(room(1, room_id="r-2"))  # version 1 < 40, but another room
    assert rig.status["room_id"] == "r-2"
    assert rig.leds.status == "on"


def test_create_room_hosts_it_and_a_reconnect_rejoins_it_instead_of_creating_another() -> None:
    rig = Rig()
    rig.online()
    effects = rig.send(CreateRequested("Morning news", ticket=5))
    [req] = requests(effects)
    assert req.payload == m.CreateRoomRequest(subject="Morning news", max_seats=8)
    created = room(1, [member(ME, Role.HOST)], host_id=ME, room_id="r-9")
    effects = rig.answer(req, {"room": wire(created)})
    assert [(r.ticket, r.code) for r in replies(effects)] == [(5, 0)]
    assert of_type(effects, SubscribeRoom) == [SubscribeRoom("r-9")]
    assert of_type(effects, StartPublishing) == [StartPublishing("r-9", ME)]
    assert rig.status["role"] == "host"
    rig.send(Disconnected())
    rig.send(Connected())
    rig.answer(rig.pending("login"), LOGIN_DATA)
    assert rig.in_flight() == ["login_room"]


def test_leave_quits_the_room_and_answers_after_the_server() -> None:
    rig = speaker_rig()
    effects = rig.send(LeaveRequested(ticket=8))
    [req] = requests(effects)
    assert req.payload == m.QuitRoomRequest(room_id="r-1")
    assert of_type(effects, StopPublishing)
    assert not replies(effects)
    effects = rig.answer(req, {})
    assert replies(effects) == [ApiReply(8, 0, "ok", {})]
    assert of_type(effects, UnsubscribeRoom) == [UnsubscribeRoom("r-1")]
    assert of_type(effects, SetHeard) == [SetHeard(frozenset())]
    assert rig.leds == Leds(status="blink-slow")
    assert rig.status["room_id"] is None


def test_leave_when_not_in_a_room_is_answered_at_once() -> None:
    rig = Rig()
    rig.online()
    assert replies(rig.send(LeaveRequested(ticket=2))) == [ApiReply(2, 0, "ok", {})]


def test_a_newer_room_request_supersedes_an_unsent_one() -> None:
    rig = Rig()
    rig.send(JoinRequested("r-1", ticket=1))
    effects = rig.send(JoinRequested("r-2", ticket=2))
    assert [(r.ticket, r.code) for r in replies(effects)] == [(1, 409)]


# ---------------------------------------------------------------- room closed


@pytest.mark.parametrize("how", ["state", "inbox", "response"])
def test_room_closed_leaves_the_room_and_shows_an_error(how: str) -> None:
    rig = speaker_rig()
    if how == "state":
        effects = rig.push(
            room(2, [member(HOST, Role.HOST), member(ME, Role.SPEAKER)], closed=True)
        )
    elif how == "inbox":
        effects = rig.inbox(m.RoomClosed(room_id="r-1"))
    else:
        [req] = requests(rig.press("mute"))
        effects = rig.answer(req, code=410, message="room closed")
    assert of_type(rig.log, StopPublishing)  # (the mute press already stopped capture)
    assert not rig.state.shown.publishing
    assert of_type(effects, UnsubscribeRoom) == [UnsubscribeRoom("r-1")]
    assert rig.status["room_id"] is None and rig.status["role"] is None
    assert rig.leds == Leds(status="blink-fast")
    # Not re-joined after a reconnect, and the error stays until another room.
    rig.send(Disconnected())
    rig.send(Connected())
    rig.answer(rig.pending("login"), LOGIN_DATA)
    assert rig.in_flight() == []
    assert rig.leds.status == "blink-fast"
    rig.join(room(1, room_id="r-2"))
    assert rig.leds.status == "on"


def test_a_closed_state_of_another_room_changes_nothing() -> None:
    rig = listener_rig()
    assert rig.push(room(3, closed=True, room_id="r-other")) == []


# ---------------------------------------------------------------- connection


def test_connection_lost_blinks_slowly_and_rejoins_on_reconnect() -> None:
    rig = speaker_rig()
    effects = rig.send(Disconnected(reason="keepalive timeout"))
    assert of_type(effects, StopPublishing)
    assert not of_type(effects, UnsubscribeRoom)  # the link is gone; nothing to send
    assert rig.leds == Leds(status="blink-slow")
    assert rig.status["connection"] == "connecting"
    assert rig.status["room_id"] == "r-1"  # kept, to re-join
    effects = rig.send(Connected())
    assert [r.method for r in requests(effects)] == ["login"]
    effects = rig.answer(rig.pending("login"), LOGIN_DATA)
    assert of_type(effects, SubscribeRoom) == [SubscribeRoom("r-1")]
    [req] = requests(effects)
    assert req.payload == m.LoginRoomRequest(room_id="r-1")
    effects = rig.answer_join(room(7, [member(HOST, Role.HOST), member(ME, Role.SPEAKER)]))
    assert rig.leds == Leds(status="on", mic="on")
    assert of_type(effects, StartPublishing)


def test_a_press_in_flight_when_the_link_drops_frees_its_button() -> None:
    rig = listener_rig()
    [req] = requests(rig.press("raise_hand"))
    rig.send(Disconnected())
    assert rig.in_flight() == []
    assert rig.answer(req, {}) == []  # an answer from the old connection is ignored


def test_coap_calls_in_flight_get_503_when_the_link_drops() -> None:
    rig = host_rig()
    rig.send(HostAction("invite", SPEAKER, ticket=11))
    effects = rig.send(Disconnected())
    assert replies(effects) == [ApiReply(11, 503, "the broker connection was lost")]


def test_heartbeats_are_sent_on_the_server_interval() -> None:
    rig = listener_rig()
    assert view.next_deadline(rig.state) == pytest.approx(rig.now + 10)
    [hb] = requests(rig.advance(10))
    assert hb.method == "heartbeat"
    assert not requests(rig.advance(5))  # one in flight at a time
    rig.answer(hb, {"room_id": "r-1", "room_version": 1})
    assert [r.method for r in requests(rig.advance(5))] == ["heartbeat"]


def test_a_heartbeat_that_shows_we_left_the_room_rejoins() -> None:
    rig = listener_rig()
    [hb] = requests(rig.advance(10))
    effects = rig.answer(hb, {"room_id": None, "room_version": None})
    assert [r.method for r in requests(effects)] == ["login_room"]


def test_a_heartbeat_showing_a_newer_version_resubscribes_for_the_retained_state() -> None:
    rig = listener_rig()
    [hb] = requests(rig.advance(10))
    effects = rig.answer(hb, {"room_id": "r-1", "room_version": 5})
    assert of_type(effects, SubscribeRoom) == [SubscribeRoom("r-1")]
    assert not of_type(effects, UnsubscribeRoom)


def test_a_heartbeat_in_a_room_we_left_while_offline_quits_it() -> None:
    rig = listener_rig()
    rig.send(Disconnected())
    rig.send(LeaveRequested())
    rig.send(Connected())
    rig.answer(rig.pending("login"), LOGIN_DATA)
    [hb] = requests(rig.advance(10))
    [quit_req] = requests(rig.answer(hb, {"room_id": "r-1", "room_version": 3}))
    assert quit_req.payload == m.QuitRoomRequest(room_id="r-1")


def test_a_malformed_success_answer_is_treated_as_an_error() -> None:
    rig = Rig()
    rig.send(JoinRequested("r-1", ticket=1))
    rig.online()
    effects = rig.answer(rig.pending("login_room"), {"room": {"oops": 1}})
    assert [(r.ticket, r.code) for r in replies(effects)] == [(1, 502)]
    assert rig.status["room_id"] == "r-1"  # still wanted: retried after the backoff


# ---------------------------------------------------------------- host actions


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("invite", m.InviteOnstageRequest(room_id="r-1", user_id=SPEAKER)),
        ("remove", m.SetUserInfoRequest(room_id="r-1", user_id=SPEAKER, role=Role.LISTENER)),
        ("mute", m.SetUserInfoRequest(room_id="r-1", user_id=SPEAKER, mic_on=False)),
    ],
)
def test_host_actions_become_requests_answered_to_the_caller(
    action: str, payload: m.Request
) -> None:
    rig = host_rig()
    effects = rig.send(HostAction(action, SPEAKER, ticket=3))  # type: ignore[arg-type]
    [req] = requests(effects)
    assert req.payload == payload
    assert not of_type(effects, StopPublishing)  # another user's mic, not ours
    data = (
        {"invitation_id": "i", "expires_at": 1.0}
        if action == "invite"
        else {"member": wire(member(SPEAKER))}
    )
    assert [(r.ticket, r.code) for r in replies(rig.answer(req, data))] == [(3, 0)]


def test_host_actions_are_refused_to_a_non_host() -> None:
    rig = speaker_rig()
    effects = rig.send(HostAction("mute", HOST, ticket=1))
    assert replies(effects) == [ApiReply(1, 403, "only the host can mute")]
    assert not requests(effects)


def test_host_action_outside_a_room_is_a_conflict() -> None:
    rig = Rig()
    rig.online()
    assert [r.code for r in replies(rig.send(HostAction("invite", SPEAKER, ticket=1)))] == [409]


def test_host_action_with_a_bad_user_id_is_a_400() -> None:
    rig = host_rig()
    effects = rig.send(HostAction("invite", "no spaces allowed", ticket=1))
    [reply] = replies(effects)
    assert reply.code == 400 and "user_id" in reply.message
    assert not requests(effects)


def test_host_action_errors_from_the_server_reach_the_caller() -> None:
    rig = host_rig()
    [req] = requests(rig.send(HostAction("invite", SPEAKER, ticket=2)))
    effects = rig.answer(req, code=409, message="already on stage")
    assert replies(effects) == [ApiReply(2, 409, "already on stage")]


# ---------------------------------------------------------------- stop


def test_stop_leaves_the_room_turns_everything_off_and_waits_for_the_answer() -> None:
    rig = speaker_rig()
    effects = rig.send(StopRequested())
    [req] = requests(effects)
    assert req.payload == m.QuitRoomRequest(room_id="r-1")
    assert of_type(effects, StopPublishing)
    assert rig.leds == Leds()
    assert not view.is_idle(rig.state)
    rig.answer(req, {})
    assert view.is_idle(rig.state)
    assert requests(rig.advance(60)) == []  # no heartbeat, no re-join after stop


def test_device_machine_wraps_the_state() -> None:
    machine = DeviceMachine(MachineConfig(user_id=ME, name="Kitchen"))
    assert machine.status()["connection"] == "offline"
    assert machine.next_deadline() is None
    assert not machine.ready and machine.idle
