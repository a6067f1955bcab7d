"""Small signal tools: test tones, the dominant frequency of a block, levels.

Used by the tests, by the mock microphone (``hw_mocks.audio``) and by the daemon's
``test-audio`` command (play a tone, check what the microphone hears).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

RATE = 48_000
_FULL_SCALE = 32767.0

Int16Array = npt.NDArray[np.int16]


def sine(
    freq: float, samples: int, rate: int = RATE, amplitude: float = 0.5, phase: float = 0.0
) -> Int16Array:
    """``samples`` int16 samples of a sine at ``freq`` Hz and ``amplitude`` (0..1 of full)."""
    t = np.arange(samples, dtype=np.float64)
    wave = np.sin(2 * np.pi * freq * t / rate + phase) * (amplitude * _FULL_SCALE)
    return np.round(wave).astype(np.int16)


class ToneGenerator:
    """An endless sine read block by block with a continuous phase (no clicks)."""

    def __init__(self, freq: float, rate: int = RATE, amplitude: float = 0.5) -> None:
        self.freq = freq
        self.rate = rate
        self.amplitude = amplitude
        self._phase = 0.0
        self._step = 2 * math.pi * freq / rate

    def read(self, samples: int) -> Int16Array:
        """The next ``samples`` samples."""
        block = sine(self.freq, samples, self.rate, self.amplitude, self._phase)
        # Keep the phase small so float precision does not drift over hours.
        self._phase = math.fmod(self._phase + self._step * samples, 2 * math.pi)
        return block


def dominant_frequency(pcm: npt.NDArray[np.integer], rate: int = RATE) -> float:
    """The strongest frequency in ``pcm`` in Hz (0.0 for silence).

    A Hann window against leakage, then a parabola through the log magnitudes of the
    peak bin and its neighbours: accurate to well under 1 Hz for a clean tone of
    0.1 s, where the bins alone are 10 Hz apart.
    """
    if len(pcm) < 4:
        return 0.0
    x = pcm.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak = int(np.argmax(spectrum[1:])) + 1
    if spectrum[peak] <= 0.0:
        return 0.0
    offset = 0.0
    if peak + 1 < len(spectrum):
        a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
    return float((peak + offset) * rate / len(x))


def rms(pcm: npt.NDArray[np.integer]) -> float:
    """Root mean square as a fraction of full scale (0.0 for an empty block)."""
    if len(pcm) == 0:
        return 0.0
    x = pcm.astype(np.float64)
    return float(np.sqrt(np.mean(x * x)) / _FULL_SCALE)


def dbfs(pcm: npt.NDArray[np.integer]) -> float:
    """The RMS level in dB relative to full scale (-inf for digital silence)."""
    level = rms(pcm)
    return 20 * math.log10(level) if level > 0 else -math.inf
