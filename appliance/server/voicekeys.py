"""Room voice keys and when they rotate (PROTOCOL.md section 6.1): pure, clock injected.

Every open room has a current voice key (32 bytes from the OS CSPRNG) and an epoch
(1 for a new room, +1 per rotation). Membership changes rotate it, at most once per
room per :data:`MIN_EPOCH_AGE_S`, so that a burst of joins and leaves shares one
rotation:

* a **join** into an epoch older than 2 s rotates at once (the joiner's ``login_room``
  already carries the new key); a join into a younger epoch gets that epoch's key, so
  a joiner can decrypt at most the 2 s of voice before it joined;
* a **departure** rotates at the earliest moment the 2 s limit allows: at once if the
  epoch is old enough, otherwise a rotation is scheduled for the epoch's 2 s mark and
  :meth:`VoiceKeys.due` reports it (the rules' tick performs it). The departed member
  is no longer a member then, so it gets no later key.

A rotation's result, :class:`Rotation`, names the members to push ``media_key`` to.
Every time is the caller's ``now`` (the rules' clock); nothing here does I/O. Keys never
appear in a ``repr``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

KEY_BYTES = 32
FIRST_EPOCH = 1
MAX_EPOCH = 0xFFFFFFFF  # uint32 on the wire; at one rotation per 2 s, 272 years away
MIN_EPOCH_AGE_S = 2.0

KeySource = Callable[[], bytes]


def fresh_key() -> bytes:
    """32 bytes from the OS CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    """The standard base64 of a key, as ``media.key`` carries it."""
    return base64.b64encode(key).decode("ascii")


@dataclass(slots=True)
class RoomKey:
    """A room's current voice key: its epoch, when the epoch began, and when a
    departure's deferred rotation is due (None if none is pending)."""

    epoch: int
    key: bytes = field(repr=False)
    since: float
    rotate_at: float | None = None

    @property
    def key_b64(self) -> str:
        """The key in standard base64."""
        return encode_key(self.key)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A new key for ``room_id``: push ``media_key`` to each of ``members``."""

    room_id: str
    epoch: int
    key_b64: str = field(repr=False)
    members: tuple[str, ...]


class VoiceKeys:
    """The voice key of every open room and the rotation policy."""

    def __init__(
        self, *, min_epoch_age_s: float = MIN_EPOCH_AGE_S, new_key: KeySource = fresh_key
    ) -> None:
        self.min_epoch_age_s = min_epoch_age_s
        self._new_key = new_key
        self.keys: dict[str, RoomKey] = {}
        self._pending: dict[str, float] = {}  # room_id -> rotate_at, for a cheap due()

    # ------------------------------------------------------------ lifecycle

    def create(self, room_id: str, now: float) -> RoomKey:
        """A new room's key, epoch 1."""
        key = RoomKey(FIRST_EPOCH, self._draw(), now)
        self.keys[room_id] = key
        self._pending.pop(room_id, None)
        return key

    def restore(self, room_id: str, key: RoomKey) -> None:
        """A key loaded from the store (a pending rotation stays pending)."""
        self.keys[room_id] = key
        if key.rotate_at is not None:
            self._pending[room_id] = key.rotate_at
        else:
            self._pending.pop(room_id, None)

    def discard(self, room_id: str) -> None:
        """The room closed: its key is forgotten."""
        self.keys.pop(room_id, None)
        self._pending.pop(room_id, None)

    def forget_all(self) -> None:
        """Forget every room's key (the service is being reloaded)."""
        self.keys.clear()
        self._pending.clear()

    def current(self, room_id: str) -> RoomKey:
        """The room's current key; KeyError if it has none."""
        return self.keys[room_id]

    # ------------------------------------------------------------ membership

    def joined(self, room_id: str, members: Iterable[str], now: float) -> Rotation | None:
        """A member joined (``members`` already includes it): rotate at once if the
        epoch is older than the limit, else the joiner shares the current epoch."""
        if self._age(room_id, now) > self.min_epoch_age_s:
            return self.rotate(room_id, members, now)
        return None

    def departed(self, room_id: str, members: Iterable[str], now: float) -> Rotation | None:
        """A member left (``members`` no longer includes it): rotate at once if the
        limit allows, else schedule the rotation for the epoch's 2 s mark."""
        key = self.keys[room_id]
        due = key.since + self.min_epoch_age_s
        if now >= due:
            return self.rotate(room_id, members, now)
        key.rotate_at = due
        self._pending[room_id] = due
        return None

    def due(self, now: float) -> list[str]:
        """Rooms whose deferred rotation is due at ``now`` (call :meth:`rotate`)."""
        return [room_id for room_id, at in self._pending.items() if at <= now]

    def rotate(self, room_id: str, members: Iterable[str], now: float) -> Rotation:
        """Draw the next epoch's key now (clears any pending rotation)."""
        key = self.keys[room_id]
        if key.epoch >= MAX_EPOCH:
            raise OverflowError(f"room {room_id}: voice key epoch exhausted")
        key.epoch += 1
        key.key = self._draw()
        key.since = now
        key.rotate_at = None
        self._pending.pop(room_id, None)
        return Rotation(room_id, key.epoch, key.key_b64, tuple(members))

    # ------------------------------------------------------------ helpers

    def _age(self, room_id: str, now: float) -> float:
        return now - self.keys[room_id].since

    def _draw(self) -> bytes:
        key = self._new_key()
        if len(key) != KEY_BYTES:
            raise ValueError(f"a voice key is {KEY_BYTES} bytes")
        return key
