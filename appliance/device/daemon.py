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
StartPublishing, StopPublishing, SetHeard    the :class:`~appliance.device.audio_port.AudioPort`
StatusChanged                                :class:`~appliance.device.coap.CoapApi` (Observe)
ApiReply                                     the CoAP request (or start-up step) awaiting it
==========================================  ==========================================

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
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, assert_never

from appliance.device.audio_port import (
    AudioHooks,
    AudioPort,
    AudioPortFactory,
    load_audio_factory,
)
from appliance.device.coap import CALL_TIMEOUT_S, CoapApi, CoapBindError
from appliance.device.effects import (
    ApiReply,
    Effect,
    Refused,
    SendRequest,
    SetHeard,
    SetLeds,
    StartPublishing,
    StatusChanged,
    StopPublishing,
    SubscribeRoom,
    UnsubscribeRoom,
)
from appliance.device.events import (
    AudioDeviceLost,
    AudioDeviceRestored,
    ButtonName,
    CreateRequested,
    Event,
    Gesture,
    JoinRequested,
    PressKind,
    RoomListRequested,
    Started,
    StopRequested,
    Tick,
)
from appliance.device.gestures import GestureDetector, GestureTiming
from appliance.device.machine import DeviceMachine
from appliance.device.panel import GestureFeed, Panel, PanelPins
from appliance.device.session import MqttSession
from appliance.device.settings import ApplianceSettings
from appliance.device.state import MachineConfig
from appliance.device.view import NO_AUDIO
from appliance.protocol.models import Code
from appliance.service import notify, watchdog_interval_s

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
FIRST_ROOM_POLL_S = 1.0
"""Join mode without a room id: first wait before looking for an open room again."""
MAX_ROOM_POLL_S = 10.0
MOCK_TRIM_S = 30.0
"""With ``--mock-hw``: how often the mock LED pins' histories are trimmed."""
AUDIO_REPORT_S = 1.0
"""How often moving audio counters refresh ``/status`` (and notify its observers)."""


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

    ``mock_hw``: GPIO on ``hw_mocks.gpio``'s ``MockFactory`` (:attr:`pin_factory`, for
    tests to press pins and read LEDs) and the audio engine's mock devices.
    ``install_signals``: handle SIGTERM/SIGINT and arm the hard stop (a real process;
    off for daemons that tests run on a thread, stopped by :meth:`stop_threadsafe`).
    """

    def __init__(
        self,
        settings: ApplianceSettings,
        *,
        mock_hw: bool = False,
        pin_factory: Any = None,
        audio_factory: AudioPortFactory | None = None,
        install_signals: bool = True,
        started_at: float | None = None,
    ) -> None:
        self.settings = settings
        self.mock_hw = mock_hw
        if pin_factory is None and mock_hw:
            # Hardware stand-ins are loaded only when asked for, never on a real Pi.
            from hw_mocks.gpio import mock_factory  # noqa: PLC0415

            pin_factory = mock_factory()
        self.pin_factory = pin_factory
        """The gpiozero pin factory (a ``MockFactory`` with ``mock_hw``)."""
        self.pins = panel_pins(settings)
        self.machine = DeviceMachine(machine_config(settings))
        self.counts: Counter[str] = Counter()
        """The daemon's own counters (see :meth:`counters` for all of them)."""
        self.ready = threading.Event()
        """Set once READY=1 was (or would have been) sent."""
        self.stopped = threading.Event()
        """Set when :meth:`run` has finished shutting down."""
        self.status_snapshot: dict[str, Any] = self.machine.status()
        """The latest ``/status`` payload, replaced after every step (thread-safe read)."""
        self._audio_factory = audio_factory or load_audio_factory()
        self._install_signals = install_signals
        self._started_at = time.monotonic() if started_at is None else started_at
        self._tickets: dict[int, asyncio.Future[ApiReply]] = {}
        self._ticket_ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._plan_settled = settings.room.mode == "idle"
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
                clock=loop.time,
            )
        except Exception as exc:
            log.error("GPIO unavailable: %s (off a Pi, run with --mock-hw)", exc)
            return EX_UNAVAILABLE
        self.coap = CoapApi(self, settings.coap.bind, settings.coap.port)
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
        self.audio = self._audio_factory(settings.audio, hooks, mock_hw=self.mock_hw)
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
        self._tasks.append(loop.create_task(self._start_room(), name="start-room"))
        self._tasks.append(loop.create_task(self._watchdog(), name="watchdog"))
        self._tasks.append(loop.create_task(self._audio_counters(), name="audio-counters"))
        if self.mock_hw:
            self._tasks.append(loop.create_task(self._trim_mock_pins(), name="trim-pins"))
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
        for future in self._tickets.values():
            future.cancel()
        log.info("stopped; counters: %s", dict(self.counters_all()))

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
            case StartPublishing() | StopPublishing() | SetHeard():
                self._carry_audio(effect)
            case StatusChanged():
                if self.coap is not None:
                    self.coap.status_changed()
            case ApiReply():
                future = self._tickets.pop(effect.ticket, None)
                if future is not None and not future.done():
                    future.set_result(effect)
            case _:
                assert_never(effect)

    def _carry_mqtt(self, effect: SendRequest | SubscribeRoom | UnsubscribeRoom) -> None:
        session = self.session
        if session is None:
            return
        match effect:
            case SendRequest():
                session.send_request(effect.tag, effect.method, effect.payload)
            case SubscribeRoom():
                session.subscribe_room(effect.room_id)
            case UnsubscribeRoom():
                session.unsubscribe_room(effect.room_id)

    def _carry_audio(self, effect: StartPublishing | StopPublishing | SetHeard) -> None:
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

    def _after_step(self) -> None:
        self._schedule_tick()
        status = self.machine.status(self.audio.stats() if self.audio else NO_AUDIO)
        self.status_snapshot = status
        assert self._idle_event is not None and self._online_event is not None
        _set_flag(self._idle_event, self.machine.idle)
        _set_flag(self._online_event, status["connection"] == "online")
        self._report_status(status)
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

    def _report_status(self, status: dict[str, Any]) -> None:
        line = "stopping" if self._stopping else _summary(status)
        if line != self._status_line:
            self._status_line = line
            if not self._stopping:  # request_stop() said so already
                log.info("%s", line)
            notify(f"STATUS={line}")

    def _maybe_ready(self) -> None:
        if self.ready.is_set() or not self._plan_settled or not self.machine.ready:
            return
        self.ready.set()
        elapsed = time.monotonic() - self._started_at
        notify("READY=1")
        log.info("ready %.3f s after start", elapsed)

    # ================================================================ the person

    def _on_gesture(self, gesture: Gesture) -> None:
        self.counts[f"gestures_{gesture.kind}"] += 1
        self.dispatch(gesture)

    def press(self, button: ButtonName, kind: PressKind) -> tuple[str, str | None]:
        """A gesture from the CoAP API: ``(outcome, reason)``, outcome one of
        ``sent``, ``refused``, ``ignored`` (the button's last request is in flight)."""
        effects = self.dispatch(Gesture(button, kind))
        self.counts["api_presses"] += 1
        for effect in effects:
            if isinstance(effect, Refused):
                return "refused", effect.reason
        if any(isinstance(e, SendRequest) for e in effects):
            return "sent", None
        return "ignored", None

    async def call(self, make_event: Callable[[int], Event], timeout_s: float | None) -> ApiReply:
        """Feed ``make_event(ticket)``; await the machine's :class:`ApiReply` for it."""
        assert self._loop is not None
        ticket = next(self._ticket_ids)
        future: asyncio.Future[ApiReply] = self._loop.create_future()
        self._tickets[ticket] = future
        try:
            self.dispatch(make_event(ticket))
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._tickets.pop(ticket, None)

    def status(self) -> dict[str, Any]:
        """The ``/status`` payload, with the audio counters of this moment."""
        return self.machine.status(self.audio.stats() if self.audio else NO_AUDIO)

    def counters_all(self) -> dict[str, int]:
        """The daemon's and the session's counters (``/counters`` adds the API's)."""
        session = self.session.stats() if self.session is not None else {}
        return {**session, **self.counts}

    def counters(self) -> dict[str, int]:
        """:class:`~appliance.device.coap.DeviceApi`: every counter."""
        return self.counters_all()

    # ================================================================ start-up room

    async def _start_room(self) -> None:
        room = self.settings.room
        try:
            if room.mode == "host":
                subject = self.settings.subject
                reply = await self.call(lambda t: CreateRequested(subject, ticket=t), None)
                self._settle(f"hosting {subject!r}", reply)
            elif room.mode == "join" and room.room_id:
                room_id = room.room_id
                reply = await self.call(lambda t: JoinRequested(room_id, ticket=t), None)
                self._settle(f"joining {room_id}", reply)
            elif room.mode == "join":
                await self._join_first_open_room()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the start-up room step failed")
            self._plan_settled = True

    async def _join_first_open_room(self) -> None:
        assert self._online_event is not None
        delay = FIRST_ROOM_POLL_S
        while self.machine.state.target is None:
            await self._online_event.wait()
            listed = await self.call(RoomListRequested, CALL_TIMEOUT_S)
            room_id = _first_room(listed)
            if room_id is not None and self.machine.state.target is None:
                reply = await self.call(_joiner(room_id), None)
                self._settle(f"joining the first open room {room_id}", reply)
                if reply.code == Code.OK:
                    return
            elif listed.code == Code.OK and not self._plan_settled:
                log.info("no open room yet; waiting for one")
                self._settle_now()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_ROOM_POLL_S)

    def _settle(self, what: str, reply: ApiReply) -> None:
        if reply.code == Code.OK:
            log.info("%s: done", what)
        else:
            log.warning("%s: %d %s", what, reply.code, reply.message)
        self._settle_now()

    def _settle_now(self) -> None:
        self._plan_settled = True
        if self._loop is not None:
            self._maybe_ready()

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
        """Refresh ``/status`` once a second while audio counters move, so Observe
        clients see them too (per frame would be 50 notifications a second)."""
        while True:
            await asyncio.sleep(AUDIO_REPORT_S)
            if self.audio is None:
                continue
            status = self.machine.status(self.audio.stats())
            if status["audio"] != self.status_snapshot.get("audio"):
                self.status_snapshot = status
                if self.coap is not None:
                    self.coap.status_changed()

    async def _trim_mock_pins(self) -> None:
        from hw_mocks.gpio import trim_history  # noqa: PLC0415  # see __init__

        while True:
            await asyncio.sleep(MOCK_TRIM_S)
            trim_history(self.pin_factory, self.pins)

    def _publish_audio(self, room_id: str, frame: bytes) -> None:
        session = self.session
        if session is not None:
            session.publish_audio(room_id, frame)


def _set_flag(event: asyncio.Event, value: bool) -> None:
    if value:
        event.set()
    else:
        event.clear()


def _joiner(room_id: str) -> Callable[[int], Event]:
    """A ticketed :class:`JoinRequested` maker for ``room_id``."""
    return lambda ticket: JoinRequested(room_id, ticket=ticket)


def _first_room(reply: ApiReply) -> str | None:
    if reply.code != Code.OK or reply.data is None:
        return None
    rooms = reply.data.get("rooms")
    if not isinstance(rooms, list) or not rooms or not isinstance(rooms[0], dict):
        return None
    first: dict[str, object] = rooms[0]
    room_id = first.get("room_id")
    return room_id if isinstance(room_id, str) else None


def _summary(status: dict[str, Any]) -> str:
    """One human line: what systemd's STATUS= and the log show."""
    connection = str(status["connection"])
    if connection != "online":
        return connection
    if status["room_id"] is None:
        return "online, no room"
    role = status["role"] or "joining"
    leds = status["leds"]
    flags = [k for k in ("mic_on", "hand_raised") if status[k]]
    if status["invitation"] is not None:
        flags.append("invited")
    if leds["status"] == "blink-fast":
        flags.append("error")
    tail = f" ({', '.join(flags)})" if flags else ""
    return f"online, room {status['room_id']} as {role}{tail}"


def _hard_exit() -> None:
    log.error("clean stop took longer than %.1f s: exiting now", HARD_STOP_S)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(0)
