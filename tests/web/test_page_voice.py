"""Voice between pages and appliances, in a real headless Chromium against the real
broker, server and appliances (stand-in sound cards): what the page plays is measured
in the page (its AudioWorklet's mix), what an appliance plays in its recording.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from appliance.hw_mocks.audio import read_wav_mono
from playwright.sync_api import expect

from testbed.daemons import InProcessDaemon, expect_leds, wait_until
from testbed.web import PAGE_TONE_HZ, PageUser, dominant_hz

HOST_TONE_HZ = 440.0


def heard_rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))


def test_a_page_hears_an_appliance_and_sees_it_speak(
    people: Callable[..., PageUser], appliances: Callable[..., InProcessDaemon]
) -> None:
    host = appliances(
        "pi-host", mode="host", subject="Tone room", audio={"mock_input": f"tone:{HOST_TONE_HZ:g}"}
    )
    page = people()
    page.join(host.status["room_id"])
    expect(page.member(host.user)).to_have_attribute("data-role", "host")
    expect(page.member(host.user)).to_have_attribute("data-mic", "on")
    expect(page.member(host.user)).to_have_attribute("data-speaking", "true")
    pcm = page.record(1.0)
    assert heard_rms(pcm) > 0.01
    assert abs(dominant_hz(pcm) - HOST_TONE_HZ) <= 5
    stats = page.stats()["playout"]
    assert stats["frames_decoded"] >= 40 and stats["decode_errors"] == 0
    assert stats["opener"] == {}  # nothing refused
    # Sound started with the login click; were the browser to hold it back, the page
    # offers the click it needs.
    expect(page.by("start-audio")).to_be_hidden()
    page.page.evaluate("window.gochat.ctx.suspend()")
    expect(page.by("start-audio")).to_be_visible()
    page.by("start-audio").click()
    expect(page.by("start-audio")).to_be_hidden()
    assert page.stats()["audioContext"] == "running"


def test_a_raised_hand_on_a_page_is_taken_on_stage_by_the_host_box_and_heard_there(
    people: Callable[..., PageUser],
    appliances: Callable[..., InProcessDaemon],
    recording: Callable[[str], Path],
) -> None:
    heard = recording("host")
    host = appliances("pi-host", mode="host", subject="Stage", audio={"mock_output": str(heard)})
    page = people()
    page.join(host.status["room_id"])
    expect(page.by("my-role")).to_have_attribute("data-state", "listener")
    page.by("raise-hand").click()
    expect(page.by("raise-hand")).to_have_attribute("aria-pressed", "true")
    expect(page.member(page.user)).to_have_attribute("data-hand", "true")
    expect_leds([(host, {"hand": "blink"})])
    host.press("accept")  # the host's box invites the oldest raised hand
    expect(page.by("invite-banner")).to_be_visible()
    page.by("accept-invite").click()
    expect(page.by("my-role")).to_have_attribute("data-state", "speaker")
    expect(page.by("mic")).to_have_attribute("aria-pressed", "true")
    expect_leds([(host, {"hand": "off"})])
    wait_until(
        lambda: host.status["audio"]["frames_received"], lambda n: n >= 50, 10, "page's frames"
    )
    host.stop()
    pcm, rate = read_wav_mono(heard)
    loud = np.abs(pcm) > 300
    assert loud.mean() > 0.05, "the page's voice is not in the host's recording"
    segment = pcm[np.flatnonzero(loud)[0] :][:rate]
    assert abs(dominant_hz(segment.astype(np.float64), rate) - PAGE_TONE_HZ) <= 10
