"""The last line against acoustic feedback: a howl guard on the outgoing stream.

Two hands-free boxes on one stage form a loop: each one's speaker reaches its own
microphone and goes back to the other. With working echo cancellation the loop gain is
far below 1; if it ever is not (a cancellation that lost its reference, a room that
changed), the loop rings at the frequency where its gain is highest and builds up into
a howl within a second or two. What makes a howl different from a voice is that it is
narrow-band tones (one, or two modes it hops between) that hold: a voice spreads its
power over many harmonics, and pauses between words.

:class:`HowlGuard` looks at every outgoing block's spectrum. Blocks whose power sits
mostly in one narrow peak (tonal), one after another for :attr:`HowlTuning.hold_ms`,
are a howl if the tone has grown by :attr:`HowlTuning.grow_db` meanwhile (a loop
building up; a test tone or a whistle starts at its level) or rings louder than
:attr:`HowlTuning.loud_dbfs` (a loop already at its limit): the guard cuts the stream by
:attr:`HowlTuning.cut_db` at once, keeps it cut while the tone is there, and lifts the
cut gradually once it has been gone for :attr:`HowlTuning.release_ms`. Each cut counts
as one event (``howl_events`` in ``/status``). Cutting the whole stream rather than
notching the tone is deliberate: a box whose stream howls is sending nothing worth
hearing, and the cut breaks the loop for every frequency at once.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.config import HowlTuning

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

LOW_HZ: Final = 150.0  # mains hum and room rumble are no howl
HIGH_HZ: Final = 7_500.0  # what a 16 kHz stream still carries
_FULL_SCALE_SQ: Final = 32768.0**2


class HowlGuard:
    """Watches and, when it howls, cuts an outgoing stream of ``block``-sample blocks."""

    def __init__(self, rate: int, block: int, tuning: HowlTuning) -> None:
        self.tuning = tuning
        self.events = 0
        """Howls cut since the guard was made."""
        self._block_s = block / rate
        self._window: Float32Array = np.hanning(block).astype(np.float32)
        freqs = np.fft.rfftfreq(block, 1 / rate)
        low, high = np.searchsorted(freqs, LOW_HZ), np.searchsorted(freqs, HIGH_HZ)
        self._band = slice(int(low), int(high))
        # The window's gain on a tone's power, so a tone's level reads as its RMS.
        self._window_power = float(np.sum(self._window) ** 2) / 2
        self._min_power = _FULL_SCALE_SQ * 10 ** (tuning.min_dbfs / 10)
        self._hold_blocks = max(1, math.ceil(tuning.hold_ms / 1000 / self._block_s))
        self._release_blocks = max(1, math.ceil(tuning.release_ms / 1000 / self._block_s))
        self._recover_db = tuning.recover_db_per_s * self._block_s
        self._run = 0  # tonal blocks in a row
        self._tone_powers: deque[float] = deque(maxlen=self._hold_blocks)  # the tone's power
        self._mic: deque[float] = deque(maxlen=self._hold_blocks)  # the microphone's, meanwhile
        self._grow_ratio = 10 ** (tuning.grow_db / 10)
        self._step_ratio = 10 ** (tuning.grow_db / 4 / 10)  # each third grows a quarter of it
        self._loud_power = _FULL_SCALE_SQ * 10 ** (tuning.loud_dbfs / 10)
        self._gone = 0  # blocks since a tone was last seen while cutting
        self.gain_db = 0.0
        """The gain applied now: 0, or up to :attr:`HowlTuning.cut_db` while cutting."""

    @property
    def cutting(self) -> bool:
        """Whether a howl is being cut (or the cut is still being lifted)."""
        return self.gain_db < 0.0

    def process(self, pcm: Int16Array, mic: Int16Array | None = None) -> None:
        """Look at one outgoing block and, while it howls, cut it (in place).

        ``mic``: the microphone's block it came from (default: ``pcm``), where the guard
        looks for a build-up. A loop builds up in the room: a gain lifting a steady tone
        at its first speech, or the echo canceller letting a near talker through once
        the far end starts, is no build-up.
        """
        tone = self._tone(pcm)
        self._follow(tone, pcm if mic is None else mic)
        before = self.gain_db
        self._steer(tone is not None)
        if before != 0.0 or self.gain_db != 0.0:
            self._apply(pcm, before, self.gain_db)

    def _tone(self, pcm: Int16Array) -> tuple[int, float] | None:
        """The block's tonal peak (bin, power as a tone's mean square), if it has one."""
        x = pcm.astype(np.float32)
        if float(np.dot(x, x)) < self._min_power * len(x):  # too quiet to howl: no FFT
            return None
        spectrum = np.fft.rfft(x * self._window)
        power = (spectrum.real**2 + spectrum.imag**2)[self._band]
        k = int(np.argmax(power))
        peak = float(np.sum(power[max(0, k - 1) : k + 2]))
        if peak < self._min_power * self._window_power:
            return None
        if peak < self.tuning.tone_share * float(np.sum(power)):
            return None
        return k, peak / self._window_power

    def _follow(self, tone: tuple[int, float] | None, mic: Int16Array) -> None:
        """Count the tonal blocks in a row (a loop may hop between its modes)."""
        if tone is None:
            self._run = 0
            self._tone_powers.clear()
            self._mic.clear()
            return
        self._run += 1
        self._tone_powers.append(tone[1])
        x = mic.astype(np.float32)
        self._mic.append(float(np.dot(x, x)) / len(x))

    @property
    def _howling(self) -> bool:
        """Tonal long enough, and either ringing at a level no voice holds as a pure
        tone, or building up in the microphone: each third of the hold louder there than
        the one before (by medians), the last by :attr:`HowlTuning.grow_db` over the
        first. A loop grows round trip after round trip; a level that steps up once is
        flat in two of the thirds."""
        if self._run < self._hold_blocks:
            return False
        if _median(list(self._tone_powers)) >= self._loud_power:
            return True
        mic, third = list(self._mic), max(1, self._hold_blocks // 3)
        thirds = (mic[:third], mic[third:-third], mic[-third:])
        early, middle, late = (_median(part) for part in thirds)
        step = self._step_ratio
        return middle >= early * step and late >= middle * step and late >= early * self._grow_ratio

    def _steer(self, tonal: bool) -> None:
        """Cut at a howl's onset; lift the cut once the tone is gone."""
        if self._howling or (self.cutting and self._run >= self._hold_blocks):
            if self.gain_db == 0.0 or self._gone >= self._release_blocks:
                self.events += 1  # a new howl, not the same one held
            self.gain_db, self._gone = self.tuning.cut_db, 0
            return
        if not self.cutting:
            return
        self._gone = 0 if tonal else self._gone + 1
        if self._gone >= self._release_blocks:
            self.gain_db = min(0.0, self.gain_db + self._recover_db)

    @staticmethod
    def _apply(pcm: Int16Array, from_db: float, to_db: float) -> None:
        """Scale ``pcm`` by a gain ramping from ``from_db`` to ``to_db`` (no click)."""
        ramp = np.linspace(10 ** (from_db / 20), 10 ** (to_db / 20), len(pcm), dtype=np.float32)
        pcm[:] = np.rint(pcm * ramp).astype(np.int16)


def _median(values: list[float]) -> float:
    """The upper median (a third of a hold has an odd or even count alike)."""
    return sorted(values)[len(values) // 2]
