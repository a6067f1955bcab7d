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
from appliance.protocol.frames import TIMESTAMP_RATE, AudioFrame, timestamp_step

PublishFrame = Callable[[str, bytes], None]  # (room_id, frame bytes)
_DTX_BYTES = 2  # libopus: a packet this short carries no audio (DTX)


class Sender:
    """One talk spurt after another: sequence numbers run on across spurts, and the
    timestamp jumps by the silence between them, so a receiver sees a pause, not loss.
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
        self._ending = False
        self._spurt_ended_at: float | None = None
        self.frames_sent = 0
        self.dtx_skipped = 0
        self.bad_blocks = 0

    @property
    def active(self) -> bool:
        """Whether a talk spurt is under way (frames go out)."""
        return self._room is not None

    def begin(self, room_id: str) -> None:
        """Start a talk spurt into ``room_id`` (before the capture stream opens)."""
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
        frame = AudioFrame(self._seq, self._ts, packet, fec=opus.packet_has_fec(packet), end=ending)
        self._publish(room, frame.pack())
        self.frames_sent += 1
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + self._step) & 0xFFFF_FFFF
        if ending:
            self._room = None
            self._spurt_ended_at = self._clock()
            return False
        return True

    def close(self) -> None:
        """Free the encoder."""
        self.encoder.close()
