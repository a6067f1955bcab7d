"""The stand-in room: what the stand-in microphone hears besides the near-end talker.

A hands-free box hears its own speaker. :class:`EchoPath` models that: every block the
stand-in speaker plays is handed to :meth:`EchoPath.played`, and every block the stand-in
microphone captures asks :meth:`EchoPath.heard` for the echo in it. Both sides count
frames on **one shared sample clock** (frame 0 of every rate is the same instant), so the
echo lands exactly ``delay_ms`` after it was played whatever the block sizes, rates and
callback order. The echo is the played signal, optionally through a mild loudspeaker
nonlinearity, delayed and convolved with a synthetic room impulse response whose energy
is ``gain_db`` relative to what was played. :class:`NoiseSource` adds pink, white or
mains-hum noise at a given RMS level.

Spec strings (``GOCHAT_AUDIO__MOCK_ECHO``, ``GOCHAT_AUDIO__MOCK_NOISE``)::

    off | delay_ms=D,gain_db=G,rt60_ms=R[,clip=1]
    off | pink:L | white:L | hum:L            (L in dBFS RMS)

Levels in dBFS are RMS relative to int16 full scale (32768): a full-scale square wave
is 0 dBFS, a full-scale sine -3 dBFS.

Pure numpy and deterministic for a given seed; imports nothing from ``appliance`` (a
stand-in depends only on what it stands in for). Thread-safe: ``played`` and ``heard``
may be called from the card's output and input threads.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

PLAY_RATE: Final = 48_000
"""The rate of the shared sample clock and of everything :meth:`EchoPath.played` takes."""
FULL_SCALE: Final = 32768.0
DIRECT_TO_REVERB_DB: Final = 10.0
"""Direct path over reverberant tail: the speaker sits a few cm from the microphone."""
HISTORY_S: Final = 4.0
"""How much played audio the echo path keeps (delay + room tail + one block must fit)."""
MAX_DELAY_MS: Final = 1000.0
MAX_RT60_MS: Final = 2000.0
_CLIP_DRIVE: Final = 1.5  # tanh drive: unity small-signal gain, peaks compressed ~3 dB
_DECIMATE_TAPS_PER_PHASE: Final = 16
_NOISE_TABLE_S: Final = 8.0  # pink/white noise loops this long (inaudible as a loop)
_PINK_LOW_HZ: Final = 20.0  # below this the 1/f shaping is flat (no DC drift)
NOISE_RATES: Final = (48_000, 16_000)
"""Rates whose noise tables are drawn up front (the rates a voice card is opened at)."""
_HUM_HZ: Final = 50.0
_HUM_HARMONICS: Final = (1.0, 0.5, 0.35, 0.2, 0.1)  # 50, 100, ... 250 Hz

Float64Array = npt.NDArray[np.float64]
Int16Array = npt.NDArray[np.int16]
NoiseKind = Literal["pink", "white", "hum"]


# ---------------------------------------------------------------- spec strings


@dataclass(frozen=True, slots=True)
class EchoSpec:
    """The echo path: ``delay_ms`` after playing, ``gain_db`` relative, ``rt60_ms`` tail."""

    delay_ms: float
    gain_db: float
    rt60_ms: float
    clip: bool = False


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    """Background noise of ``kind`` at ``level_dbfs`` RMS."""

    kind: NoiseKind
    level_dbfs: float


_ECHO_USAGE: Final = "use off or delay_ms=D,gain_db=G,rt60_ms=R[,clip=1]"
_NOISE_USAGE: Final = "use off, pink:L, white:L or hum:L (L in dBFS, <= 0)"


def parse_echo_spec(spec: str) -> EchoSpec | None:
    """``off`` (None) or ``delay_ms=D,gain_db=G,rt60_ms=R[,clip=1]``; ValueError if bad."""
    text = spec.strip()
    if text in ("", "off"):
        return None
    fields = _key_values(text, spec)
    missing = {"delay_ms", "gain_db", "rt60_ms"} - fields.keys()
    unknown = fields.keys() - {"delay_ms", "gain_db", "rt60_ms", "clip"}
    if missing or unknown:
        what = f"missing {sorted(missing)}" if missing else f"unknown {sorted(unknown)}"
        raise ValueError(f"bad echo spec {spec!r}: {what}; {_ECHO_USAGE}")
    delay, gain, rt60 = (_number(fields[k], k, spec) for k in ("delay_ms", "gain_db", "rt60_ms"))
    clip = fields.get("clip", "0")
    if clip not in ("0", "1"):
        raise ValueError(f"bad echo spec {spec!r}: clip must be 0 or 1")
    if not 0 <= delay <= MAX_DELAY_MS:
        raise ValueError(f"bad echo spec {spec!r}: delay_ms must be 0..{MAX_DELAY_MS:g}")
    if not 0 <= rt60 <= MAX_RT60_MS:
        raise ValueError(f"bad echo spec {spec!r}: rt60_ms must be 0..{MAX_RT60_MS:g}")
    if gain > 20:
        raise ValueError(f"bad echo spec {spec!r}: gain_db must be <= 20")
    return EchoSpec(delay, gain, rt60, clip == "1")


def parse_noise_spec(spec: str) -> NoiseSpec | None:
    """``off`` (None), ``pink:L``, ``white:L`` or ``hum:L``; ValueError if bad."""
    text = spec.strip()
    if text in ("", "off"):
        return None
    kind, sep, level_text = text.partition(":")
    if not sep or kind not in ("pink", "white", "hum"):
        raise ValueError(f"bad noise spec {spec!r}: {_NOISE_USAGE}")
    level = _number(level_text, "level", spec)
    if level > 0:
        raise ValueError(f"bad noise spec {spec!r}: level must be <= 0 dBFS")
    return NoiseSpec(kind, level)  # type: ignore[arg-type]  # kind checked above


def _key_values(text: str, spec: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or key in fields:
            raise ValueError(f"bad echo spec {spec!r}: {part.strip()!r}; {_ECHO_USAGE}")
        fields[key] = value.strip()
    return fields


def _number(text: str, name: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"bad spec {spec!r}: {name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"bad spec {spec!r}: {name} must be finite")
    return value


# ---------------------------------------------------------------- the room


def room_impulse_response(
    rt60_ms: float,
    gain_db: float,
    rate: int = PLAY_RATE,
    *,
    seed: int = 0,
    direct_to_reverb_db: float = DIRECT_TO_REVERB_DB,
) -> Float64Array:
    """A synthetic room impulse response starting with its direct-path tap at index 0.

    The tail is Gaussian noise under an exponential envelope that falls 60 dB in
    ``rt60_ms`` (Sabine's model of a diffuse field), ``direct_to_reverb_db`` below the
    direct tap in energy. The whole response is scaled so its energy is ``gain_db``: a
    white signal played comes back ``gain_db`` relative to what was played.
    """
    length = max(1, round(rt60_ms * rate / 1000))
    ir = np.zeros(length)
    if length > 1:
        t = np.arange(1, length) / rate
        envelope = np.exp(-3 * math.log(10) * t / (rt60_ms / 1000))
        tail = np.random.default_rng(seed).standard_normal(length - 1) * envelope
        tail *= math.sqrt(10 ** (-direct_to_reverb_db / 10) / float(np.sum(tail**2)))
        ir[1:] = tail
    ir[0] = 1.0
    ir *= math.sqrt(10 ** (gain_db / 10) / float(np.sum(ir**2)))
    return ir


def soft_clip(x: Float64Array) -> Float64Array:
    """A mild loudspeaker nonlinearity: unity gain for small signals, tanh at the peaks."""
    out: Float64Array = np.tanh(x * (_CLIP_DRIVE / FULL_SCALE)) * (FULL_SCALE / _CLIP_DRIVE)
    return out


def _lowpass(factor: int) -> Float64Array:
    """Kaiser-windowed sinc anti-alias filter for decimating 48 kHz by ``factor``."""
    taps = _DECIMATE_TAPS_PER_PHASE * factor + 1
    n = np.arange(taps) - (taps - 1) / 2
    cutoff = 0.9 / (2 * factor)  # of 48 kHz: 7.2 kHz for 16 kHz output
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    out: Float64Array = h / np.sum(h)
    return out


def _fft_convolve_valid(x: Float64Array, h: Float64Array) -> Float64Array:
    """The ``valid`` part of ``x * h`` (len(x) - len(h) + 1 samples), by FFT."""
    size = len(x) + len(h) - 1
    nfft = 1 << (size - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)
    out: Float64Array = y[len(h) - 1 : len(x)]
    return out


class EchoPath:
    """The stand-in speaker's sound reaching the stand-in microphone.

    ``played(block, at_frame)``: the speaker emits ``block`` (int16, 48 kHz) starting at
    48 kHz frame ``at_frame``. ``heard(n, rate, at_frame)``: the echo in the ``n``
    microphone samples at ``rate`` starting at frame ``at_frame`` of that rate (float64,
    int16 scale; mix it with the rest, then round and clip once). Frames never played
    are silence; audio older than :data:`HISTORY_S` is forgotten. Rates must divide
    48 kHz (16 kHz is decimated with an anti-alias filter).
    """

    def __init__(self, spec: EchoSpec, *, seed: int = 0) -> None:
        self.spec = spec
        self.delay_frames = round(spec.delay_ms * PLAY_RATE / 1000)
        self.ir = room_impulse_response(spec.rt60_ms, spec.gain_db, seed=seed)
        self._ring = np.zeros(int(HISTORY_S * PLAY_RATE))
        self._end = 0  # one past the newest frame written (frames before it are valid)
        self._lock = threading.Lock()
        self._filters: dict[int, Float64Array] = {}

    def played(self, block: Int16Array, at_frame: int) -> None:
        """The speaker plays ``block`` (48 kHz) from 48 kHz frame ``at_frame`` on."""
        x = block.astype(np.float64)
        if self.spec.clip:
            x = soft_clip(x)
        size = len(self._ring)
        with self._lock:
            if at_frame > self._end:  # a gap in playback is silence
                self._fill(self._end, np.zeros(min(at_frame - self._end, size)))
            self._fill(at_frame, x[-size:] if len(x) > size else x)
            self._end = max(self._end, at_frame + len(x))

    def heard(self, n: int, rate: int, at_frame: int) -> Float64Array:
        """The echo in ``n`` microphone samples at ``rate`` from frame ``at_frame`` on."""
        if PLAY_RATE % rate:
            raise ValueError(f"rate {rate} does not divide {PLAY_RATE}")
        factor = PLAY_RATE // rate
        if factor == 1:
            return self._echo48(at_frame, n)
        lp = self._filters.get(factor)
        if lp is None:
            lp = self._filters.setdefault(factor, _lowpass(factor))
        half = (len(lp) - 1) // 2  # centred filter: no extra delay
        wide = self._echo48(at_frame * factor - half, n * factor + 2 * half)
        out: Float64Array = _fft_convolve_valid(wide, lp)[::factor]
        return out

    def _echo48(self, start: int, count: int) -> Float64Array:
        """Echo at 48 kHz for frames ``start`` .. ``start + count``."""
        taps = len(self.ir)
        x = self._played_span(start - self.delay_frames - taps + 1, count + taps - 1)
        if taps == 1:
            out: Float64Array = x * self.ir[0]
            return out
        return _fft_convolve_valid(x, self.ir)

    def _played_span(self, start: int, count: int) -> Float64Array:
        """Played samples for frames ``start`` .. ``start + count`` (zeros where unknown)."""
        out = np.zeros(count)
        size = len(self._ring)
        with self._lock:
            lo = max(start, self._end - size, 0)
            hi = min(start + count, self._end)
            if hi > lo:
                idx = np.arange(lo, hi) % size
                out[lo - start : hi - start] = self._ring[idx]
        return out

    def _fill(self, at_frame: int, x: Float64Array) -> None:
        idx = (np.arange(len(x)) + at_frame) % len(self._ring)
        self._ring[idx] = x


# ---------------------------------------------------------------- noise


class NoiseSource:
    """Background noise as a function of the shared clock: ``read(n, rate, at_frame)``.

    Pink (white shaped to 1/f by FFT) and white noise loop a seeded table of
    ``8 s``; hum is 50 Hz plus four harmonics. Every kind is scaled to exactly
    ``level_dbfs`` RMS, and the same frames always give the same samples. The tables of
    ``rates`` are drawn here, not on the first read: drawing one takes tens of ms, which
    a microphone's first block must not wait for (a real room's noise costs nothing).
    """

    def __init__(
        self, spec: NoiseSpec, *, seed: int = 1, rates: tuple[int, ...] = NOISE_RATES
    ) -> None:
        self.spec = spec
        self.seed = seed
        self._rms = FULL_SCALE * 10 ** (spec.level_dbfs / 20)
        self._tables: dict[int, Float64Array] = {}
        self._lock = threading.Lock()
        if spec.kind != "hum":
            for rate in rates:
                self._table(rate)

    def read(self, n: int, rate: int, at_frame: int) -> Float64Array:
        """``n`` samples of noise at ``rate`` from frame ``at_frame`` on (int16 scale)."""
        frames = np.arange(at_frame, at_frame + n)
        if self.spec.kind == "hum":
            return self._hum(frames / rate)
        table = self._table(rate)
        out: Float64Array = table[frames % len(table)]
        return out

    def _hum(self, t: Float64Array) -> Float64Array:
        amps = np.array(_HUM_HARMONICS)
        scale = self._rms / math.sqrt(float(np.sum(amps**2)) / 2)
        out = np.zeros(len(t))
        for k, a in enumerate(_HUM_HARMONICS, start=1):
            out += (a * scale) * np.sin(2 * math.pi * _HUM_HZ * k * t)
        return out

    def _table(self, rate: int) -> Float64Array:
        with self._lock:
            table = self._tables.get(rate)
            if table is None:
                table = self._tables[rate] = self._make_table(rate)
        return table

    def _make_table(self, rate: int) -> Float64Array:
        length = int(_NOISE_TABLE_S * rate)
        white = np.random.default_rng((self.seed, rate)).standard_normal(length)
        if self.spec.kind == "pink":
            spectrum = np.fft.rfft(white)
            freqs = np.fft.rfftfreq(length, 1 / rate)
            spectrum /= np.sqrt(np.maximum(freqs, _PINK_LOW_HZ))  # power falls as 1/f
            spectrum[0] = 0.0
            white = np.fft.irfft(spectrum, length)
        white -= np.mean(white)
        out: Float64Array = white * (self._rms / math.sqrt(float(np.mean(white**2))))
        return out


# ---------------------------------------------------------------- mixing


def to_int16(mix: Float64Array) -> Int16Array:
    """Round and clip a mix in int16 scale to int16 (a microphone's ADC saturates)."""
    return np.clip(np.round(mix), -32768, 32767).astype(np.int16)


def dbfs(x: npt.NDArray[np.floating] | Int16Array) -> float:
    """RMS level of ``x`` in dBFS (int16 scale; -inf for silence)."""
    ms = float(np.mean(np.square(x.astype(np.float64)))) if len(x) else 0.0
    return 10 * math.log10(ms / FULL_SCALE**2) if ms > 0 else -math.inf


# ---------------------------------------------------------------- a talker


_FORMANTS: Final = ((300.0, 850.0, 80.0), (850.0, 2300.0, 120.0), (2300.0, 3100.0, 200.0))
"""(low, high, bandwidth) Hz of the first three formants of the vowels we draw."""


def speech_like(
    seconds: float, rate: int, *, seed: int = 0, level_dbfs: float = -20.0
) -> Int16Array:
    """A deterministic speech-like signal: voiced syllables with moving pitch and formants.

    Syllables of 120-350 ms (harmonics of a 90-230 Hz gliding pitch, shaped by three
    formants and a spectral tilt) in words separated by 150-600 ms pauses, scaled so the
    active part is ``level_dbfs`` RMS. Good enough to exercise echo cancellers and voice
    detectors where a recording is not at hand.
    """
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    out = np.zeros(total)
    pos = int(rng.uniform(0.05, 0.2) * rate)
    while pos < total:
        for _ in range(int(rng.integers(1, 5))):  # a word of 1-4 syllables
            length = int(rng.uniform(0.12, 0.35) * rate)
            end = min(pos + length, total)
            out[pos:end] = _syllable(rng, rate, length)[: end - pos]
            pos = end
        pos += int(rng.uniform(0.15, 0.6) * rate)
    active = out[np.abs(out) > 0]
    if len(active):
        out *= FULL_SCALE * 10 ** (level_dbfs / 20) / math.sqrt(float(np.mean(active**2)))
    return to_int16(out)


def _syllable(rng: np.random.Generator, rate: int, length: int) -> Float64Array:
    t = np.arange(length) / rate
    f0 = rng.uniform(90, 230) * (1 + rng.uniform(-0.25, 0.25) * t / t[-1])
    phase = 2 * math.pi * np.cumsum(f0) / rate
    start = [rng.uniform(lo, hi) for lo, hi, _ in _FORMANTS]
    stop = [rng.uniform(lo, hi) for lo, hi, _ in _FORMANTS]
    voice = np.zeros(length)
    top = min(7000.0, 0.45 * rate)
    for k in range(1, int(top / 90) + 1):
        fk = k * f0
        gain = np.zeros(length)
        for (_, _, bw), a, b in zip(_FORMANTS, start, stop, strict=True):
            centre = a + (b - a) * t / t[-1]
            gain += 1 / (1 + ((fk - centre) / bw) ** 2)
        gain *= (fk < top) / np.sqrt(k)  # glottal tilt, no aliasing
        voice += gain * np.sin(k * phase)
    envelope = np.sin(math.pi * np.arange(length) / length) ** 0.5
    out: Float64Array = voice * envelope
    return out
