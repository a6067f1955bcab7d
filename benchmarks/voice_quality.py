"""The hands-free chain stage by stage: what each stage buys and what it costs.

Run: ``.venv/bin/python -m benchmarks.voice_quality`` from the repository root (~1 min;
``--smoke``: the full chain on the default profile, briefly, for the test suite).
Prints Markdown tables with the machine and the date; never fails on a number (exit 0).

The engine's own :class:`~appliance.audio.processing.CaptureChain`, driven exactly as
the engine drives it (48 kHz playback in 10 ms periods feeding the reference, capture
blocks of the profile's packet), in the stand-in room of ``hw_mocks.room`` (the talkers
and the room of ``benchmarks.voice_quality_dsp``: far talker -20 dBFS through
``delay_ms=60,gain_db=-6,rt60_ms=250``, so its echo is as loud as the near talker at
-26 dBFS). Every variant (the full chain, then one stage off at a time) on both
profiles (``default``: 48 kHz, 20 ms; ``low-cpu``: 16 kHz, 40 ms). What the chain puts
out is then sent through the profile's own Opus encoder and decoded, as a member of
the room hears it. Measured:

* ERLE: echo in the microphone over what is sent, echo only (the near end silent),
  during the first 3 s and after 3 s (converged); the variant as configured, gain
  included (an AGC that raised echo would count as leaked echo);
* double talk: the near talker while the far end talks, wideband PESQ (``pesq``) and
  STOI (``pystoi``) of the decoded stream against the clean near talker, 16 kHz, after
  advancing the stream by its measured lag, over a -60 dBFS pink microphone floor;
* the same with the echo 10 dB under the near talker, and the near talker alone (no
  far end: what the chain and the codec do to a lone voice), and the codec alone;
* noise floor in pauses: the near talker alone in pink noise at -45 dBFS, the decoded
  stream's level between its words (from 0.5 s after it starts, 150 ms after each
  word); and AGC2's gain over the same run (5th-95th percentile: a pumping AGC would
  spread it between words and speech);
* latency: the chain's own delay, the cross-correlation lag of its output behind its
  input (near talker and noise run); and the mouth-to-ear p50 growth it implies: that
  lag plus the chain's CPU time per capture block (the encoder waits for it);
* mouth to ear, live: ``benchmarks.mouth_to_ear``'s loopback scenario (real daemons,
  Mosquitto and the server; clicks into A's stand-in microphone, found in B's
  speaker) run alternately with the chain on and with every stage off, ``M2E_RUNS``
  times each; p50 of all clicks of each (``--no-mouth-to-ear`` skips it, ~2 min);
* CPU: ``time.process_time`` per 10 ms of audio (render + process, median of 3 runs of
  10 s), as % of one core, and as a ratio to one Opus encode of the same 10 ms of audio
  with the profile's encoder settings, measured in the same run.

* a newcomer on stage in two rooms (the demo's, and one whose speaker comes back 6 dB
  over what it played), both with the demo's noise: its stream's loudest second against
  the talker, in its first 4 s and after; howls cut; ERLE after the first second; double
  talk in the room against the codec alone on the same talker.

Targets: a newcomer >= 15 dB under the talker in its first 4 s and >= 25 dB after, never
over it + 3 dB; ERLE >= 30 dB after the first second; double-talk PESQ >= 0.8 x the
codec's; the chain <= 3.5 % of a core at 48 kHz and <= 16 ms mouth to ear. Needs
``pesq`` and ``pystoi`` (the ``bench`` extra) for the quality columns (n/a without them).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio import opus
from appliance.audio.config import HandsFreeConfig
from appliance.audio.processing import CaptureChain
from appliance.audio.profile import PROFILES, Profile
from benchmarks._common import add_smoke_flag, machine_header, markdown_table, verdict
from benchmarks.voice_quality_dsp import (
    CPU_BLOCKS,
    ECHO,
    ECHO_QUIET,
    MIC_FLOOR,
    NEAR_FROM_S,
    SECONDS,
    SMOKE_CPU_BLOCKS,
    added_delay,
    cpu_per_10ms_us,
    erle,
    quality,
    simulate,
    talkers,
)
from hw_mocks.room import dbfs, speech_like

NOISE = "pink:-45"
PAUSE_GUARD_S = 0.15  # after each word: the room's tail, the chain's delay, the codec
FLOOR_FROM_S = NEAR_FROM_S + 0.5  # between words (the lead-in is no pause)
VARIANTS: dict[str, dict[str, bool]] = {
    "full chain": {},
    "no echo cancellation": {"echo_cancellation": False},
    "no noise suppression": {"noise_suppression": False},
    "no automatic gain": {"auto_gain": False},
}
TARGET_ERLE_DB, TARGET_PESQ_RATIO, TARGET_CORE_PCT, TARGET_M2E_MS = 30.0, 0.8, 3.5, 16.0
TARGET_EARLY_DB, TARGET_LATE_DB, TARGET_HOWL_DB = -15.0, -25.0, 3.0

# The rooms a newcomer is brought on stage in: the demo's (scripts/run-dev) and a harsher
# one whose speaker comes back 6 dB over what it played. Both with the demo's noise.
ROOMS = {
    "demo": "delay_ms=30,gain_db=-3,rt60_ms=250",
    "harsh": "delay_ms=30,gain_db=6,rt60_ms=250",
}
ROOM_NOISE = "pink:-50"
FIRST_S = 4


@dataclass
class Row:
    profile: str
    variant: str
    erle_early: float
    erle_late: float
    pesq: str
    stoi: str
    pesq_quiet: str
    pesq_alone: str
    agc_spread: str
    floor_dbfs: float
    lag_ms: float
    cpu_us: float
    opus_us: float

    @property
    def block_ms(self) -> int:
        return PROFILES[self.profile].frame_ms  # type: ignore[index]

    @property
    def m2e_ms(self) -> float:
        """Mouth-to-ear growth: the chain's delay plus its work on one capture block."""
        return self.lag_ms + self.cpu_us * self.block_ms / 10 / 1000

    def cells(self) -> list[object]:
        return [
            self.profile, self.variant, f"{self.erle_early:.1f}", f"{self.erle_late:.1f}",
            self.pesq, self.stoi, self.pesq_quiet, self.pesq_alone, self.agc_spread,
            f"{self.floor_dbfs:.1f}", f"{self.lag_ms:.1f}", f"{self.m2e_ms:.1f}",
            f"{self.cpu_us:.0f}", f"{self.cpu_us / 100:.2f} %", f"{self.cpu_us / self.opus_us:.2f}",
        ]  # fmt: skip


def through_opus(pcm: np.ndarray, profile: Profile) -> np.ndarray:
    """``pcm`` as a member hears it: the profile's encoder, then a decoder (same rate)."""
    n = profile.frame_samples
    out = np.zeros(len(pcm) // n * n, np.int16)
    with (
        opus.Encoder(
            profile.capture_rate, frame_ms=profile.frame_ms, bitrate=profile.bitrate,
            complexity=profile.complexity, fec=True,
        ) as enc,
        opus.Decoder(profile.capture_rate) as dec,
    ):  # fmt: skip
        for at in range(0, len(out), n):
            out[at : at + n] = dec.decode(enc.encode(pcm[at : at + n]))
    return out


def opus_per_10ms_us(profile: Profile) -> float:
    """Process CPU of the profile's encoder per 10 ms of the CPU run's near audio."""
    pcm = speech_like(10.0, profile.capture_rate, seed=4)
    n = profile.frame_samples
    frames = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
    runs = []
    with opus.Encoder(
        profile.capture_rate, frame_ms=profile.frame_ms, bitrate=profile.bitrate,
        complexity=profile.complexity, fec=True,
    ) as enc:  # fmt: skip
        for _ in range(3):
            start = time.process_time()
            for f in frames:
                enc.encode(f)
            runs.append((time.process_time() - start) / (len(frames) * profile.frame_ms / 10))
    return float(np.median(runs)) * 1e6


class GainMeter:
    """A chain that notes AGC2's gain after every block (does the gain pump?)."""

    def __init__(self, chain: CaptureChain) -> None:
        self.chain = chain
        self.gains: list[float] = []
        self.render = chain.render

    def process(self, pcm: np.ndarray) -> np.ndarray:
        out = self.chain.process(pcm)
        if self.chain.gain is not None:
            self.gains.append(self.chain.gain.gain_db)
        return out


def pauses_of(near: np.ndarray, rate: int) -> np.ndarray:
    """Where the near talker is silent (10 ms frames 50 dB under its loudest), from
    ``FLOOR_FROM_S`` on, ``PAUSE_GUARD_S`` after each word."""
    frame = rate // 100
    frames = near[: len(near) // frame * frame].reshape(-1, frame).astype(float)
    power = np.mean(frames**2, axis=1)
    quiet = power < np.max(power) * 10 ** (-50 / 10)
    guard = round(PAUSE_GUARD_S * 100)
    talking = np.convolve(~quiet, np.ones(guard), "full")[: len(quiet)] > 0
    talking[: int(FLOOR_FROM_S * 100)] = True
    return np.repeat(~talking, frame)


def measure(
    profile: Profile,
    variant: str,
    make: Callable[..., Any],
    opus_us: float,
    *,
    cpu_blocks: int = CPU_BLOCKS,
) -> Row:
    rate, block_ms = profile.capture_rate, profile.frame_ms
    far48, near, _ = talkers(rate)
    echo_only = simulate(make(), far48, rate, block_ms)
    early, late = erle(echo_only, rate, 0.0, 3.0), erle(echo_only, rate, 3.0, SECONDS)
    talk = simulate(make(), far48, rate, block_ms, near=near, noise=MIC_FLOOR)
    pesq_wb, stoi_ = quality(near, through_opus(talk.out, profile), rate)
    quiet = simulate(make(), far48, rate, block_ms, echo=ECHO_QUIET, near=near, noise=MIC_FLOOR)
    pesq_quiet, _ = quality(near, through_opus(quiet.out, profile), rate)
    silent = np.zeros_like(far48)
    lone = simulate(make(), silent, rate, block_ms, echo="off", near=near, noise=MIC_FLOOR)
    pesq_alone, _ = quality(near, through_opus(lone.out, profile), rate)
    metered = GainMeter(make())
    alone = simulate(metered, silent, rate, block_ms, echo="off", near=near, noise=NOISE)
    talking = metered.gains[int(FLOOR_FROM_S * 1000 / block_ms) :]
    spread = "-" if not talking else "{:.1f}-{:.1f}".format(*np.percentile(talking, [5, 95]))
    lag_ms = added_delay(near, alone.out, rate) * 1000 / rate
    heard = through_opus(alone.out, profile)
    lag = added_delay(near, heard, rate)
    mask = pauses_of(near, rate)[: len(heard) - lag]
    floor_db = dbfs(heard[lag:][: len(mask)][mask]) if mask.sum() > rate // 4 else float("nan")
    cpu = cpu_per_10ms_us(make, rate, block_ms, cpu_blocks)
    return Row(
        profile.name, variant, early, late, pesq_wb, stoi_, pesq_quiet, pesq_alone, spread,
        floor_db, lag_ms, cpu, opus_us,
    )  # fmt: skip


@dataclass
class RoomRow:
    room: str
    early_db: float  # the newcomer's loudest second in its first FIRST_S s, vs the talker
    late_db: float  # ... and after
    howls: int
    erle_db: float  # after the first second of single talk
    pesq: str  # double talk in this room (its noise included)
    pesq_ratio: float  # ... over the codec-only PESQ of the same talker


def newcomer_in(room: str, profile: Profile) -> RoomRow:
    """A silent newcomer brought on stage in ``room`` while the far end talks (its echo
    and the room's noise in its microphone), then the same with the newcomer talking
    over the far end from NEAR_FROM_S on."""
    rate, block_ms = profile.capture_rate, profile.frame_ms
    far48, near, _ = talkers(rate)
    chain = CaptureChain(rate)
    alone = simulate(chain, far48, rate, block_ms, echo=ROOMS[room], noise=ROOM_NOISE)
    talker = dbfs(far48[far48 != 0])
    seconds = [dbfs(alone.out[k * rate : (k + 1) * rate]) - talker for k in range(int(SECONDS))]
    talk = simulate(CaptureChain(rate), far48, rate, block_ms, echo=ROOMS[room],
                    near=near, noise=ROOM_NOISE)  # fmt: skip
    pesq_wb, _ = quality(near, through_opus(talk.out, profile), rate)
    ceiling = codec_ceiling(profile)
    ratio = float(pesq_wb) / float(ceiling) if "n/a" not in (pesq_wb, ceiling) else float("nan")
    return RoomRow(
        room, max(seconds[:FIRST_S]), max(seconds[FIRST_S:]), chain.howl_events,
        erle(alone, rate, 1.0, SECONDS), pesq_wb, ratio,
    )  # fmt: skip


def codec_ceiling(profile: Profile) -> str:
    """PESQ of the near talker through the profile's codec alone (no room, no chain)."""
    rate = profile.capture_rate
    _, near, _ = talkers(rate)
    pcm = np.clip(np.round(near), -32768, 32767).astype(np.int16)
    return quality(near, through_opus(pcm, profile), rate)[0]


def rows(*, smoke: bool = False) -> list[Row]:
    """Every variant on every profile (``smoke``: the full chain on the default profile,
    briefly; benchmarks.voice_quality_dsp's smoke run has both profiles)."""
    out = []
    variants = {"full chain": VARIANTS["full chain"]} if smoke else VARIANTS
    for profile in [PROFILES["default"]] if smoke else PROFILES.values():
        opus_us = opus_per_10ms_us(profile)
        for variant, switches in variants.items():
            rate = profile.capture_rate

            def make(rate: int = rate, switches: dict[str, bool] = switches) -> CaptureChain:
                return CaptureChain(rate, HandsFreeConfig.switched(**switches))

            cpu_blocks = SMOKE_CPU_BLOCKS if smoke else CPU_BLOCKS
            out.append(measure(profile, variant, make, opus_us, cpu_blocks=cpu_blocks))
    return out


M2E_RUNS = 2
M2E_CLICKS = 50
CHAIN_OFF = {"echo_cancellation": False, "noise_suppression": False, "auto_gain": False}


def mouth_to_ear_p50s(runs: int = M2E_RUNS, clicks: int = M2E_CLICKS) -> dict[str, list[float]]:
    """Click latencies (ms) of mouth_to_ear's loopback with the chain on and off."""
    from benchmarks import mouth_to_ear as m2e  # noqa: PLC0415 - needs Mosquitto

    names = vars(m2e)  # run_scenario makes its daemons through this name
    original = names["DaemonProcess"]
    latencies: dict[str, list[float]] = {"on": [], "off": []}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="gochat-vq-m2e-") as tmp,
            m2e.bench_world(Path(tmp)) as (broker, coap, _),
        ):
            for run in range(runs):
                for label in ("on", "off"):
                    switches = {} if label == "on" else CHAIN_OFF

                    def daemon(*args: Any, audio: Any = None, _s: Any = switches, **kw: Any) -> Any:
                        return original(*args, audio={**(audio or {}), **_s}, **kw)

                    names["DaemonProcess"] = daemon
                    scenario = m2e.Scenario(f"loopback 3A {label} {run}", "default", proxy=False)
                    with contextlib.ExitStack() as stack:
                        result = m2e.run_scenario(
                            scenario, broker=broker, coap=coap, root=Path(tmp),
                            clicks=clicks, seed=run + 1, stack=stack,
                        )  # fmt: skip
                    latencies[label] += result.latencies_ms
    finally:
        names["DaemonProcess"] = original
    return latencies


def print_rooms(*, smoke: bool = False) -> None:
    """The newcomer table (``smoke``: the demo's room only)."""
    profile = PROFILES["default"]
    results = [newcomer_in(room, profile) for room in (["demo"] if smoke else ROOMS)]
    print(
        f"\nA newcomer on stage (default profile), each room with `{ROOM_NOISE}` noise: its "
        f"stream's loudest second against the talker in its first {FIRST_S} s and after "
        f"(targets <= {TARGET_EARLY_DB:g} / <= {TARGET_LATE_DB:g} dB, never > "
        f"+{TARGET_HOWL_DB:g}), howls cut, ERLE after the first second (>= "
        f"{TARGET_ERLE_DB:g} dB), and double talk in the room: PESQ and its ratio to the "
        f"codec alone on the same talker (>= {TARGET_PESQ_RATIO:g}).\n"
    )
    print(markdown_table(
        ["room", "echo", "first 4 s dB", "after dB", "howls", "ERLE >1 s dB", "DT PESQ",
         "x codec"],
        [[r.room, f"`{ROOMS[r.room]}`",
          f"{r.early_db:.1f} {verdict(r.early_db <= TARGET_EARLY_DB)}",
          f"{r.late_db:.1f} {verdict(r.late_db <= TARGET_LATE_DB)}", r.howls,
          f"{r.erle_db:.1f} {verdict(r.erle_db >= TARGET_ERLE_DB)}", r.pesq,
          f"{r.pesq_ratio:.2f} {verdict(r.pesq_ratio >= TARGET_PESQ_RATIO)}"]
         for r in results],
    ))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-mouth-to-ear", action="store_true", help="skip the live mouth-to-ear runs"
    )
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    results = rows(smoke=args.smoke)
    m2e_runs, m2e_clicks = (1, 2) if args.smoke else (M2E_RUNS, M2E_CLICKS)
    print(machine_header("Hands-free chain, stage by stage (benchmarks.voice_quality)"))
    print(
        f"Room `{ECHO}`: far talker -20 dBFS, its echo at 0 dB to the near talker (-26 "
        f"dBFS, from {NEAR_FROM_S:g} s), {SECONDS:g} s, microphone floor `{MIC_FLOOR}`; "
        f"noise floor run: near talker in `{NOISE}`. Quality of the decoded stream "
        "(the profile's Opus encoder and a decoder); the codec alone, no room and no "
        f"chain, scores PESQ {codec_ceiling(PROFILES['default'])} (default) and "
        f"{codec_ceiling(PROFILES['low-cpu'])} (low-cpu) on the same near talker.\n"
    )
    headers = [
        "profile", "chain", "ERLE 0-3 s dB", "ERLE >3 s dB", "DT PESQ wb", "DT STOI",
        "DT PESQ, echo -10 dB", "PESQ, near alone", "AGC gain 5-95 % dB",
        "floor in pauses dBFS", "chain delay ms", "mouth-to-ear +ms", "CPU µs/10 ms",
        "% of a core", "x Opus encode",
    ]  # fmt: skip
    print(markdown_table(headers, [r.cells() for r in results]))
    print(
        f"\nTargets (full chain): ERLE >= {TARGET_ERLE_DB:g} dB after convergence; "
        f"double-talk PESQ >= {TARGET_PESQ_RATIO:g} x the codec's; <= {TARGET_CORE_PCT:g} % "
        f"of a core at 48 kHz; mouth-to-ear p50 + <= {TARGET_M2E_MS:g} ms.\n"
    )
    checks = []
    for r in results:
        if r.variant != "full chain":
            continue
        ceiling = codec_ceiling(PROFILES[r.profile])
        pesq_ok = (
            "n/a"
            if "n/a" in (r.pesq, ceiling)
            else verdict(float(r.pesq) >= TARGET_PESQ_RATIO * float(ceiling))
        )
        cpu = verdict(r.cpu_us / 100 <= TARGET_CORE_PCT) if r.profile == "default" else "-"
        checks.append([
            r.profile, f"{r.erle_late:.1f} {verdict(r.erle_late >= TARGET_ERLE_DB)}",
            f"{r.pesq} {pesq_ok}", f"{r.cpu_us / 100:.2f} % {cpu}",
            f"{r.m2e_ms:.1f} {verdict(r.m2e_ms <= TARGET_M2E_MS)}",
        ])  # fmt: skip
    print(markdown_table(["profile", "ERLE dB", "DT PESQ", "CPU", "mouth-to-ear +ms"], checks))
    print_rooms(smoke=args.smoke)
    if args.no_mouth_to_ear:
        return
    try:
        live = mouth_to_ear_p50s(m2e_runs, m2e_clicks)
    except Exception as exc:  # never fail: report that it could not run
        print(f"\nmouth to ear, live: could not run ({type(exc).__name__}: {exc})")
        return
    on, off = (float(np.median(live[k])) if live[k] else float("nan") for k in ("on", "off"))
    print(
        f"\nMouth to ear, live (loopback, default profile, {m2e_runs} x {m2e_clicks} clicks "
        "each, alternating):\n"
    )
    print(markdown_table(
        ["chain", "clicks heard", "p50 ms", "p95 ms"],
        [[k, len(v), f"{np.median(v):.1f}" if v else "n/a",
          f"{np.percentile(v, 95):.1f}" if v else "n/a"] for k, v in live.items()],
    ))  # fmt: skip
    grow = on - off
    print(f"\np50 grows by {grow:.1f} ms with the chain: {verdict(grow <= TARGET_M2E_MS)}")


if __name__ == "__main__":
    main()
