"""Audio profiles: what the encoder runs at.

``default`` is docs/protocol.md's default: 48 kHz, 20 ms packets, VoIP mode. ``low-cpu``
spares a small board: 16 kHz capture and encode, 40 ms packets (half the packets and
per-packet overhead) and a low encoder complexity. Both decode anything, so devices
on different profiles interoperate: the receiver always decodes at 48 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

ProfileName = Literal["default", "low-cpu"]
PLAYBACK_RATE: Final = 48_000
# The playback block: half a packet. Every block is a wait between the jitter buffer
# and the ear, and 10 ms blocks took ~10 ms off mouth-to-ear latency for 50 more
# callbacks a second (README, mouth-to-ear benchmark).
PLAYBACK_PERIOD_MS: Final = 10


@dataclass(frozen=True, slots=True)
class Profile:
    """Encoder settings of one profile."""

    name: ProfileName
    capture_rate: int
    frame_ms: int
    complexity: int
    bitrate: int

    @property
    def frame_samples(self) -> int:
        """Samples per packet at the capture rate."""
        return self.capture_rate * self.frame_ms // 1000


PROFILES: Final[dict[ProfileName, Profile]] = {
    # Complexity 5 costs half of 9 and is indistinguishable for speech at 24 kbit/s.
    "default": Profile("default", 48_000, 20, complexity=5, bitrate=24_000),
    "low-cpu": Profile("low-cpu", 16_000, 40, complexity=1, bitrate=16_000),
}
