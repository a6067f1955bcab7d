"""The fan-out benchmark's parts: its schedule, its lightweight listener's packet codec,
bulk accounts on the test broker, and one small end-to-end measurement (real Mosquitto
over TLS, real server, real libopus and AES-GCM) in which every frame must arrive."""

from __future__ import annotations

import pytest

from benchmarks import fanout
from testbed import Broker


def test_dtx_load_talks_a_tenth_of_the_time_one_speaker_at_a_time() -> None:
    cycle = range(fanout.DTX_CYCLE)
    for speaker in range(fanout.SPEAKERS):
        talking = [k for k in cycle if fanout.sends("dtx", speaker, k)[1]]
        silent_sent = [k for k in cycle if fanout.sends("dtx", speaker, k) == (True, False)]
        assert len(talking) == fanout.DTX_CYCLE // 10
        # One packet per second (50 slots) while silent, never more.
        assert len(silent_sent) <= fanout.DTX_CYCLE // fanout.DTX_SILENT_EVERY
    for k in cycle:
        assert sum(fanout.sends("dtx", j, k)[1] for j in range(fanout.SPEAKERS)) <= 1
    assert all(fanout.sends("talk", j, k) == (True, True) for j in range(4) for k in cycle)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455])
def test_varint_round_trip(value: int) -> None:
    encoded = fanout.varint(value)
    assert fanout.read_varint(b"\xff" + encoded, 1) == (value, 1 + len(encoded))
    assert fanout.read_varint(encoded[:-1], 0) is None  # cut short: wait for more


def test_correlation_is_found_among_other_properties() -> None:
    props = (
        b"\x01\x01"  # payload format indicator (1 byte)
        + b"\x02\x00\x00\x00\x10"  # message expiry (4 bytes)
        + b"\x0b\x81\x01"  # subscription identifier (varint 129)
        + b"\x26"
        + fanout.mqtt_str("k")
        + fanout.mqtt_str("v")  # user property
        + b"\x08"
        + fanout.mqtt_str("gochat/v1/resp/x")
        + b"\x09"
        + fanout.mqtt_str(b"login:00ff")
    )
    assert fanout.correlation_of(props) == b"login:00ff"
    assert fanout.correlation_of(b"\x01\x01") is None


def test_load_users_are_added_in_one_write_and_log_in(broker: Broker) -> None:
    broker.add_user("first")
    names = [f"load-{i:03d}" for i in range(200)]
    passwords = broker.add_load_users(names)
    assert broker.probe_login("load-000", passwords["load-000"]) == 0
    assert broker.probe_login("load-199", passwords["load-199"]) == 0
    assert broker.probe_login("load-199", passwords["load-000"]) != 0
    assert broker.probe_login("first", broker.password("first")) == 0
    with pytest.raises(ValueError, match="exists already"):
        broker.add_load_users(["load-007"])


def test_every_frame_reaches_every_listener_and_opens() -> None:
    config = fanout.Config(ladder=(6,), duration_s=1.0, workers=2, repeat=1, modes=("talk", "dtx"))
    with fanout.Bench(config) as bench:
        bench.setup()
        bench.grow(6)
        talk = bench.measure("talk")
        dtx = bench.measure("dtx")
    assert talk.listeners == dtx.listeners == 6
    # 4 speakers x 50 packets/s x 1 s, give or take a slot at the window's edges.
    assert 196 <= talk.sent <= 204
    assert dtx.sent < talk.sent / 2
    for step in (talk, dtx):
        assert step.received == step.expected, step  # nothing lost, nothing counted twice
        assert step.min_frames == step.sent  # each listener got each frame
        assert step.open_failed == 0
        assert not step.codes
    assert talk.opened >= talk.received // fanout.VERIFY_EVERY - 2
