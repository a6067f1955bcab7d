"""The appliance daemon: the imperative shell around the pure state machine.

One asyncio loop owns the :class:`~appliance.device.machine.DeviceMachine`. Everything
that happens becomes an event on that loop — gestures from the panel (gpiozero's
thread, handed over by :class:`~appliance.device.panel.GestureFeed`), broker messages
(paho's network thread, handed over by :class:`~appliance.device.session.MqttSession`),
CoAP requests, audio device trouble, timer ticks — and :meth:`Daemon.dispatch` feeds it
to the machine and carries every effect to its adapter:

==========================================  ==========================================
effect                                      adapter
==========================================  ==========================================
SendRequest, SubscribeRoom, UnsubscribeRoom  :class:`~appliance.device.session.MqttSession`
SetLeds, Refused                             :class:`~appliance.device.panel.Panel`
StartPublishing, StopPublishing, SetHeard,  the :class:`~appliance.audio.port.AudioPort`
SetVoiceKey
StatusChanged                                :class:`~appliance.device.status.StatusBoard`
ApiReply                                     the CoAP call (or start-up step) awaiting it
==========================================  ==========================================

The daemon's parts, each in its own module: the ``/status`` payload
(:mod:`.status`), the CoAP API's backend and its tickets (:mod:`.api`), the start-up
room plan (:mod:`.startup`) and the audio engine (:mod:`.sound`). The hardware —
gpiozero's pin factory and the PyAudio module, real or stand-ins — is built by the
entry point and handed in as :class:`Hardware`.

Time: the machine, the gesture detector and the panel's edge stamps share the loop's
monotonic clock (``loop.time()``); ticks are scheduled at the machine's own
``next_deadline()``.

systemd: ``READY=1`` once the broker is reached and the start-up room is joined (or
the wait for one has begun); ``WATCHDOG=1`` from this loop while it turns and the
network thread lives; ``STOPPING=1`` on SIGTERM/SIGINT, after which the device leaves
its room, publishes ``offline``, turns the LEDs off and exits 0 — within
:data:`HARD_STOP_S` even if the broker is unreachable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never

from appliance.audio.devices import PyAudioModule
from appliance.audio.port import AudioHooks, AudioPort, AudioStats
from appliance.device import view
from appliance.device.api import ApiBackend
from appliance.device.coap import CoapApi, CoapBindError
from appliance.device.effects import (
    ApiReply,
    Effect,
    Refused,
    SendRequest,
    SetHeard,
    SetLeds,
    SetVoiceKey,
    StartPublishing,
    StatusChanged,
    StopPublishing,
    SubscribeRoom,
    UnsubscribeRoom,
)
from appliance.device.events import (
    AudioDeviceLost,
    AudioDeviceRestored,
    Event,
    Gesture,
    Started,
    StopRequested,
    Tick,
)
from appliance.device.gestures import GestureDetector, GestureTiming
from appliance.device.machine import DeviceMachine
from appliance.device.panel import GestureFeed, Panel, PanelPins
from appliance.device.session import MqttSession
from appliance.device.settings import ApplianceSettings
from appliance.device.sound import open_sound
from appliance.device.startup import RoomPlan
from appliance.device.state import MachineConfig
from appliance.device.status import Payload, StatusBoard, summary
from appliance.service import name_threads, notify, watchdog_interval_s

log = logging.getLogger("gochat.device")

EX_UNAVAILABLE = 69
"""Exit status when GPIO or the CoAP port cannot be had (systemd may retry)."""
HARD_STOP_S = 2.8
"""After a stop signal the process exits within this, whatever the broker does."""
QUIT_WAIT_S = 0.8
"""How long shutdown waits for ``quit_room`` to be answered."""
OFFLINE_WAIT_S = 0.6
"""How long shutdown waits for the broker to acknowledge ``offline``."""
COAP_CLOSE_S = 0.4
VOICE_KEY_BYTES = 32
AUDIO_REPORT_S = 1.0
"""How often moving audio counters refresh ``/status`` (and notify its observers)."""


@dataclass(frozen=True, slots=True)
class Hardware:
    """The physical parts the daemon drives, built by the entry point (real ones, or the
    stand-ins of ``appliance.hw_mocks`` with ``--mock-hw``)."""

    pin_factory: Any = None
    """gpiozero's pin factory (None: gpiozero picks the Pi's own pins)."""
    pyaudio: PyAudioModule | None = None
    """The ``pyaudio`` module or a stand-in (None: PyAudio is not installed; no sound)."""
    edge_clock: Callable[[], float] | None = None
    """What stamps button edges (None: the event loop's clock). Stand-in pins driven by
    a script can have its instants exact, whatever the scheduler does meanwhile."""


def machine_config(settings: ApplianceSettings) -> MachineConfig:
    """The machine's part of the configuration."""
    return MachineConfig(
        user_id=settings.device.user_id,
        name=settings.device.display_name,
        auto_accept_when_hand_raised=settings.room.auto_accept_when_hand_raised,
    )


def panel_pins(settings: ApplianceSettings) -> PanelPins:
    """The BCM pins of the ``gpio`` section."""
    g = settings.gpio
    return PanelPins(
        raise_hand=g.button_raise_hand,
        mute=g.button_mute,
        accept=g.button_accept,
        status=g.led_status,
        hand=g.led_hand,
        invite=g.led_invite,
        mic=g.led_mic,
    )


class Daemon:
    """The appliance daemon (build, then ``await run()`` on a fresh loop).

    ``hardware``: the pin factory and PyAudio module to drive (tests press the pins of
    a ``MockFactory`` through :attr:`pin_factory`). ``install_signals``: handle
    SIGTERM/SIGINT and arm the hard stop (a real process; off for daemons that tests
    run on a thread, stopped by :meth:`stop_threadsafe`).
    """

    def __init__(
        self,
        settings: ApplianceSettings,
        *,
        hardware: Hardware | None = None,
        install_signals: bool = True,
        started_at: float | None = None,
    ) -> None:
        self.settings = settings
        self.hardware = hardware or Hardware()
        self.pin_factory = self.hardware.pin_factory
        """The gpiozero pin factory the panel runs on."""
        self.pins = panel_pins(settings)
        self.machine = DeviceMachine(machine_config(settings))
        self.counts: Counter[str] = Counter()
        """The daemon's own counters (see :meth:`counters` for all of them)."""
        self.ready = threading.Event()
        """Set once READY=1 was (or would have been) sent."""
        self.stopped = threading.Event()
        """Set when :meth:`run` has finished shutting down."""
        self.board = StatusBoard(self.machine, self._audio_stats, self._status_changed)
        """The ``/status`` payload (:attr:`StatusBoard.snapshot` is safe to read anywhere)."""
        self.api = ApiBackend(self.dispatch, self.board, self.counters, self.counts)
        self.plan = RoomPlan(settings, self.api.call, self)
        self.plan.on_settled = self._maybe_ready
        self._install_signals = install_signals
        self._started_at = time.monotonic() if started_at is None else started_at
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._status_line = ""
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None
        self._online_event: asyncio.Event | None = None
        self.session: MqttSession | None = None
        self.panel: Panel | None = None
        self.audio: AudioPort | None = None
        self.coap: CoapApi | None = None
        self._feed: GestureFeed | None = None

    @property
    def status_snapshot(self) -> Payload:
        """The latest ``/status`` payload (thread-safe read)."""
        return self.board.snapshot

    # ================================================================ lifecycle

    async def run(self) -> int:
        """Run until stopped; returns the exit status."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        self._online_event = asyncio.Event()
        try:
            status = await self._start(loop)
            if status != 0:
                return status
            await self._stop_event.wait()
            await self._shutdown()
            return 0
        finally:
            self._close_hardware()
            self.stopped.set()

    async def _start(self, loop: asyncio.AbstractEventLoop) -> int:
        settings = self.settings
        timing = GestureTiming(settings.gpio.debounce_ms / 1000, settings.gpio.long_press_ms / 1000)
        self._feed = GestureFeed(loop, GestureDetector(timing), self._on_gesture)
        try:
            self.panel = Panel(
                self._feed.edge_threadsafe,
                pins=self.pins,
                pin_factory=self.pin_factory,
                clock=self.hardware.edge_clock or loop.time,
            )
        except Exception as exc:
            log.error("GPIO unavailable: %s (off a Pi, run with --mock-hw)", exc)
            return EX_UNAVAILABLE
        self.coap = CoapApi(self.api, settings.coap.bind, settings.coap.port)
        try:
            await self.coap.start()
        except CoapBindError as exc:
            log.error("%s", exc)
            return EX_UNAVAILABLE
        hooks = AudioHooks(
            publish=self._publish_audio,
            device_lost=lambda reason: self._post(AudioDeviceLost(reason)),
            device_restored=lambda: self._post(AudioDeviceRestored()),
        )
        self.audio = open_sound(settings.audio, self.hardware.pyaudio, hooks)
        self.session = MqttSession(
            settings.broker,
            settings.username,
            loop=loop,
            on_event=self.dispatch,
            on_frame=self.audio.on_frame,
        )
        self._install_stop_signals(loop)
        self.dispatch(Started())
        self.session.start()
        self._tasks.append(loop.create_task(self.plan.run(), name="start-room"))
        self._tasks.append(loop.create_task(self._watchdog(), name="watchdog"))
        self._tasks.append(loop.create_task(self._audio_counters(), name="audio-counters"))
        return 0

    def _install_stop_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._install_signals:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    def request_stop(self) -> None:
        """Begin a clean stop (on the loop's thread; idempotent)."""
        if self._stopping or self._stop_event is None:
            return
        self._stopping = True
        notify("STOPPING=1")
        log.info("stopping")
        if self._install_signals:
            timer = threading.Timer(HARD_STOP_S, _hard_exit)
            timer.daemon = True
            timer.start()
        self._stop_event.set()

    def stop_threadsafe(self) -> None:
        """:meth:`request_stop` from any thread (tests running the daemon on a thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.request_stop)

    async def _shutdown(self) -> None:
        assert self._idle_event is not None
        for task in self._tasks:
            task.cancel()
        self.dispatch(StopRequested())  # quits the room (if online); LEDs go off
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle_event.wait(), QUIT_WAIT_S)
        if self.session is not None:
            acknowledged = await self.session.close(OFFLINE_WAIT_S)
            log.info("offline %s", "published" if acknowledged else "not acknowledged")
        if self.coap is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.coap.close(), COAP_CLOSE_S)
        self.api.tickets.cancel_all()
        log.info("stopped; counters: %s", dict(self.counters()))

    def _close_hardware(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for closer in (self._feed, self.panel, self.audio):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.exception("closing %s failed", type(closer).__name__)

    # ================================================================ the machine

    def dispatch(self, event: Event) -> list[Effect]:
        """Feed ``event`` to the machine now and carry out its effects (loop thread)."""
        assert self._loop is not None
        try:
            effects = self.machine.handle(event, self._loop.time())
        except Exception:
            self.counts["machine_errors"] += 1
            log.exception("the state machine failed on %r", event)
            return []
        for effect in effects:
            try:
                self._carry(effect)
            except Exception:
                self.counts["effect_errors"] += 1
                log.exception("carrying out %r failed", effect)
        self._after_step()
        return effects

    def _post(self, event: Event) -> None:
        """:meth:`dispatch` from any thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.dispatch, event)

    def _carry(self, effect: Effect) -> None:
        match effect:
            case SendRequest() | SubscribeRoom() | UnsubscribeRoom():
                self._carry_mqtt(effect)
            case SetLeds():
                if self.panel is not None:
                    self.panel.set_leds(effect.leds)
            case Refused():
                self.counts["presses_refused"] += 1
                log.info("press refused: %s", effect.reason)
                if self.panel is not None:
                    self.panel.flash_refused()
            case StartPublishing() | StopPublishing() | SetHeard() | SetVoiceKey():
                self._carry_audio(effect)
            case StatusChanged():
                self.board.refresh()
            case ApiReply():
                self.api.tickets.resolve(effect)
            case _:
                assert_never(effect)

    def _carry_mqtt(self, effect: SendRequest | SubscribeRoom | UnsubscribeRoom) -> None:
        session = self.session
        if session is None:
            return
        match effect:
            case SendRequest():
                session.send_request(effect.tag, effect.payload)
            case SubscribeRoom():
                session.subscribe_room(effect.room_id)
            case UnsubscribeRoom():
                session.unsubscribe_room(effect.room_id)

    def _carry_audio(
        self, effect: StartPublishing | StopPublishing | SetHeard | SetVoiceKey
    ) -> None:
        audio = self.audio
        if audio is None:
            return
        match effect:
            case StartPublishing():
                audio.start_publishing(effect.room_id, effect.user_id)
            case StopPublishing():
                audio.stop_publishing()
            case SetHeard():
                audio.set_heard(effect.user_ids)
            case SetVoiceKey():
                key = _voice_key(effect.key)
                if key is None:
                    self.counts["voice_keys_malformed"] += 1
                    log.warning("a voice key for room %s is not 32 bytes of base64", effect.room_id)
                else:
                    audio.set_voice_key(effect.room_id, effect.epoch, key)

    def _after_step(self) -> None:
        self._schedule_tick()
        assert self._idle_event is not None and self._online_event is not None
        _set_flag(self._idle_event, self.machine.idle)
        _set_flag(self._online_event, view.connection(self.machine.state) == "online")
        self._maybe_ready()

    def _schedule_tick(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_tick)

    def _on_tick(self) -> None:
        self._timer = None
        self._timer_at = None
        self.dispatch(Tick())

    def _status_changed(self, status: Payload) -> None:
        if self.coap is not None:
            self.coap.status_changed()
        line = "stopping" if self._stopping else summary(status)
        if line != self._status_line:
            self._status_line = line
            if not self._stopping:  # request_stop() said so already
                log.info("%s", line)
            notify(f"STATUS={line}")

    def _maybe_ready(self) -> None:
        if self.ready.is_set() or not self.plan.settled or not self.machine.ready:
            return
        self.ready.set()
        elapsed = time.monotonic() - self._started_at
        notify("READY=1")
        log.info("ready %.3f s after start", elapsed)

    # ================================================================ the person

    def _on_gesture(self, gesture: Gesture) -> None:
        self.counts[f"gestures_{gesture.kind}"] += 1
        self.dispatch(gesture)

    def counters(self) -> dict[str, int]:
        """The daemon's and the session's counters (``/counters`` adds the API's)."""
        session = self.session.stats() if self.session is not None else {}
        return {**session, **self.counts}

    # ================================================================ the start-up plan

    @property
    def has_target(self) -> bool:
        """Whether the person already wants a room (:class:`RoomPlan` stands down)."""
        return self.machine.state.target is not None

    async def online(self) -> None:
        """Return once the device is online (:class:`RoomPlan` waits for this)."""
        assert self._online_event is not None
        await self._online_event.wait()

    # ================================================================ background

    async def _watchdog(self) -> None:
        interval = watchdog_interval_s()
        if interval is None:
            return
        while True:
            if self.session is not None and self.session.alive:
                notify("WATCHDOG=1")
            else:
                # systemd restarts us: a daemon without its network thread is deaf.
                log.error("the MQTT network thread is gone; withholding WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _audio_counters(self) -> None:
        """Refresh ``/status`` once a second, so Observe clients see the audio counters
        move too (per frame would be 50 notifications a second)."""
        while True:
            await asyncio.sleep(AUDIO_REPORT_S)
            self.board.refresh()
            name_threads()  # streams and their threads come and go

    def _audio_stats(self) -> AudioStats | None:
        return self.audio.stats() if self.audio is not None else None

    def _publish_audio(self, room_id: str, frame: bytes) -> None:
        session = self.session
        if session is not None:
            session.publish_audio(room_id, frame)


def _set_flag(event: asyncio.Event, value: bool) -> None:
    if value:
        event.set()
    else:
        event.clear()


def _voice_key(text: str) -> bytes | None:
    """The 32 bytes of a base64 voice key, or None if it is not one."""
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return key if len(key) == VOICE_KEY_BYTES else None


def _hard_exit() -> None:
    log.error("clean stop took longer than %.1f s: exiting now", HARD_STOP_S)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(0)
