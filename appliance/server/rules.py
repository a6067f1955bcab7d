"""The room rules of docs/protocol.md sections 4 and 6: pure code on an injected clock.

:class:`RoomService` holds every session, room, member and invitation in memory and
changes them only through :meth:`RoomService.handle` (one request) and
:meth:`RoomService.tick` (time passing). Each returns an :class:`Outcome`: the reply,
the inbox commands to send and the rooms whose state changed. No I/O happens here:
the MQTT adapter carries outcomes out and the store persists what :attr:`dirty` names.

Every handler checks everything before it changes anything, so a refused request
leaves no trace.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel

from appliance.protocol import models as m
from appliance.protocol.models import Code, Role
from appliance.server.domain import Invitation, InvitationState, MemberRecord, Room, Session
from appliance.server.voicekeys import Rotation, VoiceKeys

RETAINED_CLEAR_AFTER_S = 60.0
# Closed rooms and answered invitations are kept this long so that late requests get
# 410/409 rather than a puzzling 404.
TOMBSTONE_TTL_S = 3600.0

IdFactory = Callable[[], str]
_R = TypeVar("_R", bound=m.Request)


def random_id() -> str:
    """A URL-safe id of 16 characters (96 random bits)."""
    return secrets.token_urlsafe(12)


class RefusedError(Exception):
    """A request refused with a protocol code; raised before any change is made."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Outcome:
    """What one request or tick produced."""

    code: Code = Code.OK
    message: str = "ok"
    data: BaseModel | None = None
    inbox: list[tuple[str, BaseModel]] = field(default_factory=list)
    rooms_changed: set[str] = field(default_factory=set)
    retained_to_clear: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Dirty:
    """Keys of the records changed since the store last flushed."""

    sessions: set[str] = field(default_factory=set)
    rooms: set[str] = field(default_factory=set)
    members: set[tuple[str, str]] = field(default_factory=set)
    invitations: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.sessions or self.rooms or self.members or self.invitations)


@dataclass(frozen=True, slots=True)
class Limits:
    """Timings of docs/protocol.md; tests may shorten them."""

    heartbeat_interval_s: int = m.HEARTBEAT_INTERVAL_S
    session_ttl_s: int = m.SESSION_TTL_S
    invitation_ttl_s: float = m.INVITATION_TTL_S
    retained_clear_after_s: float = RETAINED_CLEAR_AFTER_S


class RoomService:
    """Sessions, rooms and invitations, and every method of the protocol."""

    def __init__(
        self,
        limits: Limits | None = None,
        new_id: IdFactory = random_id,
        voice: VoiceKeys | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._new_id = new_id
        self.voice = voice or VoiceKeys()  # every open room's voice key (section 6.1)
        self.sessions: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.invitations: dict[str, Invitation] = {}
        self.open_invitation_of: dict[str, str] = {}  # invitee -> open invitation id
        self.dirty = Dirty()
        self._out = Outcome()
        self._now = 0.0
        self._handlers: dict[m.Method, Callable[[str, m.Request], BaseModel]] = {
            m.Method.LOGIN: self._login,
            m.Method.LOGOUT: self._logout,
            m.Method.HEARTBEAT: self._heartbeat,
            m.Method.GET_ROOM_LIST: self._get_room_list,
            m.Method.CREATE_ROOM: self._create_room,
            m.Method.LOGIN_ROOM: self._login_room,
            m.Method.QUIT_ROOM: self._quit_room,
            m.Method.CLOSE_ROOM: self._close_room,
            m.Method.GET_ATTENDEE_LIST: self._get_attendee_list,
            m.Method.OPERATE_RAISE_HAND: self._operate_raise_hand,
            m.Method.INVITE_ONSTAGE: self._invite_onstage,
            m.Method.RESPONSE_ONSTAGE_INVITE: self._response_onstage_invite,
            m.Method.SET_USER_INFO: self._set_user_info,
        }

    def forget(self) -> None:
        """Drop every record (a shared store loads what each request needs afresh)."""
        self.sessions.clear()
        self.rooms.clear()
        self.invitations.clear()
        self.open_invitation_of.clear()
        self.voice.forget_all()
        self.dirty = Dirty()

    # ------------------------------------------------------------ entry points

    def handle(self, user_id: str, request: m.Request, now: float) -> Outcome:
        """Apply one validated request from ``user_id`` (taken from the topic)."""
        self._begin(now)
        try:
            if request.method is not m.Method.LOGIN:
                self._touch(user_id)
            self._out.data = self._handlers[request.method](user_id, request)
        except RefusedError as fail:
            self._out.code, self._out.message = fail.code, fail.message
        return self._finish()

    def tick(self, now: float) -> Outcome:
        """Expire invitations and sessions, clear closed rooms' retained state, and
        perform the voice-key rotations that departures deferred."""
        self._begin(now)
        self._expire_invitations()
        self._expire_sessions()
        self._clear_closed_rooms()
        self._rotate_due_keys()
        return self._finish()

    def presence_changed(self, user_id: str, now: float) -> Outcome:
        """A presence message, either way, restarts the session TTL: ``online`` is a
        sign of life, and a user who went ``offline`` has a full TTL to come back."""
        self._begin(now)
        session = self.sessions.get(user_id)
        if session is not None:
            session.last_seen = now
        return self._finish()

    def restarted(self, now: float) -> Outcome:
        """After loading from the store: TTLs restart now, and every open room's state
        is republished with a version above any published before the restart."""
        self._begin(now)
        for session in self.sessions.values():
            session.last_seen = now
        for room in self.rooms.values():
            if not room.closed:
                self._changed(room)
                if room.room_id not in self.voice.keys:  # a store from before voice keys
                    key = self.voice.create(room.room_id, now)
                    members = tuple(room.members)
                    self._push_key(room, Rotation(room.room_id, key.epoch, key.key_b64, members))
        return self._finish()

    # ------------------------------------------------------------ session methods

    def _login(self, user_id: str, req: m.Request) -> BaseModel:
        name = _as(req, m.LoginRequest).name
        session = self.sessions.get(user_id)
        if session is None:
            session = Session(user_id, name, self._now, self._now)
            self.sessions[user_id] = session
        session.name, session.last_seen = name, self._now
        self.dirty.sessions.add(user_id)
        return m.LoginData(
            user_id=user_id,
            heartbeat_interval_s=self.limits.heartbeat_interval_s,
            session_ttl_s=self.limits.session_ttl_s,
        )

    def _logout(self, user_id: str, _req: m.Request) -> BaseModel:
        self._end_session(self.sessions[user_id])
        return m.Empty()

    def _heartbeat(self, user_id: str, _req: m.Request) -> BaseModel:
        room_id = self.sessions[user_id].room_id
        room = self.rooms.get(room_id) if room_id else None
        return m.HeartbeatData(room_id=room_id, room_version=room.version if room else None)

    # ------------------------------------------------------------ room methods

    def _get_room_list(self, _user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.GetRoomListRequest)
        open_rooms = (room for room in self.rooms.values() if not room.closed)
        page, next_cursor = _page(open_rooms, r.cursor, r.page_size)
        return m.RoomListData(
            rooms=[room.to_summary(self._host_name(room)) for room in page],
            next_cursor=next_cursor,
        )

    def _create_room(self, user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.CreateRoomRequest)
        self._leave_current_room(user_id)
        room = Room(self._unique_room_id(), r.subject, user_id, r.max_seats, self._now)
        self.rooms[room.room_id] = room
        host = MemberRecord(user_id, self.sessions[user_id].name, Role.HOST, self._now)
        host.mic_on, host.onstage_at = True, self._now
        self._add_member(room, host)
        room.seats.append(user_id)
        self.voice.create(room.room_id, self._now)
        self._changed(room)
        return m.RoomData(room=room.to_state(), media=self._media(room))

    def _login_room(self, user_id: str, req: m.Request) -> BaseModel:
        room = self._open_room(_as(req, m.RoomRequest).room_id)
        member = room.members.get(user_id)
        if member is None:
            self._leave_current_room(user_id)
            member = MemberRecord(user_id, self.sessions[user_id].name, Role.LISTENER, self._now)
            self._add_member(room, member)
            self._changed(room)
            self._push_key(room, self.voice.joined(room.room_id, room.members, self._now))
        return m.LoginRoomData(room=room.to_state(), me=member.to_wire(), media=self._media(room))

    def _quit_room(self, user_id: str, req: m.Request) -> BaseModel:
        room = self._open_room(_as(req, m.RoomRequest).room_id)
        if user_id not in room.members:
            raise RefusedError(Code.NOT_FOUND, "not a member of this room")
        self._leave(room, user_id)
        return m.Empty()

    def _close_room(self, user_id: str, req: m.Request) -> BaseModel:
        room = self._open_room(_as(req, m.RoomRequest).room_id)
        self._require_host(room, user_id, "only the host can close the room")
        self._close(room)
        return m.Empty()

    def _get_attendee_list(self, _user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.GetAttendeeListRequest)
        room = self._open_room(r.room_id)
        page, next_cursor = _page(room.attendees(), r.cursor, r.page_size)
        return m.AttendeeListData(
            attendees=[member.to_wire() for member in page], next_cursor=next_cursor
        )

    # ------------------------------------------------------------ stage methods

    def _operate_raise_hand(self, user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.OperateRaiseHandRequest)
        room = self._open_room(r.room_id)
        me = self._member(room, user_id)
        if r.user_id is None or r.user_id == user_id:
            if me.seated:
                raise RefusedError(Code.FORBIDDEN, "only a listener can raise or lower its hand")
            self._set_hand(room, me, r.raise_)
            return m.MemberData(member=me.to_wire())
        if me.role is not Role.HOST:
            raise RefusedError(Code.FORBIDDEN, "only the host can lower another member's hand")
        if r.raise_:
            raise RefusedError(Code.FORBIDDEN, "nobody can raise another member's hand")
        target = self._target(room, r.user_id)
        if target.seated:
            raise RefusedError(Code.CONFLICT, "user is on stage")
        if target.raised_at is not None:
            self._set_hand(room, target, False)
            self._send(target.user_id, m.HandLowered(room_id=room.room_id, by=user_id))
        return m.MemberData(member=target.to_wire())

    def _invite_onstage(self, user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.InviteOnstageRequest)
        room = self._open_room(r.room_id)
        self._require_host(room, user_id, "only the host can invite")
        target = self._target(room, r.user_id)
        if target.seated:
            raise RefusedError(Code.CONFLICT, "user is already on stage")
        if r.user_id in self.open_invitation_of:
            raise RefusedError(Code.CONFLICT, "an invitation to this user is already open")
        invitation = Invitation(
            self._unique_invitation_id(),
            room.room_id,
            user_id,
            target.user_id,
            self._now,
            self._now + self.limits.invitation_ttl_s,
        )
        self._store_invitation(invitation)
        self._send(
            target.user_id,
            m.InviteOnstage(
                invitation_id=invitation.invitation_id,
                room_id=room.room_id,
                from_user_id=user_id,
                from_name=room.members[user_id].name,
                expires_at=invitation.expires_at,
            ),
        )
        return m.InvitationData(
            invitation_id=invitation.invitation_id, expires_at=invitation.expires_at
        )

    def _response_onstage_invite(self, user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.ResponseOnstageInviteRequest)
        room = self._open_room(r.room_id)
        invitation = self.invitations.get(r.invitation_id)
        if invitation is None or invitation.room_id != room.room_id:
            raise RefusedError(Code.NOT_FOUND, "no such invitation")
        if invitation.invitee_id != user_id:
            raise RefusedError(Code.FORBIDDEN, "only the invitee can answer an invitation")
        if invitation.state is not InvitationState.OPEN:
            raise RefusedError(Code.CONFLICT, f"invitation already {invitation.state.value}")
        me = self._member(room, user_id)
        if r.accept:
            if me.seated:
                raise RefusedError(Code.CONFLICT, "already on stage")
            if len(room.seats) >= room.max_seats:
                raise RefusedError(Code.CONFLICT, "no free seat")
            self._seat(room, me)
        self._settle(invitation, InvitationState.ACCEPTED if r.accept else InvitationState.DECLINED)
        self._send(
            invitation.inviter_id,
            m.InviteResponse(
                invitation_id=invitation.invitation_id,
                room_id=room.room_id,
                user_id=user_id,
                accepted=r.accept,
            ),
        )
        return m.MeData(me=me.to_wire())

    def _set_user_info(self, user_id: str, req: m.Request) -> BaseModel:
        r = _as(req, m.SetUserInfoRequest)
        if r.role is None and r.mic_on is None:
            raise RefusedError(Code.BAD_REQUEST, "payload: role or mic_on required")
        if r.role is not None and r.role is not Role.LISTENER:
            raise RefusedError(Code.FORBIDDEN, "the way to the stage is an invitation")
        if r.role is Role.LISTENER and r.mic_on:
            raise RefusedError(Code.BAD_REQUEST, "mic_on: a listener's microphone is off")
        room = self._open_room(r.room_id)
        me = self._member(room, user_id)
        target = self._target(room, r.user_id)
        if target is me:
            self._check_set_self(me, r)
        else:
            self._check_set_other(me, target, r)
        if r.role is Role.LISTENER and target.seated:
            self._unseat(room, target)
            if target is not me:
                self._send(target.user_id, m.RemovedFromStage(room_id=room.room_id, by=user_id))
        elif r.mic_on is not None and r.mic_on != target.mic_on:
            target.mic_on = r.mic_on
            self._member_changed(room, target)
            if target is not me:
                self._send(target.user_id, m.Muted(room_id=room.room_id, by=user_id))
        return m.MemberData(member=target.to_wire())

    @staticmethod
    def _check_set_self(me: MemberRecord, r: m.SetUserInfoRequest) -> None:
        if me.role is Role.HOST and r.role is Role.LISTENER:
            raise RefusedError(Code.FORBIDDEN, "the host cannot leave its seat")
        if not me.seated and r.mic_on is not None:
            raise RefusedError(Code.FORBIDDEN, "a listener has no microphone to set")

    @staticmethod
    def _check_set_other(me: MemberRecord, target: MemberRecord, r: m.SetUserInfoRequest) -> None:
        if me.role is not Role.HOST:
            raise RefusedError(Code.FORBIDDEN, "only the host can change another member")
        if r.mic_on:
            raise RefusedError(Code.FORBIDDEN, "only its owner can turn a microphone on")
        if target.role is not Role.SPEAKER:
            raise RefusedError(Code.CONFLICT, "user is not on stage")

    # ------------------------------------------------------------ time

    def _expire_invitations(self) -> None:
        for invitation in list(self.invitations.values()):
            if invitation.state is InvitationState.OPEN and invitation.expires_at <= self._now:
                self._settle(invitation, InvitationState.EXPIRED)
                expired = m.InviteExpired(
                    invitation_id=invitation.invitation_id, room_id=invitation.room_id
                )
                self._send(invitation.invitee_id, expired)
                self._send(invitation.inviter_id, expired)
            elif invitation.created_at + TOMBSTONE_TTL_S <= self._now:
                del self.invitations[invitation.invitation_id]
                self.dirty.invitations.add(invitation.invitation_id)

    def _expire_sessions(self) -> None:
        deadline = self._now - self.limits.session_ttl_s
        for session in [s for s in self.sessions.values() if s.last_seen <= deadline]:
            self._end_session(session)

    def _clear_closed_rooms(self) -> None:
        for room in list(self.rooms.values()):
            if room.closed_at is None:
                continue
            if not room.retained_cleared and (
                room.closed_at + self.limits.retained_clear_after_s <= self._now
            ):
                room.retained_cleared = True
                self.dirty.rooms.add(room.room_id)
                self._out.retained_to_clear.append(room.room_id)
            elif room.retained_cleared and room.closed_at + TOMBSTONE_TTL_S <= self._now:
                del self.rooms[room.room_id]
                self.dirty.rooms.add(room.room_id)

    def _rotate_due_keys(self) -> None:
        for room_id in self.voice.due(self._now):
            room = self.rooms.get(room_id)
            if room is None or room.closed:
                self.voice.discard(room_id)
                continue
            self._push_key(room, self.voice.rotate(room_id, room.members, self._now))

    # ------------------------------------------------------------ shared steps

    def _begin(self, now: float) -> None:
        self._now = now
        self._out = Outcome()

    def _finish(self) -> Outcome:
        out, self._out = self._out, Outcome()
        return out

    def _touch(self, user_id: str) -> None:
        session = self.sessions.get(user_id)
        if session is None:
            raise RefusedError(Code.NOT_LOGGED_IN, "not logged in")
        session.last_seen = self._now

    def _open_room(self, room_id: str) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            raise RefusedError(Code.NOT_FOUND, "no such room")
        if room.closed:
            raise RefusedError(Code.GONE, "room closed")
        return room

    @staticmethod
    def _member(room: Room, user_id: str) -> MemberRecord:
        member = room.members.get(user_id)
        if member is None:
            raise RefusedError(Code.FORBIDDEN, "not a member of this room")
        return member

    @staticmethod
    def _target(room: Room, user_id: str) -> MemberRecord:
        member = room.members.get(user_id)
        if member is None:
            raise RefusedError(Code.NOT_FOUND, "no such user in this room")
        return member

    def _require_host(self, room: Room, user_id: str, why: str) -> None:
        if self._member(room, user_id).role is not Role.HOST:
            raise RefusedError(Code.FORBIDDEN, why)

    def _host_name(self, room: Room) -> str:
        host = room.host
        return host.name if host else ""

    def _add_member(self, room: Room, member: MemberRecord) -> None:
        room.members[member.user_id] = member
        self.sessions[member.user_id].room_id = room.room_id
        self._member_changed(room, member)

    def _set_hand(self, room: Room, member: MemberRecord, raised: bool) -> None:
        if raised == (member.raised_at is not None):
            return
        if raised:
            member.raised_at = self._now
            room.hands[member.user_id] = self._now
        else:
            member.raised_at = None
            del room.hands[member.user_id]
        self._member_changed(room, member)

    def _seat(self, room: Room, member: MemberRecord) -> None:
        self._set_hand(room, member, False)
        member.role, member.mic_on, member.onstage_at = Role.SPEAKER, True, self._now
        room.seats.append(member.user_id)
        self._member_changed(room, member)

    def _unseat(self, room: Room, member: MemberRecord) -> None:
        member.role, member.mic_on, member.onstage_at = Role.LISTENER, False, None
        room.seats.remove(member.user_id)
        self._member_changed(room, member)

    def _leave(self, room: Room, user_id: str) -> None:
        """``user_id`` leaves ``room``; the host leaving closes it."""
        if user_id == room.host_id:
            self._close(room)
            return
        member = room.members.pop(user_id)
        room.hands.pop(user_id, None)
        if member.seated:
            room.seats.remove(user_id)
        self._cancel_invitation_of(user_id)
        self._left(room, user_id)
        self._changed(room)
        # The key rotates once the 2 s limit allows; until then a rotation is pending.
        self._push_key(room, self.voice.departed(room.room_id, room.members, self._now))

    def _left(self, room: Room, user_id: str) -> None:
        self.dirty.members.add((room.room_id, user_id))
        session = self.sessions.get(user_id)
        if session is not None and session.room_id == room.room_id:
            session.room_id = None

    def _close(self, room: Room) -> None:
        for user_id in list(room.members):
            self._send(user_id, m.RoomClosed(room_id=room.room_id))
            self._cancel_invitation_of(user_id, notify=False)
            self._left(room, user_id)
        room.members.clear()
        room.seats.clear()
        room.hands.clear()
        room.closed_at = self._now
        self.voice.discard(room.room_id)
        self._changed(room)

    def _leave_current_room(self, user_id: str) -> None:
        room_id = self.sessions[user_id].room_id
        room = self.rooms.get(room_id) if room_id else None
        if room is not None and not room.closed and user_id in room.members:
            self._leave(room, user_id)

    def _end_session(self, session: Session) -> None:
        self._leave_current_room(session.user_id)
        del self.sessions[session.user_id]
        self.dirty.sessions.add(session.user_id)

    def _store_invitation(self, invitation: Invitation) -> None:
        self.invitations[invitation.invitation_id] = invitation
        self.open_invitation_of[invitation.invitee_id] = invitation.invitation_id
        self.dirty.invitations.add(invitation.invitation_id)

    def _settle(self, invitation: Invitation, state: InvitationState) -> None:
        invitation.state = state
        self.open_invitation_of.pop(invitation.invitee_id, None)
        self.dirty.invitations.add(invitation.invitation_id)

    def _cancel_invitation_of(self, user_id: str, *, notify: bool = True) -> None:
        """An invitee who leaves voids its invitation; both sides hear it expired
        (unless the room is closing: ``room_closed`` says it all)."""
        invitation_id = self.open_invitation_of.get(user_id)
        if invitation_id is None:
            return
        invitation = self.invitations[invitation_id]
        self._settle(invitation, InvitationState.CANCELLED)
        if not notify:
            return
        expired = m.InviteExpired(invitation_id=invitation_id, room_id=invitation.room_id)
        self._send(invitation.invitee_id, expired)
        self._send(invitation.inviter_id, expired)

    def _member_changed(self, room: Room, member: MemberRecord) -> None:
        self.dirty.members.add((room.room_id, member.user_id))
        self._changed(room)

    def _changed(self, room: Room) -> None:
        """Bump the room's version once per request, however many changes it made."""
        if room.room_id not in self._out.rooms_changed:
            room.version += 1
            self._out.rooms_changed.add(room.room_id)
        room.updated_at = self._now
        self.dirty.rooms.add(room.room_id)

    def _media(self, room: Room) -> m.MediaKey:
        key = self.voice.current(room.room_id)
        return m.MediaKey(epoch=key.epoch, key=key.key_b64)

    def _push_key(self, room: Room, rotation: Rotation | None) -> None:
        """Send a rotation's key to every current member (none if nothing rotated);
        the room's row is dirty either way, as a pending rotation is persisted too."""
        self.dirty.rooms.add(room.room_id)
        if rotation is None:
            return
        push = m.MediaKeyPush(room_id=room.room_id, epoch=rotation.epoch, key=rotation.key_b64)
        for user_id in rotation.members:
            self._send(user_id, push)

    def _send(self, user_id: str, command: BaseModel) -> None:
        self._out.inbox.append((user_id, command))

    def _unique_room_id(self) -> str:
        return _unique(self._new_id, self.rooms)

    def _unique_invitation_id(self) -> str:
        return _unique(self._new_id, self.invitations)


def _as(req: m.Request, model: type[_R]) -> _R:
    if not isinstance(req, model):
        raise TypeError(f"expected {model.__name__}, got {type(req).__name__}")
    return req


def _unique(new_id: IdFactory, taken: Mapping[str, object]) -> str:
    while (candidate := new_id()) in taken:
        pass
    return candidate


_T = TypeVar("_T")


def _page(items: Iterable[_T], cursor: str | None, size: int) -> tuple[list[_T], str | None]:
    """One page of ``items`` after the opaque ``cursor`` (an offset in decimal)."""
    start = _cursor_offset(cursor)
    listed = list(items)
    page = listed[start : start + size]
    end = start + len(page)
    return page, (str(end) if end < len(listed) else None)


def _cursor_offset(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise RefusedError(Code.BAD_REQUEST, "cursor: not a cursor this server gave")
    return int(cursor)
