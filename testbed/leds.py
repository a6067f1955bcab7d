"""The device's buttons and LEDs on stand-in pins, by their names in docs/device.md.

:mod:`appliance.hw_mocks.gpio` drives and records pins; this module knows which pin is
which (the panel's :class:`~appliance.device.panel.PanelPins`) and reads an LED's
history as one of the patterns of docs/device.md
(:data:`~appliance.device.effects.BLINK_TIMES`). Blinking runs on gpiozero's threads in
real time, so the pattern helpers work on real time only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from appliance.hw_mocks.gpio import Change, timeline
from gpiozero.pins.mock import MockPin

from appliance.device.effects import BLINK_TIMES, LED_NAMES, LedName, LedPattern
from appliance.device.events import ButtonName
from appliance.device.panel import PanelPins

STEADY_S = 1.5 * max(on_s for on_s, _ in BLINK_TIMES.values())
"""Unchanged this long, an LED is steady: longer than any blink phase."""
TOLERANCE = 0.35
"""How far (relative) a measured blink phase may stray from the nominal one."""
RECENT_PHASES = 4


def button_pin(factory: Any, name: ButtonName, pins: PanelPins | None = None) -> Any:
    """The ``MockPin`` of button ``name``."""
    return factory.pin((pins or PanelPins()).button(name))


def led_pin(factory: Any, name: LedName, pins: PanelPins | None = None) -> Any:
    """The ``MockPin`` of LED ``name``."""
    return factory.pin((pins or PanelPins()).led(name))


def classify_changes(changes: Sequence[Change], now: float) -> LedPattern | None:
    """The docs/device.md pattern a history shows at ``now``, or None if it cannot tell yet.

    Steady ("on"/"off") once unchanged for :data:`STEADY_S`; a blink once at least one
    whole recent phase was seen, named by its median phase length. None while the
    history is too short to decide, or for a rhythm that is no docs/device.md pattern
    (such as a refusal flash).
    """
    if not changes:
        return None
    current = changes[-1]
    held = now - current.at
    if held >= STEADY_S:
        return "on" if current.on else "off"
    phases: list[float] = []
    for earlier, later in reversed(list(pairwise(changes))):
        phase = later.at - earlier.at
        if phase >= STEADY_S or len(phases) == RECENT_PHASES:
            break
        phases.append(phase)
    if not phases:
        return None
    return _blink_named(statistics.median(phases), held)


def _blink_named(phase: float, held: float) -> LedPattern | None:
    for name, (on_s, _) in BLINK_TIMES.items():
        if abs(phase - on_s) <= TOLERANCE * on_s:
            # Held well past this rhythm's phase: it stopped blinking; not steady yet.
            return name if held <= (1 + 2 * TOLERANCE) * on_s else None
    return None


def classify(pin: MockPin, now: float | None = None) -> LedPattern | None:
    """The pattern LED ``pin`` shows now (see :func:`classify_changes`)."""
    return classify_changes(timeline(pin), time.monotonic() if now is None else now)


def led_patterns(factory: Any, pins: PanelPins | None = None) -> dict[LedName, LedPattern | None]:
    """Every LED's pattern now, by name."""
    return {name: classify(led_pin(factory, name, pins)) for name in LED_NAMES}


def wait_for_pattern(
    pin: MockPin, pattern: LedPattern, timeout_s: float = 3.0, poll_s: float = 0.01
) -> bool:
    """Poll (real time) until ``pin`` shows ``pattern``; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if classify(pin) == pattern:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
