"""The audio engine's configuration: devices, encoder profile, jitter buffer bounds and
the hands-free capture chain's switches.

A frozen pydantic model, so a bad value is refused with the key's name when the
configuration is loaded. The appliance's ``[audio]`` config section *is* this model
(``appliance.device.settings.AudioSettings`` adds only the stand-in sound card's keys),
so nothing maps one onto the other.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from appliance.audio.profile import ProfileName


class AudioConfig(BaseModel):
    """Voice: ALSA devices, the encoder profile and the jitter buffer's bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_device: str = Field(default="default", min_length=1)
    """ALSA capture device name (``gochat-appliance audio-devices`` lists them)."""
    output_device: str = Field(default="default", min_length=1)
    """ALSA playback device name."""
    profile: ProfileName = "default"
    """``default``: 48 kHz, 20 ms packets; ``low-cpu``: 16 kHz, 40 ms, low complexity."""
    bitrate: int | None = Field(default=None, ge=6_000, le=128_000)
    """Opus bitrate, bits per second (default: 24000, or 16000 for ``low-cpu``)."""
    dtx: bool = True
    """Send (almost) nothing during silence: at most one packet a second once the talker
    has been silent 400 ms (receivers play the gap as silence, not as loss)."""
    jitter_min_packets: int = Field(default=1, ge=1, le=10)
    jitter_max_packets: int = Field(default=3, ge=1, le=10)
    """The jitter buffer's target depth adapts between these (in packets)."""
    jitter_cap_ms: int = Field(default=200, ge=60, le=1_000)
    """Hard cap on buffered audio per speaker; older packets are dropped beyond it."""
    echo_cancellation: bool = True
    """Hands-free chain, stage 1: cancel the speaker's own sound picked up by the
    microphone (WebRTC AEC3; its reference is exactly what the speaker played)."""
    noise_suppression: bool = True
    """Hands-free chain, stage 2: suppress steady background noise (WebRTC NS, 18 dB)."""
    auto_gain: bool = True
    """Hands-free chain, stage 3: bring the talker to a steady level (WebRTC AGC2, at
    most +30 dB). With all three stages off the chain is not built at all."""

    @model_validator(mode="after")
    def _jitter_bounds(self) -> Self:
        if self.jitter_min_packets > self.jitter_max_packets:
            message = "must not exceed jitter_max_packets"
            detail = InitErrorDetails(
                type=PydanticCustomError("invalid", message),
                loc=("jitter_min_packets",),
                input=self.jitter_min_packets,
            )
            raise ValidationError.from_exception_data(type(self).__name__, [detail])
        return self
