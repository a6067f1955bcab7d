"""Voice end to end: real broker, real server, appliances on the stand-in sound card.

A speaker's mock microphone hears a tone; a listener's mock speaker is recorded to a
WAV file, which is then checked for that tone (or for silence).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from appliance.hw_mocks.audio import read_wav_mono

from appliance.audio.opus import Encoder
from appliance.audio.tone import ToneGenerator, dominant_frequency, rms
from appliance.protocol import topics
from appliance.protocol.frames import AudioFrame
from testbed import Broker
from testbed.daemons import CoapClient, InProcessDaemon, expect_leds, wait_until
from testbed.server import RunningServer, connect

IN_ROOM_MIC = {"status": "on", "hand": "off", "invite": "off", "mic": "on"}


def received(device: InProcessDaemon) -> int:
    return int(device.status["audio"]["frames_received"])


def heard_segment(path: Path) -> tuple[np.ndarray, int]:
    """The part of a recording between its first and last clearly audible sample."""
    pcm, rate = read_wav_mono(path)
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    assert len(loud) > 0, f"{path.name}: nothing audible"
    return pcm[loud[0] : loud[-1]], rate


@pytest.mark.parametrize("profile", ["default", "low-cpu"])
def test_a_speakers_tone_is_heard_by_a_listener(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    coap: CoapClient,
    tmp_path: Path,
    profile: str,
) -> None:
    heard = tmp_path / "ann.wav"
    host = daemons("pi-host", mode="host", subject="Voice",
                   audio={"mock_input": "tone:440", "profile": profile})  # fmt: skip
    ann = daemons("pi-ann", mode="join", audio={"mock_output": str(heard)})
    wait_until(lambda: received(ann), lambda n: n >= 40, 10, "frames at ann")
    status = coap.get(host.coap_port, "/status").body  # the counters move over CoAP too
    assert status["audio"]["frames_sent"] > 0
    ann_status = coap.get(ann.coap_port, "/status").body["audio"]
    assert ann_status["frames_received"] >= 40 and ann_status["frames_sent"] == 0
    ann.stop()
    pcm, rate = heard_segment(heard)
    assert len(pcm) >= rate // 2
    assert abs(dominant_frequency(pcm, rate) - 440) <= 5


def test_a_muted_speaker_is_silence_at_the_listener(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    heard = tmp_path / "ann.wav"
    host = daemons("pi-host", mode="host", subject="Mute",
                   audio={"mock_input": "tone:440"})  # fmt: skip
    ann = daemons("pi-ann", mode="join", audio={"mock_output": str(heard)})
    wait_until(lambda: received(ann), lambda n: n >= 25, 10, "frames at ann")
    host.press("mute")
    expect_leds([(host, {**IN_ROOM_MIC, "mic": "off"})])
    audio = host.daemon.audio
    assert audio is not None
    sent = audio.stats().frames_sent
    before = len(read_wav_mono(heard)[0])  # everything up to now may hold the tone's tail
    wait_until(lambda: len(read_wav_mono(heard)[0]) - before, lambda n: n >= 48_000, 5, "1 s more")
    ann.stop()
    assert audio.stats().frames_sent == sent  # capture is closed
    after, _ = read_wav_mono(heard)
    assert rms(after[before + 4_800 :]) == 0  # 100 ms for the fade-out, then nothing


def test_a_rogue_listeners_stream_is_never_played(
    gochat_server: RunningServer,
    broker: Broker,
    daemons: Callable[..., InProcessDaemon],
    tmp_path: Path,
) -> None:
    heard = tmp_path / "host.wav"
    host = daemons("pi-host", mode="host", subject="Rogue", audio={"mock_output": str(heard)})
    rogue = connect(broker, "rogue")
    try:
        rogue.call("login_room", room_id=host.status["room_id"])
        topic = topics.audio(host.status["room_id"], "rogue")
        tone, encoder = ToneGenerator(1000, 48_000), Encoder(frame_ms=20)
        for seq in range(100):  # a listener publishing anyway (the ACL lets it write)
            packet = encoder.encode(tone.read(960))
            rogue.publish_raw(topic, AudioFrame(seq, seq * 960, packet).pack(), qos=0)
        rogue.call("heartbeat")  # the frames were sent before this answer
        audio = host.daemon.audio
        assert audio is not None
        wait_until(lambda: audio.receiver.stats().dropped_unheard, lambda n: n >= 100, 5, "drops")
    finally:
        rogue.close()
    assert received(host) == 0
    host.stop()
    assert rms(read_wav_mono(heard)[0]) == 0


def test_a_lost_sound_card_blinks_the_error_and_comes_back(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    unplug = tmp_path / "unplug"
    host = daemons("pi-host", mode="host", subject="Unplug",
                   audio={"mock_input": "tone:440", "mock_unplug_file": str(unplug)})  # fmt: skip
    expect_leds([(host, IN_ROOM_MIC)])
    unplug.write_text("")
    expect_leds([(host, {**IN_ROOM_MIC, "status": "blink-fast"})])
    assert host.status["connection"] == "online"  # only the sound is affected
    unplug.unlink()
    expect_leds([(host, IN_ROOM_MIC)])
    sent = host.status["audio"]["frames_sent"]
    wait_until(lambda: host.status["audio"]["frames_sent"], lambda n: n > sent + 10, 5, "resent")


def test_status_audio_has_exactly_the_documented_keys(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], coap: CoapClient
) -> None:
    host = daemons("pi-host", mode="host", subject="Keys")
    body = coap.get(host.coap_port, "/status").body
    assert set(body["audio"]) == {
        "frames_sent", "frames_received", "frames_concealed", "frames_rejected", "jitter_ms",
        "underrun_ms", "late_frames", "speaking", "input_level_dbfs", "howl_events",
    }  # fmt: skip
    json.dumps(body)  # plain JSON
