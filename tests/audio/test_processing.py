"""The hands-free capture chain (appliance.audio.processing) in the stand-in room.

Each test plays a far-end talker through the stand-in speaker and feeds the chain as
the engine will: the playback side renders 10 ms blocks (which leave the speaker one
period later), the capture side processes 20 ms (48 kHz) or 40 ms (16 kHz) blocks of
what the stand-in microphone hears. Everything is synthetic and seeded: behaviour, not
timing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("pywebrtc_audio", reason="pywebrtc-audio is in the audio extra")

from appliance.hw_mocks.room import (
    EchoPath,
    NoiseSource,
    dbfs,
    parse_echo_spec,
    parse_noise_spec,
    speech_like,
    to_int16,
)

from appliance.audio.config import GainTuning, HandsFreeConfig
from appliance.audio.processing import (
    FLOOR_DBFS,
    CaptureChain,
    Decimator,
    ReferenceRing,
)

PERIOD = 480  # a 10 ms playback block at 48 kHz
PROFILES = [pytest.param(48_000, 20, id="48k-20ms"), pytest.param(16_000, 40, id="16k-40ms")]
ECHO = "delay_ms=40,gain_db=-6,rt60_ms=200"


@dataclass
class Run:
    """What one simulated run captured, sent and decided (one entry per capture block)."""

    rate: int
    mic: np.ndarray
    out: np.ndarray
    speaking: np.ndarray
    level: np.ndarray

    def span(self, x: np.ndarray, start_s: float, end_s: float | None = None) -> np.ndarray:
        return x[int(start_s * self.rate) : None if end_s is None else int(end_s * self.rate)]

    def erle(self, start_s: float, end_s: float | None = None) -> float:
        return dbfs(self.span(self.mic, start_s, end_s)) - dbfs(self.span(self.out, start_s, end_s))


def simulate(
    chain: CaptureChain,
    far48: np.ndarray,
    block_ms: int,
    *,
    echo: str = ECHO,
    noise: str = "off",
    near: np.ndarray | None = None,
) -> Run:
    """Play ``far48`` and capture ``near`` + echo + noise through ``chain``."""
    rate = chain.rate
    room = EchoPath(parse_echo_spec(echo)) if echo != "off" else None  # type: ignore[arg-type]
    spec = parse_noise_spec(noise)
    hiss = NoiseSource(spec) if spec else None
    per10, block = rate // 100, rate * block_ms // 1000
    mics, outs, speaking, level = [], [], [], []
    for k in range(len(far48) // PERIOD):
        played = far48[k * PERIOD : (k + 1) * PERIOD]
        chain.render(played)
        if room:
            room.played(played, (k + 1) * PERIOD)  # the DAC plays it one period later
        end = (k + 1) * per10
        if end % block:
            continue
        mix = np.zeros(block)
        if room:
            mix += room.heard(block, rate, end - block)
        if hiss:
            mix += hiss.read(block, rate, end - block)
        if near is not None:
            mix += near[end - block : end]
        mic = to_int16(mix)
        mics.append(mic)
        outs.append(chain.process(mic).copy())
        speaking.append(chain.speaking)
        level.append(chain.level_dbfs)
    return Run(
        rate, np.concatenate(mics), np.concatenate(outs), np.array(speaking), np.array(level)
    )


def far_talker(seconds: float = 6.0) -> np.ndarray:
    return speech_like(seconds, 48_000, seed=1, level_dbfs=-20)


# ---------------------------------------------------------------- echo


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
@pytest.mark.parametrize("delay_ms", [0, 120])
def test_echo_is_cancelled_by_25_db_after_3_s(rate: int, block_ms: int, delay_ms: int) -> None:
    run = simulate(
        CaptureChain(rate),
        far_talker(),
        block_ms,
        echo=f"delay_ms={delay_ms},gain_db=-6,rt60_ms=200",
    )
    assert run.erle(3.0) >= 25
    assert not run.speaking[len(run.speaking) // 2 :].any()  # echo is nobody talking
    assert run.level[-1] == FLOOR_DBFS


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
def test_echo_cancellation_off_passes_the_echo_through(rate: int, block_ms: int) -> None:
    bare = simulate(
        CaptureChain(
            rate,
            HandsFreeConfig.switched(
                echo_cancellation=False, noise_suppression=False, auto_gain=False
            ),
        ),
        far_talker(3),
        block_ms,
    )
    assert abs(bare.erle(1.0)) < 0.5
    denoised = simulate(
        CaptureChain(rate, HandsFreeConfig.switched(echo_cancellation=False, auto_gain=False)),
        far_talker(3),
        block_ms,
    )
    assert abs(denoised.erle(1.0)) < 3  # speech-like echo is no stationary noise


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
def test_double_talk_keeps_the_near_end_talker(rate: int, block_ms: int) -> None:
    near = speech_like(8, rate, seed=7, level_dbfs=-26).astype(float)  # echo at 0 dB to it
    near[: 4 * rate] = 0  # the near end starts talking after the canceller converged
    run = simulate(
        CaptureChain(rate, HandsFreeConfig.switched(auto_gain=False)),
        far_talker(8),
        block_ms,
        near=near,
    )
    kept = dbfs(run.span(run.out, 4.0)) - dbfs(near[4 * rate :])
    assert abs(kept) <= 6
    blocks = len(run.speaking)
    second_half = run.speaking[blocks // 2 :]
    assert second_half.mean() > 0.6  # the near talker is heard as speaking...
    assert not run.speaking[blocks // 4 : blocks // 2].any()  # ... the echo before was not
    assert -35 < np.median(run.level[blocks // 2 :][second_half]) < -20


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
def test_auto_gain_lifts_a_quiet_talker(rate: int, block_ms: int) -> None:
    near = speech_like(8, rate, seed=9, level_dbfs=-45).astype(float)
    run = simulate(
        CaptureChain(rate), np.zeros(8 * 48_000, np.int16), block_ms, echo="off", near=near
    )
    assert dbfs(run.span(run.out, 5.0)) - dbfs(near[5 * rate :]) >= 10
    assert run.speaking.mean() > 0.4


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
def test_auto_gain_waits_for_a_talker_before_raising_anything(rate: int, block_ms: int) -> None:
    """A silent box on stage: the residual echo and the noise go out as the echo
    canceller and the suppressor leave them, not 15 dB louder (AGC2's initial gain)."""
    far = far_talker(4)
    plain = simulate(
        CaptureChain(rate, HandsFreeConfig.switched(auto_gain=False)),
        far,
        block_ms,
        noise="pink:-50",
    )
    gained = simulate(CaptureChain(rate), far, block_ms, noise="pink:-50")
    assert abs(dbfs(gained.span(gained.out, 1.0)) - dbfs(plain.span(plain.out, 1.0))) < 0.5


def test_auto_gain_never_raises_what_the_far_end_leaves_behind() -> None:
    """A quiet near talker first (AGC2 lifts it by 10 dB or more), then only the far end:
    what the echo canceller leaves of its echo goes out as it is, not lifted too."""
    rate = 48_000
    near = np.zeros(10 * rate)
    near[: 4 * rate] = speech_like(4, rate, seed=9, level_dbfs=-45)
    far = np.concatenate([np.zeros(5 * 48_000), far_talker(5)]).astype(np.int16)

    def residual(gain: GainTuning | None) -> Run:
        config = HandsFreeConfig(gain=gain)
        return simulate(CaptureChain(rate, config), far, 20, near=near, noise="pink:-60")

    held, unheld, none = (
        residual(GainTuning()),
        residual(GainTuning(hold_on_far_end=False)),
        residual(None),
    )
    assert dbfs(held.span(held.out, 2.0, 4.0)) - dbfs(near[2 * rate : 4 * rate]) >= 10
    # While the far end talks (in its pauses the gain may lift the noise floor as usual)
    frames = far[: len(far) // 480 * 480].reshape(-1, 480).astype(float)
    talking = np.repeat(np.mean(frames**2, axis=1) > 32768.0**2 * 1e-5, 480)
    talking[: 6 * rate] = False
    left = dbfs(none.out[talking])
    assert dbfs(held.out[talking]) <= left + 1.0
    assert dbfs(unheld.out[talking]) >= left + 6.0  # what the hold prevents


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
def test_noise_suppression_lowers_pink_noise_by_15_db(rate: int, block_ms: int) -> None:
    silent = np.zeros(4 * 48_000, np.int16)
    run = simulate(
        CaptureChain(rate, HandsFreeConfig.switched(auto_gain=False)),
        silent,
        block_ms,
        echo="off",
        noise="pink:-40",
    )
    assert run.erle(2.0) >= 15
    assert not run.speaking.any()


@pytest.mark.parametrize(("rate", "block_ms"), PROFILES)
def test_digital_silence_is_not_speech(rate: int, block_ms: int) -> None:
    run = simulate(CaptureChain(rate), np.zeros(2 * 48_000, np.int16), block_ms, echo="off")
    assert not run.out.any()
    assert not run.speaking.any()


# ---------------------------------------------------------------- plumbing


def test_reference_ring_starts_on_the_newest_reference_and_keeps_one_clock() -> None:
    ring = ReferenceRing(48_000)
    ring.write(np.arange(2000, dtype=np.int16))
    out = np.zeros(960, np.int16)
    ring.read(out)  # a new run: the newest 960 samples, one period of margin back
    assert out[0] == 2000 - 960 - 480 and out[-1] == 2000 - 481
    ring.read(out)  # 480 real samples, then 480 not yet played: silence
    assert out[0] == 2000 - 480 and not out[480:].any()
    ring.write(np.arange(2000, 4000, dtype=np.int16))
    ring.read(out)  # 2000..2479 were read as silence already: skipped, no clock slip
    assert out[0] == 2480 and out[-1] == 2480 + 959
    assert ring.resyncs == 1


def test_reference_ring_keeps_its_alignment_through_a_late_capture_burst() -> None:
    ring = ReferenceRing(16_000)
    out = np.zeros(320, np.int16)  # 20 ms blocks
    ring.write(np.arange(640, dtype=np.int16))
    ring.read(out)  # starts 320 + 160 back from the newest: position 160
    assert out[0] == 160
    ring.write(np.arange(640, 640 + 3200, dtype=np.int16))  # 200 ms played, capture late
    for block in range(10):  # the late blocks then arrive back to back, still in order
        ring.read(out)
        assert out[0] == 160 + 320 * (block + 1)
    assert ring.resyncs == 1


def test_reference_ring_resyncs_after_a_capture_stall_and_on_restart() -> None:
    ring = ReferenceRing(16_000)
    out = np.zeros(640, np.int16)
    ring.read(out)
    ring.write(np.ones(16_000, np.int16))  # a second of playback, capture lost samples
    ring.read(out)
    assert out.all() and ring.resyncs == 2
    ring.restart()
    ring.read(out)
    assert ring.resyncs == 3


def test_a_run_whose_first_block_is_late_starts_where_its_time_stamp_says() -> None:
    """The microphone opens and its first callback comes 70 ms late (a busy board),
    then the late blocks arrive back to back. Started on the newest reference, the run
    would read ahead of playback for good (silence: no echo cancellation at all); by
    the blocks' ADC time stamps it reads what was played while each was captured."""
    rate, n, period = 48_000, 960, 480
    ring = ReferenceRing(rate)
    played_at = 100.0  # DAC time of position 0
    for k in range(40):  # 400 ms of playback, each block stamped with its DAC time
        ring.write(np.arange(k * period, (k + 1) * period) % 30_000, played_at + k * 0.01)
    out = np.zeros(n, np.int16)
    first_adc = played_at + 0.25  # captured from 250 ms on, handed over 70 ms late
    for block in range(4):  # the burst catches up: still behind playback, never ahead
        ring.read(out, first_adc + block * 0.02)
        expected = round((0.25 + block * 0.02) * rate) - 480  # the 10 ms margin back
        assert out[0] == expected and out[-1] == expected + n - 1
    assert ring.resyncs == 1


def test_a_run_reading_ahead_of_playback_realigns() -> None:
    """Without time stamps a run starts on the newest reference; if it then keeps
    reading what was never played (playback lost periods without saying so), it
    realigns instead of cancelling against silence for the rest of the run."""
    ring = ReferenceRing(16_000)
    out = np.zeros(320, np.int16)
    ring.write(np.ones(1600, np.int16))
    ring.read(out)
    for _ in range(5):  # playback stopped writing: 100 ms of reads ahead of it
        ring.read(out)
    ring.write(np.ones(1600, np.int16))
    ring.read(out)
    assert out.all() and ring.resyncs == 2


def test_a_run_off_its_time_stamps_realigns_but_a_late_callback_does_not() -> None:
    ring = ReferenceRing(48_000)
    out = np.zeros(960, np.int16)
    for k in range(20):
        ring.write(np.full(480, k + 1, np.int16), 10.0 + k * 0.01)
    ring.read(out, 10.05)
    ring.read(out, 10.07)  # handed over late, stamped right: the count holds
    assert ring.resyncs == 1
    ring.read(out, 10.15)  # 60 ms of capture lost unannounced: the stamps say so
    assert ring.resyncs == 2 and out[0] == round(0.15 * 48_000 - 480) // 480 + 1


def test_decimator_keeps_the_voice_band_and_removes_what_would_alias() -> None:
    t = np.arange(48_000) / 48_000
    dec = Decimator(3)
    low = np.concatenate(
        [dec.process(b) for b in np.split(to_int16(8000 * np.sin(2 * np.pi * 1000 * t)), 100)]
    )
    expected = 8000 * np.sin(2 * np.pi * 1000 * (t[::3] - dec.delay / 48_000))
    assert np.max(np.abs(low[100:] - expected[100:])) < 0.01 * 8000  # a known delay, no loss
    assert dec.delay / 48_000 < 0.0005
    high = Decimator(3).process(to_int16(8000 * np.sin(2 * np.pi * 11_000 * t)))
    assert dbfs(high[100:]) < dbfs(expected) - 50


def test_bad_rates_and_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="capture rate"):
        CaptureChain(44_100)
    chain = CaptureChain(16_000)
    with pytest.raises(ValueError, match="multiple of 160"):
        chain.process(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="multiple of 3"):
        chain.render(np.zeros(100, np.int16))


def test_render_and_process_from_two_threads() -> None:
    chain = CaptureChain(48_000)
    far = far_talker(2)
    errors: list[BaseException] = []

    def playback() -> None:
        try:
            for k in range(len(far) // PERIOD):
                chain.render(far[k * PERIOD : (k + 1) * PERIOD])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=playback)
    thread.start()
    for _ in range(100):
        assert chain.process(np.zeros(960, np.int16)).shape == (960,)
    thread.join()
    assert not errors
