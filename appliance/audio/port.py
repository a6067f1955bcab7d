"""The audio engine's contract with whoever drives it (the appliance daemon).

The driver owns *when* to speak and *whom* to hear (both follow the server's room
state); the engine owns *how*. This module is the whole contract between them, and it
knows nothing of the driver:

* :class:`AudioPort`: what the driver calls on the engine.
* :class:`AudioHooks`: what the engine may call back (publish a frame, report a device).
* :class:`AudioStats`: the counters the engine reports (``/status`` shows them).
* :class:`NullAudio`: a port that plays and sends nothing (no sound hardware).

Threads
-------
* ``start_publishing``, ``stop_publishing``, ``set_heard``, ``stats`` and ``close`` are
  called on the driver's event-loop thread. They must return quickly (well under a
  millisecond): hand the work to the audio threads, never wait for them.
* ``on_frame`` is called on the network thread, once per message received on
  ``room/{room_id}/audio/{user_id}`` of the room the device is in — never for this
  device's own stream. ``arrival`` is ``time.monotonic()`` when the message was
  handed over. It must not block: parse, push into the jitter buffer, return. Frames
  from users outside the latest ``set_heard`` set, and frames that fail to parse or
  decode, are dropped and counted (docs/protocol.md section 7).
* :attr:`AudioHooks.publish` is thread-safe and never blocks: the capture thread calls
  it with one encoded frame per call; while the link is down the frame is dropped.
* :attr:`AudioHooks.device_lost` / :attr:`AudioHooks.device_restored` may be called
  from any thread: ``device_lost`` once when capture or playback fails (the engine
  keeps reopening with backoff), ``device_restored`` once both work again.

Lifecycle: built once at start; ``start_publishing`` opens capture;
``stop_publishing`` closes it, marking the last packet as the end of a talk spurt;
``set_heard`` may arrive at any time; ``close`` is called once at shutdown and stops
the engine's threads within about 100 ms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class AudioStats:
    """The engine's counters: the ``audio`` object of ``/status`` (docs/device.md)."""

    frames_sent: int = 0
    frames_received: int = 0
    frames_concealed: int = 0
    frames_rejected: int = 0
    """Frames dropped because they did not open (unknown epoch, failed tag, version 1,
    malformed) or did not decode."""
    jitter_ms: float = 0.0
    underrun_ms: float = 0.0
    """Total playout time during which a heard stream had nothing to play (waiting for
    a late packet; DTX silence is not counted), ms, one decimal."""
    late_frames: int = 0
    """Frames that arrived after their turn to play and were dropped."""
    speaking: bool = False
    """The local talker is speaking now (after the capture chain); false while capture
    is closed."""
    input_level_dbfs: float | None = None
    """Level of the captured audio after the chain, dBFS, one decimal, at least -100.0;
    None while capture is closed (not publishing)."""
    howl_events: int = 0
    """Times the howl guard found acoustic feedback in the outgoing stream and cut it."""

    def as_status(self) -> dict[str, Any]:
        """The ``audio`` object of the ``/status`` payload."""
        return {
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "frames_concealed": self.frames_concealed,
            "frames_rejected": self.frames_rejected,
            "jitter_ms": self.jitter_ms,
            "underrun_ms": self.underrun_ms,
            "late_frames": self.late_frames,
            "speaking": self.speaking,
            "input_level_dbfs": self.input_level_dbfs,
            "howl_events": self.howl_events,
        }


NO_AUDIO = AudioStats()
"""All zeros: before the engine starts, or without one."""


class AudioPort(Protocol):
    """What the driver needs from an audio engine (see the module docstring for threads)."""

    def start_publishing(self, room_id: str, user_id: str) -> None:
        """Open capture and publish Opus frames for ``user_id`` in ``room_id``."""

    def stop_publishing(self) -> None:
        """Close capture; the last frame sent carries the end-of-talk-spurt flag."""

    def set_heard(self, user_ids: frozenset[str]) -> None:
        """Play exactly these users' streams (seated, mic on, not this device)."""

    def on_frame(self, room_id: str, user_id: str, payload: bytes, arrival: float) -> None:
        """One received audio message (on the network thread; must not block)."""

    def set_voice_key(self, room_id: str, epoch: int, key: bytes) -> None:
        """A voice key of ``room_id`` (docs/protocol.md 7.1): seal with the newest,
        open packets of any epoch held; a key of another room replaces them all."""

    def stats(self) -> AudioStats:
        """The counters ``/status`` shows under ``audio``."""
        ...

    def close(self) -> None:
        """Stop capture and playback and release the devices."""


@dataclass(frozen=True, slots=True)
class AudioHooks:
    """What an :class:`AudioPort` may call on its driver (all thread-safe)."""

    publish: Callable[[str, bytes], None]
    """``publish(room_id, frame)``: one audio frame, QoS 0, never blocks."""
    device_lost: Callable[[str], None]
    """``device_lost(reason)``: capture or playback stopped working."""
    device_restored: Callable[[], None]
    """Capture and playback work again."""


class NullAudio:
    """An :class:`AudioPort` that plays nothing, sends nothing and counts nothing.

    Right for a device without sound hardware (or without PyAudio). It keeps what it
    was told, for inspection.
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

    def set_voice_key(self, room_id: str, epoch: int, key: bytes) -> None:
        """Nothing to seal or open."""

    def stats(self) -> AudioStats:
        """All zeros."""
        return NO_AUDIO

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True
