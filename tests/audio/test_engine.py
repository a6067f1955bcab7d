"""The audio engine over the stand-in sound card: two engines joined by a direct
"network" (the MQTT path is tested end to end elsewhere)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from appliance.hw_mocks.audio import mock_pyaudio, read_wav_mono

from appliance.audio.config import AudioConfig
from appliance.audio.engine import AudioEngine, capture_chain
from appliance.audio.port import AudioHooks
from appliance.audio.tone import dominant_frequency, rms
from appliance.protocol import frames, topics
from appliance.protocol.voice import Opener

ROOM = "room1"
KEY = bytes(range(32))
"""The room's voice key: both engines hold it, as the server gives it to members."""


def unseal(payload: bytes) -> frames.AudioFrame:
    """One of alice's sealed frames, opened as a member would."""
    opener = Opener()
    opener.add_key(1, KEY)
    return opener.open(payload, topics.audio(ROOM, "alice")).audio()


class Wire:
    """Carries A's frames to B's receiver, like the broker would (and records them)."""

    def __init__(self) -> None:
        self.to: AudioEngine | None = None
        self.sent: list[bytes] = []

    def publish(self, room_id: str, payload: bytes) -> None:
        self.sent.append(payload)
        if self.to is not None:
            self.to.on_frame(room_id, "alice", payload, time.monotonic())


class Reports:
    """What the engine told the daemon about its devices (None: working again)."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.changed = threading.Event()

    def lost(self, problem: str) -> None:
        self.seen.append(problem)
        self.changed.set()

    def restored(self) -> None:
        self.seen.append(None)
        self.changed.set()


def engine(
    tmp_path: Path, name: str, wire: Wire, spec: str = "silence", **config: object
) -> tuple[AudioEngine, Reports, Path]:
    out = tmp_path / f"{name}.wav"
    reports = Reports()
    module = mock_pyaudio(spec, out, tmp_path / f"{name}.unplug")
    hooks = AudioHooks(wire.publish, reports.lost, reports.restored)
    settings = AudioConfig(**config)  # type: ignore[arg-type]
    eng = AudioEngine(settings, module, hooks, chain=capture_chain(settings))
    eng.set_voice_key(ROOM, 1, KEY)
    eng.start()
    return eng, reports, out


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("profile", ["default", "low-cpu"])
def test_a_tone_is_heard_and_a_mute_ends_the_spurt(tmp_path: Path, profile: str) -> None:
    wire = Wire()
    alice, _, _ = engine(tmp_path, "alice", wire, "tone:440", profile=profile)
    bob, _, bob_out = engine(tmp_path, "bob", wire)
    wire.to = bob
    try:
        bob.set_heard(frozenset({"alice"}))
        alice.start_publishing(ROOM, "alice")
        wait_for(lambda: bob.stats().frames_received >= 25)
        alice.stop_publishing()
        wait_for(lambda: unseal(wire.sent[-1]).end)
        sent = len(wire.sent)
        time.sleep(0.15)
        assert len(wire.sent) == sent  # capture closed: nothing after the last packet
    finally:
        alice.close()
        bob.close()
    pcm, rate = read_wav_mono(bob_out)
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    heard = pcm[loud[0] : loud[-1]]
    assert len(heard) > rate * 0.3
    assert abs(dominant_frequency(heard, rate) - 440) <= 5
    durations = {unseal(p).duration_ms for p in wire.sent}
    assert durations == ({20} if profile == "default" else {40})
    assert alice.stats().frames_sent == len(wire.sent)


def test_unheard_streams_are_dropped_and_counted(tmp_path: Path) -> None:
    wire = Wire()
    alice, _, _ = engine(tmp_path, "alice", wire, "tone:440")
    bob, _, bob_out = engine(tmp_path, "bob", wire)
    wire.to = bob
    try:
        bob.set_heard(frozenset())  # alice is a listener publishing anyway
        alice.start_publishing(ROOM, "alice")
        wait_for(lambda: len(wire.sent) >= 20)
        bob.on_frame(ROOM, "alice", b"\x09garbage", time.monotonic())
    finally:
        alice.close()
        bob.close()
    stats = bob.receiver.stats()
    assert stats.frames_received == 0 and stats.dropped_unheard >= 20
    pcm, _ = read_wav_mono(bob_out)
    assert rms(pcm) == 0


def test_a_lost_device_is_reported_and_reopened(tmp_path: Path) -> None:
    wire = Wire()
    alice, reports, _ = engine(tmp_path, "alice", wire, "tone:440")
    unplug = tmp_path / "alice.unplug"
    try:
        alice.start_publishing(ROOM, "alice")
        wait_for(lambda: len(wire.sent) >= 5)
        reports.changed.clear()
        unplug.write_text("")
        assert reports.changed.wait(5) and reports.seen[-1] is not None
        reports.changed.clear()
        unplug.unlink()
        assert reports.changed.wait(5) and reports.seen[-1] is None
        sent = len(wire.sent)
        wait_for(lambda: len(wire.sent) > sent + 5)  # publishing again after reopening
    finally:
        alice.close()


def test_a_device_missing_at_start_is_an_error_not_a_crash(tmp_path: Path) -> None:
    wire = Wire()
    alice, reports, _ = engine(tmp_path, "alice", wire, output_device="no-such-card")
    try:
        assert reports.changed.wait(5)
        assert reports.seen[-1] is not None and "no-such-card" in reports.seen[-1]
        alice.start_publishing(ROOM, "alice")  # capture is fine; playback keeps retrying
        wait_for(lambda: len(wire.sent) >= 3)
    finally:
        alice.close()


# ---------------------------------------------------------------- the hands-free chain

NO_CHAIN = {"echo_cancellation": False, "noise_suppression": False, "auto_gain": False}


def test_without_any_stage_there_is_no_chain_and_a_level_gate_reports(tmp_path: Path) -> None:
    wire = Wire()
    alice, _, _ = engine(tmp_path, "alice", wire, "tone:440", **NO_CHAIN)
    try:
        assert alice.chain is None
        idle = alice.stats()
        assert (idle.speaking, idle.input_level_dbfs) == (False, None)
        alice.start_publishing(ROOM, "alice")
        wait_for(lambda: len(wire.sent) >= 10)
        talking = alice.stats()
        assert talking.speaking
        assert talking.input_level_dbfs == pytest.approx(-9.0, abs=0.2)  # a half-scale sine
        assert talking.as_status()["input_level_dbfs"] == talking.input_level_dbfs
        alice.stop_publishing()
        wait_for(lambda: alice.stats().input_level_dbfs is None)
        assert not alice.stats().speaking
    finally:
        alice.close()


def test_the_chain_hears_exactly_what_the_speaker_played(tmp_path: Path) -> None:
    pytest.importorskip("pywebrtc_audio")
    wire = Wire()
    alice, _, _ = engine(tmp_path, "alice", wire, "tone:440")
    bob, _, bob_out = engine(tmp_path, "bob", wire)
    wire.to = bob
    chain = bob.chain
    assert chain is not None
    rendered: list[bytes] = []
    stamps: list[float | None] = []
    real_render = chain.render

    def render(pcm: np.ndarray, dac_time: float | None = None) -> None:
        rendered.append(pcm.tobytes())
        stamps.append(dac_time)
        real_render(pcm, dac_time)

    chain.render = render  # type: ignore[method-assign]
    try:
        bob.set_heard(frozenset({"alice"}))
        alice.start_publishing(ROOM, "alice")
        bob.start_publishing(ROOM, "bob")
        wait_for(lambda: bob.stats().frames_received >= 25)
        level = bob.stats().input_level_dbfs
        assert level is not None and -100.0 <= level <= 0.0
    finally:
        alice.close()
        bob.close()
    played, _ = read_wav_mono(bob_out)
    fed = np.frombuffer(b"".join(rendered), dtype=np.int16)
    assert len(played) > 0 and np.array_equal(fed[: len(played)], played)
    # ... stamped with when each block leaves the speaker, 10 ms apart (the card's clock)
    assert all(stamps) and np.allclose(np.diff(np.array(stamps[:20], float)), 0.01)


def test_without_the_webrtc_module_the_engine_runs_without_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "appliance.audio.processing", None)  # import fails
    wire = Wire()
    alice, _, _ = engine(tmp_path, "alice", wire, "tone:440")
    try:
        assert alice.chain is None
        assert [r.levelname for r in caplog.records if "hands-free" in r.message] == ["ERROR"]
        alice.start_publishing(ROOM, "alice")
        wait_for(lambda: len(wire.sent) >= 5)
        assert alice.stats().input_level_dbfs == pytest.approx(-9.0, abs=0.2)
    finally:
        alice.close()
