"""hw_mocks.gpio: the pattern classifier on synthetic histories, the pin helpers."""

from __future__ import annotations

from typing import Any

import pytest
from appliance.hw_mocks.gpio import (
    Change,
    bounce_burst,
    bouncy_press,
    press,
    release,
    timeline,
)
from gpiozero import LED, Button
from rig import FakeClock

from testbed.leds import (
    STEADY_S,
    button_pin,
    classify_changes,
    led_pin,
)


def blinking(phase: float, count: int = 6, start: float = 10.0) -> list[Change]:
    return [Change(start + i * phase, i % 2 == 0) for i in range(count)]


@pytest.mark.parametrize(
    ("phase", "pattern"), [(0.5, "blink-slow"), (0.25, "blink"), (0.1, "blink-fast")]
)
def test_blinks_are_named_by_their_phase(phase: float, pattern: str) -> None:
    changes = blinking(phase)
    assert classify_changes(changes, changes[-1].at + phase / 2) == pattern


def test_a_blink_with_jitter_is_still_recognised() -> None:
    times = [10.0, 10.11, 10.2, 10.32, 10.41]
    changes = [Change(t, i % 2 == 0) for i, t in enumerate(times)]
    assert classify_changes(changes, 10.45) == "blink-fast"


def test_steady_levels_need_a_while_to_be_sure() -> None:
    changes = [Change(0.0, False), Change(10.0, True)]
    assert classify_changes(changes, 10.1) is None
    assert classify_changes(changes, 10.0 + STEADY_S) == "on"
    assert classify_changes([Change(0.0, False)], 5.0) == "off"


def test_a_refusal_flash_is_no_device_md_pattern() -> None:
    changes = blinking(0.15)
    assert classify_changes(changes, changes[-1].at + 0.05) is None


def test_a_blink_that_stopped_is_undecided_until_steady() -> None:
    changes = blinking(0.1)
    assert classify_changes(changes, changes[-1].at + 0.4) is None
    assert classify_changes(changes, changes[-1].at + STEADY_S) in ("on", "off")


def test_an_empty_history_says_nothing() -> None:
    assert classify_changes([], 1.0) is None


def test_timeline_gives_absolute_times_oldest_first(factory: Any) -> None:
    led = LED(5, pin_factory=factory)
    try:
        led.on()
        led.off()
        led.on()
        changes = timeline(led_pin(factory, "status"))
    finally:
        led.close()
    assert [c.on for c in changes] == [False, True, False, True]
    assert [c.at for c in changes] == sorted(c.at for c in changes)
    assert changes[-1].at == led_pin(factory, "status")._last_change


def test_press_helpers_drive_an_active_low_button(factory: Any, clock: FakeClock) -> None:
    button = Button(17, pull_up=True, bounce_time=None, pin_factory=factory)
    pin = button_pin(factory, "raise_hand")
    try:
        press(pin)
        assert button.is_pressed
        release(pin)
        assert not button.is_pressed
        start = clock()
        bounce_burst(pin, 5, 0.001, advance=clock.advance)
        assert button.is_pressed  # odd: ends pressed
        assert clock() == pytest.approx(start + 0.004)
        release(pin)
        bouncy_press(pin, hold_s=0.2, edges=3, advance=clock.advance)
        assert not button.is_pressed
        with pytest.raises(ValueError, match="odd"):
            bouncy_press(pin, edges=4, advance=clock.advance)
    finally:
        button.close()
