"""Signal tools used by the tests and test-audio: tones, dominant frequency, levels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.audio import tone


@pytest.mark.parametrize("freq", [100.0, 440.0, 1000.0, 3150.5, 8000.0])
def test_dominant_frequency_is_accurate_to_a_hertz(freq: float) -> None:
    assert abs(tone.dominant_frequency(tone.sine(freq, 4800)) - freq) < 1.0


def test_dominant_frequency_of_silence_is_zero() -> None:
    assert tone.dominant_frequency(np.zeros(4800, np.int16)) == 0.0
    assert tone.dominant_frequency(np.zeros(2, np.int16)) == 0.0


def test_dominant_frequency_at_another_rate() -> None:
    assert abs(tone.dominant_frequency(tone.sine(440, 1600, rate=16_000), 16_000) - 440) < 1


def test_tone_generator_is_phase_continuous() -> None:
    gen = tone.ToneGenerator(440)
    blocks = np.concatenate([gen.read(n) for n in (960, 123, 960, 1)])
    assert np.array_equal(blocks, tone.sine(440, len(blocks)))


def test_levels() -> None:
    x = tone.sine(1000, 48_000, amplitude=0.5)
    assert abs(tone.rms(x) - 0.5 / math.sqrt(2)) < 1e-3
    assert abs(tone.dbfs(x) - 20 * math.log10(0.5 / math.sqrt(2))) < 0.05
    assert tone.dbfs(np.zeros(10, np.int16)) == -math.inf
    assert tone.rms(np.zeros(0, np.int16)) == 0.0
