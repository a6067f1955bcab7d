"""CPU and memory of the appliance daemon while it talks and hears three other speakers.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.footprint             # 60 s per run, 4 runs, ~5 min
    .venv/bin/python -m benchmarks.footprint --quick     # ~10 s per run
    .venv/bin/python -m benchmarks.footprint --profiles default --three-a on \
        --seconds 20 --cpu-quota 20,15,10,7,5            # the smallest quota that holds

Options: ``--seconds N`` (measured seconds per run), ``--quick``, ``--profiles
default,low-cpu``, ``--three-a on|off|both`` (the hands-free chain; both by default),
``--windows N`` (parts of the window for the ratio's median, 3), ``--cpu-quota
P[,P...]`` (each run under a CFS quota of P % of one core, 20 ms period; root, cgroup
v1 or v2), ``--py-spy PATH`` (a py-spy binary, e.g. from ``python3 -m venv
/tmp/pyspy && /tmp/pyspy/bin/pip install py-spy``: after each measured window, samples
the daemon for ``--profile-seconds`` to show where its CPU goes; run as root or with
ptrace allowed). Prints Markdown tables with the machine and the date; never fails on
a missed target (exit 0; 1 if the benchmark could not run; 130 on Ctrl-C).

What is measured
----------------
The device under test is a real daemon process (``python -m appliance run --mock-hw``,
:class:`tests.support.device.DaemonProcess`) against a real Mosquitto and the real
business server (its own process). It hosts a room, so it holds a seat with the mic
on, and its mock microphone loops a spoken sentence (``espeak-ng``, resampled with
``sox`` to the profile's capture rate so the fake sound card never resamples: its
resampler interpolates the whole file on every block, which would be billed to the
daemon). Three more speakers are lightweight publishers in this process: each is a
:class:`appliance.client.GoChatClient` user who logs in, joins the room, is invited
by the host over the device's CoAP API (``POST /host/invite``), accepts, and then
publishes 20 ms Opus frames (48 kHz, speech, DTX off: a packet every 20 ms) on its
audio topic at QoS 0, each on an absolute 20 ms schedule, a third of a packet apart
(independent devices have independent phases; ``--burst-speakers`` sends the three
together, which saves the daemon network wake-ups). So the device encodes
and publishes its own voice, and receives, jitter-buffers, decodes and mixes three.

Once all three are heard (``frames_received`` grows by ~150/s) and after a short
settling time, the daemon's process is sampled every second for ``--seconds``:
CPU time from ``/proc/<pid>/task/*/schedstat`` (nanoseconds, so 1 s windows are not
quantised to 10 ms ticks; the mean is cross-checked against ``/proc/<pid>/stat``), and
RSS (``VmRSS``; ``VmHWM`` is the peak). Reported: CPU in % of one core (mean and p95
of the 1 s windows), RSS max, the ``/status`` audio counters over the window, and CPU
per thread. Both profiles: ``default`` (48 kHz, 20 ms packets, complexity 5) and
``low-cpu`` (16 kHz, 40 ms packets, complexity 1) on the device under test; the three
speakers send the same 48 kHz 20 ms stream in both runs.

This machine's speed drifts from day to day (the same run gave 5.8 % one day and 16 %
another), so CPU is judged as a **ratio to a floor** measured in the same window: a
child process (``benchmarks._cpu.Floor``) doing only the bare work, paced every 20 ms:
the profile's Opus encode 50/s, three 48 kHz decodes 150/s and, with 3A on, the
hands-free chain on the same audio. The ratio is daemon CPU / floor CPU, the median of
``--windows`` parts of the window. Wake-ups per thread are the voluntary context
switches of ``/proc/<pid>/task/*/status``, by thread name (the daemon names its
threads in the kernel). With ``--cpu-quota``, the daemon is moved into a cgroup with
that quota once it hears all three, and a run *holds* when every frame is sent and
<= 0.5 % of played frames are concealed; the smallest quota that held is printed next
to the floor's CPU.

Targets (reported, never asserted), default profile: <= 2.0x the floor with 3A off,
<= 1.6x with 3A on, <= 64 MB RSS. Broker, server, the publishers and the daemon share
this machine; the daemon's own figures are per process, so the others only matter
through contention.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from appliance.hw_mocks.audio import read_wav_mono

from appliance.audio import opus
from appliance.audio.profile import PROFILES, ProfileName
from appliance.client import GoChatClient
from appliance.protocol import topics
from appliance.protocol.frames import timestamp_step
from appliance.protocol.voice import Sealer
from benchmarks._common import (
    add_smoke_flag,
    drain_datagrams,
    machine_header,
    markdown_table,
    percentile,
    process_cpu_seconds,
    process_rss_bytes,
    thread_cpu_seconds,
    verdict,
)
from benchmarks._cpu import (
    CpuQuota,
    Floor,
    parse_quotas,
    per_thread_rates,
    process_cpu_ns,
    quota_available,
    thread_samples,
)
from testbed.broker import Broker
from testbed.daemons import CoapClient, DaemonProcess
from testbed.server import ServerProcess, connect

TARGET_RSS_MB = 64.0
SPEAKERS = 3
PACKET_S = 0.020
SETTLE_S = 3.0
SMOKE_SETTLE_S = 0.5
HEARTBEAT_S = 10.0  # the server's heartbeat interval: the speakers' sessions stay alive
SENTENCE = (
    "Good morning everyone, and welcome to the morning room. Today we talk about "
    "gardens, small computers, and the best way to keep a conversation going."
)
MB = 1_000_000
TARGET_RATIO = {False: 2.0, True: 1.6}  # daemon CPU / floor CPU, 3A off / on
MAX_CONCEALED = 0.005


def log(message: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark could not run (not a missed target)."""


# --- the voices ----------------------------------------------------------------------


def speech_wav(workdir: Path, rate: int) -> Path:
    """A spoken sentence (espeak-ng) as 16-bit mono PCM at ``rate`` (sox)."""
    raw, out = workdir / "speech-raw.wav", workdir / f"speech-{rate}.wav"
    if not raw.exists():
        subprocess.run(["espeak-ng", "-w", str(raw), SENTENCE], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def encode_loop(speech: Path) -> list[bytes]:
    """The speech (48 kHz) as 20 ms Opus packets, the way a default device sends them
    but with DTX off, so a packet goes out every 20 ms."""
    pcm, rate = read_wav_mono(speech)
    encoder = opus.Encoder(rate, frame_ms=20, bitrate=24_000, complexity=5, fec=True)
    n = encoder.frame_samples
    blocks = pcm[: len(pcm) // n * n].reshape(-1, n)
    try:
        return [encoder.encode(np.ascontiguousarray(b)) for b in blocks]
    finally:
        encoder.close()


class Speakers:
    """Three seated speakers publishing 20 ms frames, each on its own absolute schedule.

    Independent devices capture at independent phases, so their frames reach the
    device under test spread over the 20 ms, not together: speaker ``i`` publishes at
    ``t0 + k x 20 ms + i x 20/3 ms``. (Sent in one burst, three frames cost the daemon
    one network wake-up instead of three: 1-2 points of CPU less in our runs.)
    ``burst`` sends them together anyway, for comparison.
    """

    def __init__(
        self, clients: list[GoChatClient], room_id: str, packets: list[bytes], *,
        key: tuple[int, bytes], burst: bool = False, seed: int = 7,
    ) -> None:  # fmt: skip
        self.clients = clients
        self.sealers = [Sealer(topics.audio(room_id, c.user_id)) for c in clients]
        for sealer in self.sealers:
            sealer.set_key(*key)  # every frame sealed, as a device does
        self.room_id = room_id
        self.packets = packets
        self.burst = burst
        self.seed = seed
        self.sent = 0
        self.late_ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speakers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        step = timestamp_step(20)
        count = len(self.clients)
        state = [
            (rng.randrange(0x10000), rng.randrange(0x1_0000_0000), len(self.packets) * i // count)
            for i in range(count)
        ]
        topic = [topics.audio(self.room_id, c.user_id) for c in self.clients]
        spread = 0.0 if self.burst else PACKET_S / count
        t0, j = time.monotonic(), 0
        while not self._stop.is_set():
            k, i = divmod(j, count)
            seq, ts, at = state[i]
            packet = self.packets[(at + k) % len(self.packets)]
            wire = self.sealers[i].seal((seq + k) & 0xFFFF, (ts + k * step) & 0xFFFF_FFFF, packet)
            self.clients[i].publish_raw(topic[i], wire, qos=0)
            self.sent += 1
            j += 1
            k, i = divmod(j, count)
            delay = t0 + k * PACKET_S + i * spread - time.monotonic()
            if delay < -PACKET_S / 2:
                self.late_ticks += 1
            elif delay > 0 and self._stop.wait(delay):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- sampling the daemon -------------------------------------------------------------


def process_hwm_bytes(pid: int) -> int:
    """Peak RSS (``VmHWM``) of ``pid``; 0 if gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def thread_names(pid: int, py_spy: str | None) -> dict[int, str]:
    """Each thread's Python name (from ``py-spy dump``), else its ``comm`` (which Python
    3.11 leaves as the process's name)."""
    names: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                names[int(task.name)] = (task / "comm").read_text().strip()
    if py_spy:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            dump = subprocess.run(
                [py_spy, "dump", "--pid", str(pid)],
                capture_output=True, text=True, timeout=20, check=False,
            ).stdout  # fmt: skip
            for match in re.finditer(r'^Thread (\d+) \((?:idle|active)\): "(.*)"', dump, re.M):
                names[int(match.group(1))] = match.group(2)
    return names


def py_spy_profile(py_spy: str, pid: int, seconds: float, work: Path, result: Measurement) -> None:
    """Sample the running daemon (py-spy, non-blocking, busy threads only): samples per
    thread, and the functions on top of the stack (self) and anywhere on it (total)."""
    out = work / "py-spy.txt"
    subprocess.run(
        [py_spy, "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate", "250",
         "--nonblocking", "--threads", "--format", "raw", "--output", str(out)],
        capture_output=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if not out.exists():
        log("py-spy produced no profile (ptrace not allowed?)")
        return
    threads: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total: Counter[str] = Counter()
    roles: dict[str, str] = {}
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(idle\)", "", frames[0])
        threads[thread] += count
        for callback, role in (("_on_capture", "capture"), ("_on_playback", "playback")):
            if callback in stack:
                roles[thread] = role
        calls = [_frame_name(f) for f in frames[1:]]
        if calls:
            leaf[calls[-1]] += count
            for name in set(calls):
                total[name] += count
    result.profile_samples = sum(threads.values())
    result.profile_threads = [
        (f"{name} ({roles[name]})" if name in roles else name, n)
        for name, n in threads.most_common(8)
    ]
    by_tid = {int(m.group(1)): role for name, role in roles.items()
              if (m := re.search(r"\((\d+)\)", name))}  # fmt: skip
    result.threads_pct = [
        (tid, f"{name} ({by_tid[tid]})" if tid in by_tid else name, pct)
        for tid, name, pct in result.threads_pct
    ]
    result.profile_self = leaf.most_common(12)
    result.profile_total = total.most_common(12)


def _frame_name(frame: str) -> str:
    """``function (path/file.py:line)`` -> ``function (file.py)``."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if match is None:
        return frame.strip()
    return f"{match.group(1)} ({Path(match.group(2)).name})"


@dataclass
class Measurement:
    profile: str
    seconds: float = 0.0
    windows_pct: list[float] = field(default_factory=list)
    mean_pct: float = float("nan")
    mean_ticks_pct: float = float("nan")
    rss_max: int = 0
    rss_hwm: int = 0
    audio_start: dict[str, Any] = field(default_factory=dict)
    audio_end: dict[str, Any] = field(default_factory=dict)
    threads_pct: list[tuple[int, str, float]] = field(default_factory=list)
    speakers_sent: int = 0
    speakers_late: int = 0
    counters: dict[str, Any] = field(default_factory=dict)
    profile_samples: int = 0
    profile_threads: list[tuple[str, int]] = field(default_factory=list)
    profile_self: list[tuple[str, int]] = field(default_factory=list)
    profile_total: list[tuple[str, int]] = field(default_factory=list)
    three_a: bool = True
    quota: float | None = None
    floor_pct: float = float("nan")
    ratios: list[float] = field(default_factory=list)
    wakeups: list[tuple[str, float, float]] = field(default_factory=list)
    throttled_s: float = 0.0

    @property
    def label(self) -> str:
        quota = f", quota {self.quota:g} %" if self.quota is not None else ""
        return f"{self.profile}, 3A {'on' if self.three_a else 'off'}{quota}"

    @property
    def ratio(self) -> float:
        """Median over the windows of daemon CPU / floor CPU."""
        return float(np.median(self.ratios)) if self.ratios else float("nan")

    def audio_delta(self) -> dict[str, int]:
        a, b = self.audio_start, self.audio_end
        return {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in b if k != "jitter_ms"}

    def holds(self) -> bool:
        """Every frame sent (all but two of the window's packets: the window's edges) and
        <= 0.5 % of played frames concealed."""
        d = self.audio_delta()
        packet_s = PROFILES[cast(ProfileName, self.profile)].frame_ms / 1000
        sent_ok = d.get("frames_sent", 0) >= self.seconds / packet_s - 2
        received = d.get("frames_received", 0)
        concealed = d.get("frames_concealed", 0)
        return sent_ok and received > 0 and concealed <= MAX_CONCEALED * (received + concealed)


def sample(
    pid: int, result: Measurement, *, seconds: float, heartbeat: Any, coap: CoapClient, port: int,
    py_spy: str | None, floor_pid: int, windows: int = 3, quota: CpuQuota | None = None,
) -> None:  # fmt: skip
    """Sample ``pid`` once a second for ``seconds``; heartbeats go out meanwhile. The
    floor process is sampled over the same window, split into ``windows`` parts for
    the ratio's median."""
    result.audio_start = coap.get(port, "/status").body["audio"]
    threads_before = thread_cpu_seconds(pid)
    wakes_before = thread_samples(pid)
    throttled_before = quota.throttled()[1] if quota else 0.0
    ticks_before = process_cpu_seconds(pid)
    ns_before, t_before = process_cpu_ns(pid), time.monotonic()
    part = max(1, round(seconds / windows))
    part_start = (ns_before, process_cpu_ns(floor_pid))
    floor_before = part_start[1]
    start, next_beat = t_before, t_before + HEARTBEAT_S
    while (now := time.monotonic()) - start < seconds - 1e-3:
        time.sleep(max(0.0, start + len(result.windows_pct) + 1 - now))
        ns, t = process_cpu_ns(pid), time.monotonic()
        result.windows_pct.append((ns - ns_before) / 1e9 / (t - t_before) * 100)
        ns_before, t_before = ns, t
        if len(result.windows_pct) % part == 0:
            floor_ns = process_cpu_ns(floor_pid)
            if floor_ns > part_start[1]:
                result.ratios.append((ns - part_start[0]) / (floor_ns - part_start[1]))
            part_start = (ns, floor_ns)
        result.rss_max = max(result.rss_max, process_rss_bytes(pid))
        if t >= next_beat:
            heartbeat()
            next_beat += HEARTBEAT_S
    elapsed = time.monotonic() - start
    result.seconds = elapsed
    result.floor_pct = (process_cpu_ns(floor_pid) - floor_before) / 1e9 / elapsed * 100
    result.wakeups = per_thread_rates(wakes_before, thread_samples(pid), elapsed)
    if quota is not None:
        result.throttled_s = quota.throttled()[1] - throttled_before
    result.mean_ticks_pct = (process_cpu_seconds(pid) - ticks_before) / elapsed * 100
    result.mean_pct = float(np.mean(result.windows_pct)) if result.windows_pct else float("nan")
    result.rss_hwm = process_hwm_bytes(pid)
    result.audio_end = coap.get(port, "/status").body["audio"]
    after = thread_cpu_seconds(pid)
    names = thread_names(pid, py_spy)
    result.threads_pct = sorted(
        (
            (tid, names.get(tid, "?"), (after[tid] - threads_before.get(tid, 0.0)) / elapsed * 100)
            for tid in after
        ),
        key=lambda row: -row[2],
    )


# --- one profile ---------------------------------------------------------------------


def run_profile(
    profile: str, *, broker: Broker, coap: CoapClient, root: Path, seconds: float,
    stack: contextlib.ExitStack, py_spy: str | None = None, profile_s: float = 20.0,
    burst: bool = False, three_a: bool = True, quota: float | None = None, windows: int = 3,
    settle_s: float = SETTLE_S,
) -> Measurement:  # fmt: skip
    """The daemon on ``profile``, talking, with three speakers heard; with ``quota``,
    moved into a CPU quota of that % of one core once it hears them."""
    tag = f"{profile}-{'3a' if three_a else 'no3a'}" + (f"-q{quota:g}" if quota else "")
    work = root / tag
    work.mkdir()
    rate = PROFILES[cast(ProfileName, profile)].capture_rate
    mic = speech_wav(root, rate)
    heard_wav = speech_wav(root, 48_000)
    packets = encode_loop(heard_wav)
    host = f"fp-{tag}-host"
    switches = {"echo_cancellation": three_a, "noise_suppression": three_a, "auto_gain": three_a}
    device = DaemonProcess(
        broker, host, work, mode="host", subject=f"Footprint ({tag})",
        audio={"mock_input": f"loop:{mic}", "profile": profile, **switches},
    )  # fmt: skip
    stack.callback(device.close)
    device.start()
    assert device.proc is not None and device.notify is not None
    drain_datagrams(device.notify.sock)  # else STATUS= notifications block it
    room_id = coap.get(device.coap_port, "/status").body["room_id"]
    if not room_id:
        raise BenchError(f"{host} has no room: {device.log()[-800:]}")
    clients: list[GoChatClient] = []
    for i in range(SPEAKERS):
        client = connect(broker, f"fp-{tag}-s{i + 1}")
        stack.callback(client.close)
        clients.append(client)
        client.call("login_room", room_id=room_id)
        invited = coap.post(device.coap_port, "/host/invite", {"user_id": client.user_id})
        if not invited.ok:
            raise BenchError(f"invite {client.user_id}: {invited.code} {invited.body}")
        invitation = client.next_inbox("invite_onstage")
        me = client.call(
            "response_onstage_invite",
            room_id=room_id,
            invitation_id=invitation.invitation_id,  # type: ignore[attr-defined]
            accept=True,
        )["me"]
        if me["role"] != "speaker" or not me["mic_on"]:
            raise BenchError(f"{client.user_id} is not a speaker with the mic on: {me}")
    # Re-joining hands out the room's current voice key without rotating it.
    media = clients[0].call("login_room", room_id=room_id)["media"]
    key = (int(media["epoch"]), base64.b64decode(media["key"]))
    speakers = Speakers(clients, room_id, packets, key=key, burst=burst)
    speakers.start()
    stack.callback(speakers.stop)
    wait_heard(coap, device.coap_port)
    floor = Floor(mic, heard_wav, profile, three_a=three_a)
    stack.callback(floor.close)
    group = None
    if quota is not None:
        group = CpuQuota(f"gochat-footprint-{os.getpid()}", quota)
        stack.callback(group.close)
        group.add(device.proc.pid)
    time.sleep(settle_s)
    result = Measurement(profile, three_a=three_a, quota=quota)
    log(f"{result.label}: measuring {seconds:.0f} s")

    def heartbeat() -> None:
        for client in clients:
            with contextlib.suppress(Exception):
                client.call("heartbeat")

    sample(
        device.proc.pid,
        result,
        seconds=seconds,
        heartbeat=heartbeat,
        coap=coap,
        port=device.coap_port,
        py_spy=py_spy,
        floor_pid=floor.pid,
        windows=windows,
        quota=group,
    )
    if py_spy:
        log(f"{profile}: py-spy for {profile_s:.0f} s")
        py_spy_profile(py_spy, device.proc.pid, profile_s, work, result)
    result.speakers_sent, result.speakers_late = speakers.sent, speakers.late_ticks
    result.counters = coap.get(device.coap_port, "/counters").body
    speakers.stop()
    return result


def wait_heard(coap: CoapClient, port: int, timeout_s: float = 10.0) -> None:
    """Until the device receives all three streams (~150 frames/s)."""
    deadline = time.monotonic() + timeout_s
    first = coap.get(port, "/status").body["audio"]["frames_received"]
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = coap.get(port, "/status").body["audio"]["frames_received"]
        if (now - first) / (time.monotonic() - t0) > 0.9 * SPEAKERS / PACKET_S:
            return
    raise BenchError(f"the device does not hear {SPEAKERS} speakers")


# --- the report ----------------------------------------------------------------------


def report(results: list[Measurement], *, burst: bool = False) -> str:
    out = [machine_header("Appliance daemon footprint: seated, talking, hearing three speakers")]
    out.append(
        "CPU in % of one core (1 s windows); the floor is the bare codec work (Opus encode"
        " 50/s, decode 150/s, and the 3A chain on the same audio when 3A is on) in its own"
        " process over the same window; the ratio is daemon / floor, the median of the"
        " window's parts (their range in brackets). RSS sampled once a second.\n"
    )
    rows = []
    for r in results:
        target = TARGET_RATIO[r.three_a] if r.quota is None else None
        spread = f" [{min(r.ratios):.2f}-{max(r.ratios):.2f}]" if r.ratios else ""
        rows.append([
            r.label, f"{r.seconds:.0f} s",
            f"{r.mean_pct:.2f} % (stat: {r.mean_ticks_pct:.1f} %)",
            f"{percentile(sorted(r.windows_pct), 95):.2f} %", f"{r.floor_pct:.2f} %",
            f"**{r.ratio:.2f}x**{spread}",
            f"<= {target:g}x {verdict(r.ratio <= target)}" if target else "-",
            f"{r.rss_max / MB:.1f} MB (peak {r.rss_hwm / MB:.1f})",
            verdict(r.rss_max / MB <= TARGET_RSS_MB) if r.profile == "default" else "-",
        ])  # fmt: skip
    out.append(
        markdown_table(
            [
                "run",
                "measured",
                "CPU mean",
                "CPU p95",
                "floor CPU",
                "ratio",
                "target",
                "RSS max",
                f"<= {TARGET_RSS_MB:g} MB",
            ],
            rows,
        )
    )
    rows = []
    for r in results:
        delta = r.audio_delta()
        received = delta.get("frames_received", 0)
        concealed = delta.get("frames_concealed", 0)
        rows.append([
            r.label,
            f"{delta.get('frames_sent', 0)} ({delta.get('frames_sent', 0) / r.seconds:.1f}/s)",
            f"{received} ({received / r.seconds:.1f}/s)",
            f"{concealed} ({concealed / max(1, received + concealed):.2%})",
            f"{r.audio_end.get('jitter_ms', float('nan'))}",
            f"{r.throttled_s:.1f} s" if r.quota is not None else "-",
            verdict(r.holds()),
        ])  # fmt: skip
    out.append(
        "The daemon's `/status` audio counters over the measured window (holds: every frame"
        f" sent, <= {MAX_CONCEALED:.1%} of played frames concealed):\n"
    )
    out.append(
        markdown_table(
            [
                "run",
                "frames_sent",
                "frames_received",
                "frames_concealed",
                "jitter_ms",
                "throttled",
                "holds",
            ],
            rows,
        )
    )
    rows = []
    for r in results:
        busy = [t for t in r.wakeups if t[1] >= 0.5 or t[2] >= 0.05]
        cells = ", ".join(f"{name} {wakes:.0f}/s {pct:.2f} %" for name, wakes, pct in busy)
        total = sum(w for _n, w, _c in r.wakeups)
        rows.append([r.label, f"{total:.0f}/s", cells])
    out.append(
        "Wake-ups (voluntary context switches) and CPU per thread, by the thread's name"
        " (`/proc/PID/task/*/status`, `comm`):\n"
    )
    out.append(markdown_table(["run", "wake-ups", "thread: wake-ups/s, % of one core"], rows))
    out.extend(_quota_summary(results))
    out.extend(_py_spy_tables(results))
    out.append(
        "Speakers: 3 GoChatClient users in this process, 20 ms Opus frames (48 kHz, 24 kbit/s,"
        " DTX off) at QoS 0, "
        + ("all three at once" if burst else "a third of a packet (6.7 ms) apart")
        + ". Device mic: espeak-ng speech, looped, at the capture rate."
    )
    return "\n".join(out)


def _quota_summary(results: list[Measurement]) -> list[str]:
    """The smallest quota that held, per profile and 3A switch."""
    rows = []
    for key in dict.fromkeys((r.profile, r.three_a) for r in results if r.quota is not None):
        runs = [r for r in results if (r.profile, r.three_a) == key and r.quota is not None]
        held = [r.quota for r in runs if r.holds() and r.quota is not None]
        tried = ", ".join(f"{r.quota:g} % {'held' if r.holds() else 'failed'}" for r in runs)
        floors = ", ".join(f"{r.floor_pct:.2f} %" for r in runs)
        rows.append([
            f"{key[0]}, 3A {'on' if key[1] else 'off'}", tried,
            f"**{min(held):g} %**" if held else "none", floors,
        ])  # fmt: skip
    if not rows:
        return []
    return [
        "CPU quota (CFS bandwidth, 20 ms period; the daemon moved into the group once it hears"
        " all three):"
        " the smallest P % of one core that held, next to the floor's CPU in the same run:\n",
        markdown_table(["run", "quotas tried", "smallest that held", "floor CPU"], rows),
    ]


def _py_spy_tables(results: list[Measurement]) -> list[str]:
    out: list[str] = []
    for r in results:
        if not r.profile_samples:
            continue
        n = r.profile_samples
        out.append(
            f"py-spy, {r.label}: {n} samples of busy threads at 250 Hz (after the measured"
            " window; libopus and numpy show as the Python function calling them):\n"
        )
        width = max(len(r.profile_threads), len(r.profile_self), len(r.profile_total))
        rows = []
        for i in range(width):
            row: list[str] = []
            for pairs in (r.profile_threads, r.profile_self, r.profile_total):
                name, count = pairs[i] if i < len(pairs) else ("", 0)
                row += [name, f"{count / n:.0%}" if name else ""]
            rows.append(row)
        out.append(
            markdown_table(
                ["thread", "share", "function (self)", "share", "function (total)", "share"],
                rows,
            )
        )
    return out


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="per profile (60)")
    parser.add_argument("--quick", action="store_true", help="10 s per profile")
    add_smoke_flag(parser)
    parser.add_argument(
        "--profiles", default="default,low-cpu", help="comma-separated (default,low-cpu)"
    )
    parser.add_argument(
        "--burst-speakers", action="store_true", help="the 3 speakers publish together"
    )
    parser.add_argument(
        "--three-a", choices=("on", "off", "both"), default="both",
        help="the hands-free chain (echo cancellation, noise suppression, gain): both",
    )  # fmt: skip
    parser.add_argument(
        "--cpu-quota", type=parse_quotas, default=None, metavar="P[,P...]",
        help="run under a CFS quota of P %% of one core (20 ms period), each P in turn",
    )  # fmt: skip
    parser.add_argument(
        "--windows", type=int, default=3, help="parts of the window for the ratio's median (3)"
    )
    parser.add_argument("--py-spy", default=None, help="py-spy binary: profile after measuring")
    parser.add_argument(
        "--profile-seconds", type=float, default=20.0, help="py-spy sampling time (20)"
    )
    args = parser.parse_args(argv)
    if args.py_spy and shutil.which(args.py_spy) is None:
        parser.error(f"--py-spy: {args.py_spy} is not executable")
    if args.seconds is None:
        args.seconds = 1.0 if args.smoke else 10.0 if args.quick else 60.0
    args.profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    args.three_a = {"on": [True], "off": [False], "both": [False, True]}[args.three_a]
    if args.cpu_quota is not None and (why := quota_available()):
        parser.error(f"--cpu-quota: {why}")
    for p in args.profiles:
        if p not in PROFILES:
            parser.error(f"unknown profile {p!r}")
    return args


def runs(args: argparse.Namespace) -> list[tuple[str, bool, float | None]]:
    """(profile, 3A, quota) of every run: each quota in turn, or one run unlimited."""
    quotas: list[float | None] = list(args.cpu_quota) if args.cpu_quota else [None]
    pairs = [(p, a) for p in args.profiles for a in args.three_a]
    if args.smoke:  # each profile and each chain setting once, not every pair of them
        pairs = [(p, args.three_a[i % len(args.three_a)]) for i, p in enumerate(args.profiles)]
    return [(p, a, q) for p, a in pairs for q in quotas]


def _sigterm(_signo: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def bench_world(root: Path) -> Iterator[tuple[Broker, CoapClient]]:
    """Broker, server and a CoAP client, all stopped on the way out."""
    with contextlib.ExitStack() as stack:
        broker = Broker(root / "broker", persistence=False)
        broker.start()
        stack.callback(broker.stop)
        server = ServerProcess(broker, root / "server.db", root / "server.log").start()
        stack.callback(server.stop)
        coap = CoapClient()
        stack.callback(coap.close)
        yield broker, coap


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            log(f"could not run: {tool} is not installed")
            return 1
    results: list[Measurement] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gochat-footprint-") as tmp:
            root = Path(tmp)
            with bench_world(root) as (broker, coap):
                for profile, three_a, quota in runs(args):
                    with contextlib.ExitStack() as stack:
                        results.append(
                            run_profile(
                                profile,
                                broker=broker,
                                coap=coap,
                                root=root,
                                seconds=args.seconds,
                                stack=stack,
                                py_spy=args.py_spy,
                                profile_s=args.profile_seconds,
                                burst=args.burst_speakers,
                                three_a=three_a,
                                quota=quota,
                                windows=args.windows,
                                settle_s=SMOKE_SETTLE_S if args.smoke else SETTLE_S,
                            )
                        )
    except KeyboardInterrupt:
        log("interrupted: everything stopped")
        return 130
    except (BenchError, TimeoutError, subprocess.CalledProcessError) as exc:
        log(f"could not run: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    print(report(results, burst=args.burst_speakers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
