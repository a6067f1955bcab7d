"""docs/device.md's button table, row by row, on the pure state machine."""

from __future__ import annotations

from rig import (
    HOST,
    ME,
    Rig,
    host_rig,
    listener_rig,
    member,
    of_type,
    refused,
    requests,
    room,
    speaker_rig,
    wire,
)

from appliance.device.effects import Effect, StartPublishing, StopPublishing
from appliance.protocol import models as m
from appliance.protocol.models import Role


def invite(rig: Rig, invitation_id: str = "inv-1") -> list[Effect]:
    return rig.inbox(
        m.InviteOnstage(
            invitation_id=invitation_id,
            room_id="r-1",
            from_user_id=HOST,
            from_name="Alice",
            expires_at=1_700_000_030.0,
        )
    )


# ---------------------------------------------------------------- raise_hand


def test_listener_short_press_raises_the_hand() -> None:
    rig = listener_rig()
    [req] = requests(rig.press("raise_hand"))
    assert req.method == "operate_raise_hand"
    assert req.payload == m.OperateRaiseHandRequest(room_id="r-1", raise_=True)
    assert m.dump(req.payload) == b'{"room_id":"r-1","raise":true,"user_id":null}'


def test_listener_short_press_lowers_a_raised_hand() -> None:
    rig = listener_rig()
    rig.push(room(2, hands=[ME]))
    [req] = requests(rig.press("raise_hand"))
    assert req.payload == m.OperateRaiseHandRequest(room_id="r-1", raise_=False)


def test_raise_hand_short_press_is_refused_on_a_seat() -> None:
    for rig in (speaker_rig(), host_rig()):
        effects = rig.press("raise_hand")
        assert refused(effects)
        assert not requests(effects)


def test_speaker_long_press_leaves_the_stage_and_stops_capture_at_once() -> None:
    rig = speaker_rig()
    effects = rig.press("raise_hand", "long")
    [req] = requests(effects)
    assert req.payload == m.SetUserInfoRequest(room_id="r-1", user_id=ME, role=Role.LISTENER)
    # Privacy first: capture stops when we ask, not when the server confirms.
    assert of_type(effects, StopPublishing)
    assert rig.leds.mic == "on"  # the LED still follows the server


def test_host_long_press_on_raise_hand_is_refused() -> None:
    rig = host_rig()
    effects = rig.press("raise_hand", "long")
    assert refused(effects) and not requests(effects)


def test_listener_long_press_on_raise_hand_is_refused() -> None:
    rig = listener_rig()
    effects = rig.press("raise_hand", "long")
    assert refused(effects) and not requests(effects)


# ---------------------------------------------------------------- mute


def test_speaker_short_press_on_mute_turns_the_mic_off() -> None:
    rig = speaker_rig(mic_on=True)
    effects = rig.press("mute")
    [req] = requests(effects)
    assert req.payload == m.SetUserInfoRequest(room_id="r-1", user_id=ME, mic_on=False)
    assert of_type(effects, StopPublishing)


def test_muted_speaker_short_press_turns_the_mic_on_once_the_server_says_so() -> None:
    rig = speaker_rig(mic_on=False)
    effects = rig.press("mute")
    [req] = requests(effects)
    assert req.payload == m.SetUserInfoRequest(room_id="r-1", user_id=ME, mic_on=True)
    assert not of_type(effects, StartPublishing)
    rig.answer(req, {"member": wire(member(ME, Role.SPEAKER, mic_on=True))})
    assert not of_type(rig.log, StartPublishing)
    effects = rig.push(room(2, [member(HOST, Role.HOST), member(ME, Role.SPEAKER, mic_on=True)]))
    assert of_type(effects, StartPublishing) == [StartPublishing("r-1", ME)]
    assert rig.leds.mic == "on"


def test_host_short_press_on_mute_toggles_its_own_mic() -> None:
    rig = host_rig()
    [req] = requests(rig.press("mute"))
    assert req.payload == m.SetUserInfoRequest(room_id="r-1", user_id=ME, mic_on=False)


def test_listener_press_on_mute_is_refused() -> None:
    rig = listener_rig()
    effects = rig.press("mute")
    assert refused(effects) and not requests(effects)


def test_long_press_on_mute_does_nothing_but_flash() -> None:
    rig = speaker_rig()
    effects = rig.press("mute", "long")
    assert refused(effects) and not requests(effects)


# ---------------------------------------------------------------- accept


def test_short_press_on_accept_accepts_a_pending_invitation() -> None:
    rig = listener_rig()
    invite(rig)
    assert rig.leds.invite == "blink"
    effects = rig.press("accept")
    [req] = requests(effects)
    assert req.payload == m.ResponseOnstageInviteRequest(
        room_id="r-1", invitation_id="inv-1", accept=True
    )
    assert rig.leds.invite == "off"  # answered: no longer waiting for the person
    rig.answer(req, {"me": wire(member(ME, Role.SPEAKER))})
    assert rig.state.invitation is None
    assert rig.leds.mic == "off"  # the room state has not shown us seated yet
    effects = rig.push(room(2, [member(HOST, Role.HOST), member(ME, Role.SPEAKER)]))
    assert rig.status["role"] == "speaker"
    assert rig.leds.mic == "on"
    assert of_type(effects, StartPublishing)


def test_long_press_on_accept_declines_a_pending_invitation() -> None:
    rig = listener_rig()
    invite(rig)
    [req] = requests(rig.press("accept", "long"))
    assert req.payload == m.ResponseOnstageInviteRequest(
        room_id="r-1", invitation_id="inv-1", accept=False
    )
    rig.answer(req, {"me": wire(member(ME))})
    assert rig.state.invitation is None
    assert rig.leds.invite == "off"


def test_host_short_press_on_accept_invites_the_oldest_raised_hand() -> None:
    rig = host_rig(hands=["carol", "dave"])
    [req] = requests(rig.press("accept"))
    assert req.payload == m.InviteOnstageRequest(room_id="r-1", user_id="carol")
    rig.answer(req, {"invitation_id": "inv-9", "expires_at": 1_700_000_030.0})
    # Carol's invitation is open: the next press goes to the next oldest hand.
    [req] = requests(rig.press("accept"))
    assert req.payload == m.InviteOnstageRequest(room_id="r-1", user_id="dave")


def test_host_can_invite_the_same_hand_again_once_the_invitation_expired() -> None:
    rig = host_rig(hands=["carol"])
    [req] = requests(rig.press("accept"))
    rig.answer(req, {"invitation_id": "inv-9", "expires_at": 1_700_000_030.0})
    assert refused(rig.press("accept"))  # carol is already invited, nobody else waits
    rig.inbox(m.InviteExpired(invitation_id="inv-9", room_id="r-1"))
    [req] = requests(rig.press("accept"))
    assert req.payload == m.InviteOnstageRequest(room_id="r-1", user_id="carol")


def test_host_short_press_on_accept_with_no_raised_hand_is_refused() -> None:
    rig = host_rig()
    effects = rig.press("accept")
    assert refused(effects) and not requests(effects)


def test_accept_without_an_invitation_is_refused_for_a_listener() -> None:
    rig = listener_rig()
    assert refused(rig.press("accept"))
    assert refused(rig.press("accept", "long"))
    assert not requests(rig.log[-2:])


def test_host_long_press_on_accept_is_refused() -> None:
    rig = host_rig(hands=["carol"])
    effects = rig.press("accept", "long")
    assert refused(effects) and not requests(effects)


def test_any_press_outside_a_room_is_refused() -> None:
    rig = Rig()
    rig.online()
    for button in ("raise_hand", "mute", "accept"):
        for kind in ("short", "long"):
            effects = rig.press(button, kind)
            assert refused(effects) and not requests(effects)


# ---------------------------------------------------------------- auto-accept


def test_invitation_while_the_hand_is_raised_is_accepted_at_once() -> None:
    rig = listener_rig()
    rig.push(room(2, hands=[ME]))
    effects = invite(rig)
    [req] = requests(effects)
    assert req.payload == m.ResponseOnstageInviteRequest(
        room_id="r-1", invitation_id="inv-1", accept=True
    )
    assert rig.leds.invite == "off"
    assert not refused(effects)


def test_auto_accept_can_be_turned_off() -> None:
    rig = listener_rig(auto_accept_when_hand_raised=False)
    rig.push(room(2, hands=[ME]))
    effects = invite(rig)
    assert not requests(effects)
    assert rig.leds.invite == "blink"


def test_invitation_without_a_raised_hand_waits_for_the_person() -> None:
    rig = listener_rig()
    assert not requests(invite(rig))
    assert rig.status["invitation"] == {
        "invitation_id": "inv-1",
        "room_id": "r-1",
        "from_user_id": HOST,
        "from_name": "Alice",
        "expires_at": 1_700_000_030.0,
    }


# ---------------------------------------------------------------- presses in flight, refusals


def test_a_second_press_while_the_first_is_in_flight_is_ignored() -> None:
    rig = listener_rig()
    assert requests(rig.press("raise_hand"))
    effects = rig.press("raise_hand")
    assert not requests(effects) and not refused(effects)
    # Other buttons are independent.
    assert refused(rig.press("mute"))


def test_a_press_the_server_refuses_flashes_the_status_led() -> None:
    rig = speaker_rig()
    [req] = requests(rig.press("mute"))
    effects = rig.answer(req, code=403, message="not allowed")
    assert refused(effects)
    assert of_type(effects, StartPublishing)  # the mic was never off on the server


def test_a_press_the_server_never_answers_flashes_after_the_timeout() -> None:
    rig = listener_rig()
    requests(rig.press("raise_hand"))
    assert not refused(rig.advance(9.9))
    assert refused(rig.advance(0.2))
    assert requests(rig.press("raise_hand"))  # the button is free again


def test_a_press_refused_with_401_is_retried_after_login_and_rejoin() -> None:
    rig = listener_rig()
    [req] = requests(rig.press("raise_hand"))
    effects = rig.answer(req, code=401, message="not logged in")
    assert not refused(effects)
    assert [r.method for r in requests(effects)] == ["login"]
    assert rig.status["connection"] == "connecting"
    effects = rig.answer(
        rig.pending("login"), {"user_id": ME, "heartbeat_interval_s": 10, "session_ttl_s": 30}
    )
    assert [r.method for r in requests(effects)] == ["login_room"]
    effects = rig.answer_join(room(3))
    [retry] = requests(effects)
    assert retry.payload == req.payload
    effects = rig.answer(retry, code=401, message="not logged in")
    [login] = requests(effects)
    assert login.method == "login"
    assert refused(effects)  # retried once only


def test_speaker_removed_by_the_host_stops_capture_before_the_room_state() -> None:
    rig = speaker_rig()
    effects = rig.inbox(m.RemovedFromStage(room_id="r-1", by=HOST))
    assert of_type(effects, StopPublishing)
    assert rig.leds.mic == "on"  # the LED waits for the room state
    effects = rig.push(room(2))
    assert rig.status["role"] == "listener"
    assert rig.leds.mic == "off"
    assert not of_type(effects, StartPublishing)


def test_muted_by_the_host_then_unmuting_publishes_again() -> None:
    rig = speaker_rig()
    assert of_type(rig.inbox(m.Muted(room_id="r-1", by=HOST)), StopPublishing)
    rig.push(room(2, [member(HOST, Role.HOST), member(ME, Role.SPEAKER, mic_on=False)]))
    [req] = requests(rig.press("mute"))
    assert req.payload == m.SetUserInfoRequest(room_id="r-1", user_id=ME, mic_on=True)
    rig.answer(req, {"member": wire(member(ME, Role.SPEAKER, mic_on=True))})
    effects = rig.push(room(3, [member(HOST, Role.HOST), member(ME, Role.SPEAKER)]))
    assert of_type(effects, StartPublishing) == [StartPublishing("r-1", ME)]
