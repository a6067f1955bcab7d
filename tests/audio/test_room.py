"""The stand-in room (hw_mocks.room): spec strings, echo delay and gain, noise levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from appliance.hw_mocks.room import (
    EchoPath,
    EchoSpec,
    NoiseSource,
    NoiseSpec,
    dbfs,
    parse_echo_spec,
    parse_noise_spec,
    room_impulse_response,
    soft_clip,
    to_int16,
)

BLOCK_48K = 480


def white(seconds: float, level_dbfs: float = -20.0, seed: int = 0) -> np.ndarray:
    rms = 32768 * 10 ** (level_dbfs / 20)
    x = np.random.default_rng(seed).standard_normal(int(seconds * 48_000)) * rms
    return to_int16(x)


def play_all(path: EchoPath, x: np.ndarray, block: int = BLOCK_48K) -> None:
    for at in range(0, len(x), block):
        path.played(x[at : at + block], at)


def hear_all(path: EchoPath, total: int, rate: int, block: int) -> np.ndarray:
    return np.concatenate([path.heard(block, rate, at) for at in range(0, total, block)])


def lag_of(y: np.ndarray, x: np.ndarray) -> int:
    """The lag (samples) at which ``y`` best matches ``x`` (cross-correlation by FFT)."""
    n = 1 << (len(x) + len(y)).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    lag = int(np.argmax(np.abs(c)))
    return lag if lag < n // 2 else lag - n


# ---------------------------------------------------------------- spec strings


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("off", None),
        ("", None),
        ("delay_ms=40,gain_db=-6,rt60_ms=200", EchoSpec(40, -6, 200)),
        (" delay_ms=0, gain_db=3.5, rt60_ms=0, clip=1 ", EchoSpec(0, 3.5, 0, clip=True)),
        ("rt60_ms=300,delay_ms=12.5,gain_db=-20,clip=0", EchoSpec(12.5, -20, 300)),
    ],
)
def test_echo_spec_parses(spec: str, expected: EchoSpec | None) -> None:
    assert parse_echo_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("on", "'on'"),
        ("delay_ms=40,gain_db=-6", "missing ['rt60_ms']"),
        ("delay_ms=40,gain_db=-6,rt60_ms=200,colour=red", "unknown ['colour']"),
        ("delay_ms=x,gain_db=-6,rt60_ms=200", "delay_ms 'x' is not a number"),
        ("delay_ms=40,gain_db=-6,rt60_ms=200,clip=yes", "clip must be 0 or 1"),
        ("delay_ms=-1,gain_db=-6,rt60_ms=200", "delay_ms must be"),
        ("delay_ms=40,gain_db=-6,rt60_ms=9000", "rt60_ms must be"),
        ("delay_ms=40,gain_db=30,rt60_ms=200", "gain_db must be"),
        ("delay_ms=40,delay_ms=41,gain_db=0,rt60_ms=0", "'delay_ms=41'"),
        ("delay_ms=nan,gain_db=0,rt60_ms=0", "must be finite"),
    ],
)
def test_bad_echo_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"bad .*spec") as info:
        parse_echo_spec(spec)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("off", None),
        ("pink:-40", NoiseSpec("pink", -40)),
        ("white:-55.5", NoiseSpec("white", -55.5)),
        ("hum:-30", NoiseSpec("hum", -30)),
    ],
)
def test_noise_spec_parses(spec: str, expected: NoiseSpec | None) -> None:
    assert parse_noise_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pink", "use off, pink:L"),
        ("brown:-40", "use off, pink:L"),
        ("pink:loud", "level 'loud' is not a number"),
        ("white:6", "level must be <= 0 dBFS"),
    ],
)
def test_bad_noise_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"bad .*spec") as info:
        parse_noise_spec(spec)
    assert message in str(info.value)


# ---------------------------------------------------------------- the room response


def test_impulse_response_has_the_gain_and_decay_asked_for() -> None:
    ir = room_impulse_response(300, -6, 48_000, seed=3)
    assert len(ir) == 14_400
    assert 10 * math.log10(np.sum(ir**2)) == pytest.approx(-6, abs=1e-9)
    assert abs(ir[0]) == np.max(np.abs(ir))  # the direct path comes first and loudest
    # Schroeder backward integration of the tail: -5 dB to -25 dB spans a third of RT60
    tail = ir[1:] ** 2
    edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / np.sum(tail))
    t5, t25 = np.argmax(edc < -5), np.argmax(edc < -25)
    assert (t25 - t5) * 3 / 48_000 == pytest.approx(0.3, rel=0.2)


def test_impulse_response_is_deterministic_per_seed() -> None:
    a = room_impulse_response(200, 0, seed=1)
    assert np.array_equal(a, room_impulse_response(200, 0, seed=1))
    assert not np.array_equal(a, room_impulse_response(200, 0, seed=2))
    assert np.array_equal(room_impulse_response(0, -3), [10 ** (-3 / 20)])


@pytest.mark.parametrize("delay_ms", [0, 7, 40, 250])
def test_echo_arrives_after_the_configured_delay_at_48k(delay_ms: int) -> None:
    path = EchoPath(parse_echo_spec(f"delay_ms={delay_ms},gain_db=-6,rt60_ms=150"))  # type: ignore[arg-type]
    x = white(1.5)
    play_all(path, x)
    y = hear_all(path, len(x), 48_000, 960)
    assert lag_of(y, x.astype(float)) == delay_ms * 48
    assert dbfs(y[48_000:]) - dbfs(x[48_000:]) == pytest.approx(-6, abs=0.5)


@pytest.mark.parametrize("delay_ms", [0, 40, 123])
def test_echo_at_16k_keeps_delay_and_gain_of_the_voice_band(delay_ms: int) -> None:
    path = EchoPath(parse_echo_spec(f"delay_ms={delay_ms},gain_db=-10,rt60_ms=200"))  # type: ignore[arg-type]
    spectrum = np.fft.rfft(white(3.0).astype(float))
    spectrum[np.fft.rfftfreq(3 * 48_000, 1 / 48_000) > 6000] = 0  # inside the 16 kHz band
    band48 = to_int16(np.fft.irfft(spectrum, 3 * 48_000))
    play_all(path, band48)
    y = hear_all(path, len(band48) // 3, 16_000, 640)
    band16 = band48[::3].astype(float)  # exact: nothing above 8 kHz to alias
    assert lag_of(y, band16) == delay_ms * 16
    assert dbfs(y[16_000:]) - dbfs(band16[16_000:]) == pytest.approx(-10, abs=0.5)


def test_block_sizes_and_call_order_do_not_change_what_is_heard() -> None:
    spec = parse_echo_spec("delay_ms=30,gain_db=-3,rt60_ms=100")
    assert spec is not None
    x = white(0.6, seed=5)
    one, many = EchoPath(spec), EchoPath(spec)
    play_all(one, x, block=len(x))
    whole = one.heard(len(x) // 3, 16_000, 0)
    parts = []
    for at in range(0, len(x), 480):  # interleaved, as the card's two threads would
        many.played(x[at : at + 480], at)
        if at % 1920 == 0 and at:
            parts.append(many.heard(640, 16_000, at // 3 - 640))
    parts.append(many.heard(len(x) // 3 - 640 * len(parts), 16_000, 640 * len(parts)))
    assert np.allclose(np.concatenate(parts), whole, atol=1e-6)


def test_unplayed_time_is_silence_and_old_audio_is_forgotten() -> None:
    path = EchoPath(EchoSpec(0, 0, 0))
    path.played(np.full(480, 1000, np.int16), 48_000)  # nothing played before 1 s
    assert not path.heard(480, 48_000, 0).any()
    assert np.allclose(path.heard(480, 48_000, 48_000), 1000)
    path.played(np.full(480, 5, np.int16), 48_000 * 10)  # 9 s later
    assert not path.heard(480, 48_000, 48_000).any()


def test_clip_compresses_loud_peaks_but_not_quiet_speech() -> None:
    quiet = np.array([1000.0, -1000.0])
    assert soft_clip(quiet) == pytest.approx(quiet, rel=0.01)
    assert soft_clip(np.array([32767.0]))[0] < 0.65 * 32767
    loud = EchoPath(parse_echo_spec("delay_ms=0,gain_db=0,rt60_ms=0,clip=1"))  # type: ignore[arg-type]
    loud.played(np.full(480, 32767, np.int16), 0)
    assert loud.heard(480, 48_000, 0).max() < 0.65 * 32767


def test_rates_must_divide_48k() -> None:
    with pytest.raises(ValueError, match="44100"):
        EchoPath(EchoSpec(0, 0, 0)).heard(441, 44_100, 0)


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", ["pink", "white", "hum"])
@pytest.mark.parametrize("rate", [16_000, 48_000])
def test_noise_has_its_level(kind: str, rate: int) -> None:
    noise = NoiseSource(parse_noise_spec(f"{kind}:-40"))  # type: ignore[arg-type]
    assert dbfs(noise.read(rate * 8, rate, 12_345)) == pytest.approx(-40, abs=0.05)  # one loop


def test_noise_is_a_function_of_the_clock() -> None:
    noise = NoiseSource(NoiseSpec("pink", -30), seed=4)
    whole = noise.read(4800, 48_000, 100)
    assert np.array_equal(
        np.concatenate([noise.read(480, 48_000, 100 + i) for i in range(0, 4800, 480)]), whole
    )
    assert np.array_equal(
        NoiseSource(NoiseSpec("pink", -30), seed=4).read(4800, 48_000, 100), whole
    )


def test_pink_noise_falls_3_db_per_octave_and_hum_sits_at_50_hz() -> None:
    rate = 16_000
    pink = NoiseSource(NoiseSpec("pink", -40)).read(rate * 8, rate, 0)
    power = np.abs(np.fft.rfft(pink)) ** 2
    freqs = np.fft.rfftfreq(len(pink), 1 / rate)

    def band(lo: float) -> float:
        return float(np.sum(power[(freqs >= lo) & (freqs < 2 * lo)]))

    # pink: equal power per octave
    assert 10 * math.log10(band(100) / band(3200)) == pytest.approx(0, abs=1.5)
    hum = NoiseSource(NoiseSpec("hum", -30)).read(rate, rate, 0)
    spectrum = np.abs(np.fft.rfft(hum))
    assert int(np.argmax(spectrum)) == 50  # 1 Hz bins over one second
