"""The authorization matrix: each role x each method x (self, other) target.

Every case runs in a fresh room of its own, with its own users:

    host    the host (seated, mic on)
    spk     a speaker, mic on            spk2  another speaker (the "other" seat)
    lis     a listener, hand raised      lis2  another listener, hand raised
    lis3    a listener with an open invitation
    out     logged in, not in the room   anon  connected, never logged in

The expected codes are written out by hand from docs/protocol.md section 4, not computed
by the code under test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from appliance.client import GoChatClient
from appliance.protocol import models as m
from testbed import Broker
from testbed.server import RunningServer, connect

ROLES = ("host", "spk", "lis", "out", "anon")


@dataclass
class Room:
    room_id: str
    invitation_for_lis3: str
    names: dict[str, str]  # role -> user id of this case

    def uid(self, role: str) -> str:
        return self.names[role]


Payload = Callable[[Room, str], tuple[str, dict[str, Any]]]


def room_req(method: str, **extra: Any) -> Payload:
    return lambda room, _actor: (method, {"room_id": room.room_id, **extra})


def on(method: str, target: str, **extra: Any) -> Payload:
    """``method`` aimed at the user playing ``target`` ("self": the actor)."""

    def build(room: Room, actor: str) -> tuple[str, dict[str, Any]]:
        uid = room.uid(actor) if target == "self" else room.uid(target)
        return method, {"room_id": room.room_id, "user_id": uid, **extra}

    return build


def plain(method: str, **payload: Any) -> Payload:
    return lambda _room, _actor: (method, payload)


RAISE, LOWER = {"raise": True}, {"raise": False}

#                                           host spk  lis  out  anon
MATRIX: dict[str, tuple[Payload, tuple[int, int, int, int, int]]] = {
    "heartbeat":               (plain("heartbeat"),                 (0, 0, 0, 0, 401)),
    "get_room_list":           (plain("get_room_list"),             (0, 0, 0, 0, 401)),
    "create_room":             (plain("create_room", subject="x"),  (0, 0, 0, 0, 401)),
    "logout":                  (plain("logout"),                    (0, 0, 0, 0, 401)),
    "get_attendee_list":       (room_req("get_attendee_list"),      (0, 0, 0, 0, 401)),
    "login_room":              (room_req("login_room"),             (0, 0, 0, 0, 401)),
    "quit_room":               (room_req("quit_room"),              (0, 0, 0, 404, 401)),
    "close_room":              (room_req("close_room"),             (0, 403, 403, 403, 401)),
    "raise_hand:self":         (room_req("operate_raise_hand", **RAISE), (403, 403, 0, 403, 401)),
    "lower_hand:self":         (room_req("operate_raise_hand", **LOWER), (403, 403, 0, 403, 401)),
    "lower_hand:other":        (on("operate_raise_hand", "lis2", **LOWER), (0, 403, 403, 403, 401)),
    "raise_hand:other":        (on("operate_raise_hand", "lis2", **RAISE), (403, 403, 403, 403, 401)),
    "invite:self":             (on("invite_onstage", "self"),       (409, 403, 403, 403, 401)),
    "invite:other":            (on("invite_onstage", "lis2"),       (0, 403, 403, 403, 401)),
    "invite:other-invited":    (on("invite_onstage", "lis3"),       (409, 403, 403, 403, 401)),
    "answer:other":            (lambda r, _a: ("response_onstage_invite", {
                                    "room_id": r.room_id, "accept": True,
                                    "invitation_id": r.invitation_for_lis3}),
                                                                    (403, 403, 403, 403, 401)),
    "mic_off:self":            (on("set_user_info", "self", mic_on=False), (0, 0, 403, 403, 401)),
    "mic_on:self":             (on("set_user_info", "self", mic_on=True), (0, 0, 403, 403, 401)),
    "leave_stage:self":        (on("set_user_info", "self", role="listener"), (403, 0, 0, 403, 401)),
    "to_stage:self":           (on("set_user_info", "self", role="speaker"), (403, 403, 403, 403, 401)),
    "mute:other":              (on("set_user_info", "spk2", mic_on=False), (0, 403, 403, 403, 401)),
    "unmute:other":            (on("set_user_info", "spk2", mic_on=True), (403, 403, 403, 403, 401)),
    "remove:other":            (on("set_user_info", "spk2", role="listener"), (0, 403, 403, 403, 401)),
    "remove:listener":         (on("set_user_info", "lis2", role="listener"), (409, 403, 403, 403, 401)),
    "remove:host":             (on("set_user_info", "host", role="listener"), (403, 403, 403, 403, 401)),
    "mute:host":               (on("set_user_info", "host", mic_on=False), (0, 403, 403, 403, 401)),
}  # fmt: skip
CASES = [
    (name, role, codes[i]) for name, (_, codes) in MATRIX.items() for i, role in enumerate(ROLES)
]
_case_numbers = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker and server for the whole matrix (each case has its own users)."""
    workdir = tmp_path_factory.mktemp("matrix")
    broker = Broker(workdir / "broker")
    names = [f"c{n}-{role}" for n in range(len(CASES)) for role in (*ROLES, "spk2", "lis2", "lis3")]
    broker.add_users("gochat-server", *names)
    broker.start()
    server = RunningServer(broker, workdir / "server.db").start()
    yield broker
    server.stop()
    broker.stop()


def build_room(broker: Broker, n: int) -> tuple[Room, dict[str, GoChatClient]]:
    names = {role: f"c{n}-{role}" for role in (*ROLES, "spk2", "lis2", "lis3")}
    clients = {role: connect(broker, uid, login=role != "anon") for role, uid in names.items()}
    host = clients["host"]
    room_id = host.call("create_room", subject=f"case {n}")["room"]["room_id"]
    for role in ("spk", "spk2", "lis", "lis2", "lis3"):
        clients[role].call("login_room", room_id=room_id)
    for role in ("spk", "spk2"):
        host.call("invite_onstage", room_id=room_id, user_id=names[role])
        invite = clients[role].next_inbox("invite_onstage")
        assert isinstance(invite, m.InviteOnstage)
        clients[role].call("response_onstage_invite", room_id=room_id,
                           invitation_id=invite.invitation_id, accept=True)  # fmt: skip
    for role in ("lis", "lis2"):
        clients[role].call("operate_raise_hand", room_id=room_id, **RAISE)
    invitation = host.call("invite_onstage", room_id=room_id, user_id=names["lis3"])
    return Room(room_id, invitation["invitation_id"], names), clients


@pytest.mark.parametrize(("case", "role", "expected"), CASES, ids=[f"{c}-{r}" for c, r, _ in CASES])
def test_authorization(world: Broker, case: str, role: str, expected: int) -> None:
    room, clients = build_room(world, next(_case_numbers))
    try:
        method, payload = MATRIX[case][0](room, role)
        response = clients[role].request(method, payload)
        assert response.code == expected, (method, payload, response)
    finally:
        for client in clients.values():
            client.close()
