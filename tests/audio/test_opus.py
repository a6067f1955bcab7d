"""libopus through ctypes: round trips, the low-CPU profile, PLC, FEC and errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from appliance.audio import opus, tone
from appliance.protocol.frames import AudioFrame, opus_duration_ms

Stream = Callable[..., list[AudioFrame]]
WARM_UP = 5  # packets: the codec's first output ramps up


def decode_all(frames: list[AudioFrame]) -> np.ndarray:
    with opus.Decoder() as dec:
        return np.concatenate([dec.decode(f.opus).copy() for f in frames])


def test_it_is_libopus() -> None:
    assert opus.version().startswith("libopus ")


def test_round_trip_keeps_a_440_hz_tone(opus_stream: Stream) -> None:
    pcm = decode_all(opus_stream(50))
    assert len(pcm) == 50 * 960
    assert abs(tone.dominant_frequency(pcm[WARM_UP * 960 :]) - 440) < 5
    assert tone.rms(pcm[WARM_UP * 960 :]) > 0.25  # a 0.5 sine has rms 0.35


def test_low_cpu_profile_16k_40ms_decodes_at_48k(opus_stream: Stream) -> None:
    frames = opus_stream(25, rate=16_000, frame_ms=40)
    assert {opus_duration_ms(f.opus) for f in frames} == {40}
    with opus.Decoder(48_000) as dec:
        blocks = [dec.decode(f.opus).copy() for f in frames]
    assert {len(b) for b in blocks} == {1920}
    pcm = np.concatenate(blocks[3:])
    assert abs(tone.dominant_frequency(pcm) - 440) < 5


@pytest.mark.parametrize("rate", [48_000, 16_000])
@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_every_packet_duration_and_rate(opus_stream: Stream, rate: int, frame_ms: int) -> None:
    frames = opus_stream(12, rate=rate, frame_ms=frame_ms)
    assert all(opus_duration_ms(f.opus) == frame_ms for f in frames)
    assert all(len(f.opus) <= opus.MAX_PACKET_BYTES for f in frames)
    pcm = decode_all(frames)
    assert len(pcm) == 12 * frame_ms * 48
    assert abs(tone.dominant_frequency(pcm[len(pcm) // 3 :]) - 440) < 5


def test_concealment_continues_the_sound(opus_stream: Stream) -> None:
    frames = opus_stream(20)
    with opus.Decoder() as dec:
        for f in frames[:15]:
            dec.decode(f.opus)
        plc = dec.conceal(960).copy()
    assert len(plc) == 960
    assert tone.rms(plc) > 0.05
    assert abs(tone.dominant_frequency(plc) - 440) < 20


def test_fec_recovers_a_lost_packet_better_than_plc(opus_stream: Stream) -> None:
    frames = opus_stream(60)
    plc_errors, fec_errors = [], []
    for lost in range(10, 55, 5):
        with opus.Decoder() as ref, opus.Decoder() as plc, opus.Decoder() as fec:
            for f in frames[:lost]:
                ref.decode(f.opus)
                plc.decode(f.opus)
                fec.decode(f.opus)
            truth = ref.decode(frames[lost].opus).astype(float)
            assert opus.packet_has_fec(frames[lost + 1].opus)
            by_plc = plc.conceal(960).astype(float)
            by_fec = fec.decode_fec(frames[lost + 1].opus, 960).astype(float)
        assert tone.rms(by_fec) > 0.05
        plc_errors.append(np.sqrt(np.mean((by_plc - truth) ** 2)))
        fec_errors.append(np.sqrt(np.mean((by_fec - truth) ** 2)))
    assert np.mean(fec_errors) < 0.5 * np.mean(plc_errors)


def test_packet_has_fec_follows_the_encoder(opus_stream: Stream) -> None:
    with_fec = opus_stream(10, fec=True)
    without = opus_stream(10, fec=False)
    assert sum(opus.packet_has_fec(f.opus) for f in with_fec[1:]) >= 8
    assert not any(opus.packet_has_fec(f.opus) for f in without)


def test_celt_packets_never_claim_fec() -> None:
    enc = opus.Encoder(
        48_000,
        bitrate=96_000,
        application=opus.OPUS_APPLICATION_AUDIO,
        signal=opus.OPUS_SIGNAL_MUSIC,
        frame_ms=10,
        fec=False,
    )
    pcm = tone.sine(440, 480 * 10)
    packets = [enc.encode(pcm[i * 480 : (i + 1) * 480]) for i in range(10)]
    assert all(p[0] >> 3 >= 16 for p in packets)  # CELT-only configurations
    assert not any(opus.packet_has_fec(p) for p in packets)
    enc.close()


def test_fec_flag_of_code_3_packets_is_read_through_libopus() -> None:
    # A code-3 packet (TOC config 9 = SILK WB 20 ms, 1 frame, padded) whose first
    # payload byte has the LBRR bit (bit 6) set.
    packet = bytes([9 << 3 | 3, 0x41, 0x00, 0b0100_0000, 0x12])
    assert opus.packet_has_fec(packet)
    assert not opus.packet_has_fec(bytes([9 << 3 | 3, 0x41, 0x00, 0b1000_0000, 0x12]))


def test_samples_per_frame_from_the_toc() -> None:
    assert opus.samples_per_frame(bytes([9 << 3])) == 960  # SILK WB 20 ms
    assert opus.samples_per_frame(bytes([10 << 3]), 16_000) == 640  # SILK WB 40 ms
    assert opus.samples_per_frame(bytes([31 << 3])) == 960  # CELT FB 20 ms


def test_corrupt_packet_raises_opus_error_with_libopus_text() -> None:
    with opus.Decoder() as dec, pytest.raises(opus.OpusError, match="corrupted stream"):
        dec.decode(b"\xff\xff\xff")


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        opus.Encoder(44_100)
    with pytest.raises(ValueError, match="frame_ms"):
        opus.Encoder(frame_ms=30)
    with opus.Encoder() as enc:
        with pytest.raises(ValueError, match="960 int16"):
            enc.encode(np.zeros(480, dtype=np.int16))
        with pytest.raises(ValueError, match="960 int16"):
            enc.encode(np.zeros(960, dtype=np.float32))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="contiguous"):
            enc.encode(np.zeros(1920, dtype=np.int16)[::2])
    with opus.Decoder() as dec, pytest.raises(ValueError, match=r"2\.5 ms"):
        dec.conceal(100)


def test_closed_codecs_refuse_work() -> None:
    enc, dec = opus.Encoder(), opus.Decoder()
    enc.close()
    dec.close()
    enc.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        enc.encode(np.zeros(960, dtype=np.int16))
    with pytest.raises(ValueError, match="closed"):
        dec.conceal(960)


def test_dtx_makes_silence_nearly_free() -> None:
    with opus.Encoder(dtx=True) as enc:
        silence = np.zeros(960, dtype=np.int16)
        sizes = [len(enc.encode(silence)) for _ in range(50)]
    assert sizes[-1] <= 2  # "no need to transmit"


def test_algorithmic_delay_is_the_lookahead() -> None:
    with opus.Encoder(48_000) as enc:
        assert 2.5 <= enc.algorithmic_delay_ms <= 10
        assert enc.lookahead_samples == round(enc.algorithmic_delay_ms * 48)


def test_runtime_settings_apply() -> None:
    pcm = tone.sine(440, 960 * 30)

    def mean_size(bitrate: int) -> float:
        with opus.Encoder(bitrate=24_000) as enc:
            enc.set_bitrate(bitrate)
            enc.set_packet_loss_perc(5)
            sizes = [len(enc.encode(pcm[i * 960 : (i + 1) * 960])) for i in range(30)]
        return float(np.mean(sizes[5:]))

    assert mean_size(12_000) < 0.75 * mean_size(32_000)
