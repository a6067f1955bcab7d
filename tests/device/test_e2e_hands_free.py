"""The hands-free chain end to end: a listener brought on stage hears the host through
its own speaker, and must not send that echo back into the room.

Real broker and server, appliances in process on the stand-in sound card; the
listener's card sits in a stand-in room whose echo path returns everything its speaker
plays to its microphone at 0 dB. What the listener publishes is taken just before the
encoder (the chain's output, sample for sample against what its microphone heard).
"""

from __future__ import annotations

import threading
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from appliance.hw_mocks.room import dbfs, speech_like

from testbed.daemons import InProcessDaemon, wait_until
from testbed.server import RunningServer

pytest.importorskip("pywebrtc_audio", reason="pywebrtc-audio is in the audio extra")

RATE = 48_000
ECHO = "delay_ms=30,gain_db=0,rt60_ms=250"
SETTLE_S = 3.0  # the echo canceller converges within this
MEASURE_S = 3.0


class Tap:
    """What a daemon's microphone heard and what its engine sent, block for block."""

    def __init__(self, device: InProcessDaemon) -> None:
        audio = device.daemon.audio
        assert audio is not None
        hardware: Any = audio._pa_module.hardware
        self.heard: list[bytes] = []
        self.sent: list[np.ndarray] = []
        self._lock = threading.Lock()
        hear, on_block = hardware.hear, audio.sender.on_block

        def tapped_hear(n: int, rate: int, at: int) -> bytes:
            data: bytes = hear(n, rate, at)
            with self._lock:
                self.heard.append(data)
            return data

        def tapped_on_block(pcm: np.ndarray) -> bool:
            with self._lock:
                self.sent.append(pcm.copy())
            return bool(on_block(pcm))

        hardware.hear = tapped_hear
        audio.sender.on_block = tapped_on_block

    def seconds_sent(self) -> float:
        with self._lock:
            return sum(len(p) for p in self.sent) / RATE

    def levels(self) -> tuple[float, float]:
        """(mic, sent) dBFS over the measuring window after the settling time."""
        with self._lock:
            mic = np.frombuffer(b"".join(self.heard), dtype=np.int16)
            sent = np.concatenate(self.sent)
        lo, hi = int(SETTLE_S * RATE), int((SETTLE_S + MEASURE_S) * RATE)
        assert len(mic) >= hi and len(sent) >= hi
        return dbfs(mic[lo:hi]), dbfs(sent[lo:hi])


def speech_wav(path: Path) -> Path:
    pcm = speech_like(8.0, RATE, seed=4, level_dbfs=-20.0)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm.tobytes())
    return path


def echo_on_stage(
    daemons: Callable[..., InProcessDaemon], tmp_path: Path, **switches: bool
) -> tuple[float, float]:
    """The host speaks; pi-ann, silent in an echoing room, is brought on stage."""
    voice = speech_wav(tmp_path / "voice.wav")
    host = daemons("pi-host", mode="host", subject="Echo",
                   audio={"mock_input": f"loop:{voice}"})  # fmt: skip
    ann = daemons("pi-ann", mode="join", audio={"mock_echo": ECHO, **switches})
    tap = Tap(ann)
    ann.press("raise_hand")
    ann.wait_status(lambda s: s["hand_raised"])
    host.press("accept")  # the hand is up: pi-ann accepts at once, mic on
    ann.wait_status(lambda s: s["role"] == "speaker" and s["mic_on"])
    wait_until(tap.seconds_sent, lambda s: s >= SETTLE_S + MEASURE_S, 15, "ann's stream")
    status = ann.status["audio"]
    assert status["input_level_dbfs"] is not None  # publishing
    ann.stop()
    host.stop()
    return tap.levels()


@pytest.mark.timeout(60)
def test_a_listener_on_stage_does_not_send_the_host_back(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    mic, sent = echo_on_stage(daemons, tmp_path)
    assert mic > -30.0, f"the echo never reached the microphone ({mic:.1f} dBFS)"
    assert mic - sent >= 25.0, f"echo {mic:.1f} dBFS, sent {sent:.1f} dBFS"


@pytest.mark.timeout(60)
def test_without_echo_cancellation_the_host_comes_back(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    # Automatic gain off too: it would raise the echo (taken for a talker) by several dB,
    # and this measures what gets through, not how loud the AGC makes it.
    mic, sent = echo_on_stage(daemons, tmp_path, echo_cancellation=False, auto_gain=False)
    assert mic > -30.0, f"the echo never reached the microphone ({mic:.1f} dBFS)"
    assert abs(sent - mic) <= 3.0, f"echo {mic:.1f} dBFS, sent {sent:.1f} dBFS"
