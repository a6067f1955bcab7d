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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from appliance.hw_mocks.audio import ENV_TRACE, read_wav_mono
from playwright.sync_api import expect, sync_playwright

from appliance.pageserver import PageServer
from benchmarks._common import (
    add_smoke_flag,
    drain_datagrams,
    machine_header,
    markdown_table,
    percentile,
    process_cpu_seconds,
)
from benchmarks.mouth_to_ear import (
    RATE,
    WINDOW_AFTER_S,
    BenchError,
    ClickTrack,
    click_template,
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
APPLIANCE_FLOOR_MS = 20 + 6.5 + 10  # a packet, Opus's delay, one output period

PROBE = Path(__file__).with_name("web_probe.js")


def wall_to_monotonic() -> float:
    """Add this to a wall-clock time (s) to get CLOCK_MONOTONIC."""
    return time.monotonic() - time.time()


@dataclass(frozen=True)
class Direction:
    """One direction's latencies (ms), clicks missed and made, and its floor (ms)."""

    latencies: list[float]
    missed: int
    clicks: int
    floor_ms: float

    def row(self, name: str) -> list[str]:
        lat = sorted(self.latencies)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        ratio = f"{p50 / self.floor_ms:.2f}x" if lat else "-"
        heard = f"{len(lat)}/{self.clicks}"
        return [name, heard, f"{p50:.1f}", f"{p99:.1f}", f"{self.floor_ms:.1f}", ratio]


def direction(
    mouths: Sequence[float],
    recording: npt.NDArray[np.float64],
    ear_of: Callable[[int], float],
    position_of: Callable[[float], int],
    floor_ms: float,
) -> Direction:
    """For each mouth time (monotonic s), the click in ``recording`` after it."""
    template = click_template()
    found, missed = [], 0
    for i, mouth in enumerate(mouths):
        following = mouths[i + 1] if i + 1 < len(mouths) else mouth + 1.0
        lo = position_of(mouth)
        hi = lo + int(min(WINDOW_AFTER_S, following - mouth - 0.02) * RATE) + len(template)
        at, gain = find_click(recording, lo, hi, template)
        if at < 0 or gain < DETECT_MIN_GAIN:
            missed += 1
        else:
            found.append((ear_of(at) - mouth) * 1000)
    return Direction(found, missed, len(mouths), floor_ms)


class Rig:
    """Broker, server, page server and browser: what every part of the run shares."""

    def __init__(self, stack: contextlib.ExitStack, root: Path, page_clicks: Path) -> None:
        self.root = root
        self.stack = stack
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
        person.login()
        person.page.add_script_tag(path=str(PROBE))
        return person

    def status(self, device: DaemonProcess) -> dict[str, Any]:
        body: dict[str, Any] = self.coap.get(device.coap_port, "/status").body
        return body

    def host(self, device: DaemonProcess, subject: str) -> str:
        """``device`` creates a room; returns its id."""
        self.coap.request(device.coap_port, "PUT", "/room", {"subject": subject})
        while not (room_id := self.status(device).get("room_id")):
            time.sleep(0.05)
        return str(room_id)

    def join(self, device: DaemonProcess, room_id: str) -> None:
        self.coap.request(device.coap_port, "PUT", "/room", {"room_id": room_id})
        while self.status(device).get("room_id") != room_id:
            time.sleep(0.05)


@dataclass
class MouthToEar:
    directions: dict[str, Direction]
    page_buffer: dict[str, Any]
    to_page_arrival_ms: list[float]
    output_latency_ms: float


def mouth_to_ear(rig: Rig, clicks: int, seed: int, page_track: ClickTrack) -> MouthToEar:
    """A -> B and A -> page from one run of clicks, then page -> B."""
    root = rig.root
    a_track = make_clicks(root / "a-clicks.wav", clicks, seed, RATE)
    a_trace, b_trace, b_wav = root / "a.trace", root / "b.trace", root / "b.wav"
    a_audio = {"mock_input": str(a_track.path)}
    a = rig.appliance("m2e-a", env={ENV_TRACE: str(a_trace)}, audio=a_audio)
    b = rig.appliance("m2e-b", env={ENV_TRACE: str(b_trace)}, audio={"mock_output": str(b_wav)})
    page = rig.page("m2e-page")
    room_id = rig.host(a, "Mouth to ear")  # A's microphone (and click track) starts now
    rig.join(b, room_id)
    page.join(room_id)
    page.page.evaluate(f"gochatProbe.trackArrivals({PAGE_ONSET})")
    log(f"A -> B and A -> page: {clicks} clicks, ~{a_track.seconds:.0f} s")
    heard = page.page.evaluate("(s) => gochatProbe.record(s)", a_track.seconds + 1.0)
    offset = wall_to_monotonic()
    a_in, b_out = read_trace(a_trace, "in"), read_trace(b_trace, "out")
    mouths_a = [mouth_time(a_in, float(s))[0] for s in a_track.starts]
    b_pcm = read_wav_mono(b_wav)[0].astype(np.float64)
    page_pcm = np.frombuffer(base64.b64decode(heard["pcm"]), dtype="<i2").astype(np.float64)
    page_start = heard["epochMs"] / 1000 + offset
    # The page's floor: a packet, Opus's delay, and the browser's own output path.
    page_floor = 20 + 6.5 + (heard["baseLatency"] + heard["outputLatency"]) * 1000
    directions = {
        "appliance -> appliance": direction(
            mouths_a, b_pcm, lambda s: ear_time(b_out, s)[0], lambda t: sample_at(b_out, t),
            APPLIANCE_FLOOR_MS,
        ),
        "appliance -> page": direction(
            mouths_a, page_pcm, lambda s: page_start + s / RATE,
            lambda t: max(0, int((t - page_start) * RATE)), page_floor,
        ),
    }  # fmt: skip
    buffer = page.stats()["playout"]
    arrivals = np.asarray(page.page.evaluate("gochatProbe.arrivals")) / 1000 + offset
    to_arrival = [
        float(arrivals[i] - m) * 1000
        for m in mouths_a
        if (i := int(np.searchsorted(arrivals, m))) < len(arrivals)
    ]

    log(f"page -> B: the page on stage, its microphone plays ~{page_track.seconds:.0f} s of clicks")
    rig.coap.post(a.coap_port, "/buttons/mute", {"press": "short"})
    rig.coap.post(a.coap_port, "/host/invite", {"user_id": page.user})
    expect(page.by("invite-banner")).to_be_visible()
    page.page.evaluate(f"gochatProbe.tapMouths({PAGE_ONSET}, {QUIET_S * 1000})")
    page.by("accept-invite").click()
    expect(page.by("my-role")).to_have_attribute("data-state", "speaker")
    page.page.wait_for_timeout(int(page_track.seconds * 1000) + 1000)
    page_mouths = [m / 1000 + wall_to_monotonic() for m in page.page.evaluate("gochatProbe.mouths")]
    b_out = read_trace(b_trace, "out")
    b_pcm = read_wav_mono(b_wav)[0].astype(np.float64)
    directions["page -> appliance"] = direction(
        page_mouths, b_pcm, lambda s: ear_time(b_out, s)[0], lambda t: sample_at(b_out, t),
        APPLIANCE_FLOOR_MS,
    )  # fmt: skip
    return MouthToEar(directions, buffer, sorted(to_arrival), heard["outputLatency"] * 1000)


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
            if args[0].endswith(b"chromium") and any(marker.encode() in a for a in args):
                return int(cmdline.parent.name)
    raise BenchError("Chromium's browser process not found")


def cpu_percent(read: Callable[[], float], seconds: float) -> float:
    """% of one core used over ``seconds`` by what ``read()`` measures (CPU seconds)."""
    before, t0 = read(), time.monotonic()
    time.sleep(seconds)
    return (read() - before) / (time.monotonic() - t0) * 100


def cpu_three_speakers(rig: Rig, marker: str, window_s: float = CPU_WINDOW_S) -> dict[str, float]:
    """Chromium's CPU: a blank page (the floor), the page in no room, the page hearing
    three speakers; and an appliance hearing the same three."""
    browser = chromium_pid(marker)

    def chromium() -> float:
        return sum(process_cpu_seconds(pid) for pid in descendants(browser))

    blank = rig.browser.new_page()
    log(f"CPU: Chromium with a blank page for {window_s:.0f} s (the floor)")
    floor = cpu_percent(chromium, window_s)
    blank.close()
    page = rig.page("cpu-page")
    log(f"CPU: the page in no room for {window_s:.0f} s")
    lobby = cpu_percent(chromium, window_s)
    speakers = [
        rig.appliance(f"cpu-s{i}", audio={"mock_input": f"tone:{hz}", "dtx": False})
        for i, hz in enumerate((300, 450, 600))
    ]
    room_id = rig.host(speakers[0], "Three speakers")
    for speaker in speakers[1:]:
        rig.join(speaker, room_id)
        rig.coap.post(speakers[0].coap_port, "/host/invite", {"user_id": speaker.user})
        while rig.status(speaker).get("role") != "speaker":
            rig.coap.post(speaker.coap_port, "/buttons/accept", {"press": "short"})
            time.sleep(0.2)
    b = rig.appliance("cpu-b")
    rig.join(b, room_id)
    page.join(room_id)
    page.wait_stats(lambda s: len(s["playout"]["speakers"]) == 3, what="three speakers")
    time.sleep(2)
    log(f"CPU: the page and appliance B hear three speakers for {window_s:.0f} s")
    assert b.proc is not None
    pid = b.proc.pid
    b_before, t0 = process_cpu_seconds(pid), time.monotonic()
    heard = cpu_percent(chromium, window_s)
    appliance = (process_cpu_seconds(pid) - b_before) / (time.monotonic() - t0) * 100
    stats = page.stats()["playout"]
    return {
        "floor": floor, "lobby": lobby, "heard": heard, "appliance": appliance,
        "decoded": stats["frames_decoded"], "concealed": stats["frames_concealed"],
    }  # fmt: skip


def report(m2e: MouthToEar, cpu: dict[str, float]) -> str:
    lines = [machine_header("The page's voice: mouth to ear and CPU")]
    lines.append("\n## Mouth to ear (ms; one run, loopback)\n")
    headers = ["direction", "heard", "p50", "p99", "floor", "p50 / floor"]
    lines.append(markdown_table(headers, [d.row(n) for n, d in m2e.directions.items()]))
    for user, figures in m2e.page_buffer["speakers"].items():
        rebuffers = m2e.page_buffer["worklet"].get(user, {}).get("rebuffers", 0)
        lines.append(
            f"The page's jitter buffer for {user}: jitter {figures['jitter_ms']:.1f} ms, margin"
            f" {figures['margin_ms']:.1f} ms, {rebuffers} re-buffers (talk spurts included),"
            f" {figures['late']} late, {figures['lost']} lost."
        )
    arrival = m2e.to_page_arrival_ms
    lines.append(
        f"\nA -> page until the click's frame reached the page: p50"
        f" {percentile(arrival, 50):.1f} ms, p99 {percentile(arrival, 99):.1f} ms; the rest"
        " is the page's jitter margin and Chromium's audio output (which reports"
        f" {m2e.output_latency_ms:.0f} ms of output latency here, headless)."
    )
    lines.append("\n## CPU while hearing three speakers (% of one core)\n")
    cost = cpu["heard"] - cpu["lobby"]
    rows = [
        ["Chromium with a blank page (floor)", f"{cpu['floor']:.1f}"],
        ["Chromium, the page logged in, in no room", f"{cpu['lobby']:.1f}"],
        ["Chromium, the page hearing three speakers", f"{cpu['heard']:.1f}"],
        ["  the three speakers' cost (over no room)", f"{cost:.1f}"],
        ["  the page hearing three speakers / floor", f"{cpu['heard'] / cpu['floor']:.2f}x"],
        ["an appliance (B) hearing the same three speakers", f"{cpu['appliance']:.1f}"],
    ]
    lines.append(markdown_table(["what", "CPU"], rows))
    lines.append(f"The page decoded {cpu['decoded']:.0f} frames, concealed {cpu['concealed']:.0f}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=60, help="per direction (default 60)")
    parser.add_argument("--quick", action="store_true", help="25 clicks per direction")
    parser.add_argument("--seed", type=int, default=7)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    clicks = 3 if args.smoke else 25 if args.quick else args.clicks

    with tempfile.TemporaryDirectory(prefix="web-voice-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        page_track = make_clicks(root / "page-clicks.wav", clicks, args.seed + 1, RATE)
        try:
            rig = Rig(stack, root, page_track.path)
            m2e = mouth_to_ear(rig, clicks, args.seed, page_track)
            cpu = cpu_three_speakers(rig, str(page_track.path), 1.0 if args.smoke else CPU_WINDOW_S)
        except (BenchError, TimeoutError) as exc:
            print(f"web_voice: {exc}", file=sys.stderr)
            return 1
    print(report(m2e, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
