"""Cost of sealing and opening one voice packet (audio frame version 2, PROTOCOL.md 6.1).

Run: ``.venv/bin/python -m benchmarks.voice_crypto [--smoke]``. Prints a Markdown table with the
machine and the date; never asserts. Each figure is the median of five runs of
``REPEAT`` calls, in microseconds per packet, for typical 20 ms Opus packet sizes
(a 16 kbit/s VoIP packet is ~40 B, 32 kbit/s ~80 B; 1,275 B is the largest legal).
``open`` is the receiver's path with its per-(epoch, sender) cipher already cached;
``derive`` is the one-off HKDF + key schedule a new (epoch, sender) costs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cryptography
from cryptography.hazmat.backends.openssl import backend

from appliance.protocol.voice import Opener, Sealer, sender_cipher
from benchmarks._common import add_smoke_flag, machine_header, markdown_table

REPEAT = 20_000
SMOKE_REPEAT = 50
TOPIC = "gochat/v1/room/benchroom/audio/alice"
KEY = bytes(range(32))
SIZES = (40, 80, 160, 1275)
STEP = 960  # 20 ms at 48 kHz


def per_call_us(fn: Callable[[int], object], n: int = REPEAT) -> float:
    """Median of five runs of ``n`` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def measure(size: int, repeat: int = REPEAT) -> tuple[float, float]:
    """(seal, open) microseconds per packet of ``size`` bytes."""
    packet = bytes([1 << 3]) + bytes(size - 1)  # SILK 20 ms TOC, zero payload
    sealer = Sealer(TOPIC)
    sealer.set_key(1, KEY)
    wires = [sealer.seal(i & 0xFFFF, i * STEP, packet) for i in range(repeat)]
    opener = Opener()
    opener.add_key(1, KEY)
    counter = iter(range(10**9))

    def seal(_: int) -> bytes:
        i = next(counter)
        return sealer.seal(i & 0xFFFF, (repeat + i) * STEP, packet)

    seal_us = per_call_us(seal, repeat)
    open_us = per_call_us(lambda i: opener.open(wires[i], TOPIC), repeat)
    return seal_us, open_us


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_smoke_flag(parser)
    repeat = SMOKE_REPEAT if parser.parse_args(argv).smoke else REPEAT
    rows: list[tuple[str, ...]] = []
    for size in SIZES:
        seal_us, open_us = measure(size, repeat)
        rows.append((f"{size} B", f"{seal_us:.1f}", f"{open_us:.1f}"))
    derive_us = per_call_us(lambda _: sender_cipher(KEY, "alice"), repeat // 4)
    print(machine_header("Voice crypto: AES-256-GCM per 20 ms packet"))
    print(f"cryptography {cryptography.__version__}, {backend.openssl_version_text()}\n")
    print(markdown_table(["Opus packet", "seal (µs)", "open (µs)"], rows))
    print(f"\nNew (epoch, sender) cipher (HKDF-SHA256 + AES key schedule): {derive_us:.1f} µs")
    load = float(rows[1][1]) * 50 / 1e4
    print(f"At 50 packets/s, sealing 80 B packets uses {load:.3f} % of one core.")


if __name__ == "__main__":
    main()
