"""The hands-free capture chain: echo cancellation, noise suppression, gain, voice activity.

The box's own speaker is heard by its own microphone. Before encoding, every captured
block goes through WebRTC's audio processing module (the ``pywebrtc-audio`` binding):
AEC3 echo cancellation against exactly what the speaker played, noise suppression, AGC2
automatic gain control held while only the far end is heard, a debounced voice-activity
decision from its speech probability, and last the howl guard (:mod:`.howl`). The chain
is built from one :class:`~appliance.audio.config.HandsFreeConfig`; each stage is a
switch in ``[audio]``.

Two threads meet here, and only through a small reference ring buffer:

* the playback callback calls :meth:`CaptureChain.render` with every block it wrote to
  the speaker (48 kHz int16, any multiple of 10 ms); at a 16 kHz capture rate it is
  decimated here, so the ring holds the reference at the capture rate;
* the capture callback calls :meth:`CaptureChain.process` with each captured block
  (20 or 40 ms); it takes as many reference samples as it has capture samples and runs
  the WebRTC module on 10 ms frames. Only this thread touches the (not thread-safe)
  WebRTC instance, so the lock guards a memcpy, never DSP.

The delay between the reference and its echo in the capture differs on every card and
is never configured: AEC3's delay estimator finds it (the hint is left at 0). The ring
keeps the two streams on one sample clock and starts each capture run on the reference
played when the run's first block was captured (by the streams' time stamps), so the
echo always comes *after* its reference, and close enough for AEC3 to find it.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from appliance.audio.config import GainTuning, HandsFreeConfig
from appliance.audio.howl import HowlGuard
from appliance.audio.profile import PLAYBACK_RATE

try:
    import pywebrtc_audio
except ImportError as exc:  # pragma: no cover - the appliance depends on it
    raise ImportError(
        "the hands-free capture chain needs the pywebrtc-audio package "
        "(WebRTC audio processing): pip install 'pywebrtc-audio>=0.2,<0.3'"
    ) from exc

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

RATES: Final = (16_000, 32_000, 48_000)
"""Capture rates the chain runs at (WebRTC's native band rates; the reference is 48 kHz)."""
FRAME_MS: Final = 10  # WebRTC processes 10 ms frames
RING_MS: Final = 500  # reference kept while capture is closed or late
MARGIN_MS: Final = 10  # reference kept back at a (re)start: one playback period of jitter
# Reference further ahead than this: the two clocks drifted apart (or capture lost
# samples): resync. A capture callback merely late still delivers its samples in order,
# so a stall shorter than this keeps the alignment the echo canceller has learned.
SLACK_MS: Final = 250
AHEAD_MS: Final = 60  # capture read this much reference before it was played: realign
TOLERANCE_MS: Final = 30  # off the streams' time stamps by more: realign (a lost period)
SPEECH_PROBABILITY: Final = 0.5
MIN_SPEECH_DBFS: Final = -60.0  # quieter than this after AEC and NS is no talker
MIN_KEPT_DB: Final = -15.0  # AEC and NS took more than this off: echo or noise, not speech
ONSET_FRAMES: Final = 2  # 20 ms of speech turns `speaking` on (a click does not)
HANGOVER_FRAMES: Final = 30  # 300 ms without speech turns it off (not between words)
FLOOR_DBFS: Final = -100.0
"""What :attr:`CaptureChain.level_dbfs` reads when nobody speaks."""
LEVEL_ATTACK: Final = 0.5  # per 10 ms frame: a meter that rises within ~30 ms ...
LEVEL_RELEASE: Final = 0.05  # ... and falls over ~200 ms
FAR_ACTIVE_DBFS: Final = -55.0  # a reference louder than this: the far end is heard ...
FAR_HANGOVER_FRAMES: Final = 30  # ... and its echo rings on 300 ms (a room's tail)
_FULL_SCALE_SQ: Final = 32768.0**2
MIN_SPEECH_POWER: Final = _FULL_SCALE_SQ * 10 ** (MIN_SPEECH_DBFS / 10)
MIN_KEPT_RATIO: Final = 10 ** (MIN_KEPT_DB / 10)
FAR_ACTIVE_POWER: Final = _FULL_SCALE_SQ * 10 ** (FAR_ACTIVE_DBFS / 10)
_DECIMATE_TAPS_PER_PHASE: Final = 16


class ReferenceRing:
    """The far-end reference on the capture clock: written by playback, read by capture.

    Samples are addressed by their absolute position on the playback sample clock
    (converted to the capture rate). ``write`` appends; ``read(n)`` returns the next
    ``n`` positions, zeros where playback has not written them yet (those samples are
    then skipped when they arrive, so the two clocks never slide against each other).

    Where a capture run starts on the reference is what decides whether the echo
    canceller can work at all: the echo of a played sample must come *after* it, and
    within the canceller's reach. Both PortAudio streams stamp their blocks on one
    monotonic clock (the DAC time of a played block, the ADC time of a captured one),
    so a run starts on the reference played when its first block was captured, less a
    margin. Without time stamps it starts on the newest reference, which is right only
    if the first capture block is on time: one held up while playback went on (a
    callback late at the mic's opening) would start the run ahead, and its catch-up
    burst would then read reference that was never played: silence, for the whole run.
    Reading ahead of playback for longer than :data:`AHEAD_MS` therefore realigns too.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._buf = np.zeros(rate * RING_MS // 1000, dtype=np.int16)
        self._margin = rate * MARGIN_MS // 1000
        self._slack = rate * SLACK_MS // 1000
        self._ahead_limit = rate * AHEAD_MS // 1000
        self._tolerance = rate * TOLERANCE_MS // 1000
        self._written = 0  # positions written so far (the next write goes here)
        self._read: int | None = None  # next position to read; None: resync first
        self._ahead = 0  # positions read before playback wrote them, in a row
        self._anchor: tuple[int, float] | None = None  # (position, its DAC time)
        self._lock = threading.Lock()
        self.resyncs = 0  # times the capture side (re)started its run on the reference

    def write(self, pcm: Int16Array, dac_time: float | None = None) -> None:
        """Append reference samples (the playback thread); ``dac_time``: when the first
        of them leaves the speaker (``time.monotonic()`` seconds), if known."""
        size, total = len(self._buf), len(pcm)
        pcm = pcm[-size:]  # a block longer than the ring: only its end can still be read
        with self._lock:
            if dac_time:
                self._anchor = (self._written, dac_time)
            start = (self._written + total - len(pcm)) % size
            first = min(len(pcm), size - start)  # the ring wraps at most once
            self._buf[start : start + first] = pcm[:first]
            self._buf[: len(pcm) - first] = pcm[first:]
            self._written += total

    def read(self, out: Int16Array, adc_time: float | None = None) -> None:
        """Fill ``out`` with the next reference samples (the capture thread);
        ``adc_time``: when the first of them was captured, if known."""
        n, size = len(out), len(self._buf)
        with self._lock:
            by_time = self._position_at(adc_time)
            if self._misaligned(n, by_time):
                self._read = self._clamp(n, by_time)
                self._ahead = 0
                self.resyncs += 1
            assert self._read is not None
            lo, count = self._read, max(0, min(n, self._written - self._read))
            self._read += n
            self._ahead = self._ahead + n - count if count < n else 0
            start = lo % size
            first = min(count, size - start)  # the ring wraps at most once
            out[:first] = self._buf[start : start + first]
            out[first:count] = self._buf[: count - first]
        out[count:] = 0  # not played yet: silence now, and skipped when it comes

    def _position_at(self, adc_time: float | None) -> int | None:
        """The reference position played at ``adc_time``, a margin back (None: unknown)."""
        if not adc_time or self._anchor is None:
            return None
        position, dac_time = self._anchor
        offset = adc_time - dac_time
        if abs(offset) > RING_MS / 1000:  # not one clock, or stale: trust the count
            return None
        return position + round(offset * self.rate) - self._margin

    def _misaligned(self, n: int, by_time: int | None) -> bool:
        """Whether the run must (re)start: new, reading unplayed reference, or off the
        time stamps by more than :data:`TOLERANCE_MS` (or, without them, by more than
        :data:`SLACK_MS` behind: clocks drifted or samples were lost)."""
        if self._read is None or self._ahead > self._ahead_limit:
            return True
        if by_time is not None:
            return abs(self._read - by_time) > self._tolerance
        return self._written - self._read > n + self._margin + self._slack

    def _clamp(self, n: int, by_time: int | None) -> int:
        """Where a run starts: ``by_time`` if known, else the newest reference (both
        within what the ring holds and what was played)."""
        newest = self._written - n - self._margin
        at = newest if by_time is None else min(by_time, self._written - n)
        return max(0, self._written - len(self._buf), at)

    def restart(self) -> None:
        """The next read starts a new run (see the class's docstring for where)."""
        with self._lock:
            self._read = None


class Decimator:
    """48 kHz to ``48 kHz / factor``: a polyphase Kaiser-windowed-sinc low-pass.

    Keeps its history across calls, so blocks of any multiple of ``factor`` samples join
    without a seam. The work is one matrix-vector product per block.
    """

    def __init__(self, factor: int) -> None:
        self.factor = factor
        taps = _DECIMATE_TAPS_PER_PHASE * factor
        n = np.arange(taps) - (taps - 1) / 2
        cutoff = 0.9 / (2 * factor)  # of the input rate: 7.2 kHz of a 16 kHz output
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
        self._h: Float32Array = (h / np.sum(h))[::-1].astype(np.float32)
        # Causal, so the reference comes out ~0.45 ms late: AEC3 estimates the delay anyway.
        self.delay = (taps - 1) / 2 - (factor - 1)
        """Group delay in input samples."""
        self._hist: Float32Array = np.zeros(taps - 1, dtype=np.float32)
        self._work: Float32Array = np.zeros(0, dtype=np.float32)

    def process(self, pcm: Int16Array) -> Int16Array:
        """Decimate one block (``len(pcm)`` must be a multiple of ``factor``)."""
        f, keep = self.factor, len(self._hist)
        if len(pcm) % f:
            raise ValueError(f"block of {len(pcm)} samples is not a multiple of {f}")
        if len(self._work) != keep + len(pcm):
            self._work = np.zeros(keep + len(pcm), dtype=np.float32)
        work = self._work
        work[:keep] = self._hist
        work[keep:] = pcm
        self._hist[:] = work[len(pcm) :]
        frames = np.lib.stride_tricks.as_strided(
            work[f - 1 :], shape=(len(pcm) // f, keep + 1), strides=(f * 4, 4), writeable=False
        )
        y: Float32Array = frames @ self._h
        out: Int16Array = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return out


class VoiceActivity:
    """A debounced ``speaking`` flag and a speech-level meter, fed one 10 ms frame at a time.

    WebRTC's speech probability is spectral, hence blind to level: it calls digital
    silence and a faint residual echo speech. So a frame only counts as speech if it is
    also loud enough after echo cancellation and noise suppression, and if those did
    not remove most of it (then it was echo or noise, not a near-end talker).
    """

    def __init__(self) -> None:
        self.speaking = False
        self.level_dbfs = FLOOR_DBFS
        self._run = 0  # consecutive frames that disagree with `speaking`

    @staticmethod
    def is_speech(probability: float, before: Int16Array, after: Int16Array) -> bool:
        """Whether one frame is near-end speech (``before``/``after`` the AEC and NS)."""
        if probability < SPEECH_PROBABILITY:
            return False
        kept = _power(after)
        if kept < MIN_SPEECH_POWER:
            return False
        return kept >= _power(before) * MIN_KEPT_RATIO

    def update(self, active: bool, frame: Int16Array) -> None:
        """One frame's decision (:meth:`is_speech`) and its samples after the chain."""
        if active == self.speaking:
            self._run = 0
        else:
            self._run += 1
            if self._run >= (ONSET_FRAMES if active else HANGOVER_FRAMES):
                self.speaking, self._run = active, 0
        if not self.speaking:
            self.level_dbfs = FLOOR_DBFS
        elif active:
            self._meter(frame)

    def _meter(self, frame: Int16Array) -> None:
        power = _power(frame)
        db = 10 * math.log10(power / _FULL_SCALE_SQ) if power > 0 else FLOOR_DBFS
        if self.level_dbfs <= FLOOR_DBFS:
            self.level_dbfs = db  # the first frame of a spurt sets the meter
        else:
            alpha = LEVEL_ATTACK if db > self.level_dbfs else LEVEL_RELEASE
            self.level_dbfs += alpha * (db - self.level_dbfs)


def _power(frame: Int16Array) -> float:
    """Mean square of an int16 frame (in int16 units squared)."""
    x = frame.astype(np.float32)
    return float(np.dot(x, x)) / len(x)


class FarEnd:
    """Whether the far end is heard: its reference, with a hangover for the room's tail."""

    def __init__(self, frame: int) -> None:
        self._frame = frame
        self._left = 0  # frames the far end still counts as heard

    def update(self, far: Int16Array | None) -> bool:
        """One block of reference, a whole number of 10 ms frames; True while heard
        (never without a reference: no echo canceller, nothing known of the far end)."""
        if far is None:
            return False
        if _power(far) >= FAR_ACTIVE_POWER:
            self._left = FAR_HANGOVER_FRAMES
        else:
            self._left = max(0, self._left - len(far) // self._frame)
        return self._left > 0


class GainStage:
    """WebRTC AGC2, fed the chain's own voice decision, and held on the far end.

    AGC2 starts at +15 dB, a gain chosen for nobody: until the first near-end speech
    sets it, the stage leaves the level alone (a silent listener on stage sent its
    residual echo and noise 15 dB louder than it had to). Left to its own voice
    detector it takes residual echo for speech and raises it by ~20 dB, so it gets the
    chain's decision instead. And while the far end is heard and nobody near speaks,
    what is left is residual echo or a feedback tone: the stage then neither adapts nor
    amplifies (its output fades to its input over one frame, and back).
    """

    def __init__(self, rate: int, tuning: GainTuning) -> None:
        self.tuning = tuning
        self._agc: Any = pywebrtc_audio.GainController(
            sample_rate=rate, max_gain_db=tuning.max_gain_db, headroom_db=tuning.headroom_db
        )
        self._started = False
        self._mix = 0.0  # 1: the AGC's output, 0: its input (held)

    @property
    def gain_db(self) -> float:
        """AGC2's gain now (0 before the first near-end speech)."""
        return float(self._agc.gain_db) if self._started else 0.0

    def process(self, frame: Int16Array, speech: bool, far_heard: bool) -> None:
        """One 10 ms frame, in place."""
        if not (speech or self._started):
            return
        self._started = True
        hold = self.tuning.hold_on_far_end and far_heard and not speech
        gained: Int16Array = self._agc.process(frame, 0.0 if hold else float(speech))
        mix = 0.0 if hold else 1.0
        if mix != self._mix:  # a fade over the frame: no click
            ramp = np.linspace(self._mix, mix, len(frame), dtype=np.float32)
            frame[:] = np.rint(frame + ramp * (gained.astype(np.float32) - frame)).astype(np.int16)
        elif mix:
            frame[:] = gained
        self._mix = mix


class CaptureChain:
    """Capture -> echo cancellation -> noise suppression -> gain -> voice activity, and
    the howl guard on what leaves.

    Built from a :class:`~appliance.audio.config.HandsFreeConfig` (a stage is off where
    its tuning is ``None``). ``render`` on the playback thread, ``process`` on the
    capture thread; ``speaking``, ``level_dbfs`` and ``howl_events`` may be read from
    anywhere (plain attribute reads).
    """

    def __init__(self, rate: int, config: HandsFreeConfig | None = None) -> None:
        if rate not in RATES:
            raise ValueError(f"capture rate must be one of {RATES}, not {rate}")
        config = HandsFreeConfig() if config is None else config
        self.rate = rate
        self.config = config
        # The far end's reference: what the echo canceller cancels, and what tells the
        # gain stage to hold. Without the canceller there is none: the voice decision
        # could not tell echo from a talker anyway.
        self._reference_wanted = config.echo is not None
        self.frame = rate * FRAME_MS // 1000
        self._aec: Any = (
            pywebrtc_audio.EchoCanceller(sample_rate=rate, stream_delay_ms=0)  # 0: estimated
            if config.echo
            else None
        )
        # Separate modules rather than the binding's AudioProcessor: at 32 and 48 kHz
        # (0.2.0) that one ignores ns_level and suppresses ~6 dB whatever is asked.
        self._ns: Any = (
            pywebrtc_audio.NoiseSuppressor(sample_rate=rate, level=config.noise.level)
            if config.noise
            else None
        )
        # Without NS, the same spectral speech analysis minus the filter.
        self._detector: Any = None if config.noise else pywebrtc_audio.VoiceDetector(rate)
        self.gain = GainStage(rate, config.gain) if config.gain else None
        self.howl: HowlGuard | None = None  # made for the first block's size
        self._far_end = FarEnd(self.frame)
        factor = PLAYBACK_RATE // rate
        self._decimator = Decimator(factor) if factor > 1 else None
        self.reference = ReferenceRing(rate)
        self._far: Int16Array = np.zeros(0, dtype=np.int16)
        self._out: Int16Array = np.zeros(0, dtype=np.int16)
        self._vad = VoiceActivity()

    @property
    def speaking(self) -> bool:
        """Debounced voice activity after the chain (echo alone does not count)."""
        return self._vad.speaking

    @property
    def level_dbfs(self) -> float:
        """Smoothed RMS level of speech after the chain; :data:`FLOOR_DBFS` when silent."""
        return self._vad.level_dbfs

    @property
    def howl_events(self) -> int:
        """Howls the guard has cut."""
        return 0 if self.howl is None else self.howl.events

    def render(self, pcm: Int16Array, dac_time: float | None = None) -> None:
        """What the playback callback just wrote to the speaker (48 kHz, n x 10 ms);
        ``dac_time``: when it starts to play (PortAudio's, if it says)."""
        if not self._reference_wanted:
            return
        reference = self._decimator.process(pcm) if self._decimator else pcm
        self.reference.write(reference, dac_time)

    def process(self, pcm: Int16Array, adc_time: float | None = None) -> Int16Array:
        """Run one captured block (a multiple of 10 ms) through the chain; ``adc_time``:
        when its first sample was captured (PortAudio's, if it says).

        Returns a view of an internal buffer, valid until the next call (the encoder
        reads it at once).
        """
        n = len(pcm)
        if n % self.frame or n == 0:
            raise ValueError(f"block of {n} samples is not a multiple of {self.frame}")
        if len(self._out) != n:
            self._out, self._far = np.zeros(n, np.int16), np.zeros(n, np.int16)
            if self.config.howl is not None:
                self.howl = HowlGuard(self.rate, n, self.config.howl)
        far: Int16Array | None = None
        if self._reference_wanted:
            self.reference.read(self._far, adc_time)
            far = self._far
        far_heard = self._far_end.update(far)
        for at in range(0, n, self.frame):
            self._frame(pcm[at : at + self.frame], far, at, far_heard)
        if self.howl is not None:
            self.howl.process(self._out, pcm)
        return self._out

    def _frame(self, near: Int16Array, far: Int16Array | None, at: int, far_heard: bool) -> None:
        """One 10 ms frame through the chain into ``self._out[at:]``."""
        out = self._out[at : at + self.frame]
        if self._aec is not None and far is not None:
            out[:] = self._aec.process(near, far[at : at + self.frame])
        else:
            out[:] = near
        if self._ns is not None:
            out[:] = self._ns.process(out)
            probability = float(self._ns.speech_probability)
        else:
            probability = float(self._detector.process(out))
        active = self._vad.is_speech(probability, near, out)
        if self.gain is not None:
            self.gain.process(out, active, far_heard)
        self._vad.update(active, out)

    def restart(self) -> None:
        """A new capture run (the microphone reopened): realign the reference.

        The WebRTC state is kept: the room and its echo path have not changed.
        """
        self.reference.restart()
