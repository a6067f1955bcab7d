"""``gochat-appliance audio-devices`` and ``test-audio``: is the sound hardware there?

``audio-devices`` lists what PortAudio sees through ALSA (the names to put in the
``audio`` config section). ``test-audio`` plays a tone on the output device, then records
a few seconds from the input device and reports the level and the dominant frequency,
so a person can check speaker and microphone without joining a room.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio.devices import PyAudioModule, find_device, list_devices, quiet_stderr
from appliance.audio.profile import PLAYBACK_RATE
from appliance.audio.tone import dbfs, dominant_frequency, sine

BLOCK = 960


def device_table(module: PyAudioModule) -> str:
    """The device list as a small table."""
    with quiet_stderr():
        pa = module.PyAudio()
    try:
        devices = list_devices(pa)
    finally:
        pa.terminate()
    lines = [f"{'#':>3}  {'in':>3}  {'out':>3}  {'rate':>6}  name"]
    for d in devices:
        rate = int(d.default_sample_rate)
        lines.append(
            f"{d.index:>3}  {d.max_input_channels:>3}  {d.max_output_channels:>3}  {rate:>6}  "
            f"{d.name}"
        )
    if not devices:
        lines.append("  (no devices: is the sound card connected, and are we in 'audio'?)")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Recording:
    """What ``test-audio`` heard."""

    seconds: float
    level_dbfs: float
    dominant_hz: float


def play_tone(module: PyAudioModule, device: str, hz: float = 440.0, seconds: float = 1.0) -> None:
    """Play a tone on ``device`` (blocking)."""
    with quiet_stderr():
        pa = module.PyAudio()
    try:
        stream = pa.open(
            format=module.paInt16, channels=1, rate=PLAYBACK_RATE, output=True,
            output_device_index=find_device(pa, device, "output"), frames_per_buffer=BLOCK,
        )  # fmt: skip
        tone = sine(hz, int(PLAYBACK_RATE * seconds), PLAYBACK_RATE, 0.3)
        _fade(tone)
        for start in range(0, len(tone), BLOCK):
            stream.write(tone[start : start + BLOCK].tobytes())
        stream.stop_stream()
        stream.close()
    finally:
        pa.terminate()


def record(
    module: PyAudioModule, device: str, seconds: float = 3.0, wav: Path | None = None
) -> Recording:
    """Record ``seconds`` from ``device`` (blocking); optionally keep it as a WAV file."""
    with quiet_stderr():
        pa = module.PyAudio()
    try:
        stream = pa.open(
            format=module.paInt16, channels=1, rate=PLAYBACK_RATE, input=True,
            input_device_index=find_device(pa, device, "input"), frames_per_buffer=BLOCK,
        )  # fmt: skip
        chunks = [stream.read(BLOCK) for _ in range(int(PLAYBACK_RATE * seconds) // BLOCK)]
        stream.stop_stream()
        stream.close()
    finally:
        pa.terminate()
    pcm = np.frombuffer(b"".join(chunks), dtype=np.int16)
    if wav is not None:
        _write_wav(wav, pcm)
    return Recording(
        seconds=len(pcm) / PLAYBACK_RATE,
        level_dbfs=round(dbfs(pcm), 1),
        dominant_hz=round(dominant_frequency(pcm, PLAYBACK_RATE), 1) if pcm.any() else 0.0,
    )


def _fade(pcm: Any, ms: int = 10) -> None:
    n = PLAYBACK_RATE * ms // 1000
    ramp = np.linspace(0.0, 1.0, n)
    pcm[:n] = (pcm[:n] * ramp).astype(np.int16)
    pcm[-n:] = (pcm[-n:] * ramp[::-1]).astype(np.int16)


def _write_wav(path: Path, pcm: Any) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(PLAYBACK_RATE)
        out.writeframes(pcm.astype("<i2").tobytes())
