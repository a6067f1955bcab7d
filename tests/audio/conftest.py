"""Fixtures for the audio tests: real libopus streams, encoded once per session.

``opus_stream(n, rate=48000, frame_ms=20, freq=440.0, fec=True)`` returns ``n`` frames
of a tone as a sender would publish them (sequence numbers from 0, timestamps in 48 kHz
units). Encoding costs ~0.2 ms a frame, so streams are cached by their arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import pytest

from appliance.audio import opus, tone
from appliance.protocol.frames import AudioFrame, timestamp_step

StreamFactory = Callable[..., list[AudioFrame]]


@lru_cache(maxsize=32)
def _encode(n: int, rate: int, frame_ms: int, freq: float, fec: bool) -> tuple[AudioFrame, ...]:
    with opus.Encoder(rate, frame_ms=frame_ms, fec=fec, packet_loss_perc=20) as enc:
        pcm = tone.sine(freq, enc.frame_samples * n, rate, amplitude=0.5)
        step = timestamp_step(frame_ms)
        frames = []
        for i in range(n):
            block = pcm[i * enc.frame_samples : (i + 1) * enc.frame_samples]
            frames.append(AudioFrame(i, i * step, enc.encode(block), fec=fec))
    return tuple(frames)


@pytest.fixture(scope="session")
def opus_stream() -> StreamFactory:
    """Factory of encoded tone streams (see the module docstring)."""

    def make(
        n: int, rate: int = 48_000, frame_ms: int = 20, freq: float = 440.0, fec: bool = True
    ) -> list[AudioFrame]:
        return list(_encode(n, rate, frame_ms, freq, fec))

    return make
