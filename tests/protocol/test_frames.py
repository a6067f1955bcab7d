"""The audio frame codec (docs/protocol.md section 7): round trips and fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.audio.opus import Encoder
from appliance.audio.tone import sine
from appliance.protocol import frames
from appliance.protocol.frames import AudioFrame, FrameError

# TOC bytes (RFC 6716 3.1) of one-frame packets: config << 3 | code 0.
SILK_20MS = bytes([1 << 3])  # SILK NB 20 ms
CELT_10MS = bytes([18 << 3])  # CELT NB 10 ms
CELT_2_5MS = bytes([16 << 3])  # CELT NB 2.5 ms: not a duration the protocol allows

valid_opus = st.sampled_from(
    [
        SILK_20MS + b"\x01\x02",
        CELT_10MS + b"\xff",
        bytes([3 << 3]) + b"x" * 10,  # SILK NB 60 ms
        bytes([(18 << 3) | 1]) + b"ab",  # code 1: two CELT 10 ms frames, 20 ms
        bytes([(18 << 3) | 3, 4]) + b"abcd",  # code 3: four CELT 10 ms frames, 40 ms
    ]
)


@given(
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFF_FFFF),
    opus=valid_opus | st.binary(min_size=1, max_size=1274).map(lambda b: SILK_20MS + b),
    fec=st.booleans(),
    end=st.booleans(),
)
def test_pack_then_unpack_is_the_identity(
    seq: int, ts: int, opus: bytes, fec: bool, end: bool
) -> None:
    frame = AudioFrame(seq, ts, opus, fec=fec, end=end)
    wire = frames.pack(frame)
    assert len(wire) == 8 + len(opus)
    assert frames.unpack(wire) == frame


@given(st.binary(max_size=1400))
def test_unpack_accepts_or_raises_frame_error_only(data: bytes) -> None:
    try:
        frame = frames.unpack(data)
    except FrameError:
        return
    assert frame.pack() == data  # whatever parses, re-packs to the same bytes


def test_header_layout_is_big_endian() -> None:
    wire = AudioFrame(0x0102, 0x03040506, SILK_20MS, fec=True, end=True).pack()
    assert wire[:8] == bytes([1, 0b11, 1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "too short"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00", "too short"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00" + SILK_20MS, "version"),
        (b"\x01\x04\x00\x00\x00\x00\x00\x00" + SILK_20MS, "reserved"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00" + CELT_2_5MS, "fractional"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00" + bytes([(18 << 3) | 3, 3]), "30 ms"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00" + SILK_20MS + b"x" * 1275, "too long"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00" + bytes([3]), "frame count"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00" + bytes([3, 0]), "no frames"),
    ],
)
def test_bad_frames_are_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        frames.unpack(data)


@pytest.mark.parametrize(("rate", "ms"), [(48_000, 10), (48_000, 20), (48_000, 40), (48_000, 60),
                                          (16_000, 20), (16_000, 40)])  # fmt: skip
def test_real_opus_packets_report_their_duration(rate: int, ms: int) -> None:
    with Encoder(rate, frame_ms=ms) as encoder:
        packet = encoder.encode(sine(440, rate * ms // 1000, rate))
    assert frames.opus_duration_ms(packet) == ms
    assert frames.unpack(frames.pack(AudioFrame(1, 2, packet))).duration_ms == ms


@given(st.integers(0, 0xFFFF), st.integers(-0x7FFF, 0x7FFF))
def test_sequence_distance_wraps(base: int, step: int) -> None:
    assert frames.seq_delta((base + step) & 0xFFFF, base) == step


def test_timestamp_steps_count_48_khz_samples() -> None:
    assert [frames.timestamp_step(ms) for ms in (10, 20, 40, 60)] == [480, 960, 1920, 2880]
    assert struct.calcsize(">BBHI") == frames.HEADER_BYTES
