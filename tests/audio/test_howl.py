"""The howl guard (appliance.audio.howl): feedback building up is cut and counted; a voice,
a steady test tone and noise are left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from appliance.hw_mocks.audio import read_wav_mono
from appliance.hw_mocks.room import dbfs, speech_like, to_int16

from appliance.audio.config import HowlTuning
from appliance.audio.howl import HowlGuard

RATE = 48_000
BLOCK = 960  # 20 ms


def guarded(pcm: np.ndarray, rate: int = RATE, block: int = BLOCK) -> tuple[np.ndarray, HowlGuard]:
    guard = HowlGuard(rate, block, HowlTuning())
    out = pcm[: len(pcm) // block * block].copy()
    for at in range(0, len(out), block):
        guard.process(out[at : at + block])
    return out, guard


def building_tone(seconds: float, hz: float, rate: int = RATE) -> np.ndarray:
    """A loop ringing up: a tone growing 30 dB a second from -60 dBFS, clipped at -3."""
    t = np.arange(int(seconds * rate)) / rate
    level_db = np.minimum(-60 + 30 * t, -3.0)
    return 32768 * np.sqrt(2) * 10 ** (level_db / 20) * np.sin(2 * np.pi * hz * t)


def test_feedback_building_up_is_cut_within_a_second_and_counted_once() -> None:
    voice = speech_like(4.0, RATE, seed=3, level_dbfs=-26).astype(float)
    pcm = to_int16(voice + building_tone(4.0, 1_063.0))
    out, guard = guarded(pcm)
    assert guard.events == 1
    late = slice(int(2.5 * RATE), None)  # the tone has reached -3 dBFS by 2 s
    assert dbfs(pcm[late]) > -6
    assert dbfs(out[late]) < dbfs(pcm[late]) - 25


def test_the_cut_is_lifted_once_the_tone_is_gone() -> None:
    pcm = to_int16(np.concatenate([building_tone(2.0, 1_964.0), np.zeros(3 * RATE)]))
    voice = speech_like(1.0, RATE, seed=5, level_dbfs=-20)
    pcm[-RATE:] = voice
    out, guard = guarded(pcm)
    assert guard.events == 1 and not guard.cutting
    assert dbfs(out[-RATE:]) == pytest.approx(dbfs(voice), abs=0.5)


@pytest.mark.parametrize("rate", [48_000, 16_000])
def test_voices_a_steady_tone_and_noise_are_left_alone(rate: int) -> None:
    t = np.arange(3 * rate) / rate
    for pcm in (
        speech_like(10.0, rate, seed=8, level_dbfs=-18),
        to_int16(0.3 * 32768 * np.sin(2 * np.pi * 440 * t)),  # a test tone, at once full
        to_int16(np.random.default_rng(2).standard_normal(3 * rate) * 3000),
    ):
        out, guard = guarded(pcm, rate, rate // 50)
        assert guard.events == 0
        assert np.array_equal(out, pcm[: len(out)])


def test_spoken_sentences_are_left_alone(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    text = "Good morning everyone. Aaah, well, hmm. Welcome to the morning room, how are you?"
    for voice in ("en-us", "en-gb+f3"):
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
        pcm, rate = read_wav_mono(wav)
        _, guard = guarded(pcm, rate, rate // 50)
        assert guard.events == 0, voice
