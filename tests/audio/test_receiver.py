"""The receiver on a fake clock: real sealed frames and real libopus, mixed per 10 ms.
Silence costs no mix: with nobody heard, or every stream idle, the playback period is
the same silent block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from appliance.audio.receiver import PERIOD_SAMPLES, Receiver
from appliance.audio.tone import rms
from appliance.protocol import topics
from appliance.protocol.frames import AudioFrame
from appliance.protocol.voice import Sealer

Stream = Callable[..., list[AudioFrame]]
ROOM, BOB = "room1", "bob"
KEY = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Bob:
    """Bob's sender side: frames sealed for his audio topic."""

    def __init__(self) -> None:
        self.topic = topics.audio(ROOM, BOB)
        self.sealer = Sealer(self.topic)
        self.sealer.open_capture()
        self.sealer.set_key(1, KEY)

    def seal(self, f: AudioFrame) -> bytes:
        return self.sealer.seal(f.seq, f.timestamp, f.opus, fec=f.fec, end=f.end)

    def send(self, receiver: Receiver, clock: Clock, frames: list[AudioFrame]) -> None:
        """``frames``, sealed, arriving at ``receiver`` now."""
        for f in frames:
            receiver.on_frame(BOB, self.topic, self.seal(f), clock.now)


def listener() -> tuple[Receiver, Clock]:
    clock = Clock()
    receiver = Receiver(clock=clock)
    receiver.add_key(1, KEY, new_room=True)
    receiver.set_heard(frozenset({BOB}))
    return receiver, clock


def play(receiver: Receiver, clock: Clock, blocks: int) -> np.ndarray:
    out = []
    for _ in range(blocks):
        out.append(np.frombuffer(receiver.render(), dtype=np.int16))
        clock.now += 0.010
    return np.concatenate(out)


def test_a_muted_speaker_plays_out_to_the_end_flag(opus_stream: Stream) -> None:
    frames = opus_stream(10)
    frames[-1] = replace(frames[-1], end=True)
    receiver, clock = listener()
    bob = Bob()
    # The whole spurt is here, the last 60 ms still to be played ...
    bob.send(receiver, clock, frames)
    heard = play(receiver, clock, 14)
    receiver.set_heard(frozenset())  # ... when the room state says bob is muted
    heard = np.concatenate([heard, play(receiver, clock, 10)])
    loud = np.flatnonzero(np.abs(heard) > 1000)
    assert loud[-1] - loud[0] > 9.5 * 960  # all ten packets, not cut at the mute
    assert not heard[-960:].any()  # then silence: the stream is gone
    s = receiver.stats()
    assert (s.frames_received, s.frames_concealed) == (10, 0)


def test_frames_after_the_mute_are_dropped_while_the_stream_drains(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    receiver, clock = listener()
    bob = Bob()
    bob.send(receiver, clock, frames[:10])
    play(receiver, clock, 4)
    receiver.set_heard(frozenset())
    bob.send(receiver, clock, frames[10:])
    assert receiver.stats().dropped_unheard == 10
    played = play(receiver, clock, 40)  # plays out what it held, then runs dry and goes
    assert np.abs(played[: 10 * 960]).max() > 1000
    assert not played[-960:].any()
    assert receiver.stats().frames_received == 10


def test_a_speaker_heard_again_while_draining_keeps_playing(opus_stream: Stream) -> None:
    frames = opus_stream(30)
    receiver, clock = listener()
    bob = Bob()
    bob.send(receiver, clock, frames[:10])
    play(receiver, clock, 4)
    receiver.set_heard(frozenset())
    receiver.set_heard(frozenset({BOB}))  # unmuted before the old stream ran out
    bob.send(receiver, clock, frames[10:])
    s = receiver.stats()
    assert (s.frames_received, s.dropped_unheard) == (30, 0)


def test_late_frames_and_underruns_are_counted(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    receiver, clock = listener()
    bob = Bob()
    bob.send(receiver, clock, frames[:5])
    play(receiver, clock, 10 + 6)  # 100 ms played; waited 60 ms for packet 5
    bob.send(receiver, clock, frames[6:8])  # packet 5 is lost: 6 plays after concealment ...
    play(receiver, clock, 4)
    bob.send(receiver, clock, frames[5:6])  # ... 5 is late
    s = receiver.stats()
    assert s.late == 1
    assert 50 <= s.underrun_ms <= 70


def test_nobody_heard_is_one_silent_block() -> None:
    receiver = Receiver(clock=Clock())
    first, second = receiver.render(), receiver.render()
    assert first == bytes(PERIOD_SAMPLES * 2)
    assert second is first  # no mix and no copy for silence
    receiver.close()


def test_a_heard_speaker_plays_and_then_falls_silent(opus_stream: Stream) -> None:
    frames = opus_stream(10)
    frames[-1] = replace(frames[-1], end=True)
    receiver, clock = listener()
    bob = Bob()
    heard: list[np.ndarray] = []
    for i, f in enumerate(frames):
        bob.send(receiver, clock, [f])
        heard.append(play(receiver, clock, 2))  # two 10 ms playback periods per packet
        assert receiver.stats().frames_received == i + 1
    heard.append(play(receiver, clock, 20))  # the spurt has ended (end flag): idle
    played = np.concatenate(heard)
    assert rms(played[4 * PERIOD_SAMPLES : 16 * PERIOD_SAMPLES]) > 0.1  # the tone came through
    assert not played[-5 * PERIOD_SAMPLES :].any()
    assert receiver.stats().frames_concealed == 0
    receiver.close()
