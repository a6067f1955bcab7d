"""The two stores behind one protocol: one schema, and the same records back."""

from __future__ import annotations

from pathlib import Path

import psycopg

from appliance.protocol import models as m
from appliance.server.pg_store import PostgresStore
from appliance.server.rules import RoomService
from appliance.server.sqlite_store import SqliteStore
from appliance.server.store import Scope, Store
from testbed.postgres import Postgres

T0 = 1_700_000_000.0


def test_both_engines_have_the_same_tables_and_columns(tmp_path: Path, postgres: Postgres) -> None:
    sqlite = SqliteStore(tmp_path / "s.db")
    url = postgres.new_database()
    PostgresStore(url, "gochat-server").close()
    lite = {
        (table, column)
        for (table,) in sqlite._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        for (_cid, column, *_rest) in sqlite._db.execute(f"PRAGMA table_info({table})")
    }
    with psycopg.connect(url) as conn:
        pg = set(
            conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name <> 'schema_version'"
            ).fetchall()
        )
    assert pg == lite
    sqlite.close()


def _apply(store: Store, service: RoomService, user: str, request: m.Request, now: float) -> None:
    with store.scope(service, Scope.of_request(user, request, now, b"k%d" % now)):
        service.handle(user, request, now)
    store.flush(service)


def test_a_room_reads_back_the_same_from_either_store(tmp_path: Path, postgres: Postgres) -> None:
    states = []
    stores: list[Store] = [
        SqliteStore(tmp_path / "s.db"),
        PostgresStore(postgres.new_database(), "gochat-server"),
    ]
    for store in stores:
        ids = iter(f"id{n}" for n in range(100))
        service = RoomService(new_id=lambda ids=ids: next(ids))  # type: ignore[misc]
        store.load_into(service)
        for user in ("host", "ann", "bob"):
            _apply(store, service, user, m.LoginRequest(name=user.title()), T0)
        _apply(store, service, "host", m.CreateRoomRequest(subject="s", max_seats=3), T0)
        _apply(store, service, "ann", m.LoginRoomRequest(room_id="id0"), T0 + 1)
        _apply(store, service, "bob", m.LoginRoomRequest(room_id="id0"), T0 + 2)
        raise_hand = m.OperateRaiseHandRequest.model_validate({"room_id": "id0", "raise": True})
        _apply(store, service, "bob", raise_hand, T0 + 3)
        _apply(store, service, "ann", m.QuitRoomRequest(room_id="id0"), T0 + 4)
        room = store.room(service, "id0")
        assert room is not None
        states.append(room.to_state().model_dump())
        store.close()
    assert states[0] == states[1]
    assert states[0]["member_count"] == 2
    assert states[0]["raised_hand_count"] == 1
