"""The jitter buffer on a fake clock: loss, reordering, duplicates, jitter, DTX, fades."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio import opus, tone
from appliance.audio.jitter import JitterBuffer, JitterConfig, StreamState
from appliance.protocol.frames import AudioFrame

Stream = Callable[..., list[AudioFrame]]
PERIOD = 0.020
CAP_MS = 200


@dataclass
class Run:
    """What a listener heard: the output (silence where pull gave None), and measurements."""

    pcm: np.ndarray
    blocks: list[np.ndarray | None]
    depths_ms: list[float] = field(default_factory=list)


def simulate(
    jb: JitterBuffer, arrivals: list[tuple[float, AudioFrame]], until: float, start: float = 0.0
) -> Run:
    """Deliver each frame at its arrival time and pull every 20 ms, on a fake clock.

    Records the depth after every push and every pull (so the cap is checked at its
    worst moments).
    """
    pending = sorted(arrivals, key=lambda a: a[0])
    blocks: list[np.ndarray | None] = []
    depths: list[float] = []
    k, now = 0, start
    while now < until:
        while k < len(pending) and pending[k][0] <= now:
            jb.push(pending[k][1], pending[k][0])
            depths.append(jb.depth_ms)
            k += 1
        block = jb.pull(now)
        blocks.append(None if block is None else block.copy())
        depths.append(jb.depth_ms)
        now += PERIOD
    pcm = np.concatenate([b if b is not None else np.zeros(jb.period, np.int16) for b in blocks])
    return Run(pcm, blocks, depths)


def on_time(frames: list[AudioFrame], start: float = 0.0, frame_ms: int = 20) -> list[tuple]:
    """Arrivals as a perfect network delivers them: one per packet duration."""
    return [(start + 0.001 + i * frame_ms / 1000, f) for i, f in enumerate(frames)]


def reference(frames: list[AudioFrame]) -> np.ndarray:
    with opus.Decoder() as dec:
        return np.concatenate([dec.decode(f.opus).copy() for f in frames])


def drain(jb: JitterBuffer, now: float = 0.0) -> np.ndarray:
    """Pull until the stream stops (everything was pushed already)."""
    blocks = []
    while (block := jb.pull(now)) is not None:
        blocks.append(block.copy())
    return np.concatenate(blocks)


def played_audio(run: Run) -> np.ndarray:
    return np.concatenate([b for b in run.blocks if b is not None])


# ---------------------------------------------------------------- the plain path


def test_a_perfect_network_plays_every_packet(opus_stream: Stream) -> None:
    frames = opus_stream(50)
    jb = JitterBuffer()
    run = simulate(jb, on_time(frames), until=1.3)
    s = jb.stats()
    assert (s.received, s.played, s.concealed, s.fec_recovered, s.late) == (50, 50, 0, 0, 0)
    assert abs(tone.dominant_frequency(run.pcm[4800:]) - 440) < 2
    assert s.target_ms == 20  # no jitter: one packet
    assert max(run.depths_ms) <= 40


def test_output_is_the_decoded_stream_with_a_fade_in(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    jb = JitterBuffer()
    heard = played_audio(simulate(jb, on_time(frames), until=0.6))
    ref = reference(frames)
    fade = 240  # 5 ms
    assert np.array_equal(heard[fade : len(ref) - fade], ref[fade:-fade])
    ramp = heard[:fade].astype(float) / np.where(ref[:fade] == 0, 1, ref[:fade])
    assert ramp[5] < 0.05
    assert ramp[-5] > 0.9
    assert np.all(np.abs(heard[:fade]) <= np.abs(ref[:fade]) + 1)


def test_pull_returns_none_while_idle() -> None:
    jb = JitterBuffer()
    assert jb.pull(0.0) is None
    assert jb.stats().state is StreamState.IDLE


def test_pulled_block_is_reused(opus_stream: Stream) -> None:
    jb = JitterBuffer()
    for f in opus_stream(5):
        jb.push(f, 0.0)
    first, second = jb.pull(0.0), jb.pull(0.02)
    assert first is second  # one preallocated block: copy before the next pull


# ---------------------------------------------------------------- talk spurts, DTX, fades


def test_end_flag_ends_the_stream_with_a_fade_and_no_concealment(opus_stream: Stream) -> None:
    frames = opus_stream(30)
    frames[-1] = replace(frames[-1], end=True)
    jb = JitterBuffer()
    run = simulate(jb, on_time(frames), until=1.0)
    s = jb.stats()
    assert s.state is StreamState.IDLE
    assert s.played == 30
    assert s.underrun_ms == 0
    heard = played_audio(run)
    assert len(heard) == 30 * 960
    assert np.abs(heard[-24:]).max() < 300  # faded to (almost) nothing
    assert np.abs(heard[-1200:-600]).max() > 10_000
    assert run.blocks[-1] is None


def test_dtx_gap_is_silence_not_loss(opus_stream: Stream) -> None:
    frames = opus_stream(40)
    # 20 packets, the sender goes quiet for 300 ms (DTX: timestamps jump, sequence
    # numbers do not), then 20 more packets.
    gap = 300 * 48
    sent = frames[:20] + [replace(f, timestamp=f.timestamp + gap) for f in frames[20:]]
    arrivals = [(0.001 + i * 0.02 + (0.3 if i >= 20 else 0.0), f) for i, f in enumerate(sent)]
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=1.5)
    s = jb.stats()
    assert (s.played, s.concealed, s.fec_recovered, s.late) == (40, 0, 0, 0)
    loud = np.flatnonzero(np.abs(run.pcm) > 2000)
    silences = np.diff(loud)
    assert 0.2 * 48_000 < silences.max() < 0.4 * 48_000  # the pause is kept


def test_short_dtx_gap_inside_the_buffer_keeps_its_length(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    frames[-1] = replace(frames[-1], end=True)
    gap = 40 * 48
    sent = frames[:10] + [replace(f, timestamp=f.timestamp + gap) for f in frames[10:]]
    arrivals = [(t + (0.04 if f.seq >= 10 else 0.0), f) for t, f in on_time(sent)]
    # three packets of delay: the packet after the pause is here before the pause ends
    jb = JitterBuffer(JitterConfig(min_packets=3))
    heard = played_audio(simulate(jb, arrivals, until=1.0))
    assert len(heard) == 20 * 960 + gap
    pause = heard[10 * 960 : 10 * 960 + gap]
    assert not pause[240:-240].any()
    # the sound fades into the pause (PLC carries the waveform on, no click) and back in
    assert abs(int(pause[0]) - int(heard[10 * 960 - 1])) < 3000
    assert np.abs(pause[200:240]).max() < 1000
    assert np.abs(heard[10 * 960 + gap : 10 * 960 + gap + 24]).max() < 500
    s = jb.stats()
    assert (s.concealed, s.underrun_ms) == (0, 0)


def test_an_over_deep_buffer_leaves_a_pause_shorter(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    frames[-1] = replace(frames[-1], end=True)
    gap = 100 * 48
    sent = frames[:10] + [replace(f, timestamp=f.timestamp + gap) for f in frames[10:]]
    jb = JitterBuffer(JitterConfig(cap_ms=1000))
    for f in sent:  # everything at once: far deeper than the target
        jb.push(f, 0.0)
    heard = drain(jb)
    assert len(heard) < 20 * 960 + gap  # the delay shrank in the pause
    assert jb.stats().concealed == 0


def test_real_opus_dtx_is_not_counted_as_loss() -> None:
    # A sender with DTX on does not publish "no need to transmit" packets (<= 2 bytes):
    # their sequence number is not used, their time passes.
    pcm = np.concatenate(
        [tone.sine(440, 960 * 30), np.zeros(960 * 60, np.int16), tone.sine(440, 960 * 30)]
    )
    frames, seq = [], 0
    with opus.Encoder(dtx=True) as enc:
        for i in range(len(pcm) // 960):
            packet = enc.encode(pcm[i * 960 : (i + 1) * 960])
            if len(packet) > 2:
                frames.append((0.001 + i * 0.02, AudioFrame(seq, i * 960, packet)))
                seq += 1
    assert seq < 100  # DTX did skip packets
    jb = JitterBuffer()
    run = simulate(jb, frames, until=2.6)
    s = jb.stats()
    assert s.concealed == 0
    assert s.fec_recovered == 0
    assert s.played == seq
    assert abs(tone.dominant_frequency(run.pcm[-40 * 960 : -20 * 960]) - 440) < 5


def test_a_long_silence_resyncs_and_fades_in_again(opus_stream: Stream) -> None:
    frames = opus_stream(40)
    arrivals = on_time(frames[:20]) + [(2.0 + i * 0.02, f) for i, f in enumerate(frames[20:])]
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=3.0)
    s = jb.stats()
    assert s.concealed == 0  # a late talk spurt is not a loss
    assert s.played == 40
    # the second spurt starts faded in, after the idle pause
    starts = [
        i
        for i in range(1, len(run.blocks))
        if run.blocks[i] is not None and run.blocks[i - 1] is None
    ]
    assert len(starts) >= 2
    second = run.blocks[starts[-1]]
    assert second is not None
    assert abs(int(second[0])) < 300


# ---------------------------------------------------------------- loss, FEC, PLC


def test_a_lost_packet_is_recovered_from_fec(opus_stream: Stream) -> None:
    frames = opus_stream(30)
    arrivals = [a for a in on_time(frames) if a[1].seq != 12]
    # deliver packet 13 early enough that it is here when 12's turn comes
    jb = JitterBuffer(JitterConfig(min_packets=2))
    simulate(jb, arrivals, until=0.8)
    s = jb.stats()
    assert s.fec_recovered == 1
    assert s.concealed == 0
    assert s.played == 29


def test_a_lost_packet_without_fec_is_concealed(opus_stream: Stream) -> None:
    frames = opus_stream(30, fec=False)
    arrivals = [a for a in on_time(frames) if a[1].seq != 12]
    jb = JitterBuffer(JitterConfig(min_packets=2))
    run = simulate(jb, arrivals, until=0.8)
    s = jb.stats()
    assert (s.fec_recovered, s.concealed, s.played) == (0, 1, 29)
    heard = played_audio(run)
    assert tone.rms(heard[12 * 960 : 13 * 960]) > 0.05  # PLC, not a hole


def test_twenty_percent_loss_is_concealed_or_recovered(opus_stream: Stream) -> None:
    frames = opus_stream(200)
    rnd = random.Random(7)
    lost = {f.seq for f in frames[1:-1] if rnd.random() < 0.2}
    arrivals = [a for a in on_time(frames) if a[1].seq not in lost]
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=4.5)
    s = jb.stats()
    assert s.concealed + s.fec_recovered == len(lost)
    assert s.fec_recovered > len(lost) // 3
    assert s.played == 200 - len(lost)
    heard = played_audio(run)
    assert abs(tone.dominant_frequency(heard) - 440) < 5
    # no holes: lost packets are filled with sound (only PLC over a burst of losses
    # fades out, as Opus attenuates long concealment)
    body = heard[960 : 199 * 960].reshape(-1, 960)
    quiet = np.abs(body).max(axis=1) < 1000
    assert quiet.mean() < 0.03


# ---------------------------------------------------------------- order, duplicates, lateness


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(list(range(10))))
def test_any_arrival_order_within_the_buffer_plays_in_order(order: list[int]) -> None:
    frames = _frames(10)
    jb = JitterBuffer()
    for i in order:
        jb.push(frames[i], 0.0)
    heard = drain(jb)
    assert np.array_equal(heard, _in_order_output())
    s = jb.stats()
    assert (s.played, s.late, s.duplicate, s.concealed) == (10, 0, 0, 0)


def test_duplicates_are_dropped_and_counted(opus_stream: Stream) -> None:
    frames = opus_stream(30)
    arrivals = on_time(frames) + [(t + 0.005, f) for t, f in on_time(frames)]
    arrivals += [(t + 0.5, f) for t, f in on_time(frames[:5])]  # long after playing
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=1.0)
    s = jb.stats()
    assert s.duplicate == 35
    assert s.played == 30
    assert s.late == 0
    ref = reference(frames)
    assert np.array_equal(played_audio(run)[240 : 30 * 960 - 240], ref[240:-240])


def test_a_packet_after_its_turn_is_late(opus_stream: Stream) -> None:
    frames = opus_stream(30)
    arrivals = [a for a in on_time(frames) if a[1].seq != 12] + [(0.5, frames[12])]
    jb = JitterBuffer(JitterConfig(min_packets=2))
    simulate(jb, arrivals, until=0.9)
    s = jb.stats()
    assert s.late == 1
    assert s.fec_recovered + s.concealed == 1
    assert s.played == 29


# ---------------------------------------------------------------- jitter, cap, adaptation


def jittery(
    frames: list[AudioFrame],
    jitter_s: float,
    loss: float,
    dup: float,
    *,
    seed: int,
    frame_ms: int = 20,
) -> list[tuple[float, AudioFrame]]:
    """Uniform 0..jitter_s delays, random loss and duplicates, reproducible by seed."""
    rnd = random.Random(seed)
    arrivals = []
    for i, f in enumerate(frames):
        if rnd.random() < loss:
            continue
        t = 0.001 + i * frame_ms / 1000 + rnd.uniform(0, jitter_s)
        arrivals.append((t, f))
        if rnd.random() < dup:
            arrivals.append((t + rnd.uniform(0, 0.05), f))
    return arrivals


def test_50ms_jitter_with_loss_and_duplicates_stays_under_the_cap(opus_stream: Stream) -> None:
    frames = opus_stream(250)
    arrivals = jittery(frames, 0.050, loss=0.2, dup=0.1, seed=3)
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=5.6)
    s = jb.stats()
    unique = len({f.seq for _, f in arrivals})
    assert max(run.depths_ms) <= CAP_MS
    assert s.concealed + s.fec_recovered >= 250 - unique - 2  # the last ones may just end
    assert s.fec_recovered > 0
    assert s.duplicate == len(arrivals) - unique
    # every packet received is played, or dropped and counted
    assert s.played + s.late + s.overflow_dropped + s.compressed == unique
    assert 10 < s.jitter_ms < 30  # RFC 3550 J of uniform 0-50 ms delays is about 17
    assert s.target_ms == 60  # 3 packets, the most the default allows
    assert np.mean(run.depths_ms[100:]) < 120  # adaptive, not parked at the cap


def test_jitter_without_loss_plays_everything(opus_stream: Stream) -> None:
    frames = opus_stream(250)
    jb = JitterBuffer()
    run = simulate(jb, jittery(frames, 0.050, loss=0, dup=0, seed=5), until=5.6)
    s = jb.stats()
    assert s.played + s.late == 250
    assert s.late <= 3
    assert max(run.depths_ms) <= CAP_MS


@pytest.mark.parametrize(("rate", "frame_ms"), [(16_000, 40), (48_000, 10), (48_000, 60)])
def test_other_packet_durations_and_rates(opus_stream: Stream, rate: int, frame_ms: int) -> None:
    n = 3000 // frame_ms
    frames = opus_stream(n, rate=rate, frame_ms=frame_ms)
    jb = JitterBuffer()
    arrivals = jittery(frames, 0.030, loss=0.1, dup=0, seed=11, frame_ms=frame_ms)
    run = simulate(jb, arrivals, until=3.5)
    s = jb.stats()
    assert max(run.depths_ms) <= CAP_MS
    assert s.played + s.late + s.overflow_dropped + s.compressed == len(arrivals)
    assert abs(tone.dominant_frequency(played_audio(run)) - 440) < 5


def test_the_cap_drops_the_oldest(opus_stream: Stream) -> None:
    frames = opus_stream(30)
    frames[-1] = replace(frames[-1], end=True)
    jb = JitterBuffer()
    for f in frames:  # 600 ms at once, nobody pulling (a stalled sound card)
        jb.push(f, 0.0)
        assert jb.depth_ms <= CAP_MS
    s = jb.stats()
    assert s.overflow_dropped >= 20
    heard = drain(jb)
    assert len(heard) == (30 - s.overflow_dropped) * 960
    assert jb.stats().played == 30 - s.overflow_dropped


def test_an_over_deep_buffer_shrinks_back(opus_stream: Stream) -> None:
    frames = opus_stream(150)
    # a 120 ms stall delivers a burst; afterwards the network is perfect again
    arrivals = [
        (0.001 + max(i * 0.02, 0.5 if 15 <= i < 25 else 0.0), f) for i, f in enumerate(frames)
    ]
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=3.5)
    s = jb.stats()
    assert s.compressed >= 1
    assert run.depths_ms[-30] <= 60


def test_a_restarted_sender_is_a_new_stream(opus_stream: Stream) -> None:
    frames = opus_stream(40)
    restarted = [
        replace(f, seq=(f.seq + 30_000) & 0xFFFF, timestamp=f.timestamp + 12345)
        for f in frames[20:]
    ]
    arrivals = on_time(frames[:20]) + [(0.5 + i * 0.02, f) for i, f in enumerate(restarted)]
    jb = JitterBuffer()
    simulate(jb, arrivals, until=1.5)
    s = jb.stats()
    assert s.played == 40
    assert s.late == 0


def test_reset_forgets_the_stream(opus_stream: Stream) -> None:
    jb = JitterBuffer()
    for f in opus_stream(5):
        jb.push(f, 0.0)
    jb.reset()
    assert jb.pull(0.0) is None
    assert jb.stats().received == 5


def test_sequence_and_timestamp_wrap_around(opus_stream: Stream) -> None:
    frames = [
        replace(
            f, seq=(f.seq + 65_530) & 0xFFFF, timestamp=(f.timestamp + 2**32 - 5 * 960) & 0xFFFFFFFF
        )
        for f in opus_stream(20)
    ]
    jb = JitterBuffer()
    simulate(jb, on_time(frames), until=0.6)
    s = jb.stats()
    assert (s.played, s.concealed, s.late) == (20, 0, 0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    loss=st.floats(0, 0.4),
    jitter_s=st.floats(0, 0.1),
    dup=st.floats(0, 0.3),
)
def test_invariants_under_any_network(seed: int, loss: float, jitter_s: float, dup: float) -> None:
    frames = _frames(60)
    arrivals = jittery(frames, jitter_s, loss, dup, seed=seed)
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=2.0)
    s = jb.stats()
    unique = len({f.seq for _, f in arrivals})
    assert max(run.depths_ms, default=0) <= CAP_MS
    assert s.played + s.late + s.overflow_dropped + s.compressed == unique
    assert s.duplicate == len(arrivals) - unique
    assert all(b is None or (b.dtype == np.int16 and len(b) == 960) for b in run.blocks)


def test_push_and_pull_from_two_threads(opus_stream: Stream) -> None:
    frames = opus_stream(200)
    jb = JitterBuffer(JitterConfig(cap_ms=1000))
    pulled = 0

    def network() -> None:
        for i, f in enumerate(frames):
            jb.push(f, i * 0.02)

    sender = threading.Thread(target=network)
    sender.start()
    for i in range(400):
        if jb.pull(i * 0.01) is not None:
            pulled += 1
    sender.join()
    s = jb.stats()
    assert s.received == 200
    assert s.played + s.overflow_dropped + s.compressed + s.late <= 200
    assert pulled > 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match=r"2\.5 ms"):
        JitterConfig(period_ms=7)
    with pytest.raises(ValueError, match="min_packets"):
        JitterConfig(min_packets=4, max_packets=3)


# ---------------------------------------------------------------- hypothesis helpers

_CACHE: dict[str, object] = {}


def _frames(n: int) -> list[AudioFrame]:
    """Frames for hypothesis tests (function-scoped fixtures do not mix with @given)."""
    key = f"frames{n}"
    if key not in _CACHE:
        with opus.Encoder(packet_loss_perc=20) as enc:
            pcm = tone.sine(440, 960 * n)
            _CACHE[key] = [
                AudioFrame(i, i * 960, enc.encode(pcm[i * 960 : (i + 1) * 960]), fec=True)
                for i in range(n)
            ]
    frames = _CACHE[key]
    assert isinstance(frames, list)
    return frames


def _in_order_output() -> np.ndarray:
    if "ordered" not in _CACHE:
        jb = JitterBuffer()
        for f in _frames(10):
            jb.push(f, 0.0)
        _CACHE["ordered"] = drain(jb)
    out = _CACHE["ordered"]
    assert isinstance(out, np.ndarray)
    return out


def test_an_undecodable_packet_is_counted_and_concealed(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    # valid frame header and TOC (20 ms), but a code-3 body libopus rejects
    frames[8] = replace(frames[8], opus=bytes([9 << 3 | 3, 0xC1, 0xFF, 0xFF]), fec=False)
    frames[-1] = replace(frames[-1], end=True)
    jb = JitterBuffer()
    heard = played_audio(simulate(jb, on_time(frames), until=0.6))
    s = jb.stats()
    assert (s.decode_errors, s.concealed, s.played) == (1, 1, 19)
    assert len(heard) == 20 * 960
    assert tone.rms(heard[8 * 960 : 9 * 960]) > 0.05


# ---------------------------------------------------------------- DTX pauses, resets, underruns


def _spurts(
    frames: list[AudioFrame], split: int, pause_s: float, wobble_s: float = 0.0
) -> list[tuple[float, AudioFrame]]:
    """Two talk spurts with a DTX pause between them (timestamps jump, sequence numbers
    do not); each arrival is late by ``wobble_s`` every other packet (a steady jitter)."""
    gap = round(pause_s * 48_000)
    arrivals = []
    for i, f in enumerate(frames):
        pause = pause_s if i >= split else 0.0
        late = wobble_s if i % 2 else 0.0
        sent = f if i < split else replace(f, timestamp=f.timestamp + gap)
        arrivals.append((0.001 + i * 0.02 + pause + late, sent))
    return arrivals


def _first_sound(jb: JitterBuffer, arrivals: list[tuple[float, AudioFrame]], until: float) -> list:
    """Pull every 10 ms (the engine's period); the times a spurt's first sample played."""
    pending, starts, k, now, sounding = sorted(arrivals, key=lambda a: a[0]), [], 0, 0.0, False
    while now < until:
        while k < len(pending) and pending[k][0] <= now:
            jb.push(pending[k][1], pending[k][0])
            k += 1
        block = jb.pull(now)
        loud = block is not None and np.abs(block).max() > 1000
        if loud and not sounding:
            first = int(np.flatnonzero(np.abs(block) > 1000)[0]) if block is not None else 0
            starts.append(now + first / 48_000)
        sounding = loud or (sounding and block is not None and np.abs(block).max() > 0)
        now = round(now + 0.010, 6)
    return starts


def test_a_talker_resumed_after_a_dtx_pause_plays_at_the_usual_delay(
    opus_stream: Stream,
) -> None:
    # 1 ms of jitter: rounded up to whole packets, the target was two packets (40 ms)
    # and every spurt after a pause waited a packet longer than the first one.
    frames = opus_stream(100)
    arrivals = _spurts(frames, 50, pause_s=0.6, wobble_s=0.001)
    jb = JitterBuffer(JitterConfig(period_ms=10))
    starts = _first_sound(jb, arrivals, until=3.0)
    s = jb.stats()
    assert len(starts) == 2, starts
    assert 0.5 < s.jitter_ms < 1.5  # the pause itself did not count as jitter
    assert s.target_ms <= 25  # one packet and 3 x J (in 2.5 ms steps), not two packets
    first_delay = starts[0] - arrivals[0][0]
    resumed_delay = starts[1] - arrivals[50][0]
    assert resumed_delay <= first_delay + 0.010  # within one playback block of the first
    assert resumed_delay <= 3 * s.jitter_ms / 1000 + 0.010
    assert (s.played, s.concealed, s.late) == (100, 0, 0)


def test_a_stream_starts_once_its_first_packet_waited_the_margin(opus_stream: Stream) -> None:
    jb = JitterBuffer(JitterConfig(period_ms=10, min_packets=2))  # target: 40 ms
    first = opus_stream(1)[0]
    jb.push(first, 0.0)
    assert jb.pull(0.010) is None  # waited 10 ms of the 20 over one packet
    assert jb.pull(0.020) is not None


def test_the_first_packet_after_silence_is_not_attenuated(opus_stream: Stream) -> None:
    # After concealment Opus ramps its next packet up from the concealed level (-5 dB);
    # a spurt after silence must come out as a fresh decoder makes it.
    frames = opus_stream(60)
    resumed_spurt = [replace(f, seq=f.seq - 20) for f in frames[40:]]  # 400 ms of DTX
    arrivals = on_time(frames[:20]) + on_time(resumed_spurt, start=0.8)
    jb = JitterBuffer()
    run = simulate(jb, arrivals, until=1.5)
    starts = [
        i
        for i in range(1, len(run.blocks))
        if run.blocks[i - 1] is None and run.blocks[i] is not None
    ]
    assert len(starts) == 2  # the first spurt, and the one after the stream went idle
    assert jb.stats().concealed == 0
    resumed = run.blocks[starts[-1]]
    assert resumed is not None
    with opus.Decoder() as fresh:
        expected = fresh.decode(frames[40].opus).copy()
    tail = slice(240, 960)  # after the 5 ms fade-in
    assert np.array_equal(resumed[tail], expected[tail])


def test_underrun_counts_waiting_for_a_late_packet_not_dtx_silence(opus_stream: Stream) -> None:
    frames = opus_stream(60)
    frames[-1] = replace(frames[-1], end=True)
    # a DTX pause of 300 ms after packet 20, then packet 40 is 60 ms late (a stall)
    arrivals = _spurts(frames, 20, pause_s=0.3)
    arrivals = [(t + (0.06 if f.seq >= 40 else 0.0), f) for t, f in arrivals]
    jb = JitterBuffer(JitterConfig(period_ms=10))
    simulate_10ms(jb, arrivals, until=2.0)
    s = jb.stats()
    assert s.concealed == 0
    assert 50 <= s.underrun_ms <= 70  # the stall, not the 300 ms pause


def simulate_10ms(jb: JitterBuffer, arrivals: list[tuple[float, AudioFrame]], until: float) -> None:
    pending, k, now = sorted(arrivals, key=lambda a: a[0]), 0, 0.0
    while now < until:
        while k < len(pending) and pending[k][0] <= now:
            jb.push(pending[k][1], pending[k][0])
            k += 1
        jb.pull(now)
        now = round(now + 0.010, 6)


def test_a_spurt_whose_first_packet_came_late_does_not_wait_the_margin_on_top(
    opus_stream: Stream,
) -> None:
    # Steady 2 ms jitter (a 6 ms margin), a DTX pause, and the resumed spurt's first
    # packet 6 ms late: it has used up most of the margin on its way already.
    frames = opus_stream(100)
    arrivals = _spurts(frames, 50, pause_s=0.6, wobble_s=0.002)
    on_time_at = arrivals[50][0]
    arrivals[50] = (on_time_at + 0.006, arrivals[50][1])
    jb = JitterBuffer(JitterConfig(period_ms=10))
    starts = _first_sound(jb, arrivals, until=3.0)
    s = jb.stats()
    assert len(starts) == 2
    margin = s.target_ms - 20
    assert 5 <= margin <= 10
    assert starts[1] - on_time_at <= margin / 1000 + 0.010  # one delay against the sender
    assert (s.played, s.concealed, s.late) == (100, 0, 0)
