"""The receiver on an injected clock: real Opus, real sealing, one jitter buffer per
speaker. Silence costs no mix: with nobody heard, or every stream idle, the playback
period is the same silent block."""

from __future__ import annotations

import numpy as np

from appliance.audio import opus
from appliance.audio.receiver import PERIOD_SAMPLES, Receiver
from appliance.audio.tone import rms
from appliance.protocol import topics
from appliance.protocol.frames import timestamp_step
from appliance.protocol.voice import Sealer

ROOM = "room1"
KEY = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def speaker_frames(user: str, count: int) -> list[bytes]:
    """``count`` sealed 20 ms frames of a 440 Hz tone, the last with the end flag."""
    topic = topics.audio(ROOM, user)
    sealer = Sealer(topic)
    sealer.set_key(1, KEY)
    encoder = opus.Encoder(48_000, frame_ms=20, bitrate=24_000, complexity=5, fec=True)
    t = np.arange(960 * count) / 48_000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    try:
        return [
            sealer.seal(i, i * timestamp_step(20), encoder.encode(pcm[i * 960 : (i + 1) * 960]),
                        end=i == count - 1)
            for i in range(count)
        ]  # fmt: skip
    finally:
        encoder.close()


def test_nobody_heard_is_one_silent_block() -> None:
    receiver = Receiver(clock=Clock())
    first, second = receiver.render(), receiver.render()
    assert first == bytes(PERIOD_SAMPLES * 2)
    assert second is first  # no mix and no copy for silence
    receiver.close()


def test_a_heard_speaker_plays_and_then_falls_silent() -> None:
    clock = Clock()
    receiver = Receiver(clock=clock)
    receiver.add_key(1, KEY, new_room=True)
    receiver.set_heard(frozenset({"bob"}))
    blocks: list[bytes] = []
    for i, wire in enumerate(speaker_frames("bob", 10)):
        receiver.on_frame("bob", topics.audio(ROOM, "bob"), wire, clock.now)
        for _ in range(2):  # two 10 ms playback periods per 20 ms packet
            blocks.append(receiver.render())
            clock.now += 0.010
        assert receiver.stats().frames_received == i + 1
    for _ in range(20):  # the spurt has ended (end flag): the stream idles
        blocks.append(receiver.render())
        clock.now += 0.010
    played = np.frombuffer(b"".join(blocks[4:16]), dtype=np.int16)
    assert rms(played) > 0.1  # the tone came through (of full scale)
    silent = blocks[-5:]
    assert all(block == bytes(PERIOD_SAMPLES * 2) for block in silent)
    assert receiver.stats().frames_concealed == 0
    receiver.close()
