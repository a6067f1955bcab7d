"""The GPIO edge: three gpiozero buttons in, four gpiozero LEDs out.

The only module of the device that touches pins. The pin factory is injected: the
default (``None``) lets gpiozero pick the Pi's real pins; tests and ``--mock-hw`` pass a
``gpiozero.pins.mock.MockFactory``.

* Buttons are active-low with the internal pull-up and **no** gpiozero debounce
  (``bounce_time=None``): every raw edge is forwarded, stamped with the injected
  monotonic clock, to the shell's ``on_edge`` callable, and debounced by
  :mod:`appliance.device.gestures`. ``on_edge`` runs on gpiozero's thread: hand it
  over to the event loop (:func:`threadsafe` or :class:`GestureFeed` do that).
* LEDs show docs/device.md's patterns with gpiozero's background ``blink``; a refusal
  flashes the status LED twice and then shows its current pattern again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import LED, DigitalInputDevice

from appliance.device.effects import (
    BLINK_TIMES,
    LED_NAMES,
    REFUSAL_FLASH_S,
    REFUSAL_FLASHES,
    LedName,
    LedPattern,
    Leds,
)
from appliance.device.events import BUTTONS, ButtonName, Gesture
from appliance.device.gestures import GestureDetector

EdgeSink = Callable[[ButtonName, bool, float], None]
"""Receives ``(button, pressed, monotonic_time)`` for every raw edge."""


@dataclass(frozen=True, slots=True)
class PanelPins:
    """BCM pin numbers (docs/device.md defaults; the ``gpio`` config section overrides)."""

    raise_hand: int = 17
    mute: int = 27
    accept: int = 22
    status: int = 5
    hand: int = 6
    invite: int = 13
    mic: int = 19

    def button(self, name: ButtonName) -> int:
        """The pin of button ``name``."""
        return {"raise_hand": self.raise_hand, "mute": self.mute, "accept": self.accept}[name]

    def led(self, name: LedName) -> int:
        """The pin of LED ``name``."""
        return {"status": self.status, "hand": self.hand, "invite": self.invite, "mic": self.mic}[
            name
        ]


class Panel:
    """The buttons and LEDs. Thread-safe: LED calls may come from any thread.

    ``on_edge`` is called on gpiozero's callback thread (or, with mock pins, on the
    thread driving the pin) for every raw edge, with the time from ``clock``.
    """

    def __init__(
        self,
        on_edge: EdgeSink,
        *,
        pins: PanelPins | None = None,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
        flash_s: float = REFUSAL_FLASH_S,
    ) -> None:
        self.pins = pins if pins is not None else PanelPins()
        self._on_edge = on_edge
        self._clock = clock
        self._flash_s = flash_s
        self._lock = threading.Lock()
        self._patterns: dict[LedName, LedPattern] = dict.fromkeys(LED_NAMES, "off")
        self._flash: threading.Timer | None = None
        self._closed = False
        self._leds: dict[LedName, Any] = {}
        self._buttons: dict[ButtonName, Any] = {}
        try:
            for led in LED_NAMES:
                self._leds[led] = LED(self.pins.led(led), pin_factory=pin_factory)
            for name in BUTTONS:
                self._buttons[name] = self._make_button(name, pin_factory)
        except Exception:
            self.close()  # release the pins already claimed, then report the bad one
            raise

    def _make_button(self, name: ButtonName, pin_factory: Any) -> Any:
        # A plain input, not gpiozero's Button: our gestures time the hold, and Button's
        # hold thread wakes 10 times a second per button for nothing.
        button = DigitalInputDevice(
            self.pins.button(name), pull_up=True, bounce_time=None, pin_factory=pin_factory
        )
        button.when_activated = self._forwarder(name, pressed=True)
        button.when_deactivated = self._forwarder(name, pressed=False)
        return button

    def _forwarder(self, name: ButtonName, *, pressed: bool) -> Callable[[], None]:
        def forward() -> None:
            # Stamped here, on the callback thread, as close to the edge as we get.
            self._on_edge(name, pressed, self._clock())

        return forward

    # ------------------------------------------------------------ buttons

    def is_pressed(self, name: ButtonName) -> bool:
        """The raw (undebounced) state of button ``name``."""
        return bool(self._buttons[name].is_active)

    # ------------------------------------------------------------ LEDs

    def set_leds(self, leds: Leds) -> None:
        """Show these patterns (unchanged LEDs keep their blink phase)."""
        for name, pattern in leds.as_dict().items():
            self.set_pattern(name, pattern)

    def set_pattern(self, name: LedName, pattern: LedPattern) -> None:
        """Show ``pattern`` on LED ``name``."""
        with self._lock:
            if self._closed or self._patterns[name] == pattern:
                return
            self._patterns[name] = pattern
            if name == "status" and self._flash is not None:
                return  # shown when the flash ends
            self._show(name, pattern)

    def pattern(self, name: LedName) -> LedPattern:
        """The pattern LED ``name`` shows (its underlying one during a flash)."""
        with self._lock:
            return self._patterns[name]

    def flash_refused(self) -> None:
        """Flash the status LED twice, then show its current pattern again."""
        with self._lock:
            if self._closed:
                return
            if self._flash is not None:
                self._flash.cancel()
            self._leds["status"].blink(self._flash_s, self._flash_s, n=REFUSAL_FLASHES)
            timer = threading.Timer(2 * REFUSAL_FLASHES * self._flash_s, self._end_flash)
            timer.daemon = True
            self._flash = timer
            timer.start()

    def _end_flash(self) -> None:
        with self._lock:
            if self._closed or self._flash is not threading.current_thread():
                return  # closed, or a newer flash took over
            self._flash = None
            self._show("status", self._patterns["status"])

    def _show(self, name: LedName, pattern: LedPattern) -> None:
        led = self._leds[name]
        if pattern == "on":
            led.on()
        elif pattern == "off":
            led.off()
        else:
            on_s, off_s = BLINK_TIMES[pattern]
            led.blink(on_s, off_s)  # gpiozero blinks on its own background thread

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """All LEDs off; release every pin. Safe to call twice."""
        with self._lock:
            self._closed = True
            if self._flash is not None:
                self._flash.cancel()
                self._flash = None
        for led in self._leds.values():
            led.off()
            led.close()
        for button in self._buttons.values():
            button.close()
        self._leds.clear()
        self._buttons.clear()

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def threadsafe(loop: asyncio.AbstractEventLoop, sink: EdgeSink) -> EdgeSink:
    """An :data:`EdgeSink` that runs ``sink`` on ``loop`` (callable from any thread)."""

    def forward(button: ButtonName, pressed: bool, at: float) -> None:
        loop.call_soon_threadsafe(sink, button, pressed, at)

    return forward


class GestureFeed:
    """A :class:`GestureDetector` on an asyncio loop: raw edges in, gestures out.

    Give :meth:`edge_threadsafe` to :class:`Panel` as ``on_edge`` and construct the
    panel with ``clock=loop.time`` so edges and timer ticks share one clock.
    ``on_gesture`` runs on the loop; the long-press timer is scheduled for
    :meth:`GestureDetector.next_deadline` after every edge.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        detector: GestureDetector,
        on_gesture: Callable[[Gesture], None],
    ) -> None:
        self._loop = loop
        self._detector = detector
        self._on_gesture = on_gesture
        self._timer: asyncio.TimerHandle | None = None

    def edge_threadsafe(self, button: ButtonName, pressed: bool, at: float) -> None:
        """:data:`EdgeSink` for the panel: callable from gpiozero's thread."""
        self._loop.call_soon_threadsafe(self.edge, button, pressed, at)

    def edge(self, button: ButtonName, pressed: bool, at: float) -> None:
        """A raw edge, on the loop's thread."""
        self._emit(self._detector.edge(button, pressed, at))

    def close(self) -> None:
        """Cancel the pending timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        self._emit(self._detector.tick(self._loop.time()))

    def _emit(self, gestures: list[Gesture]) -> None:
        for gesture in gestures:
            self._on_gesture(gesture)
        self.close()
        deadline = self._detector.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._tick)
