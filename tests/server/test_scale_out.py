"""Several server instances on one PostgreSQL: losing either one loses nothing.

Real parts throughout: Mosquitto, a throwaway PostgreSQL, and the servers as
processes (``python -m appliance.server``) that are SIGKILLed mid-storm. A client
retries an unanswered request with the same CorrelationData, as docs/protocol.md
asks; the other instance answers it (and a request the dead one had committed is
recognised, not applied twice).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from appliance.client import GoChatClient
from appliance.protocol import models as m
from appliance.protocol import topics
from testbed import Broker, MqttClientFactory
from testbed.postgres import Postgres
from testbed.server import RunningServer, ServerProcess, connect

LISTENERS = 40
TRY_S = 1.5  # a client's wait before it retries
TRIES = 8


@pytest.fixture
def store_url(postgres: Postgres) -> str:
    """A fresh database."""
    return postgres.new_database()


@pytest.fixture
def pair(broker: Broker, tmp_path: Path, store_url: str) -> Iterator[list[ServerProcess]]:
    """Instances 1 and 2 as processes on one database; 1 is up first (owns the timers)."""
    procs = [
        ServerProcess(
            broker,
            tmp_path / "unused.db",
            tmp_path / f"server{n}.log",
            store_url=store_url,
            instance=n,
        )
        for n in (1, 2)
    ]
    for proc in procs:
        proc.start()
    yield procs
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()


def _call_retrying(
    client: GoChatClient, method: m.Method, payload: dict[str, object]
) -> m.Response:
    """One request, retried with the same CorrelationData until answered."""
    correlation = client.user_id.encode() + b"/" + method.value.encode()
    for _ in range(TRIES):
        try:
            return client.request(method, payload, timeout_s=TRY_S, correlation=correlation)
        except TimeoutError:
            continue
    raise TimeoutError(f"{client.user_id}: {method} never answered")


def _lease_holder(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT holder FROM leases WHERE name = 'timers'"
            " AND expires_at > extract(epoch FROM clock_timestamp())::float8"
        ).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("victim", [0, 1], ids=["kill-timer-owner", "kill-other"])
def test_sigkill_during_a_join_storm_loses_no_answered_join(
    broker: Broker,
    pair: list[ServerProcess],
    store_url: str,
    mqtt_client: MqttClientFactory,
    victim: int,
) -> None:
    host = connect(broker, "host")
    room_id = host.call(m.Method.CREATE_ROOM, subject="storm", max_seats=4)["room"]["room_id"]
    watcher = mqtt_client(broker, "watcher-of-versions")
    watcher.subscribe_wait(topics.room_state(room_id), qos=1)
    listeners = [connect(broker, f"l{i:03d}", login=False) for i in range(LISTENERS)]
    answers: dict[str, m.Response] = {}
    lock = threading.Lock()

    def join(client: GoChatClient) -> None:
        _call_retrying(client, m.Method.LOGIN, {"name": client.user_id})
        response = _call_retrying(client, m.Method.LOGIN_ROOM, {"room_id": room_id})
        with lock:
            answers[client.user_id] = response

    threads = [threading.Thread(target=join, args=(c,)) for c in listeners]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(answers) < LISTENERS // 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    pair[victim].kill()  # mid-storm: some joins answered, some in flight, some unsent
    for thread in threads:
        thread.join(TRIES * TRY_S * 2 + 5)
    try:
        # Every request was answered (by the survivor), every join succeeded...
        assert sorted(answers) == sorted(c.user_id for c in listeners)
        assert all(r.code == 0 for r in answers.values()), answers
        # ...and every answered join is in the room, once.
        attendees = host.call(m.Method.GET_ATTENDEE_LIST, room_id=room_id, page_size=100)
        ids = [a["user_id"] for a in attendees["attendees"]]
        assert sorted(ids) == sorted(["host", *answers])
        # The retained state reaches the final count, and its versions never went back
        # (published by the owner of the timers, whichever survived).
        versions: list[int] = []
        count = 0
        end = time.monotonic() + 10
        while count != LISTENERS + 1 and time.monotonic() < end:
            state = json.loads(watcher.expect(topics.room_state(room_id), timeout=10).payload)
            versions.append(state["version"])
            count = state["member_count"]
        assert count == LISTENERS + 1
        assert versions == sorted(versions)
        assert _lease_holder(store_url) == pair[1 - victim].env["GOCHAT_BROKER__USERNAME"]
        # The killed instance restarts and serves again: kill the survivor, and the
        # restarted one answers alone.
        pair[victim].start()
        pair[1 - victim].kill()
        left = _call_retrying(listeners[0], m.Method.QUIT_ROOM, {"room_id": room_id})
        assert left.code == 0
        assert _lease_wait(store_url, pair[victim].env["GOCHAT_BROKER__USERNAME"])
    finally:
        for client in [host, *listeners]:
            client.close()


def _lease_wait(url: str, holder: str, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _lease_holder(url) == holder:
            return True
        time.sleep(0.1)
    return False


TWO_IN_PROCESS = pytest.mark.parametrize("server", ["postgresql"], indirect=True)
"""Two instances in this process on one clock (tests/server/conftest.py)."""


@TWO_IN_PROCESS
def test_a_retry_reaching_the_other_instance_is_answered_not_applied_again(
    broker: Broker, server: RunningServer
) -> None:
    host = connect(broker, "host")
    room_id = host.call(m.Method.CREATE_ROOM, subject="s", max_seats=4)["room"]["room_id"]
    ann = connect(broker, "ann")
    correlation = b"join-once"
    answers = [
        ann.request(m.Method.LOGIN_ROOM, {"room_id": room_id}, correlation=correlation)
        for _ in range(6)  # the broker deals them out to both instances
    ]
    assert len({a.model_dump_json() for a in answers}) == 1  # the same answer each time
    state = host.call(m.Method.LOGIN_ROOM, room_id=room_id)["room"]
    assert state["member_count"] == 2
    joined = (answers[0].data or {})["room"]["version"]
    assert state["version"] == joined  # ann's join was the last change: applied once
    host.close()
    ann.close()


@TWO_IN_PROCESS
def test_an_invitation_expires_once_with_two_instances(
    broker: Broker, server: RunningServer
) -> None:
    host, ann = connect(broker, "host"), connect(broker, "ann")
    room_id = host.call(m.Method.CREATE_ROOM, subject="s", max_seats=4)["room"]["room_id"]
    ann.call(m.Method.LOGIN_ROOM, room_id=room_id)
    host.call(m.Method.INVITE_ONSTAGE, room_id=room_id, user_id="ann")
    ann.next_inbox("invite_onstage")
    server.advance(31, settle_s=1.5)  # both instances tick past the expiry
    for client in (ann, host):
        client.next_inbox("invite_expired")
        with pytest.raises(TimeoutError):
            client.next_inbox("invite_expired", timeout_s=1.0)  # and only once
    host.close()
    ann.close()


@TWO_IN_PROCESS
def test_a_client_joining_a_shared_subscription_takes_no_request(
    broker: Broker, server: RunningServer, mqtt_client: MqttClientFactory
) -> None:
    # The ACL cannot stop a subscription, and the broker drops a request it deals to a
    # member of the group that may not read it: the group's name is the servers' secret.
    mallory = mqtt_client(broker, "mallory")
    for group in ("gochat-server", "gochat", "server"):
        mallory.subscribe_wait(f"$share/{group}/{topics.REQUESTS_TREE}", qos=1)
    ann = connect(broker, "ann")
    for _ in range(12):
        assert ann.request(m.Method.HEARTBEAT, {}, timeout_s=5).code == 0
    ann.close()


def test_requests_during_a_database_outage_are_not_answered_then_are(
    broker: Broker, tmp_path: Path
) -> None:
    with Postgres() as cluster:
        url = cluster.new_database()
        server = RunningServer(broker, tmp_path / "unused.db", store_url=url).start()
        try:
            host = connect(broker, "host")
            created = host.call(m.Method.CREATE_ROOM, subject="s", max_seats=4)
            cluster.halt()
            # No answer rather than a wrong one: nothing could be committed.
            with pytest.raises(TimeoutError):
                host.request(m.Method.HEARTBEAT, {}, timeout_s=1.0)
            cluster.start()
            # The server opens its connections again and answers.
            answered = _call_retrying(host, m.Method.HEARTBEAT, {})
            assert answered.data == {
                "room_id": created["room"]["room_id"],
                "room_version": created["room"]["version"],
            }
            host.close()
        finally:
            server.stop()
