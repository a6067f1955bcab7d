"""The seam between the daemon and the audio engine (capture, Opus, jitter buffer, mix).

The daemon owns *when* to speak and *whom* to hear (both follow the server's room
state); the audio engine owns *how*. This module is the whole contract between them:

* :class:`AudioPort`: what the daemon calls on the audio engine.
* :class:`AudioHooks`: what the audio engine may call on the daemon.
* :class:`AudioPortFactory`: how the daemon builds one (:func:`load_audio_factory`
  picks the implementation; :class:`NullAudio` until the real engine is plugged in).

Threads (DESIGN.md principle 3)
-------------------------------
* ``start_publishing``, ``stop_publishing``, ``set_heard``, ``stats`` and ``close`` are
  called on the daemon's event-loop thread. They must return quickly (well under a
  millisecond): hand the work to the audio threads, never wait for them.
* ``on_frame`` is called on paho's network thread, once per MQTT message received on
  ``room/{room_id}/audio/{user_id}`` of the room the device is in — never for this
  device's own stream (the subscription uses MQTT 5 *No Local*), and never through
  the event loop. ``arrival`` is ``time.monotonic()`` when paho handed the message
  over. It must not block: parse (:mod:`appliance.protocol.frames`), push into the
  jitter buffer, return. Frames from users outside the latest ``set_heard`` set, and
  frames that fail to parse or decode, are dropped and counted by the port
  (PROTOCOL.md section 6).
* :attr:`AudioHooks.publish` is thread-safe and never blocks: call it from the
  capture thread with one encoded frame (header + Opus packet) per call. It publishes
  at QoS 0 on ``room/{room_id}/audio/{me}``; while the broker link is down, or for a
  room the device is not in, the frame is dropped (and counted by the session).
* :attr:`AudioHooks.device_lost` / :attr:`AudioHooks.device_restored` may be called
  from any thread; the daemon turns them into machine events (the status LED blinks
  fast while a device is lost). Call ``device_lost`` once when capture or playback
  fails, keep reopening with backoff, and call ``device_restored`` once both work.

Lifecycle: the factory is called once at start (before the broker is reached; it may
open the playback device then or lazily). ``start_publishing`` opens capture;
``stop_publishing`` closes it, marking the last packet as the end of a talk spurt
(flags bit 1). ``set_heard`` may arrive at any time, also while not publishing.
``close`` is called once at shutdown, after the last ``stop_publishing``; it must
stop the engine's threads within about 100 ms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.device.view import NO_AUDIO, AudioCounters

if TYPE_CHECKING:
    from appliance.device.settings import AudioSettings


class AudioPort(Protocol):
    """What the daemon needs from an audio engine (see the module docstring for threads)."""

    def start_publishing(self, room_id: str, user_id: str) -> None:
        """Open capture and publish Opus frames for ``user_id`` in ``room_id``."""

    def stop_publishing(self) -> None:
        """Close capture; the last frame sent carries the end-of-talk-spurt flag."""

    def set_heard(self, user_ids: frozenset[str]) -> None:
        """Play exactly these users' streams (seated, mic on, not this device)."""

    def on_frame(self, room_id: str, user_id: str, payload: bytes, arrival: float) -> None:
        """One received audio message (on paho's network thread; must not block)."""

    def stats(self) -> AudioCounters:
        """The counters ``/status`` shows under ``audio``."""
        ...

    def close(self) -> None:
        """Stop capture and playback and release the devices."""


@dataclass(frozen=True, slots=True)
class AudioHooks:
    """What an :class:`AudioPort` may call on the daemon (all thread-safe)."""

    publish: Callable[[str, bytes], None]
    """``publish(room_id, frame)``: one audio frame, QoS 0, never blocks."""
    device_lost: Callable[[str], None]
    """``device_lost(reason)``: capture or playback stopped working."""
    device_restored: Callable[[], None]
    """Capture and playback work again."""


class AudioPortFactory(Protocol):
    """Builds the audio engine: ``factory(settings, hooks, mock_hw=...)``.

    ``mock_hw``: the daemon runs with ``--mock-hw``; use ``hw_mocks.audio`` devices
    (``settings.mock_input`` / ``settings.mock_output``) instead of ALSA.
    """

    def __call__(
        self, settings: AudioSettings, hooks: AudioHooks, *, mock_hw: bool
    ) -> AudioPort: ...


class NullAudio:
    """An :class:`AudioPort` that plays nothing, sends nothing and counts nothing.

    The daemon's stand-in until the audio engine is plugged in; also right for a
    device without sound hardware. It keeps what it was told, for inspection.
    """

    def __init__(self) -> None:
        self.publishing: tuple[str, str] | None = None
        self.heard: frozenset[str] = frozenset()
        self.closed = False

    def start_publishing(self, room_id: str, user_id: str) -> None:
        """Remember that capture would be open."""
        self.publishing = (room_id, user_id)

    def stop_publishing(self) -> None:
        """Remember that capture would be closed."""
        self.publishing = None

    def set_heard(self, user_ids: frozenset[str]) -> None:
        """Remember whom we would play."""
        self.heard = user_ids

    def on_frame(self, room_id: str, user_id: str, payload: bytes, arrival: float) -> None:
        """Discard the frame."""

    def stats(self) -> AudioCounters:
        """All zeros."""
        return NO_AUDIO

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


def null_audio(settings: AudioSettings, hooks: AudioHooks, *, mock_hw: bool) -> NullAudio:
    """An :class:`AudioPortFactory` for :class:`NullAudio`."""
    return NullAudio()


def load_audio_factory() -> AudioPortFactory:
    """The audio engine the daemon runs with (:mod:`appliance.audio`).

    Imported here, not at module level, so that ``gochat-appliance --help`` and the
    pure core stay free of numpy and libopus.
    """
    from appliance.audio.port import engine_factory  # noqa: PLC0415 - see docstring

    return engine_factory


__all__ = [
    "AudioHooks",
    "AudioPort",
    "AudioPortFactory",
    "NullAudio",
    "load_audio_factory",
    "null_audio",
]
