"""Real PyAudio -> PortAudio -> ALSA on the file/null PCMs of hw_mocks/alsa/asoundrc.

No sound card is needed (CI has none): the capture PCM reads a raw file, the playback
PCM writes one. This proves that PortAudio lists PCMs defined in an ALSA config by name,
that our config opens through it, and that samples cross it unchanged.

ALSA reads its configuration when PortAudio initialises and PortAudio frees it again at
``terminate()``, so setting the environment before ``PyAudio()`` is enough.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyaudio
import pytest

from appliance.audio import check, tone
from appliance.audio.config import AudioConfig
from appliance.audio.engine import AudioEngine, capture_chain
from appliance.audio.opus import Decoder
from appliance.audio.port import AudioHooks
from appliance.protocol import topics
from appliance.protocol.voice import Opener

pytestmark = pytest.mark.alsa

ASOUNDRC = Path(__file__).resolve().parents[2] / "hw_mocks" / "alsa" / "asoundrc"
SYSTEM_CONF = Path(os.environ.get("ALSA_CONFIG_DIR", "/usr/share/alsa")) / "alsa.conf"
RATE = 48_000
BLOCK = 960


@pytest.fixture
def alsa_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The raw capture file (a 440 Hz tone, 2 s) and the playback file, wired in."""
    infile, outfile = tmp_path / "in.raw", tmp_path / "out.raw"
    tone.sine(440, 2 * RATE).astype("<i2").tofile(infile)
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"{SYSTEM_CONF}:{ASOUNDRC}")
    monkeypatch.setenv("GOCHAT_ALSA_INFILE", str(infile))
    monkeypatch.setenv("GOCHAT_ALSA_OUTFILE", str(outfile))
    return infile, outfile


@pytest.fixture
def pa(alsa_files: tuple[Path, Path]) -> Iterator[pyaudio.PyAudio]:
    instance = pyaudio.PyAudio()
    try:
        yield instance
    finally:
        instance.terminate()


def device_index(pa: pyaudio.PyAudio, name: str) -> int:
    for i in range(pa.get_device_count()):
        if pa.get_device_info_by_index(i)["name"] == name:
            return i
    names = [pa.get_device_info_by_index(i)["name"] for i in range(pa.get_device_count())]
    raise AssertionError(f"PortAudio does not list {name!r}; it lists {names}")


def test_portaudio_lists_the_named_pcms(pa: pyaudio.PyAudio) -> None:
    for name in ("gochat_test_in", "gochat_test_out", "default"):
        info = pa.get_device_info_by_index(device_index(pa, name))
        assert info["maxInputChannels"] >= 1
        assert info["maxOutputChannels"] >= 1
    assert pa.get_default_input_device_info()["name"] == "default"


def test_blocking_capture_reads_the_infile_exactly(
    pa: pyaudio.PyAudio, alsa_files: tuple[Path, Path]
) -> None:
    stream = pa.open(
        format=pyaudio.paInt16,
        channels=1,
        rate=RATE,
        input=True,
        input_device_index=device_index(pa, "gochat_test_in"),
        frames_per_buffer=BLOCK,
    )
    data = b"".join(stream.read(BLOCK) for _ in range(25))
    stream.stop_stream()
    stream.close()
    heard = np.frombuffer(data, "<i2")
    assert np.array_equal(heard, np.fromfile(alsa_files[0], "<i2")[: len(heard)])
    assert abs(tone.dominant_frequency(heard) - 440) < 1


def test_callback_capture_through_the_default_device(pa: pyaudio.PyAudio) -> None:
    blocks: list[bytes] = []
    done = threading.Event()

    def callback(
        in_data: bytes | None, frames: int, info: dict[str, float], status: int
    ) -> tuple[None, int]:
        assert in_data is not None
        blocks.append(in_data)
        if len(blocks) == 20:
            done.set()
            return None, pyaudio.paComplete
        return None, pyaudio.paContinue

    stream = pa.open(
        format=pyaudio.paInt16,
        channels=1,
        rate=RATE,
        input=True,
        frames_per_buffer=BLOCK,
        stream_callback=callback,
    )
    assert done.wait(5)
    stream.close()
    heard = np.frombuffer(b"".join(blocks), "<i2")
    assert abs(tone.dominant_frequency(heard) - 440) < 1


def test_playback_writes_what_was_played(
    pa: pyaudio.PyAudio, alsa_files: tuple[Path, Path]
) -> None:
    played = tone.sine(1000, RATE // 2)
    stream = pa.open(
        format=pyaudio.paInt16,
        channels=1,
        rate=RATE,
        output=True,
        output_device_index=device_index(pa, "gochat_test_out"),
        frames_per_buffer=BLOCK,
    )
    stream.write(played.tobytes())
    stream.stop_stream()
    stream.close()
    written = np.fromfile(alsa_files[1], "<i2")
    assert np.array_equal(written[: len(played)], played)
    assert not written[len(played) :].any()  # at most padding to a whole period
    assert abs(tone.dominant_frequency(written) - 1000) < 1


def test_our_device_lookup_and_checks_run_on_real_alsa(alsa_files: tuple[Path, Path]) -> None:
    assert "gochat_test_in" in check.device_table(pyaudio)  # type: ignore[arg-type]
    heard = check.record(pyaudio, "gochat_test_in", seconds=0.5)  # type: ignore[arg-type]
    assert abs(heard.dominant_hz - 440) <= 5 and heard.level_dbfs > -10
    check.play_tone(pyaudio, "gochat_test_out", hz=1000, seconds=0.2)  # type: ignore[arg-type]
    played = np.fromfile(alsa_files[1], dtype="<i2")
    assert abs(tone.dominant_frequency(played[: RATE // 5], RATE) - 1000) <= 5


def test_the_engine_captures_and_publishes_through_real_alsa(
    alsa_files: tuple[Path, Path],
) -> None:
    sent: list[bytes] = []
    got_enough = threading.Event()

    def publish(_room: str, payload: bytes) -> None:
        sent.append(payload)
        if len(sent) >= 50:
            got_enough.set()

    config = AudioConfig(input_device="gochat_test_in", output_device="gochat_test_out")
    hooks = AudioHooks(publish, lambda _problem: None, lambda: None)
    engine = AudioEngine(config, pyaudio, hooks, chain=capture_chain(config))  # type: ignore[arg-type]
    key = bytes(32)
    engine.set_voice_key("r", 1, key)
    engine.start()
    try:
        engine.start_publishing("r", "me")
        assert got_enough.wait(5)
    finally:
        engine.close()
    decoder = Decoder()
    opener = Opener()
    opener.add_key(1, key)
    topic = topics.audio("r", "me")
    packets = [opener.open(p, topic).opus for p in sent[5:45]]
    pcm = np.concatenate([decoder.decode(packet).copy() for packet in packets])
    assert abs(tone.dominant_frequency(pcm, RATE) - 440) <= 5
