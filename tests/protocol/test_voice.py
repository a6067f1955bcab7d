"""Audio frame version 2 (PROTOCOL.md 6 and 6.1): sealing, opening, keyring, fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocol import frames, voice
from appliance.protocol.voice import (
    AuthenticationError,
    LegacyFrameError,
    MalformedFrameError,
    Opener,
    Sealer,
    UnknownEpochError,
    VoiceError,
    VoiceFrame,
)

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
TOPIC = "gochat/v1/room/r1/audio/alice"
SILK_20MS = bytes([1 << 3]) + b"\x01\x02\x03\x04"
CELT_10MS = bytes([18 << 3]) + b"\xff" * 40
CELT_2_5MS = bytes([16 << 3]) + b"\x00"  # a duration the protocol does not allow


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ids(*values: int) -> Callable[[], int]:
    it = iter(values)
    return lambda: next(it)


def opener(*keys: tuple[int, bytes], clock: FakeClock | None = None) -> Opener:
    o = Opener(clock=clock or FakeClock())
    for epoch, key in keys:
        o.add_key(epoch, key)
    return o


def sealed(epoch: int = 1, key: bytes = KEY1, topic: str = TOPIC, opus: bytes = SILK_20MS) -> bytes:
    s = Sealer(topic)
    s.set_key(epoch, key)
    return s.seal(5, 960, opus)


# ---------------------------------------------------------------- round trip


def test_round_trip_keeps_every_field() -> None:
    s = Sealer(TOPIC, draw_stream_id=ids(0xDEADBEEF))
    s.set_key(4, KEY1)
    wire = s.seal(65535, 0xFFFFFF00, CELT_10MS, fec=True, end=True)
    assert len(wire) == voice.HEADER_BYTES + len(CELT_10MS) + voice.TAG_BYTES
    frame = opener((4, KEY1)).open(wire, TOPIC)
    assert frame == VoiceFrame(65535, 0xFFFFFF00, 4, 0xDEADBEEF, CELT_10MS, True, True)
    assert frame.audio() == frames.AudioFrame(65535, 0xFFFFFF00, CELT_10MS, True, True)


def test_the_ciphertext_hides_the_packet() -> None:
    wire = sealed(opus=CELT_10MS)
    assert CELT_10MS[1:] not in wire


def test_worked_example_matches_an_independent_computation() -> None:
    """A fixed vector, recomputed here with stdlib HMAC (RFC 5869 by hand) and the
    raw AES-GCM primitive, and pinned as hex so any change of the format shows."""
    user, epoch, stream_id, seq, ts = "alice", 3, 0x01020304, 7, 960
    # HKDF-SHA256, salt empty, one block of output.
    prk = hmac.new(b"", KEY1, hashlib.sha256).digest()
    okm = hmac.new(prk, b"gochat/v1 voice " + user.encode() + b"\x01", hashlib.sha256).digest()
    assert voice.sender_key(KEY1, user) == okm
    header = bytes([2, 0x01]) + struct.pack(">HIII", seq, ts, epoch, stream_id)
    nonce = struct.pack(">II", stream_id, ts) + b"\x00" * 4
    expected = header + AESGCM(okm).encrypt(nonce, SILK_20MS, header + TOPIC.encode())

    frame = VoiceFrame(seq, ts, epoch, stream_id, SILK_20MS, fec=True)
    wire = voice.seal(voice.sender_cipher(KEY1, user), frame, TOPIC)
    assert wire == expected
    assert okm.hex() == "9a36b886221d6d5d221844e6e8f23c2bdf97349df466b5e35be6eb34656d342b"
    assert wire.hex() == (
        "02010007000003c000000003010203040135b691342f7be6ba58a759cfca6aab2c9abfca17"
    )
    assert opener((3, KEY1)).open(wire, TOPIC) == frame


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize("index", range(voice.HEADER_BYTES))
@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_tampering_with_any_header_byte_fails(index: int, bit: int) -> None:
    wire = bytearray(sealed(epoch=1))
    wire[index] ^= bit
    with pytest.raises(VoiceError):
        opener((1, KEY1)).open(bytes(wire), TOPIC)
    # With the sender's cipher in hand (epoch lookup bypassed) only framing or the
    # tag can refuse it: the header is authenticated data, epoch bytes included.
    with pytest.raises((AuthenticationError, MalformedFrameError, LegacyFrameError)):
        voice.open_(voice.sender_cipher(KEY1, "alice"), bytes(wire), TOPIC)


def test_tampered_epoch_bytes_fail_the_tag_even_if_that_epoch_is_held() -> None:
    wire = bytearray(sealed(epoch=1))
    wire[11] = 2  # epoch 1 -> 2
    with pytest.raises(AuthenticationError):
        opener((1, KEY1), (2, KEY1)).open(bytes(wire), TOPIC)


@pytest.mark.parametrize(
    "topic",
    [
        "gochat/v1/room/r2/audio/alice",  # another room
        "gochat/v1/room/r1/audio/alicf",  # another speaker
        "gochat/v1/room/r1/audio/alice.",
    ],
)
def test_a_packet_replayed_on_another_topic_fails(topic: str) -> None:
    with pytest.raises(AuthenticationError):
        opener((1, KEY1)).open(sealed(), topic)
    # Even with alice's own cipher: the topic is in the AAD.
    with pytest.raises(AuthenticationError):
        voice.open_(voice.sender_cipher(KEY1, "alice"), sealed(), topic)


def test_tampering_with_any_ciphertext_or_tag_byte_fails() -> None:
    wire = sealed(opus=CELT_10MS)
    o = opener((1, KEY1))
    for index in range(voice.HEADER_BYTES, len(wire)):
        bad = bytearray(wire)
        bad[index] ^= 0x01
        with pytest.raises(AuthenticationError):
            o.open(bytes(bad), TOPIC)
    with pytest.raises(VoiceError):
        o.open(wire[:-1], TOPIC)
    with pytest.raises(VoiceError):
        o.open(wire + b"\x00", TOPIC)
    assert o.counters["frames_rejected"] == len(wire) - voice.HEADER_BYTES + 2


def test_wrong_keys_fail() -> None:
    with pytest.raises(AuthenticationError):
        opener((1, KEY2)).open(sealed(epoch=1, key=KEY1), TOPIC)
    # Bob's key under the right room key does not open alice's packets.
    with pytest.raises(AuthenticationError):
        voice.open_(voice.sender_cipher(KEY1, "bob"), sealed(), TOPIC)
    assert voice.sender_key(KEY1, "alice") != voice.sender_key(KEY1, "bob")


# ---------------------------------------------------------------- strict parsing


def test_version_1_frames_are_dropped_and_counted() -> None:
    o = opener((1, KEY1))
    legacy = frames.pack(frames.AudioFrame(1, 960, SILK_20MS))
    with pytest.raises(LegacyFrameError):
        o.open(legacy, TOPIC)
    assert o.counters == {"frames_v1_dropped": 1}


def test_unknown_version_reserved_flags_and_lengths_are_malformed() -> None:
    o = opener((1, KEY1))
    good = sealed()
    for bad in (b"", b"\x02", good[:32], b"\x03" + good[1:], good[:1] + b"\x04" + good[2:]):
        with pytest.raises(MalformedFrameError):
            o.open(bad, TOPIC)
    with pytest.raises(MalformedFrameError):
        o.open(good[:16] + b"x" * (frames.MAX_OPUS_BYTES + voice.TAG_BYTES + 1), TOPIC)
    with pytest.raises(MalformedFrameError):
        o.open(good, "gochat/v1/room/r1/state")
    assert o.counters == {"frames_malformed": 7}


def test_authentic_packets_of_bad_opus_are_malformed() -> None:
    with pytest.raises(MalformedFrameError):
        sealed(opus=CELT_2_5MS)  # the sender refuses it
    header = VoiceFrame(1, 0, 1, 9, CELT_2_5MS).header()
    cipher = voice.sender_cipher(KEY1, "alice")
    for bad in (CELT_2_5MS, b"\x08" * (frames.MAX_OPUS_BYTES + 1)):
        wire = header + cipher.encrypt(voice.nonce(9, 0), bad, header + TOPIC.encode())
        with pytest.raises(MalformedFrameError):
            opener((1, KEY1)).open(wire, TOPIC)


def test_bad_keys_and_epochs_are_refused_without_echoing_the_key() -> None:
    secret = b"S" * 31
    with pytest.raises(ValueError) as info:
        Opener().add_key(1, secret)
    assert "SSS" not in str(info.value)
    with pytest.raises(ValueError):
        Opener().add_key(0, KEY1)
    with pytest.raises(ValueError):
        Sealer(TOPIC).set_key(2**32, KEY1)
    with pytest.raises(ValueError):
        Sealer("gochat/v1/room/r1/state")
    assert "secret-opus" not in repr(VoiceFrame(1, 2, 3, 4, b"secret-opus"))


# ---------------------------------------------------------------- epochs


def test_previous_epoch_opens_for_5_s_after_a_newer_one_arrives() -> None:
    clock = FakeClock()
    o = opener((1, KEY1), clock=clock)
    old = sealed(epoch=1, key=KEY1)
    clock.now += 60  # an epoch has no age limit while it is the newest
    assert o.open(old, TOPIC).epoch == 1
    o.add_key(2, KEY2)
    new = sealed(epoch=2, key=KEY2)
    clock.now += 4.999
    assert o.open(old, TOPIC).epoch == 1
    assert o.open(new, TOPIC).epoch == 2
    assert o.epochs() == [1, 2]
    clock.now += 0.001
    with pytest.raises(UnknownEpochError):
        o.open(old, TOPIC)
    assert o.open(new, TOPIC).epoch == 2
    assert o.epochs() == [2]
    assert o.counters == {"frames_rejected": 1}


def test_each_superseded_epoch_has_its_own_grace() -> None:
    clock = FakeClock()
    keys = {e: bytes([e]) * 32 for e in (1, 2, 3)}
    o = opener((1, keys[1]), clock=clock)
    o.add_key(2, keys[2])  # 1 expires at +5
    clock.now += 3
    o.add_key(3, keys[3])  # 2 expires at +8
    clock.now += 2.5
    assert o.epochs() == [2, 3]
    assert o.open(sealed(epoch=2, key=keys[2]), TOPIC).epoch == 2
    clock.now += 2.5
    assert o.epochs() == [3]
    assert o.newest_epoch == 3


def test_a_late_older_key_is_kept_for_the_grace_only_and_never_replaces_the_newest() -> None:
    clock = FakeClock()
    o = opener((5, KEY2), clock=clock)
    o.add_key(4, KEY1)  # e.g. a login_room reply overtaken by a media_key push
    assert o.newest_epoch == 5
    assert o.open(sealed(epoch=4, key=KEY1), TOPIC).epoch == 4
    clock.now += 5
    with pytest.raises(UnknownEpochError):
        o.open(sealed(epoch=4, key=KEY1), TOPIC)
    assert o.open(sealed(epoch=5, key=KEY2), TOPIC).epoch == 5


def test_unknown_epoch_and_clear() -> None:
    o = opener((1, KEY1))
    with pytest.raises(UnknownEpochError):
        o.open(sealed(epoch=7), TOPIC)
    o.clear()
    with pytest.raises(UnknownEpochError):
        o.open(sealed(epoch=1), TOPIC)
    assert o.newest_epoch is None


def test_ciphers_are_cached_per_epoch_and_sender_and_bounded() -> None:
    o = Opener(clock=FakeClock(), max_cached=2)
    o.add_key(1, KEY1)
    for user in ("a", "b", "c", "a"):
        topic = f"gochat/v1/room/r1/audio/{user}"
        assert o.open(sealed(topic=topic), topic).epoch == 1
    assert len(o._ciphers) == 2


# ---------------------------------------------------------------- the sender's streams


def test_sealer_draws_a_new_stream_on_capture_epoch_change_and_wrap() -> None:
    s = Sealer(TOPIC, draw_stream_id=ids(10, 11, 12, 13, 14))
    with pytest.raises(RuntimeError):
        s.seal(0, 0, SILK_20MS)
    assert s.set_key(1, KEY1)
    assert s.stream_id == 10
    s.seal(0, 0, SILK_20MS)
    s.seal(1, 960, SILK_20MS)
    assert s.stream_id == 10
    s.open_capture()
    assert s.stream_id == 11
    assert s.set_key(2, KEY2)
    assert s.stream_id == 12 and s.epoch == 2
    assert not s.set_key(2, KEY1) and not s.set_key(1, KEY1)  # stale pushes ignored
    assert s.stream_id == 12 and s.epoch == 2
    s.seal(2, 0xFFFFFC40, SILK_20MS)
    wrapped = s.seal(3, 0xFFFFFC40 + 960, SILK_20MS)  # timestamp wraps to 0
    assert s.stream_id == 13
    assert opener((2, KEY2)).open(wrapped, TOPIC).stream_id == 13


def test_sealer_never_reuses_a_stream_id_within_an_epoch() -> None:
    s = Sealer(TOPIC, draw_stream_id=ids(7, 7, 7, 8, 7, 9))
    s.set_key(1, KEY1)
    s.open_capture()
    assert s.stream_id == 8
    s.open_capture()
    assert s.stream_id == 9


def test_a_repeated_timestamp_starts_a_new_stream_so_no_nonce_repeats() -> None:
    s = Sealer(TOPIC)
    s.set_key(1, KEY1)
    nonces = set()
    for ts in (0, 960, 960, 0, 1920):
        header = voice.parse_header(s.seal(0, ts, SILK_20MS))
        nonces.add((header.stream_id, header.timestamp))
    assert len(nonces) == 5


# ---------------------------------------------------------------- fuzzing


@settings(max_examples=500)
@given(data=st.binary(max_size=1400), topic=st.text(max_size=80))
def test_open_on_random_bytes_raises_only_voice_errors(data: bytes, topic: str) -> None:
    o = opener((1, KEY1))
    with pytest.raises(VoiceError):
        o.open(data, topic)


@settings(max_examples=500)
@given(
    flags=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    epoch=st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
    stream=st.integers(0, 0xFFFFFFFF),
    body=st.binary(max_size=1400),
)
def test_open_on_random_v2_frames_raises_only_voice_errors(
    *, flags: int, seq: int, ts: int, epoch: int, stream: int, body: bytes
) -> None:
    wire = struct.pack(">BBHIII", 2, flags, seq, ts, epoch, stream) + body
    with pytest.raises(VoiceError):
        opener((1, KEY1), (2, KEY2)).open(wire, TOPIC)


@given(st.binary(min_size=1, max_size=1275), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_whatever_the_sealer_accepts_opens_to_the_same_packet(
    opus: bytes, seq: int, ts: int
) -> None:
    s = Sealer(TOPIC)
    s.set_key(1, KEY1)
    try:
        wire = s.seal(seq, ts, opus)
    except MalformedFrameError:
        return
    assert opener((1, KEY1)).open(wire, TOPIC).opus == opus
