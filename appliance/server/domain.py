"""The business server's records: sessions, rooms, members and invitations.

Plain mutable dataclasses owned by :class:`~appliance.server.rules.RoomService`; the
store persists them and the rules change them. Wire shapes are built from them here
so that a room's state is serialized in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice

from appliance.protocol.models import (
    RAISED_HANDS_SHOWN,
    HostRef,
    Member,
    RaisedHand,
    Role,
    RoomState,
    RoomSummary,
)


@dataclass(slots=True)
class Session:
    """A logged-in user. ``last_seen`` is not persisted: TTLs count from a restart."""

    user_id: str
    name: str
    logged_in_at: float
    last_seen: float
    room_id: str | None = None


@dataclass(slots=True)
class MemberRecord:
    """A user's place in a room."""

    user_id: str
    name: str
    role: Role
    joined_at: float
    mic_on: bool = False
    raised_at: float | None = None
    onstage_at: float | None = None

    @property
    def seated(self) -> bool:
        """Whether the member holds a seat (host or speaker)."""
        return self.role is not Role.LISTENER

    def to_wire(self) -> Member:
        """The member as docs/protocol.md section 5 shows it."""
        return Member(
            user_id=self.user_id,
            name=self.name,
            role=self.role,
            mic_on=self.mic_on,
            hand_raised=self.raised_at is not None,
            joined_at=self.joined_at,
        )


@dataclass(slots=True)
class Room:
    """A room. ``members`` keeps join order; ``seats`` is host first, then speakers by
    time on stage; ``hands`` maps raised hands to their time, oldest first."""

    room_id: str
    subject: str
    host_id: str
    max_seats: int
    created_at: float
    version: int = 1
    updated_at: float = 0.0
    closed_at: float | None = None
    retained_cleared: bool = False
    members: dict[str, MemberRecord] = field(default_factory=dict)
    seats: list[str] = field(default_factory=list)
    hands: dict[str, float] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        """Whether the room has ended."""
        return self.closed_at is not None

    @property
    def host(self) -> MemberRecord | None:
        """The host's member record (None once the room has closed)."""
        return self.members.get(self.host_id)

    def to_state(self) -> RoomState:
        """The full room state (bounded: listeners are a count)."""
        hands = islice(self.hands.items(), RAISED_HANDS_SHOWN)
        return RoomState(
            room_id=self.room_id,
            subject=self.subject,
            version=self.version,
            closed=self.closed,
            host_id=self.host_id,
            max_seats=self.max_seats,
            seats=[self.members[uid].to_wire() for uid in self.seats],
            raised_hands=[
                RaisedHand(user_id=uid, name=self.members[uid].name, raised_at=at)
                for uid, at in hands
            ],
            raised_hand_count=len(self.hands),
            member_count=len(self.members),
            updated_at=self.updated_at,
        )

    def to_summary(self, host_name: str) -> RoomSummary:
        """The room's line in the room list."""
        return RoomSummary(
            room_id=self.room_id,
            subject=self.subject,
            host=HostRef(user_id=self.host_id, name=host_name),
            seat_count=len(self.seats),
            member_count=len(self.members),
            created_at=self.created_at,
        )

    def attendees(self) -> list[MemberRecord]:
        """Host first, then speakers by time on stage, then listeners by join time."""
        seated = [self.members[uid] for uid in self.seats]
        listeners = [m for m in self.members.values() if not m.seated]
        return seated + listeners


class InvitationState(StrEnum):
    """Where an invitation stands; only ``open`` can be answered."""

    OPEN = "open"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Invitation:
    """An invitation to the stage, open for 30 s."""

    invitation_id: str
    room_id: str
    inviter_id: str
    invitee_id: str
    created_at: float
    expires_at: float
    state: InvitationState = InvitationState.OPEN
