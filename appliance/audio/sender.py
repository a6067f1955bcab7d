"""The talking side: capture -> Opus -> frame -> publish, inside the capture callback.

Runs on PortAudio's capture thread and never touches the event loop: it encodes into
the encoder's preallocated buffer and hands the packed frame to a thread-safe publish
function (paho queues it for its network thread).

Silence costs (almost) nothing with DTX on. A block is *quiet* when the local voice
activity (the hands-free chain's ``speaking``, or the engine's level gate without the
chain) is off and its level is under :data:`QUIET_DBFS`. Only quiet blocks may be
dropped:

* libopus's DTX is switched on for quiet blocks only (a loud steady tone is not speech
  to its voice detector, but it is sound): after ~200 ms of silence it emits packets of
  1-2 bytes (never sent) and, every ~400 ms, a comfort-noise update;
* after :data:`SILENCE_AFTER_S` of quiet blocks, every packet is silence, also those of
  a noise floor libopus keeps coding as speech (pink noise at -55 dBFS).

In silence at most one packet a second goes out (:data:`SILENT_INTERVAL_S`). The first
block that is speech, or merely loud, is sent at once: a spurt resumes with the packet
that holds its first sound. Whatever is withheld still advances the timestamp, so a
receiver plays a pause, not a loss (docs/protocol.md 7).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable

import numpy as np

from appliance.audio import opus
from appliance.audio.profile import Profile
from appliance.protocol import topics
from appliance.protocol.frames import TIMESTAMP_RATE, timestamp_step
from appliance.protocol.voice import Sealer

PublishFrame = Callable[[str, bytes], None]  # (room_id, frame bytes)
_DTX_BYTES = 2  # libopus: a packet this short carries no audio (DTX)
SILENT_INTERVAL_S = 1.0
"""In silence, at most one packet per this many seconds (comfort noise, a noise floor)."""
SILENCE_AFTER_S = 0.4
"""Voice activity off and the level under QUIET_DBFS this long: silence, with DTX on."""
QUIET_DBFS = -50.0
"""A block louder than this is sent even if nobody is speaking (a click, a knock)."""
_QUIET_POWER = 32768.0**2 * 10 ** (QUIET_DBFS / 10)


class Sender:
    """One talk spurt after another: sequence numbers run on across spurts, and the
    timestamp jumps by the silence between them, so a receiver sees a pause, not loss.

    Every packet is sealed with the room's newest voice key (docs/protocol.md 7.1);
    without a key nothing leaves (counted in :attr:`unsealed`), never plaintext. Keys
    arrive on the event loop's thread (:meth:`set_key`) and are taken up by the capture
    thread at its next block: one tuple per room, read and written whole.
    """

    def __init__(
        self,
        profile: Profile,
        publish: PublishFrame,
        *,
        bitrate: int | None = None,
        dtx: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.encoder = opus.Encoder(
            profile.capture_rate,
            frame_ms=profile.frame_ms,
            bitrate=bitrate or profile.bitrate,
            complexity=profile.complexity,
            fec=True,
            dtx=dtx,
        )
        self._publish = publish
        self._clock = clock
        self._step = timestamp_step(profile.frame_ms)
        self._seq = secrets.randbelow(0x10000)
        self._ts = secrets.randbelow(0x1_0000_0000)
        self._room: str | None = None
        self._sealer: Sealer | None = None
        self._keys: dict[str, tuple[int, bytes]] = {}
        self._ending = False
        self._spurt_ended_at: float | None = None
        self._dtx = dtx
        self._encoder_dtx = dtx  # libopus's DTX switch: on for quiet blocks only
        self._silent_blocks = 0  # consecutive blocks without voice or sound
        self._silence_blocks = max(1, math.ceil(SILENCE_AFTER_S * 1000 / profile.frame_ms))
        self._interval = round(SILENT_INTERVAL_S * TIMESTAMP_RATE)
        self._last_sent_ts: int | None = None
        self.frames_sent = 0
        self.dtx_skipped = 0
        self.bad_blocks = 0
        self.unsealed = 0

    @property
    def active(self) -> bool:
        """Whether a talk spurt is under way (frames go out)."""
        return self._room is not None

    def set_key(self, room_id: str, epoch: int, key: bytes) -> None:
        """The room's voice key of ``epoch`` (any thread): seals from the next packet."""
        held = self._keys.get(room_id)
        if held is None or epoch > held[0]:
            self._keys = {room_id: (epoch, key)}  # one room at a time; swapped whole

    def begin(self, room_id: str, user_id: str) -> None:
        """Start a talk spurt into ``room_id`` as ``user_id`` (before capture opens)."""
        topic = topics.audio(room_id, user_id)
        if self._sealer is None or self._sealer.topic != topic:
            self._sealer = Sealer(topic)
        self._sealer.open_capture()
        if self._spurt_ended_at is not None:
            silence = self._clock() - self._spurt_ended_at
            self._ts += round(silence * TIMESTAMP_RATE / self._step) * self._step
        self._ending = False
        self._room = room_id

    def end(self) -> None:
        """Ask for the spurt to end: the next block goes out flagged as its last."""
        self._ending = True

    def abandon(self) -> None:
        """The capture stream is gone without a last block (device lost, forced stop)."""
        if self._room is not None:
            self._room = None
            self._spurt_ended_at = self._clock()

    def on_block(self, pcm: np.ndarray, *, speaking: bool = False) -> bool:
        """Encode and publish one captured block; False once the spurt is over.

        ``speaking`` is the local voice activity for this block (after the capture
        chain; False: not known); with DTX on, it, the block's level and libopus decide
        what silence is.
        """
        room = self._room
        if room is None:
            return False
        if pcm.shape != (self.profile.frame_samples,):
            self.bad_blocks += 1
            return True
        quiet = self._dtx and not speaking and _power(pcm) < _QUIET_POWER
        if quiet != self._encoder_dtx:
            self.encoder.set_dtx(quiet)
            self._encoder_dtx = quiet
        packet = self.encoder.encode(pcm)
        ending = self._ending
        if not ending and self._dtx and self._withhold(packet, quiet):
            self.dtx_skipped += 1
            self._ts = (self._ts + self._step) & 0xFFFF_FFFF
            return True
        wire = self._seal(room, packet, ending)
        if wire is None:
            self.unsealed += 1
        else:
            self._publish(room, wire)
            self.frames_sent += 1
            self._last_sent_ts = self._ts
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self._step) & 0xFFFF_FFFF
        if ending:
            self._room = None
            self._spurt_ended_at = self._clock()
            return False
        return True

    def _withhold(self, packet: bytes, quiet: bool) -> bool:
        """Whether this packet is silence not to send (DTX on)."""
        if not quiet:
            self._silent_blocks = 0
            return False
        self._silent_blocks += 1
        if len(packet) <= _DTX_BYTES:
            return True  # libopus: nothing to transmit
        silent = self._silent_blocks > self._silence_blocks or self.encoder.in_dtx
        if not silent:
            return False
        last = self._last_sent_ts
        return last is not None and (self._ts - last) & 0xFFFF_FFFF < self._interval

    def _seal(self, room: str, packet: bytes, end: bool) -> bytes | None:
        sealer = self._sealer
        key = self._keys.get(room)
        if sealer is None or key is None:
            return None
        if sealer.epoch is None or key[0] > sealer.epoch:
            sealer.set_key(*key)
        fec = opus.packet_has_fec(packet)
        return sealer.seal(self._seq, self._ts, packet, fec=fec, end=end)

    def close(self) -> None:
        """Free the encoder."""
        self.encoder.close()


def _power(pcm: np.ndarray) -> float:
    """Mean square of an int16 block, in int16 units squared."""
    x = pcm.astype(np.float32)
    return float(np.dot(x, x)) / len(x)
