"""The browser page under test: Debian's Chromium, headless, driven by Playwright.

* :func:`chromium_args`: the flags Chromium needs here (root, no network, no GPU) and
  a fake microphone that plays a WAV file (Chromium loops it; it delivers 44.1 kHz
  whatever the file's rate, which the page's 48 kHz AudioContext resamples).
* :func:`write_tone_bursts`: such a WAV: bursts of a tone, as a voice comes and goes.
* :class:`PageUser`: one person on the page (one browser context): log in, create,
  join, raise a hand, answer an invitation... through the page's test hooks
  (``data-testid``, docs/web.md), and read what the page measured (``window.gochat``).

Playwright's own browser download is never used: ``executable_path`` is the system's.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
PAGE_TONE_HZ = 660.0  # what the browser tests' fake microphones play, in bursts
RATE = 48_000
WAIT_MS = 10_000


def chromium_args(fake_mic: Path) -> list[str]:
    """Headless Chromium as root on a closed network, with ``fake_mic`` as the microphone."""
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}",
        # A page in the background (every context but the focused one) keeps its timers.
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ]  # fmt: skip


def launch(playwright: Playwright, fake_mic: Path) -> Browser:
    """Debian's Chromium with :func:`chromium_args`."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: 'make venv' installs chromium")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(fake_mic))


def write_tone_bursts(
    path: Path,
    hz: float,
    *,
    on_s: float = 0.4,
    off_s: float = 0.2,
    seconds: float = 6.0,
    level: float = 0.3,
    rate: int = RATE,
) -> Path:
    """A mono WAV of ``hz`` in bursts (``on_s`` of tone, ``off_s`` of silence), softly
    ramped: voice-like enough that the browser's noise suppressor lets it through."""
    t = np.arange(int(seconds * rate)) / rate
    period = on_s + off_s
    phase = t % period
    ramp = np.clip(np.minimum(phase, on_s - phase) / 0.02, 0.0, 1.0) * (phase < on_s)
    pcm = level * ramp * np.sin(2 * np.pi * hz * t)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.round(pcm * 32767).astype("<i2").tobytes())
    return path


def dominant_hz(pcm: npt.NDArray[np.floating[Any]], rate: int = RATE) -> float:
    """The strongest frequency of ``pcm`` (Hann window, FFT)."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    spectrum[:3] = 0
    return float(np.argmax(spectrum) * rate / len(pcm))


class PageUser:
    """One person on the page, in a browser context of their own."""

    def __init__(self, browser: Browser, url: str, user: str, password: str,
                 *, viewport: dict[str, int] | None = None) -> None:  # fmt: skip
        self.user = user
        self.password = password
        self.url = url
        self.context: BrowserContext = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)

    # ------------------------------------------------------------ the test hooks

    def by(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    def member(self, user_id: str) -> Locator:
        return self.page.locator(f'[data-testid="member"][data-user-id="{user_id}"]')

    def open(self) -> PageUser:
        self.page.goto(self.url)
        return self

    def login(self, password: str | None = None) -> PageUser:
        """Log in and wait until the room list shows (or the login fails, if a wrong
        ``password`` is given: then only until the attempt is over)."""
        self.open()
        self.by("login-user").fill(self.user)
        self.by("login-password").fill(password if password is not None else self.password)
        self.by("login-submit").click()
        if password is None:
            expect(self.by("connection")).to_have_attribute("data-state", "online")
            expect(self.page.locator("#lobby-view")).to_be_visible()
        return self

    def create_room(self, subject: str) -> str:
        """Create a room (as its host); returns its id."""
        self.by("create-subject").fill(subject)
        self.by("create-room").click()
        expect(self.by("my-role")).to_have_attribute("data-state", "host")
        return self.room_id()

    def join(self, room_id: str) -> None:
        self.page.locator("#refresh-rooms").click()
        self.page.locator(f'[data-testid="room-item"][data-room-id="{room_id}"]').click()
        expect(self.by("room-view")).to_have_attribute("data-room-id", room_id)

    def room_id(self) -> str:
        value = self.by("room-view").get_attribute("data-room-id")
        assert value, "not in a room"
        return value

    def role(self) -> str | None:
        return self.by("my-role").get_attribute("data-state")

    # ------------------------------------------------------------ what the page measured

    def stats(self) -> dict[str, Any]:
        """``window.gochat.stats()``: the link, the room, playout and capture counters."""
        value: dict[str, Any] = self.page.evaluate("window.gochat.stats()")
        return value

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0,
                   what: str = "") -> dict[str, Any]:  # fmt: skip
        """Poll :meth:`stats` until ``predicate`` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user}: {what} not reached; stats: {stats}")
            self.page.wait_for_timeout(50)

    def record(self, seconds: float) -> npt.NDArray[np.float32]:
        """The next ``seconds`` of what the page plays (the AudioWorklet's mix)."""
        samples = self.page.evaluate(
            """async (seconds) => {
                const audio = await window.gochat.audio;
                const { samples } = await audio.playout.record(seconds);
                return Array.from(samples);
            }""",
            seconds,
        )
        return np.asarray(samples, dtype=np.float32)

    def close(self) -> None:
        self.context.close()
