"""Cost of the audio path per 20 ms of voice: Opus via ctypes, the jitter buffer, the mixer.

Run: ``.venv/bin/python -m benchmarks.audio_codec [--smoke]``. Prints a Markdown table with the
machine and the date; never asserts (speed depends on the machine, correctness is the
tests' job). Each codec figure is the median of five runs of 2,000 calls, scaled to
20 ms of audio (a 40 ms packet's cost is halved). Jitter-buffer figures are per call,
pushing and pulling a steady 20 ms stream in turn, as a listener does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from appliance.audio import opus, tone
from appliance.audio.jitter import JitterBuffer
from appliance.audio.mixer import Mixer
from appliance.protocol.frames import AudioFrame, timestamp_step
from benchmarks._common import add_smoke_flag, machine_header, markdown_table

REPEAT = 2000
SMOKE_REPEAT = 20
Row = tuple[str, str]


def per_call_us(fn: Callable[[int], object], n: int = REPEAT) -> float:
    """Median of five runs of ``n`` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return float(np.median(runs))


def voice_like(samples: int, rate: int) -> np.ndarray:
    """Two tones at different levels: enough structure to keep the encoder busy."""
    return tone.sine(440, samples, rate, 0.3) // 2 + tone.sine(1234, samples, rate, 0.2) // 2


def codec_rows(rate: int, frame_ms: int, complexity: int, n: int = REPEAT) -> list[Row]:
    """Encode and decode costs for one encoder setting."""
    enc = opus.Encoder(rate, frame_ms=frame_ms, complexity=complexity)
    blocks = voice_like(enc.frame_samples * 100, rate).reshape(100, enc.frame_samples)
    packets = [enc.encode(b) for b in blocks]
    dec = opus.Decoder()
    scale = 20 / frame_ms
    label = f"{rate // 1000} kHz, {frame_ms} ms packets, complexity {complexity}"
    encode = per_call_us(lambda i: enc.encode(blocks[i % 100]), n) * scale
    decode = per_call_us(lambda i: dec.decode(packets[i % 100]), n) * scale
    enc.close()
    dec.close()
    return [(f"encode {label}", f"{encode:.1f}"), (f"decode {label}", f"{decode:.1f}")]


def recovery_rows(n: int = REPEAT) -> list[Row]:
    """In-band FEC, PLC and the LBRR check, per lost 20 ms packet."""
    enc = opus.Encoder()
    packets = [enc.encode(b) for b in voice_like(960 * 100, 48_000).reshape(100, 960)]
    dec = opus.Decoder()
    rows = [
        (
            "decode_fec (recover a lost 20 ms packet)",
            per_call_us(lambda i: dec.decode_fec(packets[i % 100], 960), n),
        ),
        ("conceal (PLC, 20 ms)", per_call_us(lambda i: dec.conceal(960), n)),
        ("packet_has_fec", per_call_us(lambda i: opus.packet_has_fec(packets[i % 100]), n)),
    ]
    enc.close()
    dec.close()
    return [(name, f"{us:.1f}") for name, us in rows]


def jitter_rows(n: int = REPEAT) -> list[Row]:
    """Push and pull of a steady stream (pull includes the decode)."""
    enc = opus.Encoder()
    pcm = voice_like(960 * n, 48_000).reshape(n, 960)
    step = timestamp_step(20)
    frames = [AudioFrame(i & 0xFFFF, i * step, enc.encode(b), fec=True) for i, b in enumerate(pcm)]
    enc.close()
    jb = JitterBuffer()
    push_s, pull_s = [], []
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        jb.push(frame, i * 0.02)
        t1 = time.perf_counter()
        jb.pull(i * 0.02 + 0.001)
        t2 = time.perf_counter()
        push_s.append(t1 - t0)
        pull_s.append(t2 - t1)
    jb.close()
    mixer = Mixer(960)
    streams = [tone.sine(440 + 100 * k, 960) for k in range(4)]
    return [
        ("jitter push (median)", f"{np.median(push_s) * 1e6:.1f}"),
        ("jitter pull, decode included (median)", f"{np.median(pull_s) * 1e6:.1f}"),
        ("jitter pull, decode included (p99)", f"{np.percentile(pull_s, 99) * 1e6:.1f}"),
        ("mix 1 stream", f"{per_call_us(lambda i: mixer.mix(streams[:1]), n):.1f}"),
        ("mix 4 streams", f"{per_call_us(lambda i: mixer.mix(streams), n):.1f}"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_smoke_flag(parser)
    n = SMOKE_REPEAT if parser.parse_args(argv).smoke else REPEAT
    rows: list[Row] = []
    for rate, frame_ms, complexity in ((48_000, 20, 9), (48_000, 20, 5), (16_000, 40, 5)):
        rows += codec_rows(rate, frame_ms, complexity, n)
    rows += recovery_rows(n) + jitter_rows(n)
    print(machine_header(f"Audio path ({opus.version()}, ctypes)"))
    print(markdown_table(["operation, per 20 ms of audio", "µs"], rows))


if __name__ == "__main__":
    main()
