"""A server killed with SIGKILL and started again has lost nothing."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.protocol import models as m
from testbed import Broker
from testbed.server import RunningServer, ServerProcess, connect


def test_sigkill_loses_no_state_and_republishes(broker: Broker, tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    server = ServerProcess(broker, db, tmp_path / "server.log").start()
    host, ann, bob, carl = (connect(broker, u, login=False) for u in ("host", "ann", "bob", "carl"))
    try:
        for client in (host, ann, bob, carl):
            client.login()
        room_id = host.call("create_room", subject="Durable", max_seats=4)["room"]["room_id"]
        for client in (ann, bob, carl):
            client.call("login_room", room_id=room_id)
        host.call("invite_onstage", room_id=room_id, user_id="ann")
        invite = ann.next_inbox("invite_onstage")
        assert isinstance(invite, m.InviteOnstage)
        ann.call("response_onstage_invite", room_id=room_id, invitation_id=invite.invitation_id,
                 accept=True)  # fmt: skip
        host.call("set_user_info", room_id=room_id, user_id="ann", mic_on=False)
        bob.call("operate_raise_hand", room_id=room_id, **{"raise": True})
        open_invite = host.call("invite_onstage", room_id=room_id, user_id="carl")
        host.watch_room(room_id)
        before = host.wait_room(room_id, lambda s: s.raised_hand_count == 1)

        server.kill()
        server = ServerProcess(broker, db, tmp_path / "server.log").start()

        after = host.wait_room(room_id, lambda s: s.version > before.version)
        assert after.seats == before.seats and after.raised_hands == before.raised_hands
        assert after.member_count == 4 and not after.closed
        assert [(s.user_id, s.role.value, s.mic_on) for s in after.seats] == [
            ("host", "host", True),
            ("ann", "speaker", False),
        ]
        assert bob.call("heartbeat") == {"room_id": room_id, "room_version": after.version}
        me = carl.call(
            "response_onstage_invite",
            room_id=room_id,
            invitation_id=open_invite["invitation_id"],
            accept=True,
        )["me"]
        assert me["role"] == "speaker"
        late = connect(broker, "late")  # a newcomer sees the retained state at once
        late.watch_room(room_id)
        assert late.wait_room(room_id, lambda s: len(s.seats) == 3).version > after.version
        late.close()
    finally:
        for client in (host, ann, bob, carl):
            client.close()
        assert server.stop() == 0, server.log()


def test_server_reconnects_after_a_broker_restart(broker: Broker, tmp_path: Path) -> None:
    server = RunningServer(broker, tmp_path / "server.db").start()
    host = connect(broker, "host")
    try:
        room_id = host.call("create_room", subject="Kept")["room"]["room_id"]
        broker.kill()  # a crash: the broker keeps nothing since its last save
        broker.start()
        deadline = time.monotonic() + 15
        while True:  # the server and the client both come back by themselves
            try:
                reply = host.request("heartbeat", {}, timeout_s=0.5)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "server never came back"
        assert reply.code == 0 and reply.data is not None and reply.data["room_id"] == room_id
        host.watch_room(room_id)  # republished on reconnect, though the broker lost it
        assert host.wait_room(room_id, lambda s: s.seats[0].user_id == "host").subject == "Kept"
    finally:
        host.close()
        server.stop()
