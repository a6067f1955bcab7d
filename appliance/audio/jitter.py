"""An adaptive jitter buffer for one speaker's Opus stream, on an injected clock.

Frames (:class:`~appliance.protocol.frames.AudioFrame`) are pushed with their arrival
time by the network thread; the playback thread pulls one output period of 48 kHz int16
PCM at a time. The buffer owns the stream's :class:`~appliance.audio.opus.Decoder`, so
decoding, in-band FEC and concealment happen inside :meth:`JitterBuffer.pull`.

How playout works
-----------------
* **Sequence numbers order playout, timestamps measure time.** Packets play in sequence
  order. A missing sequence number whose successor is already here is a loss: it is
  recovered from the successor's in-band FEC when that packet carries it (frame flag bit 0
  and the Opus LBRR bit), concealed with Opus PLC otherwise. A packet that arrives after
  its turn is *late* and dropped; one already held or played is a *duplicate*.
* **A timestamp gap without a sequence gap is DTX silence**, never a loss: zeros are
  played for it (entered through 5 ms of PLC faded out, left with a fade-in) and the
  gap is where the delay adapts: it is shortened or lengthened so the buffer leaves the
  silence at its target depth.
* **Target depth** is one packet plus ``jitter_factor`` x the RFC 3550 interarrival
  jitter, kept between 1 and 3 packets (configurable), and at least two for a while
  after a loss so that in-band FEC has its next packet. It is *not* rounded up to whole
  packets: with 1 ms of jitter that would cost a whole packet (+20 ms) at the start of
  every talk spurt. A stream starts playing once it holds the target, or the spurt's
  end, or once its first packet is the target less one packet behind the *transit
  floor* (the least recent arrival time less timestamp): a spurt waits
  ``jitter_factor`` x J for its first packet, not a packet more, and less by what that
  packet was late already, so a resumed talker plays at the usual delay.
* **Underrun** (nothing here to play, but no loss seen either): Opus PLC fills in and the
  playout waits for the packet, which adds delay; after ``max_underrun_ms`` the stream
  fades out and waits idle (a long silence), then re-buffers and resyncs on the next
  packet. The wait is counted in ``underrun_ms`` once the next packet tells what it
  was: the part its timestamp gap covers was DTX silence (the sender had nothing to
  send), only the rest was an underrun.
* **The decoder is reset** before the first packet after silence or idleness: after
  concealment Opus fades its next packet in from the concealed level, which made the
  first packet of every talk spurt ~5 dB quiet (5.2 dB after 5 ms, on a tone).
* **Shrinking**: when the depth has stayed a packet or more above target for a whole
  ``adapt_window_ms``, one packet is skipped between a 5 ms fade-out and fade-in. The
  **hard cap** (200 ms) drops the oldest packets at once, back to the target.
* **The end-of-spurt flag** (bit 1) ends the stream cleanly with a fade-out and no PLC
  tail; every (re)start fades in.
* Any packet duration (10/20/40/60 ms) and any encoder rate: the decoder outputs 48 kHz
  and timestamps count 48 kHz samples.

Threads: :meth:`push` and :meth:`pull` may run on different threads. One small lock
guards the packet map and playout bookkeeping; it is held for O(1) work per packet (dict
look-ups, a few integers; a cap drop or a run of losses walks the skipped sequence
numbers once), never while libopus runs. Each counter has a single writing
thread. :meth:`pull` returns a view of the buffer's own output block: it is overwritten
by the next pull, so mix or copy it first.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from appliance.audio import opus
from appliance.protocol.frames import TIMESTAMP_RATE, AudioFrame, seq_delta

RATE: Final = TIMESTAMP_RATE  # decoder output rate = timestamp units
_MS: Final = RATE // 1000
_GRANULE: Final = RATE * 5 // 2000  # decode sizes are multiples of 2.5 ms
_PACKET_SAMPLES: Final = frozenset({480, 960, 1920, 2880})  # 10, 20, 40, 60 ms
_MASK_BITS: Final = 64  # how many played sequence numbers we remember (duplicate vs late)
_MASK: Final = (1 << _MASK_BITS) - 1
_RFC3550_GAIN: Final = 1 / 16
_TOLERANCE: Final = 0.01  # of a packet
_FLOOR_RISE: Final = _MS // 2  # per packet: how fast the transit floor follows a slower path

_Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class JitterConfig:
    """Tuning of a :class:`JitterBuffer` (the ``audio`` config section's bounds)."""

    period_ms: float = 20.0
    """Duration of one pulled block (a multiple of 2.5 ms)."""
    min_packets: int = 1
    max_packets: int = 3
    cap_ms: int = 200
    """Hard cap on buffered audio; beyond it the oldest packets are dropped."""
    jitter_factor: float = 3.0
    """Target depth = one packet + this x the RFC 3550 jitter (in samples, not packets)."""
    max_underrun_ms: int = 100
    """How long PLC may stand in for a packet that has not come before going idle."""
    adapt_window_ms: int = 1000
    """The depth must stay above target this long before a packet is skipped."""
    fec_hold_ms: int = 5000
    """After a loss, keep two packets (so FEC can work) for this long."""
    fade_ms: float = 5.0
    restart_seq_gap: int = 1000
    """A jump of more sequence numbers than this is a new stream (sender restarted)."""

    def __post_init__(self) -> None:
        period = self.period_ms * _MS
        if period <= 0 or period != int(period) or int(period) % _GRANULE:
            raise ValueError("period_ms must be a positive multiple of 2.5 ms")
        if not 1 <= self.min_packets <= self.max_packets:
            raise ValueError("need 1 <= min_packets <= max_packets")
        if self.cap_ms < 60:
            raise ValueError("cap_ms must be at least 60 (one 60 ms packet)")
        if self.fade_ms < 0 or self.max_underrun_ms < 0 or self.adapt_window_ms <= 0:
            raise ValueError("fade_ms, max_underrun_ms and adapt_window_ms must be >= 0")


class StreamState(Enum):
    """Where a stream is: nothing to play, filling up to target, or playing."""

    IDLE = "idle"
    BUFFERING = "buffering"
    PLAYING = "playing"


@dataclass(frozen=True, slots=True)
class JitterStats:
    """A snapshot of a stream's counters and measurements."""

    state: StreamState
    received: int
    played: int
    concealed: int
    fec_recovered: int
    late: int
    duplicate: int
    overflow_dropped: int
    compressed: int
    decode_errors: int
    underrun_ms: float
    jitter_ms: float
    depth_ms: float
    target_ms: float


class _Packet(NamedTuple):
    ts: int  # unwrapped timestamp, 48 kHz samples
    samples: int  # duration at 48 kHz
    opus: bytes
    fec_samples: int  # frame size the in-band FEC covers, 0 when it carries none
    end: bool


class _Kind(Enum):
    DECODE = 1
    FEC = 2
    PLC = 3
    UNDERRUN = 4
    SILENCE = 5
    RESET = 6


class _Step(NamedTuple):
    """One thing for :meth:`JitterBuffer.pull` to do outside the lock."""

    kind: _Kind
    packet: _Packet | None = None
    samples: int = 0
    fade_in: bool = False
    fade_out: bool = False
    trim: int = 0
    reset: bool = False  # reset the decoder first: the packet follows silence


class JitterBuffer:
    """Reorders, de-jitters and decodes one Opus stream into 48 kHz int16 blocks."""

    def __init__(self, config: JitterConfig | None = None) -> None:
        self.config = config or JitterConfig()
        self.period = int(self.config.period_ms * _MS)
        self._lock = threading.Lock()
        self._decoder = opus.Decoder(RATE, 1)
        fade = int(self.config.fade_ms * _MS)
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / max(fade, 1))
        self._ramp_in = ramp.astype(np.float32)
        self._ramp_out = self._ramp_in[::-1].copy()
        capacity = 2 * self.period + self._decoder.max_samples
        self._fifo: _Int16Array = np.zeros(capacity, dtype=np.int16)
        self._out: _Int16Array = np.zeros(self.period, dtype=np.int16)
        self._fifo_start = 0
        self._fifo_len = 0
        # push-thread counters
        self._received = self._late = self._duplicate = self._overflow = 0
        # pull-thread counters
        self._played = self._concealed = self._fec = self._compressed = 0
        self._decode_errors = 0
        self._underrun_samples = 0
        self._pending_underrun = 0  # PLC played while waiting; DTX or underrun, to be told
        self._jitter = 0.0  # RFC 3550 J, in 48 kHz samples
        self._last_transit: float | None = None
        self._new_stream()

    # ---------------------------------------------------------------- network side

    def push(self, frame: AudioFrame, now: float) -> None:
        """Hand in one received frame and its arrival time (monotonic seconds)."""
        samples = frame.duration_ms * _MS
        fec_samples = 0
        if frame.fec and opus.packet_has_fec(frame.opus):
            fec_samples = opus.samples_per_frame(frame.opus)
        with self._lock:
            self._received += 1
            self._push_locked(frame, samples, fec_samples, now)

    def reset(self) -> None:
        """Forget the stream (its speaker left): buffered audio is dropped, counters kept."""
        with self._lock:
            self._settle_underrun(0)
            self._new_stream()
            self._restart_pending = True

    # ---------------------------------------------------------------- audio side

    def pull(self, now: float) -> _Int16Array | None:
        """The next ``period`` samples of 48 kHz PCM, or ``None`` when nothing is playing.

        The block is a view of the buffer's own memory, overwritten by the next pull.
        """
        while self._fifo_len < self.period:
            with self._lock:
                step = self._plan(now, self.period - self._fifo_len)
            if step is None:
                break
            self._run(step)
        if self._fifo_len == 0:
            return None
        self._emit()
        with self._lock:
            self._adapt()
        return self._out

    def stats(self) -> JitterStats:
        """Counters, the current jitter estimate and depth."""
        with self._lock:
            return JitterStats(
                state=self._state,
                received=self._received,
                played=self._played,
                concealed=self._concealed,
                fec_recovered=self._fec,
                late=self._late,
                duplicate=self._duplicate,
                overflow_dropped=self._overflow,
                compressed=self._compressed,
                decode_errors=self._decode_errors,
                underrun_ms=self._underrun_samples / _MS,
                jitter_ms=self._jitter / _MS,
                depth_ms=self._depth() / _MS,
                target_ms=self._target() / _MS,
            )

    @property
    def state(self) -> StreamState:
        """Whether the stream is idle, buffering or playing."""
        return self._state

    @property
    def jitter_ms(self) -> float:
        """The RFC 3550 interarrival jitter estimate, in ms."""
        return self._jitter / _MS

    @property
    def depth_ms(self) -> float:
        """Audio buffered ahead of the playout point, in ms."""
        with self._lock:
            return self._depth() / _MS

    def close(self) -> None:
        """Free the decoder (idempotent); the buffer cannot be pulled from afterwards."""
        self._decoder.close()

    # ---------------------------------------------------------------- push internals

    def _new_stream(self) -> None:
        """Forget sequence and playout state (lock held or not yet shared)."""
        self._packets: dict[int, _Packet] = {}
        self._state = StreamState.IDLE
        self._next_seq = 0  # next to play (PLAYING) / lowest buffered (BUFFERING)
        self._floor: int | None = None  # packets below are late; None: fresh stream
        self._mask = 0  # bit i: sequence number floor-1-i was received
        self._high_seq: int | None = None  # highest unwrapped sequence number seen
        self._high_ts = 0  # its unwrapped timestamp
        self._high_end = 0  # ... plus its duration
        self._end_ts = 0  # timestamp just after the audio decoded so far
        self._packet_samples = 960
        self._last_samples = 960
        self._first_arrival = 0.0
        self._end_buffered = False
        self._ended = False
        self._fade_in_next = True
        self._tail_faded = True  # nothing played yet: nothing to fade out
        self._compress_pending = False
        self._drop_next = False
        self._underrun_run = 0
        self._win_min = math.inf
        self._win_elapsed = 0
        self._last_transit = None
        self._transit_floor: float | None = None  # the least recent transit (samples)
        self._lateness = 0.0  # the latest packet's transit above that floor
        self._first_late = 0.0  # ... of the packet a spurt started on
        self._restart_pending = False
        self._fec_stream = False  # the sender marks FEC
        self._last_loss_seq = -(1 << 62)
        self._decoder_stale = False  # silence or PLC was played since the last decode

    def _push_locked(self, frame: AudioFrame, samples: int, fec_samples: int, now: float) -> None:
        if self._high_seq is None:
            self._high_seq, self._high_ts = frame.seq, frame.timestamp
        seq = self._high_seq + seq_delta(frame.seq, self._high_seq & 0xFFFF)
        ts = self._high_ts + _ts_delta(frame.timestamp, self._high_ts & 0xFFFFFFFF)
        if abs(seq - self._high_seq) > self.config.restart_seq_gap:
            self._settle_underrun(0)
            self._new_stream()
            self._restart_pending = True
            self._high_seq, self._high_ts = seq, ts
        if self._is_duplicate(seq):
            self._duplicate += 1
            return
        self._update_jitter(ts, now)  # late packets tell of jitter too
        if self._is_late(seq):
            self._late += 1
            self._remember(seq)  # so a second copy counts as a duplicate
            return
        self._packets[seq] = _Packet(ts, samples, frame.opus, fec_samples, frame.end)
        if seq >= self._high_seq:
            self._high_seq, self._high_ts, self._high_end = seq, ts, ts + samples
            self._packet_samples = samples
            self._fec_stream = frame.fec
        if self._state is StreamState.IDLE:
            # Idle after waiting for this packet: if it follows on, its timestamp gap
            # was DTX silence, not an underrun.
            follows = self._floor is not None and seq == self._next_seq
            self._settle_underrun(ts - self._end_ts if follows else 0)
            self._state = StreamState.BUFFERING
            self._next_seq, self._end_ts = seq, ts
            self._first_arrival = now
            self._first_late = self._lateness
            self._end_buffered = False
        elif self._state is StreamState.BUFFERING and seq < self._next_seq:
            self._next_seq, self._end_ts = seq, ts
        if frame.end and self._state is StreamState.BUFFERING:
            self._end_buffered = True
        self._enforce_cap()

    def _limit(self) -> int | None:
        """The lowest sequence number still wanted (None: a fresh stream wants all)."""
        return self._next_seq if self._state is StreamState.PLAYING else self._floor

    def _is_duplicate(self, seq: int) -> bool:
        """Held already, or received and played (remembered for 64 packets)."""
        limit = self._limit()
        if limit is not None and seq < limit:
            back = limit - 1 - seq
            return back < _MASK_BITS and bool((self._mask >> back) & 1)
        return seq in self._packets

    def _remember(self, seq: int) -> None:
        limit = self._limit()
        if limit is not None and 0 <= limit - 1 - seq < _MASK_BITS:
            self._mask |= 1 << (limit - 1 - seq)

    def _is_late(self, seq: int) -> bool:
        """Its turn has passed: it was concealed, recovered or skipped."""
        limit = self._limit()
        return limit is not None and seq < limit

    def _update_jitter(self, ts: int, now: float) -> None:
        """RFC 3550 section 6.4.1: J += (|D| - J) / 16, in timestamp units; and how late
        this packet is against the transit floor (the least recent transit, which
        rises by :data:`_FLOOR_RISE` a packet so that it follows a slower path)."""
        transit = now * RATE - ts
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            self._jitter += (d - self._jitter) * _RFC3550_GAIN
        self._last_transit = transit
        floor = self._transit_floor
        self._lateness = 0.0 if floor is None else max(0.0, transit - floor)
        self._transit_floor = transit if floor is None else min(transit, floor + _FLOOR_RISE)

    def _enforce_cap(self) -> None:
        """Past the cap, drop the oldest packets until the depth is back at target."""
        if self._state is StreamState.IDLE or self._depth() <= self.config.cap_ms * _MS:
            return
        target = self._target()
        assert self._high_seq is not None
        while self._depth() > target and self._next_seq < self._high_seq:
            dropped = self._packets.pop(self._next_seq, None)
            self._overflow += dropped is not None
            self._advance(received=dropped is not None)
            self._skip_to_present()
        self._fade_in_next = True

    def _skip_to_present(self) -> None:
        """Move the playout point onto the next packet held (the cap or a skip moved it)."""
        assert self._high_seq is not None
        while self._next_seq < self._high_seq and self._next_seq not in self._packets:
            self._advance(received=False)
        nxt = self._packets.get(self._next_seq)
        if nxt is not None:
            self._end_ts = nxt.ts

    # ---------------------------------------------------------------- shared helpers

    def _advance(self, *, received: bool) -> None:
        """Move the playout point one sequence number on, remembering what was received."""
        self._raise_floor(self._next_seq)
        self._mask = ((self._mask << 1) | received) & _MASK
        self._next_seq += 1
        self._floor = self._next_seq

    def _raise_floor(self, seq: int) -> None:
        """Sequence numbers below ``seq`` are now past; those skipped were not received."""
        if self._floor is not None and seq > self._floor:
            gap = seq - self._floor
            self._mask = (self._mask << gap) & _MASK if gap < _MASK_BITS else 0
        self._floor = seq

    def _depth(self) -> int:
        """Samples queued ahead of the playout point: decoded plus received."""
        if self._state is StreamState.IDLE or self._high_seq is None:
            return self._fifo_len
        if self._high_seq < self._next_seq:
            return self._fifo_len
        return self._fifo_len + self._high_end - self._end_ts

    def _target(self) -> int:
        """Target depth in samples: one packet plus jitter_factor x the jitter.

        Just before a packet is due the buffer is one packet emptier than just after
        one came, so one packet is the least that plays a perfectly regular stream;
        jitter_factor x jitter on top absorbs packets that come late. That margin is
        kept in samples (2.5 ms steps): rounded up to whole packets, any jitter at all
        cost a whole packet of delay each time a stream (re)starts. For
        ``fec_hold_ms`` after a loss in a stream that sends FEC, at least two packets:
        in-band FEC can only help if the packet after a lost one is already here when
        the lost one is due.
        """
        cfg = self.config
        packet = self._packet_samples
        margin = cfg.jitter_factor * self._jitter
        # The tolerance keeps float noise in the arrival times from costing a step.
        steps = max(0, math.ceil(margin / _GRANULE - _TOLERANCE * packet / _GRANULE))
        target = packet + steps * _GRANULE
        hold = cfg.fec_hold_ms * _MS // packet
        if self._fec_stream and self._next_seq - self._last_loss_seq < hold:
            target = max(target, 2 * packet)  # FEC needs the next packet here when one is lost
        target = min(max(target, cfg.min_packets * packet), cfg.max_packets * packet)
        return min(target, cfg.cap_ms * _MS)

    def _settle_underrun(self, silence: int) -> None:
        """The wait for a packet is over: what ``silence`` (the timestamp gap before the
        packet that ended it) covers was DTX silence, the rest an underrun."""
        self._underrun_samples += self._pending_underrun - min(
            self._pending_underrun, max(silence, 0)
        )
        self._pending_underrun = 0

    # ---------------------------------------------------------------- pull internals

    def _plan(self, now: float, need: int) -> _Step | None:
        """Decide the next step of playout (lock held; O(1))."""
        if self._restart_pending:
            self._restart_pending = False
            return _Step(_Kind.RESET)
        if self._state is StreamState.BUFFERING and self._ready(now):
            self._begin_playout()
        if self._state is not StreamState.PLAYING:
            return None
        if self._drop_next:
            self._skip_one()
        while True:
            packet = self._packets.get(self._next_seq)
            if packet is not None:
                return self._plan_packet(packet, need)
            if self._high_seq is None or self._high_seq <= self._next_seq:
                return self._plan_underrun(need)
            step = self._plan_loss()
            if step is not None:
                return step

    def _ready(self, now: float) -> bool:
        """The buffer holds the target, or its first packet is the margin over one
        packet behind the transit floor: it waited that long, or came that much late
        already (so a spurt whose first packet was delayed does not also wait the whole
        margin on top: playout keeps one delay against the sender's clock)."""
        target = self._target()
        waited = (now - self._first_arrival) * RATE + self._first_late
        return (
            self._high_end - self._end_ts >= target
            or self._end_buffered
            or waited >= target - self._packet_samples
        )

    def _begin_playout(self) -> None:
        self._raise_floor(self._next_seq)
        self._state = StreamState.PLAYING
        self._fade_in_next = True
        self._ended = False
        self._underrun_run = 0
        self._win_min, self._win_elapsed = math.inf, 0

    def _plan_packet(self, packet: _Packet, need: int) -> _Step:
        gap = packet.ts - self._end_ts
        if self._pending_underrun:
            self._settle_underrun(gap)
        if gap > 0:
            # DTX: the sender was silent. Play silence, sized so that the buffer leaves
            # it at its target depth: this is where the playout delay adapts for free.
            silence = min(max(gap - (self._depth() - self._target()), 0), gap + self._target())
            if silence > 0:
                n = min(silence, need)
                self._end_ts = packet.ts - silence + n
                self._fade_in_next = True
                self._underrun_run = 0
                # Unless the audio before already faded out, PLC carries it smoothly
                # into a fade instead of a click.
                fade, self._tail_faded = not self._tail_faded, True
                self._decoder_stale = True
                return _Step(_Kind.SILENCE, samples=n, fade_out=fade)
        self._packets.pop(self._next_seq)
        self._advance(received=True)
        trim = min(-gap, packet.samples) if gap < 0 else 0
        self._end_ts = packet.ts + packet.samples
        following = self._packets.get(self._next_seq)
        fade_out = packet.end or (following is not None and following.ts > self._end_ts)
        if (
            self._compress_pending
            and following is not None
            and self._high_seq is not None
            and self._high_seq > self._next_seq
            and not packet.end
        ):
            self._compress_pending, self._drop_next, fade_out = False, True, True
        fade_in, self._fade_in_next = self._fade_in_next, packet.end
        self._tail_faded = fade_out
        self._ended = packet.end
        self._underrun_run = 0
        self._last_samples = packet.samples
        self._played += 1
        reset, self._decoder_stale = self._decoder_stale, False
        return _Step(_Kind.DECODE, packet, packet.samples, fade_in, fade_out, trim, reset)

    def _plan_loss(self) -> _Step | None:
        """The next packet is missing but a later one is here: recover or conceal it.

        If PLC already played while we waited for it (an underrun) and the buffer is at
        its target depth, that PLC stood in for the lost packet: it is credited instead
        of concealing twice, so a loss at the edge of the buffer adds no delay. Below
        target, the wait is kept as added delay and the packet is recovered or concealed
        after it. Returns None when nothing is left to conceal.
        """
        lost = self._last_samples
        following = self._packets.get(self._next_seq + 1)
        if following is not None and following.ts - self._end_ts in _PACKET_SAMPLES:
            lost = following.ts - self._end_ts
        self._last_loss_seq = self._next_seq
        self._settle_underrun(0)
        self._tail_faded = False
        self._advance(received=False)
        self._end_ts += lost
        covered = min(lost, self._underrun_run) if self._depth() >= self._target() else 0
        self._underrun_run = 0
        if following is not None and not covered and 0 < following.fec_samples <= lost:
            self._fec += 1
            return _Step(_Kind.FEC, following, lost)
        self._concealed += 1
        remaining = (lost - covered) // _GRANULE * _GRANULE
        return _Step(_Kind.PLC, samples=remaining) if remaining else None

    def _plan_underrun(self, need: int) -> _Step | None:
        """Nothing to play yet: conceal while waiting, then fade out and go idle."""
        if self._ended:
            self._state = StreamState.IDLE
            self._decoder_stale = True
            # After a mute the sender's timestamp resumes rounded to a packet: the old
            # transit floor no longer says when a packet is late.
            self._transit_floor = None
            return None
        samples = -(-need // _GRANULE) * _GRANULE
        self._underrun_run += samples
        self._pending_underrun += samples
        give_up = self._underrun_run >= self.config.max_underrun_ms * _MS
        self._tail_faded = give_up
        if give_up:
            self._state = StreamState.IDLE
            self._fade_in_next = True
            self._decoder_stale = True
        return _Step(_Kind.UNDERRUN, samples=samples, fade_out=give_up)

    def _skip_one(self) -> None:
        """Drop the next packet to shrink the delay (its predecessor faded out)."""
        self._drop_next = False
        if self._packets.pop(self._next_seq, None) is not None:
            self._compressed += 1
            self._advance(received=True)
            self._skip_to_present()
            self._fade_in_next = True

    def _adapt(self) -> None:
        """After each pull: shrink by one packet if the depth stayed above target."""
        if self._state is not StreamState.PLAYING:
            self._win_min, self._win_elapsed = math.inf, 0
            return
        self._win_min = min(self._win_min, self._depth())
        self._win_elapsed += self.period
        if self._win_elapsed >= self.config.adapt_window_ms * _MS:
            if self._win_min >= self._target() + self._packet_samples:
                self._compress_pending = True  # skipping one packet keeps the target
            self._win_min, self._win_elapsed = math.inf, 0

    # ---------------------------------------------------------------- decoding, FIFO

    def _run(self, step: _Step) -> None:
        """Carry out one planned step (no lock: libopus runs here)."""
        dec = self._decoder
        kind = step.kind
        if kind is _Kind.DECODE:
            assert step.packet is not None
            if step.reset:
                dec.reset()
            try:
                pcm = dec.decode(step.packet.opus)
            except opus.OpusError:  # a hostile or broken packet: count it, conceal it
                self._decode_errors += 1
                self._played -= 1
                self._concealed += 1
                pcm = dec.conceal(step.packet.samples)
            self._append(pcm[step.trim :], step.fade_in, step.fade_out)
        elif kind is _Kind.FEC:
            assert step.packet is not None
            self._append(dec.decode_fec(step.packet.opus, step.samples), False, False)
        elif kind is _Kind.PLC or kind is _Kind.UNDERRUN:
            self._append(dec.conceal(step.samples), False, step.fade_out)
        elif kind is _Kind.SILENCE:
            faded = 0
            if step.fade_out:
                faded = min(len(self._ramp_out), step.samples) // _GRANULE * _GRANULE
            if faded:
                self._append(dec.conceal(faded), False, True)
            self._append_silence(step.samples - faded)
        else:
            dec.reset()
            self._fifo_start = self._fifo_len = 0

    def _append(self, pcm: _Int16Array, fade_in: bool, fade_out: bool) -> None:
        n = len(pcm)
        if self._fifo_start + self._fifo_len + n > len(self._fifo):
            self._compact()
        at = self._fifo_start + self._fifo_len
        seg = self._fifo[at : at + n]
        seg[:] = pcm
        if fade_in:
            m = min(n, len(self._ramp_in))
            seg[:m] = seg[:m] * self._ramp_in[:m]
        if fade_out:
            m = min(n, len(self._ramp_out))
            seg[n - m :] = seg[n - m :] * self._ramp_out[len(self._ramp_out) - m :]
        self._fifo_len += n

    def _append_silence(self, n: int) -> None:
        if self._fifo_start + self._fifo_len + n > len(self._fifo):
            self._compact()
        at = self._fifo_start + self._fifo_len
        self._fifo[at : at + n] = 0
        self._fifo_len += n

    def _compact(self) -> None:
        start, length = self._fifo_start, self._fifo_len
        self._fifo[:length] = self._fifo[start : start + length]
        self._fifo_start = 0

    def _emit(self) -> None:
        """Move one period from the FIFO to the output block, zero-padding a final one."""
        n = min(self.period, self._fifo_len)
        start = self._fifo_start
        self._out[:n] = self._fifo[start : start + n]
        if n < self.period:
            self._out[n:] = 0
        self._fifo_len -= n
        self._fifo_start = 0 if self._fifo_len == 0 else start + n


def _ts_delta(a: int, b: int) -> int:
    """Signed distance from timestamp ``b`` to ``a`` on the uint32 ring."""
    return (a - b + 0x80000000) % 0x100000000 - 0x80000000
