"""Audio frame version 2: Opus packets sealed with the room's voice key.

PROTOCOL.md sections 6 and 6.1. One MQTT message is a 16-byte header and the
AES-256-GCM ciphertext of one Opus packet with its 16-byte tag::

    0      version = 2
    1      flags: bit 0 FEC for the previous packet, bit 1 end of talk spurt
    2-3    sequence number, uint16 big-endian, wrapping
    4-7    timestamp in 48 kHz samples, uint32 big-endian, wrapping
    8-11   key epoch, uint32 big-endian
    12-15  stream id, uint32 big-endian, random per capture / epoch / timestamp wrap
    16-    AES-256-GCM(Opus packet) || tag (16 bytes)

* sender key = HKDF-SHA256(ikm=room voice key, salt=empty,
  info=b"gochat/v1 voice " + user_id, length=32): no two senders share a key;
* nonce = stream id (4) || timestamp (4) || 4 zero bytes;
* AAD = header bytes 0-15 || topic (UTF-8): a packet is bound to its room and speaker.

:class:`Sealer` is the sending side, :class:`Opener` the receiving keyring. Both are
pure (no I/O, the clock is injected). Every way a payload can fail raises a
:class:`VoiceError` whose :attr:`~VoiceError.counter` names the counter it belongs to;
no message ever carries key material. All cryptography is the ``cryptography``
package's (OpenSSL); nothing here is hand-written crypto.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.protocol import topics
from appliance.protocol.frames import (
    ALLOWED_DURATIONS_MS,
    FLAG_END,
    FLAG_FEC,
    MAX_OPUS_BYTES,
    AudioFrame,
    FrameError,
    opus_duration_ms,
)

VERSION = 2
LEGACY_VERSION = 1
HEADER = struct.Struct(">BBHIII")
HEADER_BYTES = HEADER.size  # 16
TAG_BYTES = 16
KEY_BYTES = 32
MIN_FRAME_BYTES = HEADER_BYTES + 1 + TAG_BYTES  # a TOC byte at least
MAX_FRAME_BYTES = HEADER_BYTES + MAX_OPUS_BYTES + TAG_BYTES  # 1,307
KDF_INFO_PREFIX = b"gochat/v1 voice "
GRACE_S = 5.0  # how long a superseded epoch still opens packets (6.1 "Switching")
MAX_CACHED_SENDERS = 256  # derived (epoch, sender) ciphers kept by an Opener
U32 = 0xFFFFFFFF
_KNOWN_FLAGS = FLAG_FEC | FLAG_END
_ZERO4 = bytes(4)

Clock = Callable[[], float]
StreamIdSource = Callable[[], int]


# ---------------------------------------------------------------- errors


class VoiceError(FrameError):
    """A payload on an audio topic that cannot be played; drop it and count it.

    ``counter`` is the name of the counter the drop belongs to. Messages never
    contain key material.
    """

    counter: ClassVar[str] = "frames_rejected"


class MalformedFrameError(VoiceError):
    """Not a well-formed version 2 frame, or the decrypted packet is not valid Opus."""

    counter: ClassVar[str] = "frames_malformed"


class LegacyFrameError(VoiceError):
    """A version 1 (plaintext) frame: obsolete, dropped."""

    counter: ClassVar[str] = "frames_v1_dropped"


class UnknownEpochError(VoiceError):
    """Sealed with an epoch this receiver does not hold (never had, or expired)."""


class AuthenticationError(VoiceError):
    """The GCM tag does not verify: wrong key, wrong sender, or tampered bytes."""


# ---------------------------------------------------------------- the frame


@dataclass(frozen=True, slots=True)
class VoiceFrame:
    """One decrypted (or to-be-sealed) Opus packet with its version 2 header fields."""

    seq: int
    timestamp: int
    epoch: int
    stream_id: int
    opus: bytes = field(repr=False)
    fec: bool = False
    end: bool = False

    @property
    def flags(self) -> int:
        """The header's flags byte."""
        return (FLAG_FEC if self.fec else 0) | (FLAG_END if self.end else 0)

    def header(self) -> bytes:
        """Header bytes 0-15."""
        return HEADER.pack(
            VERSION, self.flags, self.seq & 0xFFFF, self.timestamp & U32, self.epoch, self.stream_id
        )

    def audio(self) -> AudioFrame:
        """The packet as the jitter buffer takes it (version 1's shape)."""
        return AudioFrame(self.seq, self.timestamp, self.opus, self.fec, self.end)


@dataclass(frozen=True, slots=True)
class Header:
    """The parsed, not yet authenticated, header of a version 2 frame."""

    flags: int
    seq: int
    timestamp: int
    epoch: int
    stream_id: int


def parse_header(data: bytes) -> Header:
    """Check the framing of ``data`` and parse its header (not authenticated yet).

    Raises :class:`LegacyFrameError` for version 1 and :class:`MalformedFrameError`
    for anything else that is not a version 2 frame of a possible length.
    """
    if len(data) >= 1 and data[0] == LEGACY_VERSION:
        raise LegacyFrameError("version 1 (plaintext) frame")
    if not MIN_FRAME_BYTES <= len(data) <= MAX_FRAME_BYTES:
        raise MalformedFrameError(f"frame of {len(data)} bytes")
    version, flags, seq, timestamp, epoch, stream_id = HEADER.unpack_from(data)
    if version != VERSION:
        raise MalformedFrameError(f"unknown frame version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise MalformedFrameError(f"reserved flag bits set: {flags:#04x}")
    return Header(flags, seq, timestamp, epoch, stream_id)


def check_opus(packet: bytes) -> None:
    """Raise :class:`MalformedFrameError` unless ``packet`` is one Opus packet of
    10, 20, 40 or 60 ms and at most 1,275 bytes (the TOC checks of ``frames``)."""
    if len(packet) > MAX_OPUS_BYTES:
        raise MalformedFrameError(f"Opus packet too long: {len(packet)} bytes")
    try:
        duration = opus_duration_ms(packet)
    except FrameError as exc:
        raise MalformedFrameError(str(exc)) from None
    if duration not in ALLOWED_DURATIONS_MS:
        raise MalformedFrameError(f"Opus packet of {duration} ms (10, 20, 40 or 60 allowed)")


# ---------------------------------------------------------------- primitives


def sender_key(room_key: bytes, user_id: str) -> bytes:
    """The 32-byte key ``user_id`` seals with under ``room_key`` (HKDF-SHA256)."""
    _check_room_key(room_key)
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=b"",  # PROTOCOL.md: empty (HMAC pads it to the same key as RFC 5869's default)
        info=KDF_INFO_PREFIX + user_id.encode("utf-8"),
    )
    return hkdf.derive(room_key)


def sender_cipher(room_key: bytes, user_id: str) -> AESGCM:
    """The AES-256-GCM object for ``user_id``'s packets under ``room_key``."""
    return AESGCM(sender_key(room_key, user_id))


def nonce(stream_id: int, timestamp: int) -> bytes:
    """The 12-byte GCM nonce: stream id || timestamp || 4 zero bytes."""
    return struct.pack(">II", stream_id, timestamp & U32) + _ZERO4


def seal(cipher: AESGCM, frame: VoiceFrame, topic: str) -> bytes:
    """The wire bytes of ``frame`` sealed with a sender's ``cipher`` for ``topic``.

    The caller must never seal two packets with one (stream id, timestamp) under one
    key: :class:`Sealer` guarantees it. Raises :class:`MalformedFrameError` for a
    packet that is not valid Opus of an allowed duration.
    """
    check_opus(frame.opus)
    header = frame.header()
    sealed = cipher.encrypt(
        nonce(frame.stream_id, frame.timestamp), frame.opus, header + topic.encode("utf-8")
    )
    return header + sealed


def open_(cipher: AESGCM, data: bytes, topic: str) -> VoiceFrame:
    """Authenticate and decrypt ``data`` received on ``topic`` with the sender's
    ``cipher``; raises a :class:`VoiceError` (never anything else) if it fails."""
    header = parse_header(data)
    return _open_parsed(cipher, header, data, topic)


def _open_parsed(cipher: AESGCM, header: Header, data: bytes, topic: str) -> VoiceFrame:
    aad = bytes(data[:HEADER_BYTES]) + topic.encode("utf-8", "surrogatepass")
    try:
        opus = cipher.decrypt(
            nonce(header.stream_id, header.timestamp), bytes(data[HEADER_BYTES:]), aad
        )
    except InvalidTag:
        raise AuthenticationError("authentication failed") from None
    check_opus(opus)
    return VoiceFrame(
        header.seq,
        header.timestamp,
        header.epoch,
        header.stream_id,
        opus,
        bool(header.flags & FLAG_FEC),
        bool(header.flags & FLAG_END),
    )


def _check_room_key(room_key: bytes) -> None:
    if len(room_key) != KEY_BYTES:
        raise ValueError(f"a voice key is {KEY_BYTES} bytes, got {len(room_key)}")


def random_stream_id() -> int:
    """A uniformly random uint32 from the OS CSPRNG."""
    return secrets.randbits(32)


# ---------------------------------------------------------------- sender


class Sealer:
    """Seals one speaker's packets for one audio topic with the newest epoch it holds.

    Nonce uniqueness: within a stream the timestamp strictly increases (a timestamp
    that does not, which is how a wrap shows, starts a new stream), and a stream id is
    never reused under one epoch by this object. So (stream id, timestamp) never
    repeats for one key while the object lives. A new process draws fresh random ids:
    a repeat then needs a 1-in-2^32 id collision *and* an equal timestamp.
    """

    def __init__(self, topic: str, *, draw_stream_id: StreamIdSource = random_stream_id) -> None:
        parsed = topics.parse_audio(topic)
        if parsed is None:
            raise ValueError(f"not an audio topic: {topic!r}")
        self.topic = topic
        self.user_id = parsed.user_id
        self._aad_topic = topic.encode("utf-8")
        self._draw = draw_stream_id
        self._epoch: int | None = None
        self._cipher: AESGCM | None = None
        self._stream_id = 0
        self._used_ids: set[int] = set()
        self._last_ts: int | None = None

    @property
    def epoch(self) -> int | None:
        """The epoch packets are sealed with (None before the first key)."""
        return self._epoch

    @property
    def stream_id(self) -> int:
        """The current stream id."""
        return self._stream_id

    def set_key(self, epoch: int, room_key: bytes) -> bool:
        """Take the room's key of ``epoch`` if it is newer than the one held; it seals
        from the next packet. Returns whether it was taken (an older or equal epoch,
        e.g. a late push, is ignored)."""
        if not 0 < epoch <= U32:
            raise ValueError(f"epoch out of range: {epoch}")
        if self._epoch is not None and epoch <= self._epoch:
            return False
        self._cipher = sender_cipher(room_key, self.user_id)
        self._epoch = epoch
        self._used_ids.clear()
        self._new_stream()
        return True

    def open_capture(self) -> None:
        """Capture (re)opens: a new stream begins."""
        self._new_stream()

    def seal(
        self, seq: int, timestamp: int, opus: bytes, *, fec: bool = False, end: bool = False
    ) -> bytes:
        """The wire bytes of one packet. Raises :class:`RuntimeError` before the first
        key and :class:`MalformedFrameError` for an invalid Opus packet."""
        if self._cipher is None or self._epoch is None:
            raise RuntimeError("no voice key yet")
        check_opus(opus)
        timestamp &= U32
        if self._last_ts is not None and timestamp <= self._last_ts:
            self._new_stream()  # wrapped (or went back): never repeat a nonce
        frame = VoiceFrame(seq, timestamp, self._epoch, self._stream_id, opus, fec, end)
        header = frame.header()
        sealed = self._cipher.encrypt(
            nonce(self._stream_id, timestamp), opus, header + self._aad_topic
        )
        self._last_ts = timestamp
        return header + sealed

    def _new_stream(self) -> None:
        while (candidate := self._draw() & U32) in self._used_ids:
            pass
        self._used_ids.add(candidate)
        self._stream_id = candidate
        self._last_ts = None


# ---------------------------------------------------------------- receiver


@dataclass(slots=True)
class _EpochKey:
    room_key: bytes = field(repr=False)
    expires_at: float | None = None  # set when a newer epoch arrives


class Opener:
    """A receiver's keyring for one room: opens every speaker's packets.

    Holds the newest epoch's key and, for :data:`GRACE_S` after a newer one arrived,
    each superseded one, on the injected monotonic ``clock``. Per-sender ciphers are
    derived once per (epoch, sender) and cached. Every refused payload raises a
    :class:`VoiceError` and is counted in :attr:`counters` under its ``counter``.
    Checks cost nothing before the header parses and the epoch is known, so junk is
    dropped without any cryptography.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        grace_s: float = GRACE_S,
        max_cached: int = MAX_CACHED_SENDERS,
    ) -> None:
        self._clock = clock
        self.grace_s = grace_s
        self._max_cached = max_cached
        self._keys: dict[int, _EpochKey] = {}
        self._newest: int | None = None
        self._ciphers: dict[tuple[int, str], AESGCM] = {}
        self._next_expiry: float | None = None
        self.counters: Counter[str] = Counter()

    @property
    def newest_epoch(self) -> int | None:
        """The newest epoch held (None before the first key)."""
        return self._newest

    def epochs(self) -> list[int]:
        """The epochs that currently open packets, oldest first."""
        self._prune(self._clock())
        return sorted(self._keys)

    def add_key(self, epoch: int, room_key: bytes) -> None:
        """A key from ``login_room``/``create_room`` ``media`` or a ``media_key`` push.

        A newer epoch starts the grace period of the one it supersedes. An older one
        (a late arrival) is kept for the grace period only. Re-adding a held epoch
        with another key replaces it (a server that lost its state).
        """
        _check_room_key(room_key)
        if not 0 < epoch <= U32:
            raise ValueError(f"epoch out of range: {epoch}")
        now = self._clock()
        held = self._keys.get(epoch)
        if held is not None and held.room_key == room_key:
            return
        self._drop_ciphers(epoch)
        if self._newest is None or epoch > self._newest:
            if self._newest is not None:
                self._expire_at(self._keys[self._newest], now + self.grace_s)
            self._keys[epoch] = _EpochKey(room_key)
            self._newest = epoch
        elif epoch == self._newest:
            self._keys[epoch] = _EpochKey(room_key)
        else:
            entry = _EpochKey(room_key)
            self._expire_at(entry, now + self.grace_s)
            self._keys[epoch] = entry
        self._prune(now)

    def clear(self) -> None:
        """Forget every key (left the room)."""
        self._keys.clear()
        self._ciphers.clear()
        self._newest = None
        self._next_expiry = None

    def open(self, data: bytes, topic: str) -> VoiceFrame:
        """Authenticate and decrypt ``data`` received on the audio ``topic``.

        Raises (and counts) :class:`LegacyFrameError`, :class:`MalformedFrameError`,
        :class:`UnknownEpochError` or :class:`AuthenticationError`; nothing else.
        """
        try:
            return self._open(data, topic)
        except VoiceError as exc:
            self.counters[exc.counter] += 1
            raise

    def _open(self, data: bytes, topic: str) -> VoiceFrame:
        header = parse_header(data)
        parsed = topics.parse_audio(topic)
        if parsed is None:
            raise MalformedFrameError("not an audio topic")
        self._prune(self._clock())
        entry = self._keys.get(header.epoch)
        if entry is None:
            raise UnknownEpochError(f"unknown or expired epoch {header.epoch}")
        cipher = self._cipher(header.epoch, entry, parsed.user_id)
        return _open_parsed(cipher, header, data, topic)

    def _cipher(self, epoch: int, entry: _EpochKey, user_id: str) -> AESGCM:
        key = (epoch, user_id)
        cipher = self._ciphers.get(key)
        if cipher is None:
            if len(self._ciphers) >= self._max_cached:
                del self._ciphers[next(iter(self._ciphers))]  # oldest derived first
            cipher = sender_cipher(entry.room_key, user_id)
            self._ciphers[key] = cipher
        return cipher

    def _expire_at(self, entry: _EpochKey, when: float) -> None:
        if entry.expires_at is None or when < entry.expires_at:
            entry.expires_at = when
        if self._next_expiry is None or when < self._next_expiry:
            self._next_expiry = when

    def _prune(self, now: float) -> None:
        # Cheap per packet: the scan runs only once something is due to expire.
        if self._next_expiry is None or now < self._next_expiry:
            return
        self._next_expiry = None
        for epoch, entry in list(self._keys.items()):
            if entry.expires_at is None:
                continue
            if entry.expires_at <= now:
                del self._keys[epoch]
                self._drop_ciphers(epoch)
            elif self._next_expiry is None or entry.expires_at < self._next_expiry:
                self._next_expiry = entry.expires_at

    def _drop_ciphers(self, epoch: int) -> None:
        for key in [k for k in self._ciphers if k[0] == epoch]:
            del self._ciphers[key]
