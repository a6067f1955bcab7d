"""The page's voice: mouth-to-ear both ways against an appliance, beside appliance to
appliance in the same run, and the page's CPU while it hears three speakers.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.web_voice            # 60 clicks per direction, ~2 min
    .venv/bin/python -m benchmarks.web_voice --quick    # 25 clicks, ~1 min

Prints Markdown tables with the machine and the date; never fails on a figure (exit 0;
1 if the benchmark could not run).

What is measured
----------------
A real Mosquitto and business server (its own process); appliances as processes on the
stand-in sound card (``python -m appliance run --mock-hw``), the page in Debian's
headless Chromium (Playwright), all on this machine.

**Mouth to ear.** Appliance A hosts a room; its microphone plays the click track of
``benchmarks.mouth_to_ear`` (5 ms, 2 kHz bursts at random intervals of 250-500 ms).
Appliance B and page P listen to the same clicks: A -> B and A -> P come from one run
of clicks. Then A's microphone is muted, P is invited and goes on stage, and P's
microphone (Chromium's fake capture device, playing a click track of its own through
the browser's echo canceller, noise suppressor and gain control) is heard by B: P -> B.

* mouth at an appliance: the moment the click's first sample entered its microphone,
  on the stand-in card's clock (``HW_MOCKS_AUDIO_TRACE``: the capture block's due time
  minus the click's offset in it), as ``benchmarks.mouth_to_ear`` defines it;
* mouth at the page: the moment the page's capture AudioWorklet handed over the 20 ms
  block holding the click, minus the click's offset in it (the same definition, with
  the audio thread's hand-over standing for the card's due time); the browser's own
  capture buffering before its audio graph is not included;
* ear at an appliance: when the click's first sample leaves its speaker (the output
  block's due time plus one period, plus the offset in it);
* ear at the page: when the click's first sample leaves the page's audio output,
  mapped from the AudioContext's frames with ``getOutputTimestamp()`` (the browser's own
  estimate of when a frame reaches the output device).

Both clocks are this machine's: the page's ``performance.timeOrigin + now()`` is wall
time, mapped to ``CLOCK_MONOTONIC`` with the offset read at the end of the run.
The floor of each direction is one packet (20 ms) plus Opus's algorithmic delay
(6.5 ms) plus the receiver's output period (10 ms at an appliance; the page's
``baseLatency``, ~10 ms, in Chromium): what no implementation can beat.

**CPU.** Three appliances on stage in a room of their own, each speaking a continuous
tone with DTX off; P joins it as a listener, and so does appliance B. For 20 s the CPU
time of all of Chromium's processes (browser, renderer, audio service...) is read from
``/proc``, and B's; the floor is Chromium's CPU over 20 s with the same page logged in
but in no room (measured first, in the same run).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from appliance.hw_mocks.audio import ENV_TRACE, read_wav_mono
from playwright.sync_api import Page, expect, sync_playwright

from appliance.pageserver import PageServer
from benchmarks._common import drain_datagrams, machine_header, markdown_table, percentile
from benchmarks.mouth_to_ear import (
    RATE,
    WINDOW_AFTER_S,
    BenchError,
    ClickTrack,
    ear_time,
    find_click,
    log,
    make_clicks,
    mouth_time,
    read_trace,
    sample_at,
)
from testbed.broker import Broker
from testbed.daemons import CoapClient, DaemonProcess
from testbed.server import ServerProcess
from testbed.web import PageUser, launch

DETECT_MIN_GAIN = 0.1  # the page's voice path (AGC, NS) scales clicks: a lower bar
PAGE_ONSET = 0.05  # a capture sample this loud after a quiet spell is a click
QUIET_S = 0.15
CPU_WINDOW_S = 20.0
FLOOR_MS = {"appliance": 20 + 6.5 + 10}

# In the page: every block the capture worklet hands over -> click onsets, in epoch ms.
TAP = """() => {
    const capture = window.gochat._audioNow.capture;
    window.mouths = [];
    let lastLoud = -1e9;
    capture.tap = (samples, receivedAt) => {
        for (let i = 0; i < samples.length; i += 1) {
            if (Math.abs(samples[i]) < %(onset)s) continue;
            const at = receivedAt - (samples.length - i) / 48;
            if (at - lastLoud > %(quiet)s) window.mouths.push(performance.timeOrigin + at);
            lastLoud = at;
        }
    };
}""" % {"onset": PAGE_ONSET, "quiet": QUIET_S * 1000}
# In the page: record `seconds` of its output, as base64 int16, with the epoch ms of frame 0.
RECORD = """async (seconds) => {
    const audio = await window.gochat.audio;
    const { samples, startFrame } = await audio.playout.record(seconds);
    const stamp = window.gochat.ctx.getOutputTimestamp();
    const rate = window.gochat.ctx.sampleRate;
    const epochMs = performance.timeOrigin + stamp.performanceTime + (startFrame / rate - stamp.contextTime) * 1000;
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i += 1) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
    let text = '';
    const bytes = new Uint8Array(pcm.buffer);
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return { pcm: btoa(text), epochMs, baseLatency: window.gochat.ctx.baseLatency, outputLatency: window.gochat.ctx.outputLatency };
}"""


def wall_to_monotonic() -> float:
    """Add this to a wall-clock time (s) to get CLOCK_MONOTONIC."""
    return time.monotonic() - time.time()


def latencies(mouths: Sequence[float], recording: np.ndarray, ear_of: Any, position_of: Any,
              template: np.ndarray) -> tuple[list[float], int]:  # fmt: skip
    """For each mouth time (monotonic s): find the click in ``recording`` after it and
    return (latencies in ms, clicks missed)."""
    found, missed = [], 0
    for i, mouth in enumerate(mouths):
        nxt = mouths[i + 1] if i + 1 < len(mouths) else mouth + 1.0
        lo = position_of(mouth)
        hi = lo + int(min(WINDOW_AFTER_S, nxt - mouth - 0.02) * RATE) + len(template)
        at, gain = find_click(recording, lo, hi, template)
        if at < 0 or gain < DETECT_MIN_GAIN:
            missed += 1
            continue
        found.append((ear_of(at) - mouth) * 1000)
    return found, missed


class Rig:
    """Broker, server, page server, a browser: what every part of the benchmark shares."""

    def __init__(self, stack: contextlib.ExitStack, root: Path, page_clicks: Path) -> None:
        self.root = root
        self.broker = Broker(root / "broker")
        self.broker.start()
        stack.callback(self.broker.stop)
        server = ServerProcess(self.broker, root / "server.db", root / "server.log").start()
        stack.callback(server.stop)
        pages = PageServer(self.broker.ws_url).start()
        stack.callback(pages.stop)
        self.url = pages.url
        self.coap = CoapClient()
        stack.callback(self.coap.close)
        playwright = stack.enter_context(sync_playwright())
        self.browser = launch(playwright, page_clicks)
        stack.callback(self.browser.close)
        self.stack = stack

    def appliance(self, user: str, **kwargs: Any) -> DaemonProcess:
        device = DaemonProcess(self.broker, user, self.root / "devices", **kwargs)
        self.stack.callback(device.close)
        device.start()
        assert device.notify is not None
        drain_datagrams(device.notify.sock)  # else STATUS= notifications block it
        return device

    def page(self, user: str) -> PageUser:
        person = PageUser(self.browser, self.url, user, self.broker.add_user(user))
        self.stack.callback(person.close)
        return person.login()

    def status(self, device: DaemonProcess) -> dict[str, Any]:
        body: dict[str, Any] = self.coap.get(device.coap_port, "/status").body
        return body


def mouth_to_ear(rig: Rig, clicks: int, seed: int, page_track: ClickTrack) -> dict[str, Any]:
    root = rig.root
    a_track = make_clicks(root / "a-clicks.wav", clicks, seed, RATE)
    a_trace, b_trace, b_wav = root / "a.trace", root / "b.trace", root / "b.wav"
    a = rig.appliance("m2e-a", env={ENV_TRACE: str(a_trace)}, audio={"mock_input": str(a_track.path)})
    b = rig.appliance("m2e-b", env={ENV_TRACE: str(b_trace)}, audio={"mock_output": str(b_wav)})
    page = rig.page("m2e-page")
    rig.coap.request(a.coap_port, "PUT", "/room", {"subject": "Mouth to ear"})
    room_id = ""
    while not room_id:
        room_id = rig.status(a).get("room_id") or ""
        time.sleep(0.05)
    rig.coap.request(b.coap_port, "PUT", "/room", {"room_id": room_id})
    page.join(room_id)
    log(f"A -> B and A -> page: {clicks} clicks, ~{a_track.seconds:.0f} s")
    heard = page.page.evaluate(RECORD, a_track.seconds + 1.0)
    offset = wall_to_monotonic()
    a_in, b_out = read_trace(a_trace, "in"), read_trace(b_trace, "out")
    mouths_a = [mouth_time(a_in, float(s))[0] for s in a_track.starts]
    recording_b = read_wav_mono(b_wav)[0].astype(np.float64)
    to_b, missed_b = latencies(mouths_a, recording_b, lambda s: ear_time(b_out, s)[0],
                               lambda t: sample_at(b_out, t), a_track.template)  # fmt: skip
    recording_p = np.frombuffer(base64.b64decode(heard["pcm"]), dtype="<i2").astype(np.float64)
    p_start = heard["epochMs"] / 1000 + offset
    to_p, missed_p = latencies(mouths_a, recording_p, lambda s: p_start + s / RATE,
                               lambda t: max(0, int((t - p_start) * RATE)), a_track.template)  # fmt: skip

    log(f"page -> B: the page goes on stage, its microphone plays ~{page_track.seconds:.0f} s of clicks")
    rig.coap.post(a.coap_port, "/buttons/mute", {"press": "short"})
    page.page.evaluate("async () => { await window.gochat.audio; }")
    rig.coap.post(a.coap_port, "/host/invite", {"user_id": page.user})
    expect(page.by("invite-banner")).to_be_visible()
    page.page.evaluate(TAP.replace("window.gochat._audioNow.capture", "window.gochat._audioNow.capture"))
    page.by("accept-invite").click()
    expect(page.by("my-role")).to_have_attribute("data-state", "speaker")
    page.page.wait_for_timeout(int(page_track.seconds * 1000) + 1000)
    page_mouths = [m / 1000 + wall_to_monotonic() for m in page.page.evaluate("window.mouths")]
    b_out = read_trace(b_trace, "out")
    recording_b = read_wav_mono(b_wav)[0].astype(np.float64)
    from_p, missed_from_p = latencies(page_mouths, recording_b, lambda s: ear_time(b_out, s)[0],
                                      lambda t: sample_at(b_out, t), a_track.template)  # fmt: skip
    return {
        "appliance -> appliance": (to_b, missed_b, len(mouths_a), FLOOR_MS["appliance"]),
        "appliance -> page": (to_p, missed_p, len(mouths_a), 20 + 6.5 + heard["baseLatency"] * 1000),
        "page -> appliance": (from_p, missed_from_p, len(page_mouths), FLOOR_MS["appliance"]),
        "page stats": page.stats(),
    }


# --- CPU ---------------------------------------------------------------------------------


def descendants(root_pid: int) -> list[int]:
    """``root_pid`` and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def chromium_pid(marker: str) -> int:
    """The browser process: the Chromium whose command line names ``marker``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if args and args[0].endswith(b"chromium") and any(marker.encode() in a for a in args):
                return int(cmdline.parent.name)
    raise BenchError("Chromium's browser process not found")


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    ticks = 100.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_window(read: Any, seconds: float) -> float:
    """% of one core used over ``seconds`` by what ``read()`` measures (CPU seconds)."""
    before, t0 = read(), time.monotonic()
    time.sleep(seconds)
    return (read() - before) / (time.monotonic() - t0) * 100


def cpu_three_speakers(rig: Rig, marker: str) -> dict[str, float]:
    browser = chromium_pid(marker)
    chromium = lambda: cpu_seconds(descendants(browser))  # noqa: E731
    blank = rig.browser.new_page()
    log(f"CPU: Chromium with a blank page for {CPU_WINDOW_S:.0f} s (the floor)")
    floor = cpu_window(chromium, CPU_WINDOW_S)
    blank.close()
    page = rig.page("cpu-page")
    log(f"CPU: the page in the lobby for {CPU_WINDOW_S:.0f} s")
    lobby = cpu_window(chromium, CPU_WINDOW_S)
    tone = {"dtx": False}
    s1 = rig.appliance("cpu-s1", audio={"mock_input": "tone:300", **tone})
    rig.coap.request(s1.coap_port, "PUT", "/room", {"subject": "Three speakers"})
    room_id = ""
    while not room_id:
        room_id = rig.status(s1).get("room_id") or ""
        time.sleep(0.05)
    for user, hz in (("cpu-s2", 450), ("cpu-s3", 600)):
        s = rig.appliance(user, mode="join", room_id=room_id, audio={"mock_input": f"tone:{hz}", **tone})
        while rig.status(s).get("room_id") != room_id:
            time.sleep(0.05)
        rig.coap.post(s1.coap_port, "/host/invite", {"user_id": s.user})
        time.sleep(0.3)
        rig.coap.post(s.coap_port, "/buttons/accept", {"press": "short"})
        while rig.status(s).get("role") != "speaker":
            time.sleep(0.05)
    b = rig.appliance("cpu-b", mode="join", room_id=room_id)
    page.join(room_id)
    page.wait_stats(lambda s: len(s["playout"]["speakers"]) == 3, what="three speakers")
    time.sleep(2)
    log(f"CPU: the page and appliance B hear three speakers for {CPU_WINDOW_S:.0f} s")
    assert b.proc is not None
    b_pid = b.proc.pid
    before_b = cpu_seconds([b_pid])
    heard = cpu_window(chromium, CPU_WINDOW_S)
    b_pct = (cpu_seconds([b_pid]) - before_b) / CPU_WINDOW_S * 100
    stats = page.stats()["playout"]
    return {"floor": floor, "lobby": lobby, "heard": heard, "appliance": b_pct,
            "decoded": stats["frames_decoded"], "concealed": stats["frames_concealed"]}  # fmt: skip


def row(name: str, values: tuple[list[float], int, int, float]) -> list[str]:
    lat, missed, clicks, floor = values
    lat = sorted(lat)
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return [name, f"{len(lat)}/{clicks}", f"{p50:.1f}", f"{p99:.1f}", f"{floor:.1f}",
            f"{p50 / floor:.2f}x" if lat else "-"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="25 clicks per direction")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    clicks = 25 if args.quick else args.clicks
    with tempfile.TemporaryDirectory(prefix="web-voice-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        page_track = make_clicks(root / "page-clicks.wav", clicks, args.seed + 1, RATE)
        try:
            rig = Rig(stack, root, page_track.path)
            m2e = mouth_to_ear(rig, clicks, args.seed, page_track)
            cpu = cpu_three_speakers(rig, str(page_track.path))
        except BenchError as exc:
            print(f"web_voice: {exc}", file=sys.stderr)
            return 1
    print(machine_header("The page's voice: mouth to ear and CPU"))
    print("\n## Mouth to ear (ms; the same run, loopback)\n")
    names = ("appliance -> appliance", "appliance -> page", "page -> appliance")
    print(markdown_table(["direction", "heard", "p50", "p99", "floor", "p50 / floor"],
                         [row(n, m2e[n]) for n in names]))  # fmt: skip
    print("\n## CPU while hearing three speakers (% of one core)\n")
    print(markdown_table(
        ["what", "CPU"],
        [["Chromium with a blank page (floor)", f"{cpu['floor']:.1f}"],
         ["Chromium, the page logged in, in no room", f"{cpu['lobby']:.1f}"],
         ["Chromium, the page hearing three speakers", f"{cpu['heard']:.1f}"],
         ["  its cost over the floor", f"{cpu['heard'] - cpu['floor']:.1f} ({cpu['heard'] / max(cpu['floor'], 0.1):.1f}x the floor)"],
         ["an appliance (B) hearing the same three speakers", f"{cpu['appliance']:.1f}"]],
    ))  # fmt: skip
    print(f"\nThe page decoded {cpu['decoded']} frames and concealed {cpu['concealed']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
