"""The device state machine: ``step(state, event, now) -> (state, effects)``.

Pure and synchronous: no MQTT, GPIO, threads or clock inside; ``now`` is the caller's
monotonic clock (seconds), the same one the gesture detector uses. Every step runs in
four stages:

1. **dispatch** the event to its handler, which updates the state and may ask for
   requests: lifecycle and link changes and the server's pushes here, success answers
   in :mod:`.responses`, the person's presses and API calls in :mod:`.presses`;
2. **expire**, 3. **reconcile** and 4. **sync** (:mod:`.upkeep`): what time overtook,
   what the session must do next, and which outputs changed.

Requests are drafted and failed in :mod:`.requests`; the moves they all share are in
:mod:`.outcomes`. :class:`DeviceMachine` wraps the state for a shell that prefers an
object.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, assert_never

from appliance.audio.port import AudioStats
from appliance.device import view
from appliance.device.effects import ApiReply, Effect, SetVoiceKey
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
    PublishRefused,
    RequestUndelivered,
    ResponseReceived,
    RoomListRequested,
    RoomStateReceived,
    Started,
    StopRequested,
    Tick,
)
from appliance.device.machine import presses, upkeep
from appliance.device.machine.outcomes import (
    BAD_ANSWER,
    BROKER_REFUSED,
    LINK_LOST,
    TIMEOUT,
    Out,
    adopt_room,
    in_target_room,
    is_stale,
    left,
    room_gone,
    supersede_target,
)
from appliance.device.machine.requests import answer, ask
from appliance.device.machine.responses import invitation_over, on_broker_verdict, on_response
from appliance.device.state import (
    EMPTY,
    DeviceState,
    Fault,
    Invitation,
    MachineConfig,
    initial_state,
)
from appliance.protocol.models import (
    INVITATION_TTL_S,
    Code,
    HandLowered,
    InboxCommand,
    InviteExpired,
    InviteOnstage,
    InviteResponse,
    MediaKeyPush,
    Muted,
    QuitRoomRequest,
    RemovedFromStage,
    RoomClosed,
    RoomState,
)


def step(state: DeviceState, event: Event, now: float) -> tuple[DeviceState, list[Effect]]:
    """Apply ``event`` at monotonic time ``now``; return the new state and the effects,
    in the order the shell should carry them out."""
    out: Out = []
    s = _dispatch(state, event, now, out)
    s = upkeep.expire(s, now, out)
    s = upkeep.reconcile(s, now, out)
    return upkeep.sync(s, out), out


class DeviceMachine:
    """The state machine held in an object, for the shell: ``effects = m.handle(ev, now)``."""

    def __init__(self, config: MachineConfig) -> None:
        self.state = initial_state(config)

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Apply ``event`` at ``now``; return the effects to carry out."""
        self.state, effects = step(self.state, event, now)
        return effects

    def status(self, audio: AudioStats | None = None) -> dict[str, Any]:
        """The CoAP ``/status`` payload."""
        return view.status(self.state, audio)

    def next_deadline(self) -> float | None:
        """When to send the next :class:`~appliance.device.events.Tick` (None: no need)."""
        return view.next_deadline(self.state)

    @property
    def ready(self) -> bool:
        """systemd READY=1 may be sent (see :func:`appliance.device.view.is_ready`)."""
        return view.is_ready(self.state)

    @property
    def idle(self) -> bool:
        """Nothing in flight (after :class:`StopRequested`: safe to disconnect)."""
        return view.is_idle(self.state)


def _dispatch(s: DeviceState, event: Event, now: float, out: Out) -> DeviceState:
    match event:
        case Started() | StopRequested() | Connected() | Disconnected():
            return _on_lifecycle(s, event, now, out)
        case RoomStateReceived() | InboxReceived():
            return _on_push(s, event, now, out)
        case ResponseReceived() | RequestUndelivered() | PublishRefused():
            return _on_answer(s, event, now, out)
        case (
            Gesture()
            | JoinRequested()
            | CreateRequested()
            | LeaveRequested()
            | HostAction()
            | RoomListRequested()
        ):
            return presses.on_person(s, event, now, out)
        case Tick():
            return s  # expiry and reconciliation run after every event anyway
        case AudioDeviceLost() | AudioDeviceRestored():
            lost = isinstance(event, AudioDeviceLost)
            faults = s.faults | {Fault.AUDIO_LOST} if lost else s.faults - {Fault.AUDIO_LOST}
            return replace(s, faults=faults)
        case _:
            assert_never(event)


# ---------------------------------------------------------------- lifecycle and link


def _on_lifecycle(
    s: DeviceState, event: Started | StopRequested | Connected | Disconnected, now: float, out: Out
) -> DeviceState:
    match event:
        case Started():
            return replace(s, running=True, link="trying" if s.link == "down" else s.link)
        case StopRequested():
            return _on_stop(s, now, out)
        case Connected():
            return _on_connected(s, out)
        case Disconnected():
            return _on_disconnected(s, event, out)


def _on_stop(s: DeviceState, now: float, out: Out) -> DeviceState:
    if not s.running:
        return s
    s = supersede_target(s, out, LINK_LOST, "the device is stopping")
    s = replace(s, running=False, target=None)
    if s.joined is not None and s.link == "up" and s.session is not None:
        s = ask(s, QuitRoomRequest, {"room_id": s.joined}, now, out)
    return s


def _on_connected(s: DeviceState, out: Out) -> DeviceState:
    # A fresh, clean connection: nothing from the old one will be answered, the broker
    # forgot our room subscription, and the server wants a login before anything else.
    s = left(_abandon_pending(s, out))
    return replace(
        s,
        link="up",
        session=None,
        faults=s.faults - {Fault.BROKER_REFUSED, Fault.PUBLISH_REFUSED, Fault.IDENTITY_IN_USE},
        failures=0,
        retry_at=0.0,
        shown=replace(s.shown, subscribed=None),
    )


def _on_disconnected(s: DeviceState, event: Disconnected, out: Out) -> DeviceState:
    s = _abandon_pending(s, out)
    faults = s.faults | {Fault.BROKER_REFUSED} if event.refused else s.faults
    if event.taken_over:
        faults = faults | {Fault.IDENTITY_IN_USE}
    # The target stays: the room is re-joined after the reconnect. An invitation is
    # dropped rather than shown while we cannot answer it (LEDs must not lie).
    s = left(s)
    return replace(
        s,
        link="trying" if s.running else "down",
        session=None,
        faults=faults,
        shown=replace(s.shown, subscribed=None),
    )


def _abandon_pending(s: DeviceState, out: Out) -> DeviceState:
    for p in [*s.pending.values(), *s.deferred]:
        if p.ticket is not None:
            out.append(ApiReply(p.ticket, LINK_LOST, "the broker connection was lost"))
    return replace(s, pending=EMPTY, deferred=())


# ---------------------------------------------------------------- the server's pushes


def _on_answer(
    s: DeviceState,
    event: ResponseReceived | RequestUndelivered | PublishRefused,
    now: float,
    out: Out,
) -> DeviceState:
    if isinstance(event, ResponseReceived):
        return on_response(s, event, now, out)
    return on_broker_verdict(s, event, now, out)


def _on_push(
    s: DeviceState, event: RoomStateReceived | InboxReceived, now: float, out: Out
) -> DeviceState:
    if isinstance(event, RoomStateReceived):
        return _on_room_state(s, event.room, out)
    return _on_inbox(s, event.command, now, out)


def _on_room_state(s: DeviceState, room: RoomState, out: Out) -> DeviceState:
    if not in_target_room(s, room.room_id):
        return s  # a room we are not in or joining (e.g. a late retained message)
    if is_stale(s, room):
        return s
    return adopt_room(s, room, out)


def _on_inbox(s: DeviceState, cmd: InboxCommand, now: float, out: Out) -> DeviceState:
    match cmd:
        case InviteOnstage():
            return _on_invited(s, cmd, now, out)
        case InviteExpired() | InviteResponse():
            return invitation_over(s, cmd.invitation_id)
        case _:
            return _on_room_command(s, cmd, out)


def _on_room_command(
    s: DeviceState,
    cmd: RemovedFromStage | Muted | HandLowered | RoomClosed | MediaKeyPush,
    out: Out,
) -> DeviceState:
    ours = in_target_room(s, cmd.room_id)
    match cmd:
        case RemovedFromStage() | Muted() if ours and s.room is not None:
            return replace(s, mic_block_version=max(s.mic_block_version, s.room.version))
        case HandLowered() if ours:
            return replace(s, hand_hint=False)
        case RoomClosed() if ours:
            return room_gone(s, out, Code.GONE, "the room was closed")
        case MediaKeyPush() if ours:
            out.append(SetVoiceKey(cmd.room_id, cmd.epoch, cmd.key))
            return s
        case _:
            return s


def _on_invited(s: DeviceState, cmd: InviteOnstage, now: float, out: Out) -> DeviceState:
    if cmd.room_id != s.joined or view.my_seat(s) is not None:
        return s
    invitation = Invitation(
        invitation_id=cmd.invitation_id,
        room_id=cmd.room_id,
        from_user_id=cmd.from_user_id,
        from_name=cmd.from_name,
        expires_at=cmd.expires_at,
        deadline=now + INVITATION_TTL_S + s.config.invitation_grace_s,
    )
    s = replace(s, invitation=invitation)
    if s.config.auto_accept_when_hand_raised and view.hand_raised(s):
        # The listener asked to speak: accept at once, as GoChat's own client does.
        return answer(s, accept=True, now=now, out=out, button=None)
    return s


__all__ = [
    "BAD_ANSWER",
    "BROKER_REFUSED",
    "LINK_LOST",
    "TIMEOUT",
    "DeviceMachine",
    "MachineConfig",
    "initial_state",
    "step",
]
