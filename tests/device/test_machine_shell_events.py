"""The events the shell added to the pure machine: the room list, broker verdicts."""

from __future__ import annotations

from rig import ME, Rig, listener_rig, member, of_type, refused, replies, requests, room

from appliance.device import view
from appliance.device.effects import ApiReply, SendRequest
from appliance.device.events import (
    Connected,
    Disconnected,
    Gesture,
    PublishRefused,
    RequestUndelivered,
    RoomListRequested,
    Started,
)
from appliance.device.machine import BROKER_REFUSED, LINK_LOST
from appliance.device.state import Fault
from appliance.protocol import models as m

ROOMS = {"rooms": [], "next_cursor": None}


# ---------------------------------------------------------------- the room list


def test_room_list_is_asked_with_the_ticket_and_answered_with_the_data() -> None:
    rig = Rig()
    rig.online()
    [req] = requests(rig.send(RoomListRequested(5, page_size=10)))
    assert (req.method, req.payload) == ("get_room_list", m.GetRoomListRequest(page_size=10))
    [reply] = replies(rig.answer(req, ROOMS))
    assert reply == ApiReply(5, 0, "ok", ROOMS)


def test_room_list_before_login_is_503_at_once() -> None:
    rig = Rig()
    rig.send(Started())
    effects = rig.send(RoomListRequested(9))
    assert replies(effects) == [ApiReply(9, LINK_LOST, "not connected to the server yet")]
    assert not requests(effects)


def test_room_list_with_a_bad_page_size_is_400_without_a_request() -> None:
    rig = Rig()
    rig.online()
    effects = rig.send(RoomListRequested(3, page_size=500))
    [reply] = replies(effects)
    assert reply.code == 400 and "page_size" in reply.message
    assert not requests(effects)


def test_room_list_refused_401_is_sent_again_after_login_even_in_a_room() -> None:
    rig = listener_rig()
    [req] = requests(rig.send(RoomListRequested(4)))
    rig.answer(req, code=401, message="not logged in")
    # The machine logs in again and re-joins, then resends the room list.
    rig.answer(
        rig.pending("login"), {"user_id": ME, "heartbeat_interval_s": 10, "session_ttl_s": 30}
    )
    effects = rig.answer_join(room(2))
    [again] = [r for r in requests(effects) if r.method == "get_room_list"]
    [reply] = replies(rig.answer(again, ROOMS))
    assert (reply.ticket, reply.code) == (4, 0)


# ---------------------------------------------------------------- broker verdicts


def test_a_refused_publish_shows_the_error_until_the_next_connection() -> None:
    rig = listener_rig()
    assert rig.leds.status == "on"
    rig.send(PublishRefused("presence online: Not authorized"))
    assert Fault.PUBLISH_REFUSED in rig.state.faults
    assert rig.leds.status == "blink-fast"
    assert view.in_room(rig.state)  # the device still works otherwise
    rig.send(Disconnected())
    rig.send(Connected())
    assert Fault.PUBLISH_REFUSED not in rig.state.faults


def test_a_refused_request_fails_at_once_and_flashes_the_press() -> None:
    rig = listener_rig()
    [req] = requests(rig.send(Gesture("raise_hand", "short")))
    effects = rig.send(PublishRefused("request operate_raise_hand: Not authorized", req.tag))
    assert refused(effects)
    assert req.tag not in rig.state.pending
    assert rig.leds.status == "blink-fast"


def test_a_refused_coap_request_answers_502() -> None:
    rig = Rig()
    rig.online()
    [req] = requests(rig.send(RoomListRequested(8)))
    [reply] = replies(rig.send(PublishRefused("request get_room_list: Not authorized", req.tag)))
    assert (reply.ticket, reply.code) == (8, BROKER_REFUSED)
    assert "Not authorized" in reply.message


def test_an_undelivered_login_is_retried_after_a_backoff_not_a_timeout() -> None:
    rig = Rig()
    rig.send(Started())
    [login] = requests(rig.send(Connected()))
    assert login.method == "login"
    assert not requests(rig.send(RequestUndelivered(login.tag)))  # the server is away
    assert rig.state.pending == {}
    assert view.next_deadline(rig.state) == rig.now + 1.0  # not the 10 s request timeout
    assert [r.method for r in requests(rig.advance(1.0))] == ["login"]
    assert rig.leds.status == "blink-slow"  # connecting, not an error


def test_an_undelivered_press_flashes_at_once() -> None:
    rig = listener_rig()
    [req] = requests(rig.send(Gesture("raise_hand", "short")))
    assert refused(rig.send(RequestUndelivered(req.tag)))
    assert view.hand_raised(rig.state) is False


def test_verdicts_for_unknown_tags_change_nothing_but_the_fault() -> None:
    rig = listener_rig()
    before = rig.state.pending
    assert not of_type(rig.send(RequestUndelivered(999)), SendRequest)
    assert rig.state.pending == before
    rig.send(PublishRefused("a publish", 999))
    assert rig.state.faults == {Fault.PUBLISH_REFUSED}
    assert member(ME).user_id == ME
