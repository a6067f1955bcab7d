"""The panel on gpiozero's MockFactory: edges in, LED patterns out.

Button tests run on a fake clock. LED blinking runs on gpiozero's own threads in real
time, so the few blink tests wait (about a second in all) and read the pins' history.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from appliance.hw_mocks.gpio import (
    bounce_burst,
    bouncy_press,
    long_press,
    press,
    release,
    short_press,
    timeline,
)
from gpiozero.exc import PinInvalidPin
from rig import FakeClock

from appliance.device.effects import LED_NAMES, Leds
from appliance.device.events import ButtonName, Gesture
from appliance.device.gestures import GestureDetector, GestureTiming
from appliance.device.panel import GestureFeed, Panel, PanelPins, threadsafe
from testbed.leds import (
    button_pin,
    classify,
    led_pin,
    wait_for_pattern,
)

Edge = tuple[ButtonName, bool, float]


def recorder() -> tuple[list[Edge], Any]:
    edges: list[Edge] = []

    def sink(button: ButtonName, pressed: bool, at: float) -> None:
        edges.append((button, pressed, at))

    return edges, sink


# ---------------------------------------------------------------- buttons


def test_raw_edges_reach_the_sink_with_the_clock_time(factory: Any, clock: FakeClock) -> None:
    edges, sink = recorder()
    with Panel(sink, pin_factory=factory, clock=clock):
        pin = button_pin(factory, "raise_hand")
        press(pin)
        clock.advance(0.2)
        release(pin)
    assert edges == [("raise_hand", True, 1000.0), ("raise_hand", False, 1000.2)]


def test_every_bounce_edge_is_forwarded_raw(factory: Any, clock: FakeClock) -> None:
    edges, sink = recorder()
    with Panel(sink, pin_factory=factory, clock=clock):
        bounce_burst(button_pin(factory, "mute"), 20, 0.0005, advance=clock.advance)
    assert len(edges) == 20  # gpiozero's bounce_time is off: debouncing is ours


def test_buttons_on_configured_pins(factory: Any, clock: FakeClock) -> None:
    edges, sink = recorder()
    pins = PanelPins(raise_hand=23, mute=24, accept=25, status=12, hand=16, invite=20, mic=21)
    with Panel(sink, pins=pins, pin_factory=factory, clock=clock) as panel:
        press(button_pin(factory, "accept", pins))
        assert panel.is_pressed("accept")
        panel.set_leds(Leds(mic="on"))
        assert led_pin(factory, "mic", pins).state
    assert edges == [("accept", True, 1000.0)]


def test_a_bouncy_press_through_the_pins_is_one_short_press(factory: Any, clock: FakeClock) -> None:
    detector = GestureDetector()
    gestures: list[Gesture] = []
    with Panel(
        lambda b, p, t: gestures.extend(detector.edge(b, p, t)), pin_factory=factory, clock=clock
    ):
        bouncy_press(button_pin(factory, "raise_hand"), edges=21, advance=clock.advance)
        short_press(button_pin(factory, "mute"), advance=clock.advance)
    assert gestures == [Gesture("raise_hand", "short"), Gesture("mute", "short")]


def test_a_long_press_through_the_pins_acts_before_release(factory: Any, clock: FakeClock) -> None:
    detector = GestureDetector()
    pin = button_pin(factory, "raise_hand")
    seen: list[tuple[Gesture, bool]] = []

    def on_edge(button: ButtonName, pressed: bool, at: float) -> None:
        seen.extend((g, not pin.state) for g in detector.edge(button, pressed, at))

    def advance(seconds: float) -> None:  # the shell's timer, on the fake clock
        clock.advance(seconds)
        seen.extend((g, not pin.state) for g in detector.tick(clock()))

    with Panel(on_edge, pin_factory=factory, clock=clock):
        long_press(pin, advance=advance)
    assert seen == [(Gesture("raise_hand", "long"), True)]  # reported while still held


def test_a_bad_pin_releases_the_pins_already_claimed(factory: Any) -> None:
    _, sink = recorder()
    with pytest.raises(PinInvalidPin):
        Panel(sink, pins=PanelPins(mic=99), pin_factory=factory)
    Panel(sink, pin_factory=factory).close()  # the default pins are free again


# ---------------------------------------------------------------- LEDs


def test_steady_patterns_drive_the_pins_at_once(factory: Any) -> None:
    _, sink = recorder()
    with Panel(sink, pin_factory=factory) as panel:
        panel.set_leds(Leds(status="on", hand="on"))
        assert [led_pin(factory, n).state for n in LED_NAMES] == [True, True, False, False]
        panel.set_leds(Leds(status="on"))
        assert [led_pin(factory, n).state for n in LED_NAMES] == [True, False, False, False]
        assert panel.pattern("status") == "on"


def test_blink_patterns_run_at_device_md_rates(factory: Any) -> None:
    _, sink = recorder()
    with Panel(sink, pin_factory=factory) as panel:
        panel.set_leds(Leds(status="blink-slow", hand="blink", invite="blink-fast", mic="on"))
        assert wait_for_pattern(led_pin(factory, "invite"), "blink-fast", timeout_s=2)
        assert wait_for_pattern(led_pin(factory, "hand"), "blink", timeout_s=2)
        assert wait_for_pattern(led_pin(factory, "status"), "blink-slow", timeout_s=2)
        assert led_pin(factory, "mic").state


def test_a_refusal_flashes_twice_then_restores_the_pattern(factory: Any) -> None:
    _, sink = recorder()
    with Panel(sink, pin_factory=factory, flash_s=0.02) as panel:
        panel.set_leds(Leds(status="on"))
        pin = led_pin(factory, "status")
        pin.clear_states()
        panel.flash_refused()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not (len(timeline(pin)) >= 5 and pin.state):
            time.sleep(0.005)
        states = [c.on for c in timeline(pin)]
        assert states == [True, False, True, False, True]  # two dark flashes, then on
        assert panel.pattern("status") == "on"


def test_a_pattern_set_during_a_flash_is_shown_after_it(factory: Any) -> None:
    _, sink = recorder()
    with Panel(sink, pin_factory=factory, flash_s=0.03) as panel:
        panel.flash_refused()
        panel.set_leds(Leds(status="blink-fast"))
        assert panel.pattern("status") == "blink-fast"
        assert wait_for_pattern(led_pin(factory, "status"), "blink-fast", timeout_s=2)


def test_close_turns_every_led_off(factory: Any) -> None:
    _, sink = recorder()
    panel = Panel(sink, pin_factory=factory)
    panel.set_leds(Leds(status="on", hand="blink", invite="blink-fast", mic="on"))
    panel.flash_refused()
    panel.close()
    assert [led_pin(factory, n).state for n in LED_NAMES] == [False] * 4
    panel.close()  # twice is fine
    panel.set_leds(Leds(status="on"))  # and later calls do nothing
    assert not led_pin(factory, "status").state


# ---------------------------------------------------------------- asyncio glue


def test_gesture_feed_runs_the_detector_on_the_loop(factory: Any) -> None:
    async def scenario() -> list[tuple[Gesture, bool]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[Gesture, bool]] = []
        pin = button_pin(factory, "accept")
        timing = GestureTiming(debounce_s=0.005, long_press_s=0.05)
        feed = GestureFeed(loop, GestureDetector(timing), lambda g: seen.append((g, not pin.state)))
        with Panel(feed.edge_threadsafe, pin_factory=factory, clock=loop.time):
            await asyncio.to_thread(press, pin)  # from another thread, like gpiozero's
            await asyncio.sleep(0.15)
            release(pin)
            await asyncio.sleep(0.02)
            press(pin)
            await asyncio.sleep(0.01)
            release(pin)
            await asyncio.sleep(0.02)
        feed.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen == [(Gesture("accept", "long"), True), (Gesture("accept", "short"), False)]


def test_threadsafe_sink_hands_edges_to_the_loop() -> None:
    async def scenario() -> list[Edge]:
        edges, sink = recorder()
        forward = threadsafe(asyncio.get_running_loop(), sink)
        await asyncio.to_thread(forward, "mute", True, 1.0)
        await asyncio.sleep(0)
        return edges

    assert asyncio.run(scenario()) == [("mute", True, 1.0)]


def test_classify_reads_a_steady_led(factory: Any) -> None:
    _, sink = recorder()
    with Panel(sink, pin_factory=factory) as panel:
        panel.set_leds(Leds(mic="on"))
        pin = led_pin(factory, "mic")
        assert classify(pin) is None  # just switched: could still be a blink
        assert classify(pin, now=time.monotonic() + 1) == "on"
