"""The appliance's audio: the media link between the room and the sound card.

:class:`AudioEngine` is what the daemon talks to (it implements
:class:`~appliance.audio.port.AudioPort`). The event loop only *asks* for things —
start or stop publishing, whom to hear — and never waits: a supervisor thread owns
PyAudio, opens and closes streams, notices a device that vanished, reports it, and
reopens it with backoff. The audio itself flows in
PortAudio's callback threads: capture -> the hands-free chain
(:class:`~.processing.CaptureChain`: echo cancellation, noise suppression, gain) ->
:class:`~.sender.Sender` -> publish, and network -> :class:`~.receiver.Receiver` ->
playback, every played block also feeding the chain's echo reference. With every
stage switched off there is no chain at all.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.audio.config import AudioConfig
from appliance.audio.devices import PyAudioModule, find_device, quiet_stderr
from appliance.audio.jitter import JitterConfig
from appliance.audio.port import AudioHooks, AudioStats
from appliance.audio.profile import PLAYBACK_PERIOD_MS, PLAYBACK_RATE, PROFILES, Profile
from appliance.audio.receiver import PERIOD_SAMPLES, Receiver
from appliance.audio.sender import Sender
from appliance.protocol import topics

if TYPE_CHECKING:
    from appliance.audio.processing import CaptureChain

log = logging.getLogger("gochat.audio")

SUPERVISE_S = 0.05  # while a stream is (re)opening or a spurt is ending
STEADY_S = 0.5  # both sides as wanted: only a lost device to notice (20 -> 2 wake-ups/s)
REOPEN_MIN_S = 0.5
REOPEN_MAX_S = 10.0
END_GRACE_S = 0.25  # how long a closing spurt may take to send its last block
FLOOR_DBFS = -100.0  # the lowest input level reported
GATE_DBFS = -50.0  # without the chain: louder than this counts as speaking ...
GATE_HANGOVER_S = 0.3  # ... until this long below it (not between words)
_FULL_SCALE_SQ = 32768.0**2


class _Stream:
    """One PortAudio stream kept open by the supervisor, reopened with backoff."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.handle: Any = None
        self.error: str | None = None
        self.retry_at = 0.0
        self.backoff = REOPEN_MIN_S

    @property
    def open(self) -> bool:
        return self.handle is not None

    def alive(self) -> bool:
        try:
            return bool(self.handle is not None and self.handle.is_active())
        except OSError:
            return False

    def failed(self, reason: str, now: float) -> None:
        self.close()
        self.error = reason
        self.retry_at = now + self.backoff
        self.backoff = min(self.backoff * 2, REOPEN_MAX_S)

    def opened(self, handle: Any) -> None:
        self.handle, self.error, self.backoff = handle, None, REOPEN_MIN_S

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                handle.stop_stream()
                handle.close()
            except OSError:
                pass  # a lost device may refuse even to close


class AudioEngine:
    """Publishes our voice while we are seated with the mic on, plays everyone heard."""

    def __init__(
        self,
        config: AudioConfig,
        pyaudio: PyAudioModule,
        hooks: AudioHooks,
        clock: Callable[[], float] = time.monotonic,
        *,
        chain: CaptureChain | None = None,
    ) -> None:
        self.config = config
        self.profile: Profile = PROFILES[config.profile]
        self._pa_module = pyaudio
        self._pa: Any = None
        self._hooks = hooks
        self._clock = clock
        self.sender = Sender(
            self.profile, hooks.publish, bitrate=config.bitrate, dtx=config.dtx, clock=clock
        )
        self.receiver = Receiver(
            JitterConfig(
                period_ms=PLAYBACK_PERIOD_MS,
                min_packets=config.jitter_min_packets,
                max_packets=config.jitter_max_packets,
                cap_ms=config.jitter_cap_ms,
            ),
            clock,
        )
        self._chain = chain
        if chain is not None and chain.rate != self.profile.capture_rate:
            raise ValueError(f"a {chain.rate} Hz chain for {self.profile.capture_rate} Hz capture")
        self._reference_factor = PLAYBACK_RATE // self.profile.capture_rate
        self._speaking = False  # written by the capture thread, read by stats()
        self._input_level: float | None = None
        # Set when a stream (re)opens or a callback reports an xrun; the next captured
        # block starts a new run: the echo reference realigns, the level gate resets.
        # A late callback alone is no reason: its samples still come in order.
        self._new_run = threading.Event()
        # Callback status flags saying samples were lost on one side: the speaker's and
        # the microphone's sample counts no longer line up.
        self._xrun_flags = pyaudio.paInputOverflow | pyaudio.paOutputUnderflow
        self._gate_until = 0.0
        self._capture = _Stream("input")
        self._playback = _Stream("output")
        self._publish_to: str | None = None  # room we should be publishing into
        self._me = ""  # our user id: the sender seals for our own audio topic
        self._key_room: str | None = None  # the room whose voice keys we hold
        self._end_deadline: float | None = None
        self._reported: str | None = None
        self._wake = threading.Event()
        self._running = False
        self._thread = threading.Thread(target=self._supervise, name="audio", daemon=True)

    # ------------------------------------------------------------ the daemon's port

    def start(self) -> None:
        """Start the supervisor (it opens the playback device at once)."""
        self._running = True
        self._thread.start()

    def start_publishing(self, room_id: str, user_id: str) -> None:
        """We hold a seat with the mic on in ``room_id``: capture and publish."""
        self._me = user_id
        self._publish_to = room_id
        self._wake.set()

    def stop_publishing(self) -> None:
        """Muted, removed or leaving: end the talk spurt and close capture."""
        self._publish_to = None
        self._wake.set()

    def set_heard(self, user_ids: frozenset[str]) -> None:
        """Play exactly these users' streams (seated, mic on, not us)."""
        self.receiver.set_heard(user_ids)

    def set_voice_key(self, room_id: str, epoch: int, key: bytes) -> None:
        """A voice key of ``room_id``: seal with the newest, open with any held one."""
        new_room = room_id != self._key_room
        self._key_room = room_id
        self.receiver.add_key(epoch, key, new_room=new_room)
        self.sender.set_key(room_id, epoch, key)

    def on_frame(self, room_id: str, user_id: str, payload: bytes, arrival: float) -> None:
        """A frame of the current room arrived (MQTT network thread)."""
        self.receiver.on_frame(user_id, topics.audio(room_id, user_id), payload, arrival)

    @property
    def chain(self) -> CaptureChain | None:
        """The hands-free chain captured audio goes through (None: none, or it failed)."""
        return self._chain

    def stats(self) -> AudioStats:
        """Counters for ``/status``."""
        received = self.receiver.stats()
        capturing = self._publish_to is not None and self._capture.open
        return AudioStats(
            frames_sent=self.sender.frames_sent,
            frames_received=received.frames_received,
            frames_concealed=received.frames_concealed,
            frames_rejected=received.dropped_malformed,
            jitter_ms=round(received.jitter_ms, 1),
            underrun_ms=round(received.underrun_ms, 1),
            late_frames=received.late,
            speaking=capturing and self._speaking,
            input_level_dbfs=self._input_level if capturing else None,
            howl_events=0 if self._chain is None else self._chain.howl_events,
        )

    def close(self) -> None:
        """Stop publishing (with the last-packet flag if the device allows), close all."""
        self._publish_to = None
        self._running = False
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(0.5)
        self._capture.close()
        self._playback.close()
        if self._pa is not None:
            self._pa.terminate()
        self.sender.close()
        self.receiver.close()

    # ------------------------------------------------------------ supervisor thread

    def _supervise(self) -> None:
        while self._running:
            now = self._clock()
            try:
                self._keep_playback(now)
                self._keep_capture(now)
            except Exception:  # never let the audio thread die: report and retry
                log.exception("audio supervisor error")
            self._update_report()
            self._wake.wait(STEADY_S if self._steady() else SUPERVISE_S)
            self._wake.clear()
        self._finish_spurt()

    def _steady(self) -> bool:
        """Nothing to do soon: playback open, capture open exactly when wanted, no spurt
        ending. (Requests wake the supervisor at once; this only paces its polling.)"""
        capture_as_wanted = self._capture.open == (self._publish_to is not None)
        return self._playback.open and capture_as_wanted and self._end_deadline is None

    def _keep_playback(self, now: float) -> None:
        stream = self._playback
        if stream.open and not stream.alive():
            log.warning("playback device lost")
            stream.failed("playback device lost", now)
        if not stream.open and now >= stream.retry_at:
            self._open(stream, now)

    def _keep_capture(self, now: float) -> None:
        stream, wanted = self._capture, self._publish_to
        if stream.open and not stream.alive():
            if self.sender.active:  # died mid-spurt: the device is gone
                log.warning("capture device lost")
                self.sender.abandon()
                stream.failed("capture device lost", now)
            else:
                stream.close()  # the spurt ended with its last block
        if wanted is None:
            stream.error = None  # a missing microphone is no error while muted
            self._wind_down(now)
        elif not stream.open and now >= stream.retry_at:
            self._end_deadline = None
            self.sender.begin(wanted, self._me)
            if not self._open(stream, now):
                self.sender.abandon()

    def _wind_down(self, now: float) -> None:
        """End the spurt with its last-packet flag, then let capture close."""
        if not self._capture.open:
            self._end_deadline = None
        elif self._end_deadline is None:
            self.sender.end()
            self._end_deadline = now + END_GRACE_S
        elif now >= self._end_deadline:  # the device never took the last block
            self.sender.abandon()
            self._capture.close()
            self._end_deadline = None

    def _finish_spurt(self) -> None:
        if self._capture.open and self.sender.active:
            self.sender.end()
            deadline = self._clock() + END_GRACE_S
            while self.sender.active and self._clock() < deadline:
                time.sleep(0.005)

    def _open(self, stream: _Stream, now: float) -> bool:
        self._new_run.set()  # before the stream's first callback can run
        try:
            pa = self._pyaudio()
            stream.opened(self._open_stream(pa, stream.side))
        except (OSError, LookupError, ValueError) as exc:
            reason = f"{stream.side} device unavailable: {exc}"
            if stream.error != reason:
                log.warning("%s (retrying)", reason)
            stream.failed(reason, now)
            if not (self._capture.open or self._playback.open):
                self._drop_pyaudio()  # rescan devices on the next attempt
            return False
        log.info("%s device open", stream.side)
        return True

    def _open_stream(self, pa: Any, side: str) -> Any:
        m = self._pa_module
        if side == "output":
            index = find_device(pa, self.config.output_device, "output")
            return pa.open(
                format=m.paInt16, channels=1, rate=PLAYBACK_RATE, output=True,
                output_device_index=index, frames_per_buffer=PERIOD_SAMPLES,
                stream_callback=self._on_playback,
            )  # fmt: skip
        index = find_device(pa, self.config.input_device, "input")
        return pa.open(
            format=m.paInt16, channels=1, rate=self.profile.capture_rate, input=True,
            input_device_index=index, frames_per_buffer=self.profile.frame_samples,
            stream_callback=self._on_capture,
        )  # fmt: skip

    def _pyaudio(self) -> Any:
        if self._pa is None:
            with quiet_stderr():
                self._pa = self._pa_module.PyAudio()
        return self._pa

    def _drop_pyaudio(self) -> None:
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None

    def _update_report(self) -> None:
        problem = self._playback.error or self._capture.error
        if problem != self._reported:
            self._reported = problem
            if problem is None:
                log.info("audio devices working again")
                self._hooks.device_restored()
            else:
                self._hooks.device_lost(problem)

    # ------------------------------------------------------------ PortAudio threads

    def _on_capture(
        self, in_data: bytes | None, _frames: int, time_info: Any, status: int
    ) -> tuple[None, int]:
        if in_data is None:
            return None, self._pa_module.paContinue
        pcm = np.frombuffer(in_data, dtype=np.int16)
        now = self._clock()
        if status & self._xrun_flags:
            self._new_run.set()
        new_run = self._new_run.is_set()
        if new_run:
            self._new_run.clear()
        chain = self._chain
        if chain is None:
            self._gate(pcm, now, new_run)
        else:
            if new_run:
                chain.restart()  # a stream (re)opened or lost samples: realign the reference
            try:
                pcm = chain.process(pcm, _stamp(time_info, "input_buffer_adc_time"))
            except Exception:  # the chain must never take the microphone down with it
                log.exception("capture chain failed: sending unprocessed audio from now on")
                self._chain = None
                self._gate(pcm, now, new_run)
            else:
                self._speaking = chain.speaking
                self._input_level = max(FLOOR_DBFS, round(chain.level_dbfs, 1))
        going = self.sender.on_block(pcm, speaking=self._speaking)
        return None, self._pa_module.paContinue if going else self._pa_module.paComplete

    def _gate(self, pcm: np.ndarray, now: float, new_run: bool) -> None:
        """No chain: the block's RMS level, and speaking while above a level gate."""
        x = pcm.astype(np.float32)
        power = float(np.dot(x, x)) / len(x) if len(x) else 0.0
        level = 10 * math.log10(power / _FULL_SCALE_SQ) if power > 0 else FLOOR_DBFS
        self._input_level = max(FLOOR_DBFS, round(level, 1))
        if new_run:
            self._gate_until = 0.0
        if level >= GATE_DBFS:
            self._gate_until = now + GATE_HANGOVER_S
        self._speaking = now < self._gate_until

    def _on_playback(
        self, _in: bytes | None, frames: int, time_info: Any, status: int
    ) -> tuple[bytes, int]:
        if status & self._xrun_flags:
            self._new_run.set()
        block = self.receiver.render() if frames == PERIOD_SAMPLES else bytes(frames * 2)
        chain = self._chain
        if chain is not None and frames % self._reference_factor == 0:
            played = np.frombuffer(block, dtype=np.int16)  # exactly what is played
            chain.render(played, _stamp(time_info, "output_buffer_dac_time"))
        return block, self._pa_module.paContinue


def _stamp(time_info: Any, key: str) -> float | None:
    """A PortAudio callback time stamp (0 where the host API keeps none)."""
    try:
        value = float(time_info[key])
    except (TypeError, KeyError, ValueError):
        return None
    return value if value > 0 else None


def capture_chain(config: AudioConfig) -> CaptureChain | None:
    """The hands-free chain ``config`` asks for, at its profile's capture rate; None with
    every stage off (no cost) or if the WebRTC module cannot be loaded (then
    unprocessed audio is sent)."""
    hands_free = config.hands_free
    if not hands_free.any_stage:
        return None
    try:
        from appliance.audio.processing import CaptureChain  # noqa: PLC0415 - optional
    except ImportError as exc:
        log.error(
            "hands-free chain disabled (no echo cancellation, noise suppression or"
            " automatic gain): %s",
            exc,
        )
        return None
    return CaptureChain(PROFILES[config.profile].capture_rate, hands_free)
