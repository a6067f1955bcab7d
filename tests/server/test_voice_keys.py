"""Room voice keys (PROTOCOL.md 6.1): the policy alone, in the rules, and in the store."""

from __future__ import annotations

import base64
import itertools
import json
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.client import GoChatClient
from appliance.protocol import models as m
from appliance.protocol import topics, voice
from appliance.protocol.models import Code
from appliance.server.rules import Limits, Outcome, RoomService
from appliance.server.sqlite_store import SCHEMA_VERSION
from appliance.server.sqlite_store import SqliteStore as Store
from appliance.server.voicekeys import KEY_BYTES, VoiceKeys
from testbed.server import RunningServer

T0 = 1_800_000_000.0


# ---------------------------------------------------------------- the policy alone


def counting_keys() -> VoiceKeys:
    counter = itertools.count(1)
    return VoiceKeys(new_key=lambda: bytes([next(counter)]) * KEY_BYTES)


def test_policy_new_room_is_epoch_1_with_a_random_key() -> None:
    keys = VoiceKeys()
    a, b = keys.create("a", T0), keys.create("b", T0)
    assert a.epoch == b.epoch == 1
    assert len(a.key) == KEY_BYTES and a.key != b.key
    assert base64.b64decode(a.key_b64) == a.key
    assert a.key.hex() not in repr(a)


def test_policy_join_rotates_only_into_an_epoch_older_than_2_s() -> None:
    keys = counting_keys()
    keys.create("r", T0)
    assert keys.joined("r", ["h", "a"], T0 + 2.0) is None
    rotation = keys.joined("r", ["h", "a", "b"], T0 + 2.001)
    assert rotation is not None
    assert (rotation.epoch, rotation.members) == (2, ("h", "a", "b"))
    assert rotation.key_b64 == keys.current("r").key_b64
    assert rotation.key_b64 not in repr(rotation)


def test_policy_departure_is_deferred_to_the_2_s_mark_and_coalesces() -> None:
    keys = counting_keys()
    keys.create("r", T0)
    assert keys.departed("r", ["h"], T0 + 0.5) is None
    assert keys.departed("r", ["h"], T0 + 1.5) is None
    assert keys.due(T0 + 1.999) == []
    assert keys.due(T0 + 2.0) == ["r"]
    assert keys.rotate("r", ["h"], T0 + 2.0).epoch == 2
    assert keys.due(T0 + 10) == []
    # Old enough: a departure rotates at once.
    assert keys.departed("r", [], T0 + 4.0) is not None
    assert keys.current("r").epoch == 3


def test_policy_a_join_rotation_clears_a_pending_departure_rotation() -> None:
    keys = counting_keys()
    keys.create("r", T0)
    keys.departed("r", ["h"], T0 + 1.0)
    assert keys.joined("r", ["h", "x"], T0 + 2.5) is not None  # before any tick ran
    assert keys.due(T0 + 3.0) == []


# ---------------------------------------------------------------- in the rules


class World:
    """A room service on a fake clock with helpers to speak as users."""

    def __init__(self, service: RoomService | None = None, now: float = T0) -> None:
        counter = itertools.count(1)
        self.service = service or RoomService(Limits(), new_id=lambda: f"id{next(counter)}")
        self.now = now
        self.pushes: list[tuple[str, m.MediaKeyPush]] = []

    def call(self, user: str, method: str, **payload: object) -> Outcome:
        request = m.parse_request(method, json.dumps(payload).encode())
        return self._record(self.service.handle(user, request, self.now))

    def ok(self, user: str, method: str, **payload: object) -> m.Received:
        out = self.call(user, method, **payload)
        assert out.code == Code.OK, out.message
        assert isinstance(out.data, m.Received)
        return out.data

    def login(self, *users: str) -> None:
        for user in users:
            self.ok(user, "login", name=user.title())

    def join(self, user: str, room_id: str) -> m.MediaKey:
        data = self.ok(user, "login_room", room_id=room_id)
        assert isinstance(data, m.LoginRoomData) and data.media is not None
        return data.media

    def tick(self, seconds: float) -> Outcome:
        self.now += seconds
        return self._record(self.service.tick(self.now))

    def _record(self, out: Outcome) -> Outcome:
        self.pushes += [(u, c) for u, c in out.inbox if isinstance(c, m.MediaKeyPush)]
        return out

    def take(self) -> list[tuple[str, int]]:
        """(user, epoch) of the media_key pushes since the last take."""
        taken = [(u, c.epoch) for u, c in self.pushes]
        self.pushes.clear()
        return taken


@pytest.fixture
def w() -> World:
    return World()


def make_room(w: World, host: str = "host") -> tuple[str, m.MediaKey]:
    data = w.ok(host, "create_room", subject="Talk")
    assert isinstance(data, m.RoomData) and data.media is not None
    return data.room.room_id, data.media


def test_create_room_carries_epoch_1_and_a_32_byte_key(w: World) -> None:
    w.login("host")
    _, media = make_room(w)
    assert media.epoch == 1
    assert len(base64.b64decode(media.key, validate=True)) == 32
    assert media.key not in repr(media)
    assert w.take() == []


def test_join_within_2_s_gets_the_current_key_and_no_push(w: World) -> None:
    w.login("host", "ann", "bob")
    room_id, created = make_room(w)
    w.now += 1.0
    assert w.join("ann", room_id) == created
    w.now += 0.999
    assert w.join("bob", room_id) == created
    assert w.take() == []


def test_join_after_2_s_rotates_at_once_and_login_room_carries_the_new_key(w: World) -> None:
    w.login("host", "ann")
    room_id, created = make_room(w)
    w.now += 2.5
    media = w.join("ann", room_id)
    assert media.epoch == 2 and media.key != created.key
    pushed = dict(w.pushes)
    assert set(pushed) == {"host", "ann"}  # every member, the joiner included
    assert all(p.key == media.key and p.room_id == room_id for p in pushed.values())
    assert w.take() == [("host", 2), ("ann", 2)]


def test_a_returning_member_gets_the_current_key_without_a_rotation(w: World) -> None:
    w.login("host", "ann")
    room_id, _ = make_room(w)
    first = w.join("ann", room_id)
    w.now += 10
    assert w.join("ann", room_id) == first
    assert w.take() == []


def test_departure_rotation_waits_for_the_2_s_boundary(w: World) -> None:
    w.login("host", "ann", "bob")
    room_id, _ = make_room(w)
    w.join("ann", room_id)
    w.join("bob", room_id)
    w.now += 0.5
    w.ok("ann", "quit_room", room_id=room_id)
    assert w.take() == []
    w.tick(1.0)  # T0 + 1.5
    assert w.take() == []
    w.tick(0.5)  # T0 + 2.0: the epoch's 2 s mark
    assert w.take() == [("host", 2), ("bob", 2)]  # ann, gone, gets nothing
    w.tick(5.0)
    assert w.take() == []


def test_departure_from_an_old_epoch_rotates_in_the_same_outcome(w: World) -> None:
    w.login("host", "ann")
    room_id, _ = make_room(w)
    w.join("ann", room_id)
    w.now += 3
    out = w.call("ann", "quit_room", room_id=room_id)
    assert [(u, type(c).__name__) for u, c in out.inbox] == [("host", "MediaKeyPush")]


def test_a_burst_of_joins_and_leaves_shares_one_rotation(w: World) -> None:
    users = [f"u{i}" for i in range(10)]
    w.login("host", *users)
    room_id, _ = make_room(w)
    w.now += 3
    media = w.join("u0", room_id)  # rotates: epoch 2
    for user in users[1:]:
        w.now += 0.1
        assert w.join(user, room_id) == media
    for user in users[:3]:
        w.ok(user, "quit_room", room_id=room_id)
    w.take()
    w.tick(0.25)  # 1.15 s into epoch 2: nothing yet
    assert w.take() == []
    w.tick(1.0)
    pushes = w.take()
    assert {e for _, e in pushes} == {3}
    assert sorted(u for u, _ in pushes) == sorted(["host", *users[3:]])


def room_pushes(w: World, room_id: str) -> list[tuple[str, int]]:
    taken = [(u, p.epoch) for u, p in w.pushes if p.room_id == room_id]
    w.pushes.clear()
    return taken


@pytest.mark.parametrize("how", ["quit", "logout", "expiry", "other_room", "create_room"])
def test_every_kind_of_departure_rotates_and_the_departed_gets_no_later_key(
    w: World, how: str
) -> None:
    w.login("host", "ann", "bob", "host2", "carl")
    room_id, _ = make_room(w)
    other, _ = make_room(w, "host2")
    w.join("ann", room_id)
    w.join("bob", room_id)
    w.now += 3
    if how == "quit":
        w.ok("ann", "quit_room", room_id=room_id)
    elif how == "logout":
        w.ok("ann", "logout")
    elif how == "expiry":
        w.now = T0 + 29
        for user in ("host", "bob", "host2", "carl"):
            w.ok(user, "heartbeat")
        w.tick(2.0)  # ann's last sign of life was at T0, 31 s ago
        assert "ann" not in w.service.sessions
    elif how == "other_room":
        w.join("ann", other)
    else:
        make_room(w, "ann")
    # The epoch is older than 2 s: the departure rotates at once, for the others only.
    assert room_pushes(w, room_id) == [("host", 2), ("bob", 2)]
    w.now += 3
    w.join("carl", room_id)
    w.tick(10)
    assert room_pushes(w, room_id) == [("host", 3), ("bob", 3), ("carl", 3)]


def test_closing_a_room_discards_its_key_and_pushes_nothing(w: World) -> None:
    w.login("host", "ann")
    room_id, _ = make_room(w)
    w.join("ann", room_id)
    w.ok("ann", "quit_room", room_id=room_id)  # a rotation is pending
    w.ok("host", "close_room", room_id=room_id)
    assert room_id not in w.service.voice.keys
    w.tick(5)
    assert w.take() == []


def test_pushes_are_counted_per_member_per_rotation(w: World) -> None:
    users = [f"u{i}" for i in range(5)]
    w.login("host", *users)
    room_id, _ = make_room(w)
    for user in users:
        w.now += 1.5
        w.join(user, room_id)
    # Joins at +1.5 (young), +3.0 (rotates: 3 members), +4.5 (young), +6.0 (rotates: 5),
    # +7.5 (young).
    taken = w.take()
    assert [sum(1 for _, e in taken if e == epoch) for epoch in (2, 3)] == [3, 5]
    assert len(taken) == 8


def test_media_key_push_parses_as_an_inbox_command_and_hides_its_key() -> None:
    push = m.MediaKeyPush(room_id="r", epoch=7, key="c2VjcmV0")
    parsed = m.parse_inbox(m.dump(push))
    assert parsed == push and isinstance(parsed, m.MediaKeyPush)
    assert "c2VjcmV0" not in repr(push)
    assert json.loads(m.dump(push)) == {
        "type": "media_key",
        "room_id": "r",
        "epoch": 7,
        "key": "c2VjcmV0",
    }


# ---------------------------------------------------------------- persistence


def reload(db: Path, now: float) -> World:
    service = RoomService(Limits())
    store = Store(db)
    store.load_into(service)
    store.close()
    w = World(service, now)
    w._record(service.restarted(now))
    return w


def test_key_and_epoch_survive_a_store_reload(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    w = World()
    w.login("host", "ann")
    room_id, _ = make_room(w)
    w.now += 3
    media = w.join("ann", room_id)
    assert media.epoch == 2
    store = Store(db)
    store.flush(w.service)
    store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600  # the file holds voice keys

    again = reload(db, w.now + 100)
    assert again.take() == []  # a restart is not a membership change
    assert again.join("ann", room_id) == media


def test_a_pending_rotation_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    w = World()
    w.login("host", "ann", "bob")
    room_id, _ = make_room(w)
    w.join("ann", room_id)
    w.join("bob", room_id)
    w.now += 1
    w.ok("ann", "quit_room", room_id=room_id)  # rotation due at T0 + 2
    store = Store(db)
    store.flush(w.service)
    store.close()

    again = reload(db, T0 + 60)
    again.tick(0)
    assert sorted(again.take()) == [("bob", 2), ("host", 2)]


def test_a_version_1_store_is_migrated_and_its_open_rooms_get_keys(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE sessions (user_id TEXT PRIMARY KEY, name TEXT NOT NULL,
            logged_in_at REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE rooms (room_id TEXT PRIMARY KEY, subject TEXT NOT NULL,
            host_id TEXT NOT NULL, max_seats INTEGER NOT NULL, created_at REAL NOT NULL,
            version INTEGER NOT NULL, updated_at REAL NOT NULL, closed_at REAL,
            retained_cleared INTEGER NOT NULL);
        CREATE TABLE members (room_id TEXT NOT NULL, user_id TEXT NOT NULL, name TEXT NOT NULL,
            role TEXT NOT NULL, joined_at REAL NOT NULL, mic_on INTEGER NOT NULL, raised_at REAL,
            onstage_at REAL, PRIMARY KEY (room_id, user_id)) WITHOUT ROWID;
        CREATE TABLE invitations (invitation_id TEXT PRIMARY KEY, room_id TEXT NOT NULL,
            inviter_id TEXT NOT NULL, invitee_id TEXT NOT NULL, created_at REAL NOT NULL,
            expires_at REAL NOT NULL, state TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO sessions VALUES ('host', 'Host', 1.0), ('ann', 'Ann', 1.0);
        INSERT INTO rooms VALUES ('r1', 'Old', 'host', 8, 1.0, 5, 1.0, NULL, 0);
        INSERT INTO members VALUES ('r1', 'host', 'Host', 'host', 1.0, 1, NULL, 1.0),
                                   ('r1', 'ann', 'Ann', 'listener', 2.0, 0, NULL, NULL);
        PRAGMA user_version = 1;
        """
    )
    old.close()
    db.chmod(0o644)

    w = reload(db, T0)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert sorted(w.take()) == [("ann", 1), ("host", 1)]
    store = Store(db)
    (version,) = store._db.execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION == 3
    store.flush(w.service)
    store.close()
    media = reload(db, T0 + 1).join("ann", "r1")
    assert media.epoch == 1
    assert base64.b64decode(media.key) == w.service.voice.current("r1").key


def test_closed_rooms_keep_no_key_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    w = World()
    w.login("host")
    room_id, _ = make_room(w)
    w.ok("host", "close_room", room_id=room_id)
    store = Store(db)
    store.flush(w.service)
    row = store._db.execute("SELECT voice_key, voice_epoch FROM rooms").fetchone()
    store.close()
    assert row == (None, None)


# ---------------------------------------------------------------- the join storm


def storm_pushes(joins: int, rate: float, room_age_s: float, tick_s: float = 0.25) -> int:
    """media_key pushes of ``joins`` listeners joining one room at ``rate`` joins/s,
    the first join ``room_age_s`` after the room was created, ticking as the server
    does (``rate`` 0: all within one instant)."""
    w = World()
    w.login("host")
    room_id, _ = make_room(w)
    users = [f"l{i}" for i in range(joins)]
    for user in users:
        w.ok(user, "login", name="L")
    start = T0 + room_age_s
    next_tick = T0 + tick_s
    for i, user in enumerate(users):
        w.now = start + (i / rate if rate else 0.0)
        while next_tick <= w.now:
            w.service.tick(next_tick)
            next_tick += tick_s
        w.join(user, room_id)
    w.tick(10)
    return len(w.take())


def test_join_storm_push_count() -> None:
    # The benchmark's storm: the room is created ~1 s before the first join.
    bench = storm_pushes(5000, 1000.0, room_age_s=1.0)
    # A storm into a room older than 2 s.
    old_room = storm_pushes(5000, 1000.0, room_age_s=10.0)
    at_once = storm_pushes(5000, 0.0, room_age_s=10.0)
    print(f"\nmedia_key pushes, 5,000 joins at 1,000/s: {bench} (room 1 s old), "
          f"{old_room} (room > 2 s old); all at once: {at_once}")  # fmt: skip
    # A rotation at the first join more than 2 s into an epoch (joins 1,002 and 3,003
    # counted from 1; in an old room 1, 2,002 and 4,003), each pushed to every member
    # then, the host and the joiner included.
    assert bench == (1 + 1002) + (1 + 3003)
    assert old_room == (1 + 1) + (1 + 2002) + (1 + 4003)
    assert at_once == 2


# ---------------------------------------------------------------- over the real broker


@pytest.mark.broker
def test_keys_reach_members_over_the_broker_and_open_their_voice(
    server: RunningServer, users: Callable[..., GoChatClient]
) -> None:
    host, ann, bob = users("host"), users("ann"), users("bob")
    created = host.call("create_room", subject="Keys")
    room_id, media = created["room"]["room_id"], created["media"]
    assert media["epoch"] == 1
    assert ann.call("login_room", room_id=room_id)["media"] == media  # within 2 s
    server.advance(2.5)
    joined = bob.call("login_room", room_id=room_id)["media"]
    assert joined["epoch"] == 2
    for client in (host, ann, bob):
        push = client.next_inbox("media_key")
        assert isinstance(push, m.MediaKeyPush)
        assert (push.room_id, push.epoch, push.key) == (room_id, 2, joined["key"])

    # The host speaks with epoch 2; a member's keyring opens it.
    topic = topics.audio(room_id, "host")
    sealer = voice.Sealer(topic)
    sealer.set_key(2, base64.b64decode(joined["key"]))
    opener = voice.Opener()
    opener.add_key(1, base64.b64decode(media["key"]))
    opener.add_key(2, base64.b64decode(joined["key"]))
    assert opener.open(sealer.seal(1, 960, bytes([1 << 3, 0])), topic).epoch == 2

    # ann leaves; once the epoch is 2 s old the others, and not ann, get epoch 3.
    ann.call("quit_room", room_id=room_id)
    server.advance(2.5)
    for client in (host, bob):
        push = client.next_inbox("media_key")
        assert isinstance(push, m.MediaKeyPush) and push.epoch == 3
    with pytest.raises(TimeoutError):
        ann.next_inbox("media_key", timeout_s=0.5)
