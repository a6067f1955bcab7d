"""A device state machine on a fake clock, with the test playing the server.

``Rig`` keeps the state, feeds events at its own ``now``, and offers the few moves a
test needs: answer a request, push a room state or an inbox command, let time pass.
Builders make wire shapes (``member``, ``room``) with the real pydantic models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from appliance.device import view
from appliance.device.effects import (
    ApiReply,
    Effect,
    Leds,
    Refused,
    SendRequest,
    SetLeds,
)
from appliance.device.events import (
    Connected,
    Event,
    Gesture,
    InboxReceived,
    JoinRequested,
    ResponseReceived,
    RoomStateReceived,
    Started,
    Tick,
)
from appliance.device.machine import step
from appliance.device.state import DeviceState, MachineConfig, initial_state
from appliance.protocol import models as m
from appliance.protocol.models import Member, RaisedHand, Response, Role, RoomState

ME = "kitchen-pi"
HOST = "alice"
SPEAKER = "bob"
ROOM = "r-1"
T0 = 1000.0

E = TypeVar("E")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def member(
    user_id: str,
    role: Role = Role.LISTENER,
    *,
    mic_on: bool | None = None,
    hand_raised: bool = False,
) -> Member:
    """A member; seated members have the mic on unless told otherwise."""
    return Member(
        user_id=user_id,
        name=user_id.title(),
        role=role,
        mic_on=(role is not Role.LISTENER) if mic_on is None else mic_on,
        hand_raised=hand_raised,
        joined_at=1_700_000_000.0,
    )


def room(
    version: int,
    seats: Sequence[Member] = (),
    *,
    hands: Sequence[str] = (),
    hand_count: int | None = None,
    closed: bool = False,
    room_id: str = ROOM,
    host_id: str = HOST,
) -> RoomState:
    """A room state; ``seats`` default to the host alone, ``hands`` oldest first."""
    return RoomState(
        room_id=room_id,
        subject="Morning news",
        version=version,
        closed=closed,
        host_id=host_id,
        max_seats=8,
        seats=list(seats) or [member(host_id, Role.HOST)],
        raised_hands=[
            RaisedHand(user_id=u, name=u.title(), raised_at=1_700_000_100.0 + i)
            for i, u in enumerate(hands)
        ],
        raised_hand_count=len(hands) if hand_count is None else hand_count,
        member_count=10,
        updated_at=1_700_000_200.0,
    )


def wire(model: m.BaseModel) -> dict[str, Any]:
    """A model as the JSON object the server would send."""
    return model.model_dump(mode="json", by_alias=True)


def of_type(effects: Iterable[Effect], kind: type[E]) -> list[E]:
    """The effects of one kind, in order."""
    return [e for e in effects if isinstance(e, kind)]


class Rig:
    """The machine under test, its clock, and everything it emitted."""

    def __init__(self, config: MachineConfig | None = None) -> None:
        self.state: DeviceState = initial_state(config or MachineConfig(user_id=ME, name="Kitchen"))
        self.now = T0
        self.log: list[Effect] = []

    # ------------------------------------------------------------ driving

    def send(self, event: Event) -> list[Effect]:
        """Feed one event at the current time."""
        self.state, effects = step(self.state, event, self.now)
        self.log.extend(effects)
        return effects

    def advance(self, seconds: float) -> list[Effect]:
        """Let time pass, then tick."""
        self.now += seconds
        return self.send(Tick())

    def press(self, button: str, kind: str = "short") -> list[Effect]:
        return self.send(Gesture(button, kind))  # type: ignore[arg-type]

    def answer(
        self,
        request: SendRequest,
        data: dict[str, Any] | None = None,
        *,
        code: int = 0,
        message: str = "ok",
    ) -> list[Effect]:
        """The server's answer to ``request``."""
        response = Response(code=code, message=message, data=data if code == 0 else None)
        return self.send(ResponseReceived(request.tag, response))

    def push(self, state: RoomState) -> list[Effect]:
        return self.send(RoomStateReceived(state))

    def inbox(self, command: m.BaseModel) -> list[Effect]:
        return self.send(InboxReceived(m.parse_inbox(m.dump(command))))

    # ------------------------------------------------------------ reading

    def pending(self, method: str) -> SendRequest:
        """The latest request of ``method`` still in flight."""
        tags = {t for t, p in self.state.pending.items() if p.method == method}
        found = [r for r in of_type(self.log, SendRequest) if r.tag in tags]
        assert found, f"no {method} in flight; in flight: {self.in_flight()}"
        return found[-1]

    def in_flight(self) -> list[str]:
        return sorted(p.method for p in self.state.pending.values())

    @property
    def leds(self) -> Leds:
        return view.leds(self.state)

    @property
    def status(self) -> dict[str, Any]:
        return view.status(self.state)

    # ------------------------------------------------------------ scenes

    def online(self) -> None:
        """Started, connected, logged in."""
        self.send(Started())
        self.send(Connected())
        self.answer(
            self.pending("login"),
            {"user_id": ME, "heartbeat_interval_s": 10, "session_ttl_s": 30},
        )

    def join(self, state: RoomState, me: Member | None = None) -> list[Effect]:
        """Ask to join ``state``'s room and let the server accept."""
        self.send(JoinRequested(state.room_id))
        return self.answer_join(state, me)

    def answer_join(self, state: RoomState, me: Member | None = None) -> list[Effect]:
        me = me or state.seat_of(ME) or member(ME)
        return self.answer(self.pending("login_room"), {"room": wire(state), "me": wire(me)})


def listener_rig(**config: Any) -> Rig:
    """Online, in ROOM as a listener (the host alone on stage)."""
    rig = Rig(MachineConfig(user_id=ME, name="Kitchen", **config))
    rig.online()
    rig.join(room(1))
    return rig


def speaker_rig(*, mic_on: bool = True) -> Rig:
    """Online, in ROOM as a speaker."""
    rig = Rig()
    rig.online()
    rig.join(room(1, [member(HOST, Role.HOST), member(ME, Role.SPEAKER, mic_on=mic_on)]))
    return rig


def host_rig(*, hands: Sequence[str] = ()) -> Rig:
    """Online, hosting ROOM (we are the host)."""
    rig = Rig()
    rig.online()
    rig.join(room(1, [member(ME, Role.HOST)], hands=hands, host_id=ME))
    return rig


def refused(effects: Iterable[Effect]) -> bool:
    return bool(of_type(effects, Refused))


def requests(effects: Iterable[Effect]) -> list[SendRequest]:
    return of_type(effects, SendRequest)


def leds_set(effects: Iterable[Effect]) -> list[Leds]:
    return [e.leds for e in of_type(effects, SetLeds)]


def replies(effects: Iterable[Effect]) -> list[ApiReply]:
    return of_type(effects, ApiReply)
