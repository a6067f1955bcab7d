"""Hands-free capture DSP: WebRTC (pywebrtc-audio, our CaptureChain) vs libspeexdsp.

Run: ``.venv/bin/python -m benchmarks.voice_quality_dsp [--smoke]`` from the repository
root.
Prints Markdown tables with the machine and the date; never fails on a number.

Both libraries get the same stand-in room (``hw_mocks.room``: the far talker played
through a delayed, reverberant echo path at 0 dB to the near talker) and the same
talkers: espeak-ng sentences if espeak-ng and sox are installed, else the speech-like
synthetic signal. Measured, at 48 kHz (20 ms capture blocks) and 16 kHz (40 ms):

* ERLE: echo in the microphone over echo left, echo only, AEC + NS, no AGC (gain would
  count as leaked echo), during the first 3 s and after 3 s;
* double talk (DT): the near talker's quality in the output while the far end talks,
  wideband PESQ (``pesq``) and STOI (``pystoi``) against the clean near signal, 16 kHz,
  with the echo as loud as the near talker and 10 dB under it, over a -60 dBFS pink
  microphone floor, after advancing the output by the chain's own latency (also shown:
  the cross-correlation lag of output behind input);
* noise floor: output level with only pink noise at -45 dBFS in the room (after 2 s);
* CPU: ``time.process_time`` over 1,000 blocks of 10 ms of the full chain (AEC + NS +
  AGC), per 10 ms, as % of one core and as a ratio to one Opus encode of 20 ms at
  complexity 5 (``appliance.audio.opus``) measured in the same run.

libspeexdsp (Debian ``libspeexdsp1``) is bound here through ctypes: its MDF echo
canceller (no delay estimator: its filter must span the delay plus the room tail, so it
gets ``delay + 100 ms``, which is knowing the delay — a head start WebRTC does not get)
with the preprocessor's residual echo suppression, denoiser and AGC.

Optional: ``pip install pesq pystoi`` (the ``bench`` extra). Without them, or without
libspeexdsp, the affected cells read n/a.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio import opus
from appliance.audio.config import HandsFreeConfig
from appliance.audio.processing import CaptureChain, Decimator, ReferenceRing
from benchmarks._common import add_smoke_flag, machine_header, markdown_table, verdict
from hw_mocks.audio import read_wav_mono
from hw_mocks.room import (
    EchoPath,
    NoiseSource,
    dbfs,
    parse_echo_spec,
    parse_noise_spec,
    speech_like,
    to_int16,
)

PERIOD = 480
SECONDS = 12.0
NEAR_FROM_S = 4.0
ECHO = "delay_ms=60,gain_db=-6,rt60_ms=250"  # far at -20 dBFS: echo -26, as loud as near
ECHO_QUIET = "delay_ms=60,gain_db=-16,rt60_ms=250"  # echo 10 dB under the near talker
ECHO_DELAY_MS = 60
MIC_FLOOR = "pink:-60"  # a real microphone is never digitally silent (NS misbehaves on 0s)
FAR_DBFS, NEAR_DBFS = -20.0, -26.0
PROFILES = ((48_000, 20), (16_000, 40))
CPU_BLOCKS = 1000
SMOKE_CPU_BLOCKS = 50

FAR_TEXT = (
    "The quick brown fox jumps over the lazy dog. We will meet at the station at "
    "half past nine. Please bring the maps and a warm coat, it will be cold tonight."
)
NEAR_TEXT = (
    "I can hear you clearly now. Tell me again which platform the train leaves from, "
    "and whether we need tickets in advance."
)


# ---------------------------------------------------------------- talkers


def espeak(text: str, voice: str, rate: int, seconds: float) -> np.ndarray | None:
    """``text`` spoken by espeak-ng at ``rate`` (via sox), padded or cut to ``seconds``."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp, "raw.wav"), Path(tmp, "out.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", str(rate), "-b", "16", str(out)], check=True)
        pcm, _ = read_wav_mono(out)
    x = np.zeros(int(seconds * rate))
    x[: min(len(pcm), len(x))] = pcm[: len(x)]
    return x


def at_level(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale so the active part (above -50 dB of peak) is ``level_dbfs`` RMS."""
    active = x[np.abs(x) > np.max(np.abs(x)) * 10 ** (-50 / 20)]
    return x * (32768 * 10 ** (level_dbfs / 20) / math.sqrt(float(np.mean(active**2))))


def talkers(rate: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(far at 48 kHz, near at ``rate`` starting at NEAR_FROM_S, source description)."""
    far = espeak(FAR_TEXT, "en-us", 48_000, SECONDS)
    near_speech = espeak(NEAR_TEXT, "en-gb+f3", rate, SECONDS - NEAR_FROM_S)
    if far is None or near_speech is None:
        far = speech_like(SECONDS, 48_000, seed=1).astype(float)
        near_speech = speech_like(SECONDS - NEAR_FROM_S, rate, seed=7).astype(float)
        source = "synthetic speech-like (espeak-ng/sox missing)"
    else:
        source = "espeak-ng en-us (far) / en-gb+f3 (near)"
    near = np.zeros(int(SECONDS * rate))
    near[int(NEAR_FROM_S * rate) :] = at_level(near_speech, NEAR_DBFS)
    return to_int16(at_level(far, FAR_DBFS)), near, source


# ---------------------------------------------------------------- libspeexdsp


_ECHO_SET_SAMPLING_RATE = 24
_PP_SET_DENOISE, _PP_SET_AGC, _PP_SET_AGC_LEVEL = 0, 2, 6
_PP_SET_NOISE_SUPPRESS, _PP_SET_ECHO_STATE = 18, 24


def _speex() -> Any:
    path = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    lib = ctypes.CDLL(path)
    vp, i, p = ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
    for name, res, args in (
        ("speex_echo_state_init", vp, [i, i]),
        ("speex_echo_state_destroy", None, [vp]),
        ("speex_echo_cancellation", None, [vp, p, p, p]),
        ("speex_echo_ctl", i, [vp, i, p]),
        ("speex_preprocess_state_init", vp, [i, i]),
        ("speex_preprocess_state_destroy", None, [vp]),
        ("speex_preprocess_run", i, [vp, p]),
        ("speex_preprocess_ctl", i, [vp, i, p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class SpeexChain:
    """libspeexdsp on the same interface as CaptureChain (render 48 kHz, process blocks).

    MDF needs the far signal sample-aligned with the capture in its own call, so the
    reference goes through the same decimator and ring as WebRTC's.
    """

    def __init__(
        self, rate: int, *, echo_cancellation: bool = True, noise_suppression: bool = True,
        auto_gain: bool = True, tail_ms: int = ECHO_DELAY_MS + 100,
    ) -> None:  # fmt: skip
        self.lib = _speex()
        self.rate, self.frame = rate, rate // 100
        self._decimator = Decimator(48_000 // rate) if rate != 48_000 else None
        self.reference = ReferenceRing(rate)
        self.echo_cancellation = echo_cancellation
        tail = rate * tail_ms // 1000
        self.echo = self.lib.speex_echo_state_init(self.frame, tail)
        r = ctypes.c_int(rate)
        self.lib.speex_echo_ctl(self.echo, _ECHO_SET_SAMPLING_RATE, ctypes.byref(r))
        self.pp = self.lib.speex_preprocess_state_init(self.frame, rate)
        self._ctl(_PP_SET_DENOISE, int(noise_suppression))
        self._ctl(_PP_SET_NOISE_SUPPRESS, -18)  # the same 18 dB as WebRTC's NS level
        self._ctl(_PP_SET_AGC, int(auto_gain))
        level = ctypes.c_float(32768 * 10 ** (-20 / 20))
        self.lib.speex_preprocess_ctl(self.pp, _PP_SET_AGC_LEVEL, ctypes.byref(level))
        if echo_cancellation:
            self.lib.speex_preprocess_ctl(self.pp, _PP_SET_ECHO_STATE, ctypes.c_void_p(self.echo))
        self._far = np.zeros(0, np.int16)
        self._out = np.zeros(0, np.int16)

    def _ctl(self, request: int, value: int) -> None:
        v = ctypes.c_int(value)
        self.lib.speex_preprocess_ctl(self.pp, request, ctypes.byref(v))

    def render(self, pcm: np.ndarray) -> None:
        self.reference.write(self._decimator.process(pcm) if self._decimator else pcm)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        n = len(pcm)
        if len(self._out) != n:
            self._out, self._far = np.zeros(n, np.int16), np.zeros(n, np.int16)
        near = np.ascontiguousarray(pcm, dtype=np.int16)
        self.reference.read(self._far)
        for at in range(0, n, self.frame):
            o = self._out[at : at + self.frame]
            if self.echo_cancellation:
                self.lib.speex_echo_cancellation(
                    self.echo, near[at:].ctypes.data, self._far[at:].ctypes.data, o.ctypes.data
                )
            else:
                o[:] = near[at : at + self.frame]
            self.lib.speex_preprocess_run(self.pp, o.ctypes.data)
        return self._out


# ---------------------------------------------------------------- the room run


@dataclass
class Run:
    mic: np.ndarray
    out: np.ndarray
    echo: np.ndarray  # what the mic got from the speaker alone


def simulate(
    chain: Any, far48: np.ndarray, rate: int, block_ms: int, *, echo: str = ECHO,
    near: np.ndarray | None = None, noise: str = "off",
) -> Run:  # fmt: skip
    """The engine's calls against the stand-in room (see tests/audio/test_processing.py)."""
    spec = parse_echo_spec(echo)
    room = EchoPath(spec) if spec else None
    nspec = parse_noise_spec(noise)
    hiss = NoiseSource(nspec) if nspec else None
    per10, block = rate // 100, rate * block_ms // 1000
    mics, outs, echoes = [], [], []
    for k in range(len(far48) // PERIOD):
        played = far48[k * PERIOD : (k + 1) * PERIOD]
        chain.render(played)
        if room:
            room.played(played, (k + 1) * PERIOD)
        end = (k + 1) * per10
        if end % block:
            continue
        e = room.heard(block, rate, end - block) if room else np.zeros(block)
        mix = e.copy()
        if hiss:
            mix += hiss.read(block, rate, end - block)
        if near is not None:
            mix += near[end - block : end]
        mic = to_int16(mix)
        mics.append(mic)
        echoes.append(e)
        outs.append(chain.process(mic).copy())
    return Run(np.concatenate(mics), np.concatenate(outs), np.concatenate(echoes))


def erle(run: Run, rate: int, lo_s: float, hi_s: float) -> float:
    span = slice(int(lo_s * rate), int(hi_s * rate))
    return dbfs(run.mic[span]) - dbfs(run.out[span])


def to16(x: np.ndarray, rate: int) -> np.ndarray:
    if rate == 16_000:
        return x.astype(float)
    from scipy.signal import resample_poly  # type: ignore[import-untyped]  # noqa: PLC0415

    return np.asarray(resample_poly(x.astype(float), 1, rate // 16_000))


def lag_of(y: np.ndarray, x: np.ndarray) -> int:
    """Samples by which ``y`` lags ``x`` (cross-correlation peak, by FFT)."""
    n = 1 << (len(x) + len(y)).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    lag = int(np.argmax(np.abs(c)))
    return lag if lag < n // 2 else lag - n


def added_delay(near: np.ndarray, out: np.ndarray, rate: int) -> int:
    """The chain's own latency in samples: how far the output lags the near talker."""
    start = int(NEAR_FROM_S * rate)
    return max(0, lag_of(out[start:].astype(float), near[start:]))


def quality(near: np.ndarray, out: np.ndarray, rate: int) -> tuple[str, str]:
    """(PESQ wb, STOI) of the output against the clean near talker, from NEAR_FROM_S.

    The output is first advanced by the chain's own latency: STOI does not align.
    """
    out = np.roll(out, -added_delay(near, out, rate))
    try:
        ref = to16(near, rate)[int(NEAR_FROM_S * 16_000) :]
        deg = to16(out, rate)[int(NEAR_FROM_S * 16_000) :]
    except ImportError:  # scipy, which the bench extra brings with pesq and pystoi
        return "n/a", "n/a"
    try:
        from pesq import pesq  # type: ignore[import-untyped]  # noqa: PLC0415

        p = f"{pesq(16_000, ref / 32768, deg / 32768, 'wb'):.2f}"
    except ImportError:
        p = "n/a"
    try:
        from pystoi import stoi  # type: ignore[import-untyped]  # noqa: PLC0415

        s = f"{stoi(ref, deg, 16_000, extended=False):.2f}"
    except ImportError:
        s = "n/a"
    return p, s


def cpu_per_10ms_us(
    make: Callable[[], Any], rate: int, block_ms: int, blocks: int = CPU_BLOCKS
) -> float:
    """Process CPU time of the full chain per 10 ms, over ``blocks`` x 10 ms (median of 3)."""
    far = speech_like(blocks / 100, 48_000, seed=3)
    mic = speech_like(blocks / 100, rate, seed=4)
    block = rate * block_ms // 1000
    runs = []
    for _ in range(3):
        chain = make()
        start = time.process_time()
        for k in range(blocks):
            chain.render(far[k * PERIOD : (k + 1) * PERIOD])
            end = (k + 1) * rate // 100
            if end % block == 0:
                chain.process(mic[end - block : end])
        runs.append((time.process_time() - start) / blocks * 1e6)
    return float(np.median(runs))


def opus_encode_20ms_us() -> float:
    pcm = speech_like(2.0, 48_000, seed=5)
    with opus.Encoder(48_000, frame_ms=20, complexity=5) as enc:
        frames = [pcm[i : i + 960] for i in range(0, len(pcm) - 959, 960)]
        runs = []
        for _ in range(3):
            start = time.process_time()
            for _ in range(10):
                for f in frames:
                    enc.encode(f)
            runs.append((time.process_time() - start) / (10 * len(frames)) * 1e6)
    return float(np.median(runs))


# ---------------------------------------------------------------- main


def makers(rate: int) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {
        "WebRTC (pywebrtc-audio)": lambda **kw: CaptureChain(rate, HandsFreeConfig.switched(**kw))
    }
    try:
        _speex()
        out["libspeexdsp"] = lambda **kw: SpeexChain(rate, **kw)
    except OSError:
        print("libspeexdsp not found (apt-get install libspeexdsp1): its rows are missing\n")
    return out


def measure(
    name: str,
    make: Callable[..., Any],
    rate: int,
    block_ms: int,
    opus_us: float,
    *,
    cpu_blocks: int = CPU_BLOCKS,
) -> list[object]:
    far48, near, _ = talkers(rate)
    echo_only = simulate(make(auto_gain=False), far48, rate, block_ms)
    early, late = erle(echo_only, rate, 0.0, 3.0), erle(echo_only, rate, 3.0, SECONDS)
    talk = simulate(make(auto_gain=False), far48, rate, block_ms, near=near, noise=MIC_FLOOR)
    pesq_wb, stoi_ = quality(near, talk.out, rate)
    delay_ms = added_delay(near, talk.out, rate) * 1000 / rate
    quiet = simulate(
        make(auto_gain=False), far48, rate, block_ms, echo=ECHO_QUIET, near=near, noise=MIC_FLOOR
    )
    pesq_quiet, _ = quality(near, quiet.out, rate)
    silent = np.zeros(4 * 48_000, np.int16)
    floor = simulate(make(auto_gain=False), silent, rate, block_ms, echo="off", noise="pink:-45")
    floor_db = dbfs(floor.out[2 * rate :])
    cpu = cpu_per_10ms_us(make, rate, block_ms, cpu_blocks)
    return [
        name, f"{rate // 1000} kHz / {block_ms} ms", f"{early:.1f}", f"{late:.1f}",
        pesq_wb, stoi_, pesq_quiet, f"{floor_db:.1f}", f"{delay_ms:.1f}", f"{cpu:.0f}",
        f"{cpu / 100:.2f} %", f"{cpu * 2 / opus_us:.2f}",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_smoke_flag(parser)
    smoke = parser.parse_args(argv).smoke
    opus_us = opus_encode_20ms_us()
    rows = []
    source = talkers(16_000)[2]
    for rate, block_ms in PROFILES:
        for name, make in makers(rate).items():
            cpu_blocks = SMOKE_CPU_BLOCKS if smoke else CPU_BLOCKS
            rows.append(measure(name, make, rate, block_ms, opus_us, cpu_blocks=cpu_blocks))
    print(machine_header("Hands-free capture DSP: WebRTC vs libspeexdsp"))
    print(
        f"Room: `{ECHO}`, far talker {FAR_DBFS:g} dBFS, near {NEAR_DBFS:g} dBFS from "
        f"{NEAR_FROM_S:g} s (echo at 0 dB to it), {SECONDS:g} s; talkers: {source}. "
        f"Opus encode of 20 ms at 48 kHz, complexity 5: {opus_us:.0f} µs.\n"
    )
    headers = [
        "library", "capture", "ERLE 0-3 s dB", "ERLE >3 s dB", "DT PESQ wb, echo 0 dB",
        "DT STOI", "DT PESQ, echo -10 dB", "floor dBFS, pink -45", "latency ms",
        "CPU µs/10 ms", "% of a core", "x Opus 20 ms",
    ]  # fmt: skip
    print(markdown_table(headers, rows))
    print("Targets: ERLE >= 30 dB after convergence; double-talk PESQ >= 3.0; <= 2 % of a core")
    targets = []
    for row in rows:
        late, pesq_wb, share = float(str(row[3])), str(row[4]), float(str(row[10]).rstrip(" %"))
        pesq_ok = "n/a" if pesq_wb == "n/a" else verdict(float(pesq_wb) >= 3.0)
        targets.append([row[0], row[1], verdict(late >= 30), pesq_ok, verdict(share <= 2)])
    print()
    print(markdown_table(["library", "capture", "ERLE", "PESQ", "CPU"], targets))


if __name__ == "__main__":
    main()
