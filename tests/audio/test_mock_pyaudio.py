"""The fake PyAudio of hw_mocks: real-time pacing, WAV in and out, a vanishing device."""

from __future__ import annotations

import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from appliance.hw_mocks import audio as mock
from appliance.hw_mocks.audio import MockHardware, MockPyAudio

from appliance.audio import tone

RATE = 48_000
BLOCK = 960  # 20 ms


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2"), wav.getframerate()


def test_callback_output_is_paced_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "played.wav"
    pa = mock.mock_pyaudio(output=out).PyAudio()
    gen = tone.ToneGenerator(440)
    calls: list[float] = []

    def callback(
        in_data: bytes | None, frames: int, info: dict[str, float], status: int
    ) -> tuple[bytes, int]:
        assert in_data is None
        calls.append(time.monotonic())
        flag = mock.paComplete if len(calls) == 15 else mock.paContinue
        return gen.read(frames).tobytes(), flag

    start = time.monotonic()
    stream = pa.open(
        format=mock.paInt16,
        channels=1,
        rate=RATE,
        output=True,
        frames_per_buffer=BLOCK,
        stream_callback=callback,
    )
    while stream.is_active():
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    stream.close()
    pa.terminate()
    assert len(calls) == 15
    assert 0.28 <= elapsed < 1.0  # 15 x 20 ms in real time
    # on a schedule anchored at the start, late wake-ups do not add up
    assert abs((calls[-1] - calls[0]) / 14 - 0.02) < 0.004
    pcm, rate = read_wav(out)
    assert rate == RATE
    assert len(pcm) == 15 * BLOCK
    assert abs(tone.dominant_frequency(pcm) - 440) < 1


def test_callback_input_hears_the_tone() -> None:
    pa = mock.mock_pyaudio("tone:1000").PyAudio()
    heard: list[bytes] = []
    done = threading.Event()

    def callback(
        in_data: bytes | None, frames: int, info: dict[str, float], status: int
    ) -> tuple[None, int]:
        assert in_data is not None and len(in_data) == frames * 2
        heard.append(in_data)
        if len(heard) == 10:
            done.set()
            return None, mock.paComplete
        return None, mock.paContinue

    stream = pa.open(
        format=mock.paInt16,
        channels=1,
        rate=RATE,
        input=True,
        frames_per_buffer=BLOCK,
        stream_callback=callback,
    )
    assert done.wait(2)
    stream.close()
    pcm = np.frombuffer(b"".join(heard), "<i2")
    assert abs(tone.dominant_frequency(pcm) - 1000) < 1


def test_blocking_read_is_paced_and_write_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "played.wav"
    pa = mock.mock_pyaudio("tone:440", output=out).PyAudio()
    mic = pa.open(format=mock.paInt16, channels=1, rate=16_000, input=True, frames_per_buffer=320)
    start = time.monotonic()
    data = b"".join(mic.read(320) for _ in range(10))  # 200 ms at 16 kHz
    assert time.monotonic() - start >= 0.19
    assert abs(tone.dominant_frequency(np.frombuffer(data, "<i2"), 16_000) - 440) < 2
    speaker = pa.open(format=mock.paInt16, channels=1, rate=RATE, output=True)
    for _ in range(5):
        speaker.write(tone.sine(440, BLOCK).tobytes())
    pa.terminate()
    assert len(read_wav(out)[0]) == 5 * BLOCK


def test_wav_input_plays_once_then_silence(tmp_path: Path) -> None:
    source = mock.WavSource(write_wav(tmp_path / "in.wav", tone.sine(440, 1000)))
    first = source.read(800, RATE)
    rest = source.read(800, RATE)
    assert np.array_equal(first, tone.sine(440, 800))
    assert np.array_equal(rest[:200], tone.sine(440, 1000)[800:])
    assert not rest[200:].any()


def test_wav_input_loops_and_resamples_and_downmixes(tmp_path: Path) -> None:
    stereo = np.repeat(tone.sine(300, 16_000, rate=16_000), 2)
    path = write_wav(tmp_path / "in.wav", stereo, rate=16_000, channels=2)
    source = mock.source_from_spec(f"loop:{path}")
    heard = source.read(3 * RATE, RATE)  # 3 s from a 1 s file at 3x the rate
    assert tone.rms(heard[-RATE:]) > 0.3
    assert abs(tone.dominant_frequency(heard) - 300) < 1


def test_a_wav_is_resampled_once_not_per_block(tmp_path: Path) -> None:
    pcm = tone.sine(440, RATE)  # 1 s at 48 kHz, heard by a 16 kHz microphone
    source = mock.WavSource(write_wav(tmp_path / "in.wav", pcm))
    blocks = np.concatenate([source.read(320, 16_000) for _ in range(50)])
    assert source.resamplings == 1
    whole = np.interp(np.arange(16_000) * 3.0, np.arange(RATE), pcm.astype(np.float64))
    assert np.array_equal(blocks, np.round(whole).astype(np.int16))  # seamless blocks
    assert not source.read(320, 16_000).any()  # then silence
    assert source.resamplings == 1


def test_the_recording_is_readable_while_still_being_written(tmp_path: Path) -> None:
    recorder = mock.WavRecorder(tmp_path / "out.wav")
    for _ in range(3):
        recorder.write(tone.sine(440, BLOCK).tobytes())
        # a process killed now leaves a valid file with everything written so far
        pcm, _ = read_wav(tmp_path / "out.wav")
        assert len(pcm) == recorder.frames
    recorder.close()


def test_a_bounded_recording_is_a_ring_of_two_files_holding_the_latest_audio(
    tmp_path: Path,
) -> None:
    """keep_s = 4 blocks: the oldest blocks go, at least the last 4 stay, in order."""
    keep_s = 4 * BLOCK / RATE
    recorder = mock.WavRecorder(tmp_path / "out.wav", RATE, keep_s)
    blocks = [np.full(BLOCK, i, dtype=np.int16) for i in range(11)]
    for block in blocks:
        recorder.write(block.tobytes())
        current, _ = read_wav(tmp_path / "out.wav")
        assert len(current) == recorder.frames <= 4 * BLOCK  # readable at every moment
    recorder.close()
    previous, _ = read_wav(tmp_path / "out.1.wav")
    current, _ = read_wav(tmp_path / "out.wav")
    kept = np.concatenate([previous, current])
    # blocks 0-3 filled the first file, 4-7 the second (now out.1.wav), 8-10 the third
    assert np.array_equal(kept, np.concatenate(blocks[4:])) and len(kept) >= 4 * BLOCK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.1.wav", "out.wav"]


def test_a_bounded_recording_goes_on_across_runs(tmp_path: Path) -> None:
    """A second run keeps the first run's audio: it appends to out.wav (a half-written
    last sample dropped), and the ring still holds at least the last keep_s."""
    keep_s = 4 * BLOCK / RATE
    blocks = [np.full(BLOCK, i, dtype=np.int16) for i in range(1, 11)]
    first = mock.WavRecorder(tmp_path / "out.wav", RATE, keep_s)
    for block in blocks[:3]:
        first.write(block.tobytes())
    first.close()
    with (tmp_path / "out.wav").open("ab") as killed_mid_write:
        killed_mid_write.write(b"\x07")
    second = mock.WavRecorder(tmp_path / "out.wav", RATE, keep_s)
    assert second.frames == 3 * BLOCK
    for block in blocks[3:6]:
        second.write(block.tobytes())
    second.close()
    previous, _ = read_wav(tmp_path / "out.1.wav")
    current, _ = read_wav(tmp_path / "out.wav")
    assert np.array_equal(np.concatenate([previous, current]), np.concatenate(blocks[:6]))
    # A run at another rate cannot append: the earlier recording is set aside whole.
    third = mock.WavRecorder(tmp_path / "out.wav", 16_000, keep_s)
    third.write(np.full(320, 99, dtype=np.int16).tobytes())
    third.close()
    assert np.array_equal(read_wav(tmp_path / "out.1.wav")[0], current)
    assert read_wav(tmp_path / "out.wav")[1] == 16_000


def test_devices_look_like_portaudio() -> None:
    pa = MockPyAudio(MockHardware())
    names = [pa.get_device_info_by_index(i)["name"] for i in range(pa.get_device_count())]
    assert names == ["mock-mic", "mock-speaker", "default"]
    assert pa.get_default_input_device_info()["maxInputChannels"] == 1
    assert pa.get_default_output_device_info()["name"] == "default"
    with pytest.raises(OSError, match="Invalid device") as err:
        pa.get_device_info_by_index(7)
    assert err.value.errno == mock.paInvalidDevice
    with pytest.raises(OSError, match="channels"):
        pa.open(format=mock.paInt16, channels=2, rate=RATE, input=True)
    with pytest.raises(ValueError, match="input or output"):
        pa.open(format=mock.paInt16, channels=1, rate=RATE)
    with pytest.raises(OSError, match="Invalid output device"):
        pa.open(format=mock.paInt16, channels=1, rate=RATE, output=True, output_device_index=0)


def test_unplugging_kills_streams_until_plugged_again(tmp_path: Path) -> None:
    module = mock.mock_pyaudio("tone:440", output=tmp_path / "out.wav")
    pa = module.PyAudio()
    calls = 0

    def callback(
        in_data: bytes | None, frames: int, info: dict[str, float], status: int
    ) -> tuple[bytes, int]:
        nonlocal calls
        calls += 1
        return bytes(frames * 2), mock.paContinue

    stream = pa.open(
        format=mock.paInt16,
        channels=1,
        rate=RATE,
        input=True,
        output=True,
        frames_per_buffer=480,
        stream_callback=callback,
    )
    mic = pa.open(format=mock.paInt16, channels=1, rate=RATE, input=True)
    time.sleep(0.05)
    assert stream.is_active()
    module.hardware.unplug()
    time.sleep(0.05)
    frozen = calls
    time.sleep(0.05)
    assert calls == frozen  # the callback stopped
    assert not stream.is_active()
    with pytest.raises(OSError, match="Unanticipated host error") as err:
        mic.read(480)
    assert err.value.errno == mock.paUnanticipatedHostError
    with pytest.raises(OSError, match="Device unavailable") as err:
        pa.open(format=mock.paInt16, channels=1, rate=RATE, input=True)
    assert err.value.errno == mock.paDeviceUnavailable
    module.hardware.plug()
    with pytest.raises(OSError, match="Unanticipated host error"):
        stream.start_stream()  # a lost stream stays lost
    again = pa.open(format=mock.paInt16, channels=1, rate=RATE, input=True)
    assert len(again.read(480)) == 960
    pa.terminate()


def test_unplug_file_unplugs_one_side(tmp_path: Path) -> None:
    flag = tmp_path / "unplugged"
    module = mock.mock_pyaudio_from_env(
        {
            mock.ENV_INPUT: "tone:440",
            mock.ENV_OUTPUT: str(tmp_path / "out.wav"),
            mock.ENV_UNPLUG_FILE: str(flag),
        }
    )
    pa = module.PyAudio()
    flag.write_text("input")
    with pytest.raises(OSError, match="Device unavailable"):
        pa.open(format=module.paInt16, channels=1, rate=RATE, input=True)
    speaker = pa.open(format=module.paInt16, channels=1, rate=RATE, output=True)
    speaker.write(bytes(BLOCK * 2))
    flag.unlink()
    mic = pa.open(format=module.paInt16, channels=1, rate=RATE, input=True)
    assert len(mic.read(BLOCK)) == BLOCK * 2
    pa.terminate()


def test_a_raising_callback_aborts_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    pa = mock.mock_pyaudio().PyAudio()

    def callback(
        in_data: bytes | None, frames: int, info: dict[str, float], status: int
    ) -> tuple[None, int]:
        raise RuntimeError("boom")

    stream = pa.open(
        format=mock.paInt16,
        channels=1,
        rate=RATE,
        input=True,
        frames_per_buffer=480,
        stream_callback=callback,
    )
    deadline = time.monotonic() + 1
    while stream.is_active() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not stream.is_active()
    assert "boom" in capsys.readouterr().err
    pa.terminate()


def test_env_defaults_are_silence_and_no_recording() -> None:
    module = mock.mock_pyaudio_from_env({})
    assert isinstance(module.hardware.source, mock.SilenceSource)
    assert module.hardware.output_path is None
    with pytest.raises(ValueError, match="tone"):
        mock.source_from_spec("tone:loud")


# ---------------------------------------------------------------- the stand-in room


def _speaker_and_mic(
    module: mock.MockPyAudioModule, play: np.ndarray, seconds: float
) -> tuple[np.ndarray, int, float]:
    """Play ``play`` (48 kHz, after 200 ms of silence) while capturing at 48 kHz.

    Returns the capture, its first frame on the card's shared clock, and the shared
    frame at which the speaker started playing ``play`` (its DAC time).
    """
    pa = module.PyAudio()
    hw = module.hardware
    pos = 0
    lead = RATE // 5
    started: list[float] = []
    captured: list[bytes] = []
    firsts: list[float] = []

    def speaker(_in: bytes | None, n: int, info: dict[str, float], _s: int) -> tuple[bytes, int]:
        nonlocal pos
        block = np.zeros(n, dtype=np.int16)
        lo, hi = pos - lead, pos - lead + n
        if hi > 0:
            piece = play[max(lo, 0) : max(hi, 0)]
            block[n - len(piece) if lo < 0 else 0 :][: len(piece)] = piece
            if lo <= 0 < hi:
                started.append(info["output_buffer_dac_time"] + (0 - lo) / RATE)
        pos += n
        return block.tobytes(), mock.paContinue

    def mic(data: bytes | None, n: int, info: dict[str, float], _s: int) -> tuple[None, int]:
        assert data is not None
        if not firsts:
            firsts.append(info["input_buffer_adc_time"])
        captured.append(data)
        return None, mock.paContinue

    out = pa.open(
        RATE, 1, mock.paInt16, output=True, frames_per_buffer=480, stream_callback=speaker
    )
    inp = pa.open(RATE, 1, mock.paInt16, input=True, frames_per_buffer=960, stream_callback=mic)
    time.sleep(seconds)
    inp.close()
    out.close()
    pcm = np.frombuffer(b"".join(captured), dtype=np.int16)
    return pcm, hw.first_frame(firsts[0], RATE), hw.first_frame(started[0], RATE)


def test_the_room_echoes_the_speaker_into_the_mic_at_its_level_and_delay() -> None:
    module = mock.mock_pyaudio(echo_spec="delay_ms=30,gain_db=0,rt60_ms=100")
    half = RATE // 2
    t = np.arange(half) / RATE
    tone_part = np.sin(2 * np.pi * 500 * t) * 8000  # 0.5 s at -15 dBFS ...
    noise_part = np.random.default_rng(3).standard_normal(RATE) * 5000  # ... then 1 s of noise
    played = np.round(np.concatenate([tone_part, noise_part])).astype(np.int16)
    pcm, mic_first, play_first = _speaker_and_mic(module, played, 1.9)
    onset = int(np.flatnonzero(np.abs(pcm) > 50)[0]) + mic_first  # the echo's first sample
    delay_ms = (onset - play_first) * 1000 / RATE
    assert 29.5 <= delay_ms <= 32.0  # 30 ms after the DAC played it (direct path)
    at = onset - mic_first  # the echo's start in the capture
    steady_tone = pcm[at + RATE // 5 : at + half - RATE // 20]
    assert abs(tone.dominant_frequency(steady_tone, RATE) - 500) <= 5
    # A room colours one frequency by several dB; its energy shows on broadband sound.
    steady_noise = pcm[at + half + RATE // 5 : at + half + RATE * 9 // 10]
    level = 20 * np.log10(tone.rms(steady_noise) / tone.rms(played[half:]))
    assert abs(level) <= 1.5, f"echo at {level:.1f} dB of what was played"


def test_the_rooms_noise_is_heard_at_its_level_and_nothing_else_changes() -> None:
    module = mock.mock_pyaudio("tone:1000:0.1", noise_spec="pink:-40", room_seed=1)
    pa = module.PyAudio()
    stream = pa.open(RATE, 1, mock.paInt16, input=True, frames_per_buffer=960)
    pcm = np.frombuffer(stream.read(RATE // 2), dtype=np.int16).astype(np.float64)
    stream.close()
    t = np.arange(len(pcm)) / RATE
    clean = np.sin(2 * np.pi * 1000 * t) * 0.1 * 32767.0
    noise = pcm - clean
    level = 20 * np.log10(np.sqrt(np.mean(noise**2)) / 32768.0)
    assert abs(level - -40.0) <= 0.5


def test_the_room_is_off_by_default_and_from_the_environment() -> None:
    assert mock.mock_pyaudio().hardware.echo is None
    assert mock.mock_pyaudio().hardware.noise is None
    hw = mock.mock_pyaudio_from_env(
        {mock.ENV_ECHO: "delay_ms=30,gain_db=-3,rt60_ms=250", mock.ENV_NOISE: "hum:-50"}
    ).hardware
    assert hw.echo is not None and hw.echo.spec.delay_ms == 30
    assert hw.noise is not None and hw.noise.spec.kind == "hum"
    with pytest.raises(ValueError, match="echo"):
        mock.mock_pyaudio(echo_spec="delay_ms=30")
