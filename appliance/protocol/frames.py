"""The audio frame codec (docs/protocol.md section 7).

One MQTT message carries one Opus packet behind an 8-byte header::

    0     version = 1
    1     flags: bit 0 FEC for the previous packet, bit 1 end of talk spurt
    2-3   sequence number, uint16 big-endian, wrapping
    4-7   timestamp in 48 kHz samples, uint32 big-endian, wrapping
    8-    one Opus packet of 10, 20, 40 or 60 ms, at most 1,275 bytes

Unpacking is strict: anything else raises :class:`FrameError`. The duration is read
from the Opus TOC byte (RFC 6716 section 3.1), so a packet of the wrong length never
reaches a decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 1
HEADER = struct.Struct(">BBHI")
HEADER_BYTES = HEADER.size
MAX_OPUS_BYTES = 1275
FLAG_FEC = 0x01
FLAG_END = 0x02
_KNOWN_FLAGS = FLAG_FEC | FLAG_END
ALLOWED_DURATIONS_MS = (10, 20, 40, 60)
TIMESTAMP_RATE = 48_000

# Frame size of each TOC configuration, in units of 0.5 ms (RFC 6716 table 2).
_SILK = (20, 40, 80, 120)
_HYBRID = (20, 40)
_CELT = (5, 10, 20, 40)
_FRAME_HALF_MS = _SILK * 3 + _HYBRID * 2 + _CELT * 4


class FrameError(ValueError):
    """A payload on an audio topic that is not a valid frame."""


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One Opus packet with its sequence number, timestamp and flags."""

    seq: int
    timestamp: int
    opus: bytes
    fec: bool = False
    end: bool = False

    @property
    def duration_ms(self) -> int:
        """The packet's duration, from its TOC byte."""
        return opus_duration_ms(self.opus)

    def pack(self) -> bytes:
        """The frame's wire bytes."""
        flags = (FLAG_FEC if self.fec else 0) | (FLAG_END if self.end else 0)
        return HEADER.pack(VERSION, flags, self.seq & 0xFFFF, self.timestamp & 0xFFFFFFFF) + (
            self.opus
        )


def pack(frame: AudioFrame) -> bytes:
    """The wire bytes of ``frame`` (validated: a bad packet raises :class:`FrameError`)."""
    _check_opus(frame.opus)
    return frame.pack()


def unpack(data: bytes) -> AudioFrame:
    """Parse wire bytes into an :class:`AudioFrame`; raises :class:`FrameError`."""
    if len(data) <= HEADER_BYTES:
        raise FrameError(f"frame too short: {len(data)} bytes")
    version, flags, seq, timestamp = HEADER.unpack_from(data)
    if version != VERSION:
        raise FrameError(f"unknown frame version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"reserved flag bits set: {flags:#04x}")
    opus = bytes(data[HEADER_BYTES:])
    _check_opus(opus)
    return AudioFrame(seq, timestamp, opus, bool(flags & FLAG_FEC), bool(flags & FLAG_END))


def opus_duration_ms(packet: bytes) -> int:
    """Duration of an Opus packet in whole ms; raises :class:`FrameError` if malformed."""
    if not packet:
        raise FrameError("empty Opus packet")
    toc = packet[0]
    half_ms = _FRAME_HALF_MS[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2:
            raise FrameError("Opus code-3 packet without a frame count")
        frames = packet[1] & 0x3F
        if frames == 0:
            raise FrameError("Opus code-3 packet with no frames")
    total = half_ms * frames
    if total % 2:
        raise FrameError("Opus packet of a fractional duration")
    return total // 2


def _check_opus(opus: bytes) -> None:
    if len(opus) > MAX_OPUS_BYTES:
        raise FrameError(f"Opus packet too long: {len(opus)} bytes")
    duration = opus_duration_ms(opus)
    if duration not in ALLOWED_DURATIONS_MS:
        raise FrameError(f"Opus packet of {duration} ms (10, 20, 40 or 60 allowed)")


def timestamp_step(duration_ms: int) -> int:
    """How far the timestamp advances for a packet of ``duration_ms``."""
    return duration_ms * TIMESTAMP_RATE // 1000


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number ``b`` to ``a`` on the uint16 ring."""
    return (a - b + 0x8000) % 0x10000 - 0x8000
