"""The listening side: frames from the network into one jitter buffer per speaker,
and one mixed block out per playback period.

:meth:`Receiver.on_frame` runs on the MQTT network thread and :meth:`Receiver.render`
on PortAudio's playback thread; neither waits on the event loop. The map of streams is
copy-on-write: writers build a new dict under a small lock and swap it in, so the
playback thread reads it without locking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.audio.jitter import JitterBuffer, JitterConfig, JitterStats
from appliance.audio.mixer import Mixer
from appliance.audio.profile import PLAYBACK_PERIOD_MS, PLAYBACK_RATE
from appliance.protocol import frames
from appliance.protocol.voice import Opener

PERIOD_SAMPLES = PLAYBACK_RATE * PLAYBACK_PERIOD_MS // 1000


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    """Totals over every stream heard so far."""

    frames_received: int
    frames_concealed: int
    fec_recovered: int
    late: int
    duplicate: int
    jitter_ms: float
    dropped_unheard: int
    dropped_malformed: int
    """Frames that did not open (malformed, version 1, unknown epoch, failed tag) or
    did not decode: the ``frames_rejected`` of ``/status``."""


class Receiver:
    """Plays every heard speaker of the current room, mixed; drops and counts the rest
    (a listener who publishes anyway is never played)."""

    def __init__(
        self,
        jitter: JitterConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jitter_config = jitter or JitterConfig(period_ms=PLAYBACK_PERIOD_MS)
        self._clock = clock
        self._mixer = Mixer(PERIOD_SAMPLES)
        self._silence = bytes(PERIOD_SAMPLES * 2)
        self._streams: dict[str, JitterBuffer] = {}
        self._lock = threading.Lock()  # writers only
        self._heard: frozenset[str] = frozenset()
        self._retired = _Totals()
        self._opener = Opener(clock=clock)
        self._keys_lock = threading.Lock()  # keys come from the loop, frames from the network
        self.dropped_unheard = 0
        self.dropped_malformed = 0

    def set_heard(self, user_ids: frozenset[str]) -> None:
        """Whose streams to play: the room's seated members with the mic on, not us."""
        with self._lock:
            self._heard = user_ids
            keep = {u: b for u, b in self._streams.items() if u in user_ids}
            gone = [b for u, b in self._streams.items() if u not in user_ids]
            self._streams = keep
        for buffer in gone:
            self._retired.add(buffer.stats())
            buffer.close()

    def add_key(self, epoch: int, key: bytes, *, new_room: bool = False) -> None:
        """A voice key of the room (``new_room``: forget the previous room's keys)."""
        with self._keys_lock:
            if new_room:
                self._opener.clear()
            self._opener.add_key(epoch, key)

    def on_frame(self, user_id: str, topic: str, payload: bytes, arrival: float) -> None:
        """A sealed frame of the current room from the network (network thread): opened
        with the key of its epoch, or dropped and counted (docs/protocol.md 7.1)."""
        if user_id not in self._heard:
            self.dropped_unheard += 1
            return
        try:
            with self._keys_lock:
                frame = self._opener.open(payload, topic).audio()
        except frames.FrameError:
            self.dropped_malformed += 1
            return
        buffer = self._streams.get(user_id) or self._open_stream(user_id)
        if buffer is not None:
            buffer.push(frame, arrival)

    def _open_stream(self, user_id: str) -> JitterBuffer | None:
        with self._lock:
            if user_id not in self._heard:
                return None  # un-heard while we were getting here
            buffer = self._streams.get(user_id)
            if buffer is None:
                buffer = JitterBuffer(self._jitter_config)
                self._streams = {**self._streams, user_id: buffer}
            return buffer

    def render(self) -> bytes:
        """One playback period of everyone heard, mixed (playback thread)."""
        streams = self._streams  # one read of the reference: a consistent snapshot
        if not streams:
            return self._silence  # nobody heard: no mix, no copy
        now = self._clock()
        blocks = [block for buffer in streams.values() if (block := buffer.pull(now)) is not None]
        if not blocks:
            return self._silence  # every stream idle (DTX, between spurts)
        return self._mixer.mix(blocks).tobytes()

    def stats(self) -> ReceiveStats:
        """Counters over all streams, past and present."""
        totals = self._retired.copy()
        live = [buffer.stats() for buffer in self._streams.values()]
        for s in live:
            totals.add(s)
        return ReceiveStats(
            frames_received=totals.received,
            frames_concealed=totals.concealed,
            fec_recovered=totals.fec_recovered,
            late=totals.late,
            duplicate=totals.duplicate,
            jitter_ms=max((s.jitter_ms for s in live), default=0.0),
            dropped_unheard=self.dropped_unheard,
            dropped_malformed=self.dropped_malformed + totals.decode_errors,
        )

    def close(self) -> None:
        """Free every stream's decoder."""
        self.set_heard(frozenset())


@dataclass(slots=True)
class _Totals:
    received: int = 0
    concealed: int = 0
    fec_recovered: int = 0
    late: int = 0
    duplicate: int = 0
    decode_errors: int = 0

    def add(self, s: JitterStats) -> None:
        self.received += s.received
        self.concealed += s.concealed
        self.fec_recovered += s.fec_recovered
        self.late += s.late
        self.duplicate += s.duplicate
        self.decode_errors += s.decode_errors

    def copy(self) -> _Totals:
        return _Totals(
            self.received, self.concealed, self.fec_recovered, self.late, self.duplicate,
            self.decode_errors,
        )  # fmt: skip
