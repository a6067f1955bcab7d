"""Random event sequences: the machine never crashes, never spins, never lies.

Hypothesis plays a careless world — a flaky link, a server answering anything in any
order, a person pressing everything — and after every step the invariants hold.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rig import HOST, ME, Rig, member, room, wire

from appliance.device import view
from appliance.device.effects import SendRequest, SetLeds, StartPublishing, StopPublishing
from appliance.device.events import (
    AudioDeviceLost,
    AudioDeviceRestored,
    Connected,
    CreateRequested,
    Disconnected,
    Event,
    Gesture,
    HostAction,
    InboxReceived,
    JoinRequested,
    LeaveRequested,
    ResponseReceived,
    RoomStateReceived,
    Started,
    StopRequested,
)
from appliance.protocol import models as m
from appliance.protocol.models import Response, Role

ROOMS = ["r-1", "r-2"]


def success_data(method: str, payload: m.Request) -> dict[str, Any]:
    """A plausible success answer to ``payload``."""
    room_id = getattr(payload, "room_id", "r-2")  # create_room makes r-2
    answers: dict[str, dict[str, Any]] = {
        "login": {"user_id": ME, "heartbeat_interval_s": 10, "session_ttl_s": 30},
        "login_room": {"room": wire(room(3, room_id=room_id)), "me": wire(member(ME))},
        "create_room": {"room": wire(room(3, [member(ME, Role.HOST)], room_id=room_id))},
        "heartbeat": {"room_id": room_id, "room_version": 2},
        "operate_raise_hand": {"member": wire(member(ME, hand_raised=True))},
        "set_user_info": {"member": wire(member(ME))},
        "invite_onstage": {"invitation_id": "inv-x", "expires_at": 1.0},
        "response_onstage_invite": {"me": wire(member(ME, Role.SPEAKER))},
    }
    return answers.get(method, {})


seats = st.sampled_from(
    [
        [member(HOST, Role.HOST)],
        [member(HOST, Role.HOST), member(ME, Role.SPEAKER)],
        [member(HOST, Role.HOST), member(ME, Role.SPEAKER, mic_on=False)],
        [member(ME, Role.HOST)],
    ]
)
room_states = st.builds(
    lambda version, room_id, seated, hands, closed: RoomStateReceived(
        room(version, seated, hands=hands, closed=closed, room_id=room_id)
    ),
    st.integers(0, 12),
    st.sampled_from(ROOMS),
    seats,
    st.sampled_from([[], [ME], ["carol", ME], ["carol"]]),
    st.sampled_from([False, False, False, True]),  # closed, now and then
)
inbox = st.sampled_from(
    [
        m.InviteOnstage(
            invitation_id="inv-1",
            room_id="r-1",
            from_user_id=HOST,
            from_name="Alice",
            expires_at=1.0,
        ),
        m.InviteExpired(invitation_id="inv-1", room_id="r-1"),
        m.RemovedFromStage(room_id="r-1", by=HOST),
        m.Muted(room_id="r-1", by=HOST),
        m.HandLowered(room_id="r-1", by=HOST),
        m.RoomClosed(room_id="r-1"),
    ]
).map(InboxReceived)
world_events = st.one_of(
    st.sampled_from(
        [
            Started(),
            Connected(),
            Disconnected(),
            Disconnected(refused=True),
            AudioDeviceLost(),
            AudioDeviceRestored(),
            LeaveRequested(ticket=1),
            CreateRequested("Talk", ticket=2),
        ]
    ),
    st.sampled_from(ROOMS).map(lambda r: JoinRequested(r, ticket=3)),
    st.builds(
        Gesture,
        st.sampled_from(["raise_hand", "mute", "accept"]),
        st.sampled_from(["short", "long"]),
    ),
    st.builds(HostAction, st.sampled_from(["invite", "remove", "mute"]), st.just("carol")),
    room_states,
    inbox,
)


def answer_one(rig: Rig, data: st.DataObject) -> Event | None:
    """An answer to some request in flight (any code), or None if nothing is."""
    if not rig.state.pending:
        return None
    tag = data.draw(st.sampled_from(sorted(rig.state.pending)))
    pending = rig.state.pending[tag]
    code = data.draw(st.sampled_from([0, 0, 0, 401, 403, 404, 409, 410, 429, 500]))
    body = success_data(pending.method, pending.payload) if code == 0 else None
    return ResponseReceived(tag, Response(code=code, message="x", data=body))


def check(rig: Rig, effects: list[Any]) -> None:
    deadline = view.next_deadline(rig.state)
    assert deadline is None or deadline > rig.now, "the shell would spin"
    shown = rig.state.shown
    assert shown.leds == view.leds(rig.state)
    assert shown.publishing == view.publishing(rig.state)
    if shown.publishing:
        assert view.mic_on(rig.state), "publishing off a seat or with the mic off"
    starts = [e for e in effects if isinstance(e, StartPublishing | StopPublishing)]
    assert len(starts) <= 1
    assert len([e for e in effects if isinstance(e, SetLeds)]) <= 1
    for request in (e for e in effects if isinstance(e, SendRequest)):
        assert request.tag in rig.state.pending
    if not rig.state.running:
        assert view.leds(rig.state).status == "off"


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_worlds_keep_the_invariants(data: st.DataObject) -> None:
    rig = Rig()
    for _ in range(data.draw(st.integers(5, 60))):
        kind = data.draw(st.sampled_from(["world", "answer", "answer", "time"]))
        if kind == "time":
            effects = rig.advance(data.draw(st.sampled_from([0.01, 1.0, 5.0, 11.0, 40.0])))
        else:
            event = data.draw(world_events) if kind == "world" else answer_one(rig, data)
            if event is None:
                continue
            effects = rig.send(event)
        check(rig, effects)
    effects = rig.send(StopRequested())
    check(rig, effects)
    assert view.leds(rig.state).status == "off"
