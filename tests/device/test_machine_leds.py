"""docs/device.md's LED table on the pure state machine: every LED follows the server."""

from __future__ import annotations

from rig import (
    HOST,
    ME,
    SPEAKER,
    Rig,
    host_rig,
    leds_set,
    listener_rig,
    member,
    of_type,
    requests,
    room,
    speaker_rig,
    wire,
)

from appliance.device.effects import Leds, SetHeard, SetLeds, StatusChanged
from appliance.device.events import (
    AudioDeviceLost,
    AudioDeviceRestored,
    Connected,
    Disconnected,
    JoinRequested,
    Started,
)
from appliance.protocol import models as m
from appliance.protocol.models import Role

# ---------------------------------------------------------------- status


def test_status_is_off_before_start_and_blinks_slowly_while_connecting() -> None:
    rig = Rig()
    assert rig.leds == Leds()
    effects = rig.send(Started())
    assert leds_set(effects) == [Leds(status="blink-slow")]
    assert rig.status["connection"] == "connecting"


def test_status_blinks_slowly_while_logged_in_but_waiting_for_a_room() -> None:
    rig = Rig()
    rig.online()
    assert rig.status["connection"] == "online"
    assert rig.leds == Leds(status="blink-slow")


def test_status_is_on_in_a_room() -> None:
    assert listener_rig().leds.status == "on"


def test_status_blinks_slowly_while_joining() -> None:
    rig = Rig()
    rig.online()
    rig.send(JoinRequested("r-1"))
    assert rig.leds.status == "blink-slow"
    rig.answer_join(room(1))
    assert rig.leds.status == "on"


def test_status_blinks_fast_while_the_audio_device_is_lost() -> None:
    rig = listener_rig()
    rig.send(AudioDeviceLost("no such device"))
    assert rig.leds.status == "blink-fast"
    rig.send(AudioDeviceRestored())
    assert rig.leds.status == "on"


def test_status_blinks_fast_while_the_broker_refuses_us() -> None:
    rig = Rig()
    rig.send(Started())
    rig.send(Disconnected(refused=True, reason="not authorised"))
    assert rig.leds.status == "blink-fast"
    rig.send(Connected())
    assert rig.leds.status == "blink-slow"


def test_status_blinks_fast_while_another_device_has_our_identity() -> None:
    rig = listener_rig()
    rig.send(Disconnected(reason="session taken over", taken_over=True))
    assert rig.leds.status == "blink-fast"
    rig.send(Connected())
    assert rig.leds.status == "blink-slow"


def test_status_blinks_fast_while_login_is_refused() -> None:
    rig = Rig()
    rig.send(Started())
    rig.send(Connected())
    rig.answer(rig.pending("login"), code=400, message="name: too long")
    assert rig.leds.status == "blink-fast"


# ---------------------------------------------------------------- hand


def test_listener_hand_led_lights_only_when_the_room_state_shows_the_hand() -> None:
    rig = listener_rig()
    [req] = requests(rig.press("raise_hand"))
    assert rig.leds.hand == "off"
    rig.answer(req, {"member": wire(member(ME, hand_raised=True))})
    assert rig.leds.hand == "off"  # not in the room state yet: the LED waits
    rig.push(room(2, hands=[ME]))
    assert rig.leds.hand == "on"
    assert rig.status["hand_raised"] is True
    rig.push(room(3))
    assert rig.leds.hand == "off"


def test_host_hand_led_blinks_while_anyone_has_a_hand_raised() -> None:
    rig = host_rig()
    assert rig.leds.hand == "off"
    rig.push(room(2, [member(ME, Role.HOST)], hands=["carol"], host_id=ME))
    assert rig.leds.hand == "blink"
    rig.push(room(3, [member(ME, Role.HOST)], host_id=ME))
    assert rig.leds.hand == "off"


def test_host_hand_led_uses_the_count_beyond_the_hands_shown() -> None:
    rig = host_rig()
    rig.push(room(2, [member(ME, Role.HOST)], hands=[], hand_count=3, host_id=ME))
    assert rig.leds.hand == "blink"


def test_speaker_hand_led_is_off() -> None:
    assert speaker_rig().leds.hand == "off"


def test_a_hand_beyond_the_fifty_shown_is_tracked_from_responses_and_inbox() -> None:
    rig = listener_rig()
    others = [f"user-{i}" for i in range(m.RAISED_HANDS_SHOWN)]
    rig.push(room(2, hands=others, hand_count=50))
    [req] = requests(rig.press("raise_hand"))
    rig.answer(req, {"member": wire(member(ME, hand_raised=True))})
    rig.push(room(3, hands=others, hand_count=51))
    assert rig.leds.hand == "on"
    assert rig.status["hand_raised"] is True
    # A second press lowers it: the machine knows the hand is up.
    [req] = requests(rig.press("raise_hand"))
    assert req.payload == m.OperateRaiseHandRequest(room_id="r-1", raise_=False)
    rig.answer(req, code=500, message="internal error")
    # The host declines it: the inbox says so, the room state cannot.
    rig.inbox(m.HandLowered(room_id="r-1", by=HOST))
    rig.push(room(4, hands=others, hand_count=50))
    assert rig.leds.hand == "off"


def test_a_hand_beyond_the_fifty_shown_is_known_from_login_room() -> None:
    rig = Rig()
    rig.online()
    others = [f"user-{i}" for i in range(50)]
    rig.join(room(5, hands=others, hand_count=51), member(ME, hand_raised=True))
    assert rig.leds.hand == "on"


def test_a_complete_hand_list_overrules_a_stale_response() -> None:
    rig = listener_rig()
    [req] = requests(rig.press("raise_hand"))
    rig.push(room(2))  # complete (count 0) and without us
    rig.answer(req, {"member": wire(member(ME, hand_raised=True))})
    assert rig.leds.hand == "off"


# ---------------------------------------------------------------- invite


def test_invite_led_blinks_while_an_invitation_waits_and_stops_when_it_expires() -> None:
    rig = listener_rig()
    rig.inbox(
        m.InviteOnstage(
            invitation_id="inv-1",
            room_id="r-1",
            from_user_id=HOST,
            from_name="Alice",
            expires_at=1_700_000_030.0,
        )
    )
    assert rig.leds.invite == "blink"
    rig.inbox(m.InviteExpired(invitation_id="other", room_id="r-1"))
    assert rig.leds.invite == "blink"
    rig.inbox(m.InviteExpired(invitation_id="inv-1", room_id="r-1"))
    assert rig.leds.invite == "off"
    assert rig.status["invitation"] is None


def test_an_invitation_expires_locally_if_the_server_message_is_lost() -> None:
    rig = listener_rig()
    rig.inbox(
        m.InviteOnstage(
            invitation_id="inv-1",
            room_id="r-1",
            from_user_id=HOST,
            from_name="Alice",
            expires_at=1_700_000_030.0,
        )
    )
    deadline = rig.state.invitation.deadline if rig.state.invitation else 0.0
    assert deadline > rig.now
    rig.advance(m.INVITATION_TTL_S)
    assert rig.leds.invite == "blink"
    effects = rig.advance(deadline - rig.now)
    assert rig.leds.invite == "off"
    assert of_type(effects, SetLeds)


def test_an_invitation_is_dropped_once_the_room_state_shows_us_seated() -> None:
    rig = listener_rig()
    rig.inbox(
        m.InviteOnstage(
            invitation_id="inv-1",
            room_id="r-1",
            from_user_id=HOST,
            from_name="Alice",
            expires_at=1_700_000_030.0,
        )
    )
    rig.push(room(2, [member(HOST, Role.HOST), member(ME, Role.SPEAKER)]))
    assert rig.state.invitation is None
    assert rig.leds.invite == "off"


# ---------------------------------------------------------------- mic and heard streams


def test_mic_led_is_on_only_on_a_seat_with_the_mic_on() -> None:
    assert speaker_rig(mic_on=True).leds.mic == "on"
    assert speaker_rig(mic_on=False).leds.mic == "off"
    assert listener_rig().leds.mic == "off"
    assert host_rig().leds.mic == "on"


def test_mic_led_follows_the_room_state_not_the_mute_button() -> None:
    rig = speaker_rig()
    [req] = requests(rig.press("mute"))
    rig.answer(req, {"member": wire(member(ME, Role.SPEAKER, mic_on=False))})
    assert rig.leds.mic == "on"
    rig.push(room(2, [member(HOST, Role.HOST), member(ME, Role.SPEAKER, mic_on=False)]))
    assert rig.leds.mic == "off"


def test_heard_streams_are_the_other_seated_members_with_the_mic_on() -> None:
    rig = speaker_rig()
    assert rig.state.shown.heard == {HOST}
    effects = rig.push(
        room(
            2,
            [
                member(HOST, Role.HOST, mic_on=False),
                member(ME, Role.SPEAKER),
                member(SPEAKER, Role.SPEAKER),
            ],
        )
    )
    assert of_type(effects, SetHeard) == [SetHeard(frozenset({SPEAKER}))]


# ---------------------------------------------------------------- versions


def test_stale_room_versions_are_dropped() -> None:
    rig = listener_rig()
    rig.push(room(5, hands=[ME]))
    assert rig.leds.hand == "on"
    effects = rig.push(room(4))
    assert effects == []
    effects = rig.push(room(5))
    assert effects == []
    assert rig.leds.hand == "on"


def test_a_room_state_for_another_room_is_ignored() -> None:
    rig = listener_rig()
    assert rig.push(room(9, hands=[ME], room_id="r-other")) == []


def test_status_changes_are_announced_once() -> None:
    rig = listener_rig()
    effects = rig.push(room(2, hands=[ME]))
    assert of_type(effects, StatusChanged) == [StatusChanged()]
    assert of_type(rig.push(room(3, hands=[ME])), StatusChanged) == []


def test_the_status_payload_has_exactly_device_md_shape() -> None:
    rig = speaker_rig()
    assert rig.status == {
        "connection": "online",
        "user_id": ME,
        "room_id": "r-1",
        "role": "speaker",
        "mic_on": True,
        "hand_raised": False,
        "invitation": None,
        "leds": {"status": "on", "hand": "off", "invite": "off", "mic": "on"},
        "audio": {
            "frames_sent": 0,
            "frames_received": 0,
            "frames_concealed": 0,
            "frames_rejected": 0,
            "jitter_ms": 0.0,
            "underrun_ms": 0.0,
            "late_frames": 0,
            "speaking": False,
            "input_level_dbfs": None,
            "howl_events": 0,
        },
    }


def test_the_status_payload_outside_a_room() -> None:
    rig = Rig()
    status = rig.status
    assert status["connection"] == "offline"
    assert status["room_id"] is None and status["role"] is None
    assert status["mic_on"] is False and status["hand_raised"] is False
    assert status["leds"] == {"status": "off", "hand": "off", "invite": "off", "mic": "off"}
