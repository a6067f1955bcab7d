"""The listening side: frames from the network into one jitter buffer per speaker,
and one mixed block out per playback period.

:meth:`Receiver.on_frame` runs on the MQTT network thread and :meth:`Receiver.render`
on PortAudio's playback thread; neither waits on the event loop. The map of streams is
copy-on-write: writers build a new dict under a small lock and swap it in, so the
playback thread reads it without locking.

A speaker who stops being heard (muted, stepped down) is not cut off mid-word: the
room state saying so usually comes after the last packets, which are still in the
jitter buffer. That stream *drains*: it plays out what it holds, to its end flag (or
until it runs dry), and only then is dropped. New frames from that speaker are
dropped and counted as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

from appliance.audio.jitter import JitterBuffer, JitterConfig, JitterStats, StreamState
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
    underrun_ms: float
    """Playout time during which a heard stream had nothing to play (not DTX silence)."""
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
        self._draining: dict[str, JitterBuffer] = {}  # no longer heard, playing out
        self._lock = threading.Lock()  # writers only
        self._heard: frozenset[str] = frozenset()
        self._retired = _Totals()
        self._opener = Opener(clock=clock)
        self._keys_lock = threading.Lock()  # keys come from the loop, frames from the network
        self.dropped_unheard = 0
        self.dropped_malformed = 0

    def set_heard(self, user_ids: frozenset[str]) -> None:
        """Whose streams to play: the room's seated members with the mic on, not us.

        A stream no longer heard plays out what it holds first (see the module doc).
        """
        with self._lock:
            self._heard = user_ids
            both = {**self._draining, **self._streams}
            self._streams = {u: b for u, b in both.items() if u in user_ids}
            gone = [b for u, b in both.items() if u not in user_ids and _done(b)]
            self._draining = {u: b for u, b in both.items() if u not in user_ids and not _done(b)}
        self._retire(gone)

    def _retire(self, buffers: list[JitterBuffer]) -> None:
        for buffer in buffers:
            with self._lock:
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
        draining = self._draining
        if not streams and not draining:
            return self._silence  # nobody heard: no mix, no copy
        now = self._clock()
        buffers = chain(streams.values(), draining.values()) if draining else streams.values()
        blocks = [block for buffer in buffers if (block := buffer.pull(now)) is not None]
        if draining and any(_done(b) for b in draining.values()):
            self._drop_drained()
        if not blocks:
            return self._silence  # every stream idle (DTX, between spurts)
        return self._mixer.mix(blocks).tobytes()

    def _drop_drained(self) -> None:
        """Drop the draining streams that have played out (playback thread)."""
        with self._lock:
            done = [b for b in self._draining.values() if _done(b)]
            self._draining = {u: b for u, b in self._draining.items() if not _done(b)}
        self._retire(done)

    def stats(self) -> ReceiveStats:
        """Counters over all streams, past and present."""
        with self._lock:
            totals = self._retired.copy()
        live = [buffer.stats() for buffer in self._streams.values()]
        for s in live + [buffer.stats() for buffer in self._draining.values()]:
            totals.add(s)
        return ReceiveStats(
            frames_received=totals.received,
            frames_concealed=totals.concealed,
            fec_recovered=totals.fec_recovered,
            late=totals.late,
            duplicate=totals.duplicate,
            jitter_ms=max((s.jitter_ms for s in live), default=0.0),
            underrun_ms=totals.underrun_ms,
            dropped_unheard=self.dropped_unheard,
            dropped_malformed=self.dropped_malformed + totals.decode_errors,
        )

    def close(self) -> None:
        """Free every stream's decoder (nothing drains)."""
        with self._lock:
            self._heard = frozenset()
            buffers = [*self._streams.values(), *self._draining.values()]
            self._streams, self._draining = {}, {}
        self._retire(buffers)


@dataclass(slots=True)
class _Totals:
    received: int = 0
    concealed: int = 0
    fec_recovered: int = 0
    late: int = 0
    duplicate: int = 0
    decode_errors: int = 0
    underrun_ms: float = 0.0

    def add(self, s: JitterStats) -> None:
        self.received += s.received
        self.concealed += s.concealed
        self.fec_recovered += s.fec_recovered
        self.late += s.late
        self.duplicate += s.duplicate
        self.decode_errors += s.decode_errors
        self.underrun_ms += s.underrun_ms

    def copy(self) -> _Totals:
        return _Totals(
            self.received, self.concealed, self.fec_recovered, self.late, self.duplicate,
            self.decode_errors, self.underrun_ms,
        )  # fmt: skip


def _done(buffer: JitterBuffer) -> bool:
    """Nothing left to play: the stream is idle (ended, ran dry, or never started)."""
    return buffer.state is StreamState.IDLE
