"""The talking side: capture -> Opus -> frame -> publish, inside the capture callback.

Runs on PortAudio's capture thread and never touches the event loop: it encodes into
the encoder's preallocated buffer and hands the packed frame to a thread-safe publish
function (paho queues it for its network thread).
"""

from __future__ import annotations

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

    def on_block(self, pcm: np.ndarray) -> bool:
        """Encode and publish one captured block; False once the spurt is over."""
        room = self._room
        if room is None:
            return False
        if pcm.shape != (self.profile.frame_samples,):
            self.bad_blocks += 1
            return True
        packet = self.encoder.encode(pcm)
        ending = self._ending
        if len(packet) <= _DTX_BYTES and not ending:
            self.dtx_skipped += 1
            self._ts += self._step
            return True
        wire = self._seal(room, packet, ending)
        if wire is None:
            self.unsealed += 1
        else:
            self._publish(room, wire)
            self.frames_sent += 1
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self._step) & 0xFFFF_FFFF
        if ending:
            self._room = None
            self._spurt_ended_at = self._clock()
            return False
        return True

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
