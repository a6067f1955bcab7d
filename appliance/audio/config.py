"""The audio engine's configuration: devices, encoder profile, jitter buffer bounds and
the hands-free capture chain.

:class:`AudioConfig` is a frozen pydantic model, so a bad value is refused with the
key's name when the configuration is loaded. The appliance's ``[audio]`` config section
*is* this model (``appliance.device.settings.AudioSettings`` adds only the stand-in
sound card's keys), so nothing maps one onto the other.

:class:`HandsFreeConfig` is what the capture chain is built from: one tuning per stage,
``None`` for a stage that is off. ``[audio]`` carries only the three switches; the
tunings are measured choices (``benchmarks/voice_quality.py``), kept here with why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from appliance.audio.profile import ProfileName


@dataclass(frozen=True, slots=True)
class EchoTuning:
    """The echo canceller: WebRTC AEC3 with its own defaults. Its delay is estimated,
    never configured; what its defaults cost in double talk, and what tuning them did
    not buy, is in docs/device.md (the hands-free section)."""


@dataclass(frozen=True, slots=True)
class NoiseTuning:
    """Noise suppression (WebRTC NS)."""

    level: int = 2
    """0-3: 6, 12, 18 or 21 dB. 18 dB is Chrome's default; 12 left pink noise audible."""


@dataclass(frozen=True, slots=True)
class GainTuning:
    """Automatic gain (WebRTC AGC2), fed the chain's own voice decision."""

    max_gain_db: float = 30.0
    """A quiet talker a metre away, not a whisper across the room."""
    headroom_db: float = 8.0
    """Speech peaks aimed this far under full scale. AGC2's default, 5 dB, brings speech
    to ~-16 dBFS RMS, where its limiter squashes every voiced peak: wideband PESQ of a
    lone near talker fell from 3.69 (no AGC) to 2.89; at 8 dB it is 3.47."""
    hold_on_far_end: bool = True
    """While the far end is heard and the near end is not speaking, neither adapt nor
    apply gain: what is left then is residual echo (or a feedback tone), never a talker."""


@dataclass(frozen=True, slots=True)
class HowlTuning:
    """The feedback (howl) guard on the outgoing stream: a narrow-band tone that holds
    its frequency and does not fade is cut until it is gone."""

    tone_share: float = 0.6
    """A narrow peak (3 bins) holding this share of a block's power is a tone: a voice
    spreads its power over many harmonics."""
    min_dbfs: float = -45.0
    """Quieter blocks are never taken for howling."""
    hold_ms: int = 300
    """Tonal blocks in a row for this long (a voice pauses, and spreads its power), ...
    """
    grow_db: float = 6.0
    """... growing by this much meanwhile (feedback builds up; a test tone does not), ...
    """
    loud_dbfs: float = -6.0
    """... or ringing louder than this (a loop at its limit; no voice is a pure tone so
    loud)."""
    cut_db: float = -30.0
    release_ms: int = 500
    """The cut is lifted once no tone has been seen for this long, ..."""
    recover_db_per_s: float = 20.0
    """... at this rate."""


@dataclass(frozen=True, slots=True)
class HandsFreeConfig:
    """The capture chain: each stage's tuning, or ``None`` where the stage is off.

    With every stage off there is no chain at all (and no howl guard: it is the chain's
    last line, not a stage of its own).
    """

    echo: EchoTuning | None = field(default_factory=EchoTuning)
    noise: NoiseTuning | None = field(default_factory=NoiseTuning)
    gain: GainTuning | None = field(default_factory=GainTuning)
    howl: HowlTuning | None = field(default_factory=HowlTuning)

    @classmethod
    def switched(
        cls, *, echo_cancellation: bool = True, noise_suppression: bool = True,
        auto_gain: bool = True,
    ) -> HandsFreeConfig:  # fmt: skip
        """The default tunings with the three ``[audio]`` switches applied."""
        return cls(
            echo=EchoTuning() if echo_cancellation else None,
            noise=NoiseTuning() if noise_suppression else None,
            gain=GainTuning() if auto_gain else None,
        )

    @property
    def any_stage(self) -> bool:
        """Whether there is a chain to build."""
        return any(stage is not None for stage in (self.echo, self.noise, self.gain))


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

    @property
    def hands_free(self) -> HandsFreeConfig:
        """The capture chain these switches ask for (default tunings)."""
        return HandsFreeConfig.switched(
            echo_cancellation=self.echo_cancellation,
            noise_suppression=self.noise_suppression,
            auto_gain=self.auto_gain,
        )

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
