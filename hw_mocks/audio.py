"""A fake PyAudio: the subset of its API the appliance uses, paced in real time.

The sound card is the only thing faked. The microphone hears an :class:`InputSource`
(silence, a tone, or a WAV file); whatever the speaker plays is recorded to a WAV file.
Streams behave like PortAudio's: a callback stream calls
``callback(in_data, frame_count, time_info, status_flags) -> (out_data, flag)`` from its
own thread every ``frames_per_buffer / rate`` seconds on a monotonic schedule (anchored
at start, so it never drifts); a blocking stream's ``read``/``write`` wait for the
device clock. Errors are raised as PyAudio raises them: ``OSError(pa_error_code, text)``.

Choices (documented because tests rely on them):

* A WAV input plays **once, then silence** (a microphone in a quiet room), unless
  written ``loop:<path>``. Its samples are mixed to mono and resampled (linearly) to the
  stream's rate, once per rate: every block is then a slice (resampling the whole file
  for each block cost the capture thread more than the Opus encoder).
* The output WAV (16-bit mono at the first output stream's rate, 48 kHz normally) is
  written **incrementally**: after every block its header is rewritten with the current
  sizes and the file is flushed, so a process killed at any moment leaves a readable
  file holding all audio but at most the block in flight.
* ``unplug()`` makes the device vanish: running streams stop calling back,
  ``is_active()`` turns false, ``read``/``write`` raise ``OSError(-9999, "Unanticipated
  host error")`` and ``open`` raises ``OSError(-9985, "Device unavailable")`` until
  ``plug()``. As with PortAudio, streams lost that way stay dead (reopen them), and the
  device list is the one seen when ``PyAudio()`` was made.

For ``--mock-hw``, :func:`mock_pyaudio_from_env` builds the whole thing from
``GOCHAT_AUDIO__MOCK_INPUT`` (``silence``, ``tone:440[:amplitude]``, ``<file.wav>`` or
``loop:<file.wav>``), ``GOCHAT_AUDIO__MOCK_OUTPUT`` (a WAV path; unset: played audio is
discarded; ``GOCHAT_AUDIO__MOCK_OUTPUT_KEEP_S`` bounds it, :class:`WavRecorder`),
``GOCHAT_AUDIO__MOCK_UNPLUG_FILE`` (a path: while it exists the device is
unplugged; if it contains ``input`` or ``output`` only that side is) and the stand-in
room, ``GOCHAT_AUDIO__MOCK_ECHO`` and ``GOCHAT_AUDIO__MOCK_NOISE`` (:mod:`.room`; both
``off`` by default).

The stand-in room: with an :class:`~.room.EchoPath`, what the speaker plays (48 kHz
streams) is heard back by the microphone; with a :class:`~.room.NoiseSource`, noise is
added to it. Both sides of the card count frames on **one shared sample clock** whose
frame 0 is the moment the :class:`MockHardware` was made: a callback block captured
over ``[t, t + period)`` starts at frame ``round((t - epoch) x rate)``, and the block a
callback returns is played one period after the callback (PortAudio's
``output_buffer_dac_time``). The mic's block is ``source + echo + noise``, rounded and
saturated to int16 once. It returns an
object used like the ``pyaudio`` module: ``pa = module.PyAudio()``, ``module.paInt16``.

For timing measurements (``benchmarks/mouth_to_ear.py``), ``HW_MOCKS_AUDIO_TRACE=PATH``
(deliberately not a ``GOCHAT_`` variable: the daemon's settings refuse unknown keys)
appends one line per callback block to ``PATH`` (:class:`CallbackTrace`). Unset, nothing
changes.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import threading
import time
import traceback
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import numpy as np
import numpy.typing as npt

from .room import PLAY_RATE, EchoPath, NoiseSource, parse_echo_spec, parse_noise_spec, to_int16

log = logging.getLogger(__name__)

# PortAudio sample formats, callback flags and error codes, as the pyaudio module has them.
paFloat32: Final = 1  # noqa: N816 - the pyaudio module's names
paInt32: Final = 2  # noqa: N816
paInt24: Final = 4  # noqa: N816
paInt16: Final = 8  # noqa: N816
paInt8: Final = 16  # noqa: N816
paUInt8: Final = 32  # noqa: N816
paContinue: Final = 0  # noqa: N816
paComplete: Final = 1  # noqa: N816
paAbort: Final = 2  # noqa: N816
paFramesPerBufferUnspecified: Final = 0  # noqa: N816
paInputUnderflow: Final = 1  # noqa: N816
paInputOverflow: Final = 2  # noqa: N816
paOutputUnderflow: Final = 4  # noqa: N816
paOutputOverflow: Final = 8  # noqa: N816
paUnanticipatedHostError: Final = -9999  # noqa: N816
paInvalidChannelCount: Final = -9998  # noqa: N816
paInvalidSampleRate: Final = -9997  # noqa: N816
paInvalidDevice: Final = -9996  # noqa: N816
paSampleFormatNotSupported: Final = -9994  # noqa: N816
paDeviceUnavailable: Final = -9985  # noqa: N816
paStreamIsStopped: Final = -9983  # noqa: N816
paInputOverflowed: Final = -9981  # noqa: N816
paCanNotReadFromAnOutputOnlyStream: Final = -9975  # noqa: N816
paCanNotWriteToAnInputOnlyStream: Final = -9974  # noqa: N816

ENV_INPUT: Final = "GOCHAT_AUDIO__MOCK_INPUT"
ENV_OUTPUT: Final = "GOCHAT_AUDIO__MOCK_OUTPUT"
ENV_OUTPUT_KEEP: Final = "GOCHAT_AUDIO__MOCK_OUTPUT_KEEP_S"
ENV_UNPLUG_FILE: Final = "GOCHAT_AUDIO__MOCK_UNPLUG_FILE"
ENV_ECHO: Final = "GOCHAT_AUDIO__MOCK_ECHO"
ENV_NOISE: Final = "GOCHAT_AUDIO__MOCK_NOISE"
ENV_TRACE: Final = "HW_MOCKS_AUDIO_TRACE"

_SAMPLE_BYTES: Final = 2
_HEADER_BYTES: Final = 44  # a PCM WAV's RIFF, fmt and data headers
_OVERRUN_S: Final = 0.5
"""Behind the device clock by more than this, a stream skips ahead (an ALSA xrun)."""
_WRITE_AHEAD_BUFFERS: Final = 4
"""A blocking write returns once at most this many buffers wait to be played."""

_Int16Array = npt.NDArray[np.int16]
StreamCallback = Callable[[bytes | None, int, dict[str, float], int], tuple[bytes | None, int]]


def _host_error() -> OSError:
    return OSError(paUnanticipatedHostError, "Unanticipated host error")


# ---------------------------------------------------------------- what the mic hears


class InputSource(Protocol):
    """What the microphone hears: ``read`` the next ``n`` samples at ``rate``."""

    def read(self, n: int, rate: int) -> _Int16Array:
        """The next ``n`` int16 samples, as heard at ``rate``."""
        ...


class SilenceSource:
    """A microphone in a silent room."""

    def read(self, n: int, rate: int) -> _Int16Array:
        """``n`` zeros."""
        return np.zeros(n, dtype=np.int16)


class ToneSource:
    """A steady sine (phase-continuous across blocks and streams)."""

    def __init__(self, freq: float, amplitude: float = 0.5) -> None:
        self.freq = freq
        self.amplitude = amplitude
        self._phase = 0.0  # radians, kept in [0, 2 pi) so precision never drifts

    def read(self, n: int, rate: int) -> _Int16Array:
        """The next ``n`` samples of the tone at ``rate``."""
        step = 2 * np.pi * self.freq / rate
        wave = np.sin(self._phase + step * np.arange(n)) * (self.amplitude * 32767.0)
        self._phase = float(np.fmod(self._phase + step * n, 2 * np.pi))
        block: _Int16Array = np.round(wave).astype(np.int16)
        return block


class WavSource:
    """A WAV file heard once (then silence) or looped, resampled to the stream's rate."""

    def __init__(self, path: Path | str, *, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        self.samples, self.rate = read_wav_mono(self.path)
        self._pos = 0.0  # in the file's samples; shared by every stream that reads
        self._lock = threading.Lock()
        self._at_rate: dict[int, _Int16Array] = {self.rate: self.samples}
        self.resamplings = 0
        """How many times the file was resampled (once per stream rate)."""

    def read(self, n: int, rate: int) -> _Int16Array:
        """The next ``n`` samples as heard at ``rate``."""
        data = self._resampled(rate)
        step = self.rate / rate
        with self._lock:
            start = round(self._pos / step)
            self._pos += n * step
            if self.loop and len(self.samples):
                self._pos %= len(self.samples)
        total = len(data)
        if self.loop and total:
            return data[(start + np.arange(n)) % total]
        block = np.zeros(n, dtype=np.int16)
        part = data[start : start + n]
        block[: len(part)] = part
        return block

    def _resampled(self, rate: int) -> _Int16Array:
        """The whole file at ``rate`` (computed on first use)."""
        data = self._at_rate.get(rate)
        if data is None:
            total = len(self.samples)
            positions = np.arange(round(total * rate / self.rate)) * (self.rate / rate)
            source = self.samples.astype(np.float64)
            resampled = np.interp(positions, np.arange(total), source, right=0.0)
            data = np.round(resampled).astype(np.int16)
            self._at_rate[rate] = data
            self.resamplings += 1
        return data


def read_wav_mono(path: Path | str) -> tuple[_Int16Array, int]:
    """The samples of a 16-bit PCM WAV file, mixed to mono, and its rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != _SAMPLE_BYTES:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if channels > 1:
        pcm = pcm[: len(pcm) // channels * channels].reshape(-1, channels)
        pcm = np.round(pcm.astype(np.float64).mean(axis=1)).astype(np.int16)
    return pcm, rate


def source_from_spec(spec: str) -> InputSource:
    """``silence``, ``tone:<hz>[:<amplitude>]``, ``<path.wav>`` or ``loop:<path.wav>``."""
    if spec in ("", "silence"):
        return SilenceSource()
    if spec.startswith("tone:"):
        parts = spec.split(":")
        try:
            freq = float(parts[1])
            amplitude = float(parts[2]) if len(parts) > 2 else 0.5
        except (IndexError, ValueError):
            raise ValueError(f"bad tone spec {spec!r}: use tone:<hz>[:<amplitude>]") from None
        return ToneSource(freq, amplitude)
    if spec.startswith("loop:"):
        return WavSource(spec.removeprefix("loop:"), loop=True)
    return WavSource(spec)


# ---------------------------------------------------------------- what the speaker plays


class WavRecorder:
    """Appends 16-bit mono PCM to a WAV file, keeping the header valid after each write.

    With ``keep_s``, the recording is a ring of two files, so that a long run's disk use
    is bounded: once ``path`` holds ``keep_s`` seconds, it is renamed to
    :meth:`previous_path` (``NAME.1.wav``, replacing the one before) and ``path``
    starts again. Together they always hold at least the last ``keep_s`` seconds
    (once that much was played) and at most twice that, across runs too: a run goes
    on with the recording an earlier one left at ``path`` (one in another format is
    moved to ``NAME.1.wav`` first). Without ``keep_s`` every run starts afresh.
    """

    def __init__(self, path: Path | str, rate: int = 48_000, keep_s: float | None = None) -> None:
        self.path = Path(path)
        self.rate = rate
        self.frames = 0
        """Frames in the current file (``path``)."""
        self.keep_frames = round(keep_s * rate) if keep_s is not None else None
        self._lock = threading.Lock()
        self._file: BinaryIO | None = self._start() if keep_s is None else self._resume()

    @property
    def previous_path(self) -> Path:
        """Where the previous part of a ring recording is: ``NAME.1.wav``."""
        return self.path.with_name(f"{self.path.stem}.1{self.path.suffix}")

    def _start(self) -> BinaryIO:
        file = self.path.open("wb")
        file.write(_wav_header(self.rate, 0))
        file.flush()
        return file

    def _resume(self) -> BinaryIO:
        """Go on with an earlier run's recording at ``path``, if it is one of ours."""
        frames = _recorded_frames(self.path, self.rate)
        if frames is None:
            if self.path.exists():  # not one of ours to append to: keep it aside
                os.replace(self.path, self.previous_path)
            return self._start()
        file = self.path.open("r+b")
        file.truncate(_HEADER_BYTES + frames * _SAMPLE_BYTES)  # a half-written sample
        self.frames = frames
        return file

    def _rotate(self, file: BinaryIO) -> BinaryIO:
        # A rename, never a copy: this runs on the sound card's callback thread.
        file.close()
        os.replace(self.path, self.previous_path)
        self.frames = 0
        return self._start()

    def write(self, pcm: bytes) -> None:
        """Append samples (int16 little-endian bytes) and bring the header up to date."""
        with self._lock:
            if self._file is None:
                return
            if self.keep_frames is not None and self.frames >= self.keep_frames:
                self._file = self._rotate(self._file)
            self._file.seek(0, os.SEEK_END)
            self._file.write(pcm)
            self.frames += len(pcm) // _SAMPLE_BYTES
            self._file.seek(0)
            self._file.write(_wav_header(self.rate, self.frames * _SAMPLE_BYTES))
            self._file.flush()

    def close(self) -> None:
        """Close the file (it is complete after every write anyway)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _recorded_frames(path: Path, rate: int) -> int | None:
    """The frames in a recording :class:`WavRecorder` wrote at ``rate``, or None when
    ``path`` is missing or something else."""
    try:
        with path.open("rb") as file:
            header = file.read(_HEADER_BYTES)
            size = os.fstat(file.fileno()).st_size
    except OSError:
        return None
    if len(header) < _HEADER_BYTES:
        return None
    data_bytes: int = struct.unpack_from("<I", header, _HEADER_BYTES - 4)[0]
    if header != _wav_header(rate, data_bytes):
        return None
    return min(data_bytes, size - _HEADER_BYTES) // _SAMPLE_BYTES


def _wav_header(rate: int, data_bytes: int) -> bytes:
    """The 44-byte header of a PCM WAV (mono, 16-bit) holding ``data_bytes`` of samples."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE",
        b"fmt ", 16, 1, 1, rate, rate * _SAMPLE_BYTES, _SAMPLE_BYTES, 16,
        b"data", data_bytes,
    )  # fmt: skip


# ---------------------------------------------------------------- timing trace


class CallbackTrace:
    """A line per callback block, for measuring latency against ``CLOCK_MONOTONIC``.

    Each line is ``DIRECTION DUE CALLED STREAM FIRST FRAMES RATE POSITION``:
    ``in`` (the mic delivered a block) or ``out`` (the speaker took one); ``DUE`` the
    stream schedule's time of the block (``t0 + k x period``: the end of a captured
    block, the moment an output block is asked for) and ``CALLED`` when the callback
    actually ran (``time.monotonic()`` seconds, shared by every process on the
    machine); ``STREAM`` a serial number per stream start; ``FIRST`` the block's first
    frame index since that start; ``FRAMES`` and ``RATE`` the block; ``POSITION`` the
    frames this side of the sound card had handled before the block, across all its
    streams (for ``in``: samples read from the mic's source at the stream's rate; for
    ``out``: samples written to the output recording). Lines are written whole and
    flushed at once, so a killed process leaves a readable trace.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: Any = self.path.open("a", encoding="ascii", buffering=1)
        self._position = {"in": 0, "out": 0}
        self._streams = 0

    def new_stream(self) -> int:
        """A serial number for a stream (re)start."""
        with self._lock:
            self._streams += 1
            return self._streams

    def block(
        self, direction: str, *, due: float, called: float, stream: int, first: int,
        frames: int, rate: int,
    ) -> None:  # fmt: skip
        """Record one block (``direction`` is ``in`` or ``out``)."""
        with self._lock:
            position = self._position[direction]
            self._position[direction] = position + frames
            if self._file is not None:
                self._file.write(
                    f"{direction} {due:.6f} {called:.6f} {stream} {first} {frames} {rate}"
                    f" {position}\n"
                )

    def close(self) -> None:
        """Close the trace file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def trace_from_env(environ: Mapping[str, str] | None = None) -> CallbackTrace | None:
    """A :class:`CallbackTrace` if ``HW_MOCKS_AUDIO_TRACE`` names a file, else None."""
    path = (os.environ if environ is None else environ).get(ENV_TRACE)
    return CallbackTrace(path) if path else None


# ---------------------------------------------------------------- the sound card


@dataclass(frozen=True, slots=True)
class _Device:
    name: str
    inputs: int
    outputs: int


_DEVICES: Final = (
    _Device("mock-mic", 1, 0),
    _Device("mock-speaker", 0, 1),
    _Device("default", 1, 1),
)


class MockHardware:
    """The sound card: its microphone, its speaker and whether it is plugged in."""

    def __init__(
        self,
        source: InputSource | None = None,
        output: Path | str | None = None,
        unplug_file: Path | str | None = None,
        trace: CallbackTrace | None = None,
        *,
        echo: EchoPath | None = None,
        noise: NoiseSource | None = None,
        output_keep_s: float | None = None,
    ) -> None:
        self.source: InputSource = source or SilenceSource()
        self.output_keep_s = output_keep_s
        """Record the speaker as a ring of at least this many seconds (:class:`WavRecorder`)."""
        self.trace = trace
        self.echo = echo
        self.noise = noise
        self.epoch = time.monotonic()
        """Frame 0 of the shared sample clock (every rate): the card's creation."""
        self.output_path = Path(output) if output is not None else None
        self.unplug_file = Path(unplug_file) if unplug_file is not None else None
        self.recorder: WavRecorder | None = None
        self._unplugged = {"input": False, "output": False}
        self._lock = threading.Lock()

    def unplug(self, *, input: bool = True, output: bool = True) -> None:
        """Pull the device out: streams of that side die, opens fail."""
        self._unplugged["input"] |= input
        self._unplugged["output"] |= output

    def plug(self) -> None:
        """Put the device back: new streams open again (old ones stay dead)."""
        self._unplugged = {"input": False, "output": False}

    def present(self, side: str) -> bool:
        """Whether the ``"input"`` or ``"output"`` side is plugged in."""
        if self._unplugged[side]:
            return False
        flag = self.unplug_file
        if flag is None or not flag.exists():
            return True
        try:
            which = flag.read_text(encoding="utf-8").strip()
        except OSError:
            which = ""
        return which not in ("", "both", side)

    def first_frame(self, t0: float, rate: int) -> int:
        """The shared-clock frame index, at ``rate``, of monotonic time ``t0``."""
        return round((t0 - self.epoch) * rate)

    def hear(self, n: int, rate: int, at_frame: int) -> bytes:
        """What the microphone captures: the source, plus the room's echo and noise
        (mixed in float, saturated once to int16) for frames ``at_frame`` on."""
        block = self.source.read(n, rate)
        if self.echo is None and self.noise is None:
            return block.tobytes()
        mix = block.astype(np.float64)
        if self.echo is not None:
            mix += self.echo.heard(n, rate, at_frame)
        if self.noise is not None:
            mix += self.noise.read(n, rate, at_frame)
        return to_int16(mix).tobytes()

    def play(self, pcm: bytes, rate: int, at_frame: int) -> None:
        """The speaker plays ``pcm`` from frame ``at_frame`` on: record it and let the
        room's echo path hear it (at 48 kHz only, the rate the appliance plays at)."""
        self.record(pcm, rate)
        if self.echo is not None and rate == PLAY_RATE:
            self.echo.played(np.frombuffer(pcm, dtype=np.int16), at_frame)

    def record(self, pcm: bytes, rate: int) -> None:
        """Keep what the speaker played (the first output stream fixes the WAV's rate)."""
        if self.output_path is None:
            return
        with self._lock:
            if self.recorder is None:
                self.recorder = WavRecorder(self.output_path, rate, self.output_keep_s)
        self.recorder.write(pcm)

    def close(self) -> None:
        """Close the output recording (and the trace, if any)."""
        with self._lock:
            if self.recorder is not None:
                self.recorder.close()
        if self.trace is not None:
            self.trace.close()


class MockPyAudio:
    """``pyaudio.PyAudio`` over a :class:`MockHardware`."""

    def __init__(self, hardware: MockHardware) -> None:
        self.hardware = hardware
        # PortAudio enumerates devices once, at initialisation.
        self._seen = {side: hardware.present(side) for side in ("input", "output")}
        self._devices = [
            d for d in _DEVICES if self._channels(d, "input") or self._channels(d, "output")
        ]
        self._streams: set[MockStream] = set()

    def _channels(self, device: _Device, side: str) -> int:
        channels = device.inputs if side == "input" else device.outputs
        return channels if self._seen[side] else 0

    def get_device_count(self) -> int:
        """How many devices were found when this object was made."""
        return len(self._devices)

    def get_device_info_by_index(self, device_index: int) -> dict[str, Any]:
        """PortAudio's ``PaDeviceInfo`` as PyAudio's dict."""
        if not 0 <= device_index < len(self._devices):
            raise OSError(paInvalidDevice, "Invalid device info")
        d = self._devices[device_index]
        return {
            "index": device_index,
            "structVersion": 2,
            "name": d.name,
            "hostApi": 0,
            "maxInputChannels": self._channels(d, "input"),
            "maxOutputChannels": self._channels(d, "output"),
            "defaultLowInputLatency": 0.0087,
            "defaultLowOutputLatency": 0.0087,
            "defaultHighInputLatency": 0.035,
            "defaultHighOutputLatency": 0.035,
            "defaultSampleRate": 48000.0,
        }

    def get_default_input_device_info(self) -> dict[str, Any]:
        """The ``default`` device, if it has an input."""
        return self.get_device_info_by_index(self._default("input"))

    def get_default_output_device_info(self) -> dict[str, Any]:
        """The ``default`` device, if it has an output."""
        return self.get_device_info_by_index(self._default("output"))

    def _default(self, side: str) -> int:
        for i, d in enumerate(self._devices):
            if d.name == "default" and self._channels(d, side):
                return i
        raise OSError(f"No Default {side.capitalize()} Device Available")

    @staticmethod
    def get_sample_size(format: int) -> int:
        """Bytes per sample of a PortAudio format."""
        sizes = {paFloat32: 4, paInt32: 4, paInt24: 3, paInt16: 2, paInt8: 1, paUInt8: 1}
        if format not in sizes:
            raise ValueError("Invalid format")
        return sizes[format]

    def open(
        self,
        rate: int,
        channels: int,
        format: int,
        *,
        input: bool = False,
        output: bool = False,
        input_device_index: int | None = None,
        output_device_index: int | None = None,
        frames_per_buffer: int = paFramesPerBufferUnspecified,
        start: bool = True,
        stream_callback: StreamCallback | None = None,
        **_host_api_specific: Any,
    ) -> MockStream:
        """Open a stream, as ``PyAudio.open`` does (only paInt16 mono is supported)."""
        if not (input or output):
            raise ValueError("Must specify an input or output stream.")
        if format != paInt16:
            raise OSError(paSampleFormatNotSupported, "Sample format not supported")
        if channels != 1:
            raise OSError(paInvalidChannelCount, "Invalid number of channels")
        if rate <= 0:
            raise OSError(paInvalidSampleRate, "Invalid sample rate")
        for side, wanted, index in (
            ("input", input, input_device_index),
            ("output", output, output_device_index),
        ):
            if wanted:
                self._check_device(side, index)
        frames = frames_per_buffer or rate // 50
        stream = MockStream(
            self,
            rate,
            frames_per_buffer=frames,
            is_input=bool(input),
            is_output=bool(output),
            callback=stream_callback,
        )
        self._streams.add(stream)
        if start:
            stream.start_stream()
        return stream

    def _check_device(self, side: str, index: int | None) -> None:
        if index is None:
            index = self._default(side)
        info = self.get_device_info_by_index(index)
        if info["maxInputChannels" if side == "input" else "maxOutputChannels"] < 1:
            raise OSError(paInvalidDevice, f"Invalid {side} device")
        if not self.hardware.present(side):
            raise OSError(paDeviceUnavailable, "Device unavailable")

    def _remove_stream(self, stream: MockStream) -> None:
        self._streams.discard(stream)

    def terminate(self) -> None:
        """Close every stream (PyAudio does the same)."""
        for stream in list(self._streams):
            stream.close()


class MockStream:
    """``PyAudio.Stream``: callback or blocking, input and/or output, in real time."""

    def __init__(
        self,
        pa: MockPyAudio,
        rate: int,
        *,
        frames_per_buffer: int,
        is_input: bool,
        is_output: bool,
        callback: StreamCallback | None,
    ) -> None:
        self._pa = pa
        self._hw = pa.hardware
        self.rate = rate
        self.frames_per_buffer = frames_per_buffer
        self._is_input = is_input
        self._is_output = is_output
        self._callback = callback
        self._running = False
        self._done = False  # the callback ended the stream (paComplete/paAbort)
        self._lost = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._frames = 0  # frames read/written since start (blocking mode)
        self._serial = 0  # this start's number in the hardware's trace (if tracing)

    # -- lifecycle

    def start_stream(self) -> None:
        """Start (or restart) the device clock and, in callback mode, the callback thread."""
        self._check_usable()
        if self._running:
            return
        self._running, self._done = True, False
        self._t0, self._frames = time.monotonic(), 0
        if self._hw.trace is not None:
            self._serial = self._hw.trace.new_stream()
        if self._callback is not None:
            self._stop.clear()
            side = "in" if self._is_input else "out"  # told apart in per-thread CPU
            self._thread = threading.Thread(target=self._pump, name=f"mock-pa-{side}", daemon=True)
            self._thread.start()

    def stop_stream(self) -> None:
        """Stop; in callback mode, wait for the callback thread to finish."""
        self._running = False
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def close(self) -> None:
        """Stop and release the stream."""
        self.stop_stream()
        self._closed = True
        self._pa._remove_stream(self)

    def is_active(self) -> bool:
        """Running and not ended by its callback or a lost device."""
        return self._running and not self._done and not self._lost and self._sides_present()

    def is_stopped(self) -> bool:
        """Not started, or stopped."""
        return not self._running

    def get_input_latency(self) -> float:
        """One buffer, in seconds."""
        return self.frames_per_buffer / self.rate

    def get_output_latency(self) -> float:
        """One buffer, in seconds."""
        return self.frames_per_buffer / self.rate

    def get_time(self) -> float:
        """The stream clock (monotonic seconds)."""
        return time.monotonic()

    def get_cpu_load(self) -> float:
        """Always 0.0, as for PyAudio's blocking streams."""
        return 0.0

    # -- blocking I/O

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes:
        """Wait until ``num_frames`` have been captured and return them."""
        if not self._is_input:
            raise OSError("Not input stream", paCanNotReadFromAnOutputOnlyStream)
        self._check_io()
        behind = self._wait_for(self._frames + num_frames)
        if behind > _OVERRUN_S:
            self._resync()
            if exception_on_overflow:
                raise OSError(paInputOverflowed, "Input overflowed")
        at = self._hw.first_frame(self._t0, self.rate) + self._frames
        self._frames += num_frames
        return self._hw.hear(num_frames, self.rate, at)

    def write(
        self, frames: bytes, num_frames: int | None = None, exception_on_underflow: bool = False
    ) -> None:
        """Queue ``frames`` for playback, waiting while the device buffer is full."""
        if not self._is_output:
            raise OSError("Not output stream", paCanNotWriteToAnInputOnlyStream)
        self._check_io()
        if num_frames is not None:
            frames = frames[: num_frames * _SAMPLE_BYTES]
        played = (time.monotonic() - self._t0) * self.rate
        if played > self._frames + self.rate * _OVERRUN_S:
            self._resync()  # an underrun: the speaker went quiet meanwhile
        ahead = _WRITE_AHEAD_BUFFERS * self.frames_per_buffer
        self._wait_for(self._frames - ahead)
        self._hw.play(frames, self.rate, self._hw.first_frame(self._t0, self.rate) + self._frames)
        self._frames += len(frames) // _SAMPLE_BYTES

    def get_read_available(self) -> int:
        """Frames captured but not read yet."""
        return max(0, int((time.monotonic() - self._t0) * self.rate) - self._frames)

    def get_write_available(self) -> int:
        """Frames that can be written without waiting."""
        played = int((time.monotonic() - self._t0) * self.rate)
        ahead = _WRITE_AHEAD_BUFFERS * self.frames_per_buffer
        return max(0, played + ahead - self._frames)

    def _wait_for(self, frame: int) -> float:
        """Sleep until the device clock reaches ``frame``; how late we already were (s)."""
        due = self._t0 + frame / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            return 0.0
        return -delay

    def _resync(self) -> None:
        self._t0, self._frames = time.monotonic(), 0

    # -- callback mode

    def _pump(self) -> None:
        """Call the callback once per buffer, at t0 + k x period (no drift)."""
        period = self.frames_per_buffer / self.rate
        k = 0
        status = 0
        while self._running:
            k += 1
            delay = self._t0 + k * period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if delay < -_OVERRUN_S:  # far behind (a stalled callback): skip, flag an xrun
                self._t0, k = time.monotonic(), 0
                status = (paInputOverflow if self._is_input else 0) | (
                    paOutputUnderflow if self._is_output else 0
                )
            if not self._sides_present():
                self._lost = True
                return
            if not self._tick(k * period, status):
                return
            status = 0

    def _tick(self, stream_time: float, status: int) -> bool:
        """One callback; False once the stream is finished."""
        n = self.frames_per_buffer
        first = round(stream_time * self.rate) - n
        # On the card's shared clock: this block was captured over the last period, and
        # what the callback returns is played one period from now (PortAudio's DAC time).
        base = self._hw.first_frame(self._t0, self.rate) + first
        in_data = self._hw.hear(n, self.rate, base) if self._is_input else None
        now = time.monotonic()
        trace = self._hw.trace
        if trace is not None and self._is_input:
            trace.block(
                "in", due=self._t0 + stream_time, called=now, stream=self._serial, first=first,
                frames=n, rate=self.rate,
            )  # fmt: skip
        time_info = {
            "input_buffer_adc_time": self._t0 + stream_time - n / self.rate,
            "current_time": now,
            "output_buffer_dac_time": self._t0 + stream_time + n / self.rate,
        }
        assert self._callback is not None
        try:
            out_data, flag = self._callback(in_data, n, time_info, status)
        except Exception:  # PyAudio prints the traceback and aborts the stream
            traceback.print_exc()
            log.exception("stream callback raised; stream aborted")
            self._done = True
            return False
        if self._is_output and flag != paAbort:
            out = bytes(out_data or b"")
            want = n * _SAMPLE_BYTES
            if len(out) < want:  # PyAudio: a short buffer is padded and ends the stream
                out, flag = out + bytes(want - len(out)), paComplete
            self._hw.play(out[:want], self.rate, base + 2 * n)
            if trace is not None:
                trace.block(
                    "out", due=self._t0 + stream_time, called=now, stream=self._serial,
                    first=first, frames=n, rate=self.rate,
                )  # fmt: skip
        if flag != paContinue:
            self._done = True
            return False
        return True

    # -- checks

    def _sides_present(self) -> bool:
        return (not self._is_input or self._hw.present("input")) and (
            not self._is_output or self._hw.present("output")
        )

    def _check_usable(self) -> None:
        if self._closed:
            raise OSError(paUnanticipatedHostError, "Stream closed")
        if self._lost or not self._sides_present():
            self._lost = True
            raise _host_error()

    def _check_io(self) -> None:
        self._check_usable()
        if not self._running:
            raise OSError(paStreamIsStopped, "Stream is stopped")


class MockPyAudioModule:
    """Stands in for the ``pyaudio`` module: ``PyAudio()`` plus the constants."""

    paInt16 = paInt16  # noqa: N815
    paInt32 = paInt32  # noqa: N815
    paFloat32 = paFloat32  # noqa: N815
    paContinue = paContinue  # noqa: N815
    paComplete = paComplete  # noqa: N815
    paAbort = paAbort  # noqa: N815
    paInputOverflow = paInputOverflow  # noqa: N815
    paOutputUnderflow = paOutputUnderflow  # noqa: N815
    paFramesPerBufferUnspecified = paFramesPerBufferUnspecified  # noqa: N815

    def __init__(self, hardware: MockHardware) -> None:
        self.hardware = hardware

    def PyAudio(self) -> MockPyAudio:  # noqa: N802 - the pyaudio module's name
        """A PyAudio instance on the mock sound card."""
        return MockPyAudio(self.hardware)

    @staticmethod
    def get_sample_size(format: int) -> int:
        """Bytes per sample of a PortAudio format."""
        return MockPyAudio.get_sample_size(format)


def mock_pyaudio(
    input_spec: str = "silence",
    output: Path | str | None = None,
    unplug_file: Path | str | None = None,
    trace: CallbackTrace | None = None,
    *,
    echo_spec: str = "off",
    noise_spec: str = "off",
    output_keep_s: float | None = None,
    room_seed: int | None = None,
) -> MockPyAudioModule:
    """A fake ``pyaudio`` module whose mic hears ``input_spec`` and records to ``output``.

    ``trace``: record every callback block; by default only if ``HW_MOCKS_AUDIO_TRACE``
    names a file (see :class:`CallbackTrace`). ``echo_spec`` and ``noise_spec``: the
    stand-in room (:mod:`.room`; ``off`` by default: the mic hears the source alone).
    ``output_keep_s``: bound the recording to a ring of two files (:class:`WavRecorder`).
    ``room_seed``: draws the room's impulse response and noise; by default a fresh one,
    so two cards are two rooms (one seed for all would put the same noise in every
    microphone, correlated between a talker's stream and a listener's own room).
    """
    echo = parse_echo_spec(echo_spec)
    noise = parse_noise_spec(noise_spec)
    seed = secrets.randbits(32) if room_seed is None else room_seed
    hardware = MockHardware(
        source_from_spec(input_spec),
        output,
        unplug_file,
        trace or trace_from_env(),
        echo=EchoPath(echo, seed=seed) if echo is not None else None,
        noise=NoiseSource(noise, seed=seed + 1) if noise is not None else None,
        output_keep_s=output_keep_s,
    )
    return MockPyAudioModule(hardware)


def mock_pyaudio_from_env(environ: Mapping[str, str] | None = None) -> MockPyAudioModule:
    """:func:`mock_pyaudio` configured by the ``GOCHAT_AUDIO__MOCK_*`` variables (and
    ``HW_MOCKS_AUDIO_TRACE``)."""
    env = os.environ if environ is None else environ
    return mock_pyaudio(
        env.get(ENV_INPUT, "silence"),
        env.get(ENV_OUTPUT) or None,
        env.get(ENV_UNPLUG_FILE) or None,
        trace_from_env(env),
        echo_spec=env.get(ENV_ECHO, "off"),
        noise_spec=env.get(ENV_NOISE, "off"),
        output_keep_s=float(env[ENV_OUTPUT_KEEP]) if env.get(ENV_OUTPUT_KEEP) else None,
    )
