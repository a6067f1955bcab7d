"""libopus through ctypes: a voice encoder and a decoder with PLC and in-band FEC.

We bind libopus (``libopus.so.0``) directly instead of using ``opuslib``: opuslib 3.0.1
breaks the in-band FEC setter and ``decode(None)``, and its decode wrapper costs about
twice libopus itself. Here every call passes pointers to preallocated buffers, so a
20 ms frame costs one C call plus the final ``bytes`` of the packet (encode) or nothing
but the C call (decode, which returns a view of the decoder's own buffer).

The request numbers are those of ``opus_defines.h`` (libopus 1.3.1 in Debian 12);
``opus_packet_has_lbrr`` only exists from libopus 1.5, so :func:`packet_has_fec` reads the
LBRR flag itself, the way 1.5 does.

Not thread-safe: an :class:`Encoder` or :class:`Decoder` belongs to one thread at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt

# opus_defines.h
OPUS_OK: Final = 0
OPUS_AUTO: Final = -1000
OPUS_APPLICATION_VOIP: Final = 2048
OPUS_APPLICATION_AUDIO: Final = 2049
OPUS_SIGNAL_VOICE: Final = 3001
OPUS_SIGNAL_MUSIC: Final = 3002
_SET_BITRATE: Final = 4002
_SET_VBR: Final = 4006
_SET_COMPLEXITY: Final = 4010
_SET_INBAND_FEC: Final = 4012
_SET_PACKET_LOSS_PERC: Final = 4014
_SET_DTX: Final = 4016
_SET_SIGNAL: Final = 4024
_GET_LOOKAHEAD: Final = 4027
_RESET_STATE: Final = 4028
_GET_SAMPLE_RATE: Final = 4029
_GET_IN_DTX: Final = 4049

MAX_PACKET_BYTES: Final = 1275
"""The largest packet we emit or accept (docs/protocol.md section 7, one Opus frame)."""
SAMPLE_RATES: Final = (8000, 12000, 16000, 24000, 48000)
FRAME_MS: Final = (10, 20, 40, 60)
_MAX_FRAME_MS: Final = 120  # the longest packet libopus can decode
_PLC_GRANULE_MS: Final = 2.5  # decode sizes must be multiples of 2.5 ms

_Int16Array = npt.NDArray[np.int16]


class OpusError(RuntimeError):
    """libopus returned an error; ``code`` is libopus's, the message its ``opus_strerror``."""

    def __init__(self, code: int, during: str) -> None:
        self.code = code
        message = _lib.strerror(code).decode("ascii", "replace")
        super().__init__(f"libopus {during}: {message} ({code})")


class _Lib:
    """The libopus functions we call, with their C signatures."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("opus") or "libopus.so.0"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:  # pragma: no cover - the appliance cannot run without it
            raise ImportError(f"libopus not found ({path}): install libopus0") from exc
        vp, i32, i16p, cp = ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p
        pint = ctypes.POINTER(ctypes.c_int)
        self.version = _fn(lib, "opus_get_version_string", ctypes.c_char_p, [])
        self.strerror = _fn(lib, "opus_strerror", ctypes.c_char_p, [ctypes.c_int])
        self.encoder_create = _fn(
            lib, "opus_encoder_create", vp, [i32, ctypes.c_int, ctypes.c_int, pint]
        )
        self.encoder_destroy = _fn(lib, "opus_encoder_destroy", None, [vp])
        self.encode = _fn(lib, "opus_encode", i32, [vp, i16p, ctypes.c_int, vp, i32])
        # The ctl functions are variadic. On the ABIs we run on (x86-64, AArch64 and
        # 32-bit ARM under Linux) an int or pointer vararg travels like a fixed argument,
        # so one fixed prototype per argument type is sound. lib[name] makes a new
        # function object each time, so the prototypes do not overwrite each other.
        self.encoder_ctl_int = _fn(lib, "opus_encoder_ctl", ctypes.c_int, [vp, ctypes.c_int, i32])
        self.encoder_ctl_get = _fn(
            lib, "opus_encoder_ctl", ctypes.c_int, [vp, ctypes.c_int, ctypes.POINTER(i32)]
        )
        self.decoder_create = _fn(lib, "opus_decoder_create", vp, [i32, ctypes.c_int, pint])
        self.decoder_destroy = _fn(lib, "opus_decoder_destroy", None, [vp])
        self.decode = _fn(
            lib, "opus_decode", ctypes.c_int, [vp, cp, i32, i16p, ctypes.c_int, ctypes.c_int]
        )
        self.decoder_ctl_none = _fn(lib, "opus_decoder_ctl", ctypes.c_int, [vp, ctypes.c_int])
        self.packet_parse = _fn(lib, "opus_packet_parse", ctypes.c_int, [cp, i32, vp, vp, vp, vp])


def _fn(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> Any:
    func = lib[name]
    func.restype = restype
    func.argtypes = argtypes
    return func


_lib = _Lib()


def version() -> str:
    """The libopus version string, e.g. ``"libopus 1.3.1"``."""
    return str(_lib.version().decode("ascii"))


def _check(result: int, during: str) -> int:
    if result < 0:
        raise OpusError(result, during)
    return result


class _Native:
    """Owns one native libopus state: freed by :meth:`close` (or when collected)."""

    _kind = "state"

    def __init__(self) -> None:
        self._st: int | None = None  # first, so __del__ works whatever fails later

    def _destroy(self, st: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free the native state; further calls raise :class:`ValueError`."""
        st, self._st = self._st, None
        if st:
            self._destroy(st)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _state(self) -> int:
        if not self._st:
            raise ValueError(f"{self._kind} is closed")
        return self._st


class Encoder(_Native):
    """A mono Opus encoder for voice (VoIP mode, in-band FEC on by default).

    ``encode`` takes exactly one frame of int16 PCM at ``sample_rate`` and returns the
    packet. The PCM is read in place through its pointer; the packet is written into a
    preallocated buffer and only its used bytes are copied out.
    """

    _kind = "encoder"

    def __init__(
        self,
        sample_rate: int = 48_000,
        channels: int = 1,
        *,
        frame_ms: int = 20,
        bitrate: int = 24_000,
        complexity: int = 9,
        fec: bool = True,
        packet_loss_perc: int = 10,
        dtx: bool = False,
        application: int = OPUS_APPLICATION_VOIP,
        signal: int = OPUS_SIGNAL_VOICE,
    ) -> None:
        super().__init__()
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}, not {sample_rate}")
        if channels != 1:
            raise ValueError("only mono is supported")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {FRAME_MS}, not {frame_ms}")
        if not 0 <= complexity <= 10:
            raise ValueError("complexity must be 0..10")
        if not 0 <= packet_loss_perc <= 100:
            raise ValueError("packet_loss_perc must be 0..100")
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        error = ctypes.c_int(0)
        self._st = _lib.encoder_create(sample_rate, channels, application, ctypes.byref(error))
        if error.value != OPUS_OK or not self._st:
            raise OpusError(error.value, "opus_encoder_create")
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        self._out_ptr = ctypes.addressof(self._out)
        self._ctl(_SET_BITRATE, bitrate)
        self._ctl(_SET_VBR, 1)
        self._ctl(_SET_COMPLEXITY, complexity)
        self._ctl(_SET_SIGNAL, signal)
        self._ctl(_SET_INBAND_FEC, 1 if fec else 0)
        self._ctl(_SET_PACKET_LOSS_PERC, packet_loss_perc if fec else 0)
        self._ctl(_SET_DTX, 1 if dtx else 0)
        self.fec = fec
        self.lookahead_samples = self._get(_GET_LOOKAHEAD)

    @property
    def algorithmic_delay_ms(self) -> float:
        """The codec's look-ahead in ms (encoder plus decoder delay, excluding framing)."""
        return self.lookahead_samples * 1000 / self.sample_rate

    def encode(self, pcm: _Int16Array) -> bytes:
        """Encode one frame (``frame_samples`` int16 samples, C-contiguous) into a packet.

        A packet of 2 bytes or less means DTX: nothing needs to be sent.
        """
        if pcm.dtype != np.int16 or pcm.shape != (self.frame_samples,):
            raise ValueError(
                f"expected {self.frame_samples} int16 samples, got {pcm.dtype} {pcm.shape}"
            )
        if not pcm.flags.c_contiguous:
            raise ValueError("PCM must be C-contiguous")
        n = _lib.encode(
            self._state(), pcm.ctypes.data, self.frame_samples, self._out_ptr, MAX_PACKET_BYTES
        )
        return ctypes.string_at(self._out_ptr, _check(n, "opus_encode"))

    @property
    def in_dtx(self) -> bool:
        """Whether the last frame encoded was silence to DTX: a packet of 2 bytes or less,
        or a comfort-noise update (a normal-sized packet sent every ~400 ms in DTX)."""
        return self._get(_GET_IN_DTX) != 0

    def set_dtx(self, on: bool) -> None:
        """Switch DTX on or off between frames."""
        self._ctl(_SET_DTX, 1 if on else 0)

    def set_bitrate(self, bitrate: int) -> None:
        """Change the target bitrate (bits/s) between frames."""
        self._ctl(_SET_BITRATE, bitrate)

    def set_packet_loss_perc(self, percent: int) -> None:
        """Tell the encoder the loss it should protect against with FEC (0..100)."""
        self._ctl(_SET_PACKET_LOSS_PERC, percent)

    def _destroy(self, st: int) -> None:
        _lib.encoder_destroy(st)

    def _ctl(self, request: int, value: int) -> None:
        _check(_lib.encoder_ctl_int(self._state(), request, value), f"encoder ctl {request}")

    def _get(self, request: int) -> int:
        value = ctypes.c_int32(0)
        _check(
            _lib.encoder_ctl_get(self._state(), request, ctypes.byref(value)),
            f"encoder ctl {request}",
        )
        return int(value.value)


class Decoder(_Native):
    """A mono Opus decoder: normal decode, in-band FEC recovery and PLC.

    Every method returns an int16 **view of the decoder's own buffer**: the next call
    overwrites it, so copy (or mix) the samples before decoding again.
    """

    _kind = "decoder"

    def __init__(self, sample_rate: int = 48_000, channels: int = 1) -> None:
        super().__init__()
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}, not {sample_rate}")
        if channels != 1:
            raise ValueError("only mono is supported")
        self.sample_rate = sample_rate
        self.channels = channels
        self.max_samples = sample_rate * _MAX_FRAME_MS // 1000
        self._granule = int(sample_rate * _PLC_GRANULE_MS) // 1000
        error = ctypes.c_int(0)
        self._st = _lib.decoder_create(sample_rate, channels, ctypes.byref(error))
        if error.value != OPUS_OK or not self._st:
            raise OpusError(error.value, "opus_decoder_create")
        self._pcm: _Int16Array = np.zeros(self.max_samples, dtype=np.int16)
        self._pcm_ptr: int = self._pcm.ctypes.data

    def decode(self, packet: bytes) -> _Int16Array:
        """Decode one packet; raises :class:`OpusError` on a corrupt packet."""
        n = _lib.decode(self._state(), packet, len(packet), self._pcm_ptr, self.max_samples, 0)
        return self._pcm[: _check(n, "opus_decode")]

    def decode_fec(self, next_packet: bytes, samples: int) -> _Int16Array:
        """Recover a lost packet of ``samples`` samples from the in-band FEC of the next one.

        ``samples`` must be the lost packet's duration. If ``next_packet`` carries no FEC
        (see :func:`packet_has_fec`) libopus conceals instead. Decode ``next_packet``
        normally afterwards.
        """
        self._check_size(samples)
        n = _lib.decode(self._state(), next_packet, len(next_packet), self._pcm_ptr, samples, 1)
        return self._pcm[: _check(n, "opus_decode (FEC)")]

    def conceal(self, samples: int) -> _Int16Array:
        """Packet-loss concealment for ``samples`` samples (a multiple of 2.5 ms)."""
        self._check_size(samples)
        n = _lib.decode(self._state(), None, 0, self._pcm_ptr, samples, 0)
        return self._pcm[: _check(n, "opus_decode (PLC)")]

    def reset(self) -> None:
        """Forget the stream history (a new talker or a restarted stream)."""
        _check(_lib.decoder_ctl_none(self._state(), _RESET_STATE), "decoder reset")

    def _destroy(self, st: int) -> None:
        _lib.decoder_destroy(st)

    def _check_size(self, samples: int) -> None:
        if samples <= 0 or samples > self.max_samples or samples % self._granule:
            raise ValueError(
                f"{samples} samples: must be a positive multiple of 2.5 ms up to 120 ms"
            )


# Samples per Opus frame at 48 kHz by TOC configuration (RFC 6716 table 2): SILK-only
# 0..11 (10/20/40/60 ms), hybrid 12..15 (10/20 ms), CELT-only 16..31 (2.5/5/10/20 ms).
_SPF_48K: Final = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
_CONFIG_CELT_FIRST: Final = 16
_SILK_FRAME_48K: Final = 960  # a SILK frame is 20 ms; a 40/60 ms Opus frame holds several


def samples_per_frame(packet: bytes, sample_rate: int = 48_000) -> int:
    """Samples in each Opus frame of ``packet`` (read from its TOC byte) at ``sample_rate``."""
    if not packet:
        raise ValueError("empty packet")
    return _SPF_48K[packet[0] >> 3] * sample_rate // 48_000


def packet_has_fec(packet: bytes) -> bool:
    """Whether ``packet`` carries in-band FEC (LBRR) for the packet before it.

    Port of libopus 1.5's ``opus_packet_has_lbrr`` (absent from 1.3.1): the SILK header
    bits at the start of the first frame are the VAD flag of each 20 ms SILK frame and
    then the LBRR flag, coded with probability 1/2, so they are the top bits of the
    first payload byte. CELT-only packets never carry FEC.
    """
    if len(packet) < 2 or packet[0] >> 3 >= _CONFIG_CELT_FIRST:
        return False
    code = packet[0] & 0x03
    if code < 2:  # one frame, or two of equal size: the first starts right after the TOC
        first = packet[1]
    else:
        first_or_none = _first_frame_byte(packet)
        if first_or_none is None:
            return False
        first = first_or_none
    silk_frames = max(1, _SPF_48K[packet[0] >> 3] // _SILK_FRAME_48K)
    lbrr = (first >> (7 - silk_frames)) & 1
    if packet[0] & 0x04:  # stereo: the side channel has its own VAD and LBRR flags
        lbrr |= (first >> (6 - 2 * silk_frames)) & 1
    return bool(lbrr)


def _first_frame_byte(packet: bytes) -> int | None:
    """The first byte of the first frame of a code-2/3 packet (libopus parses it)."""
    frames = (ctypes.c_void_p * 48)()
    sizes = (ctypes.c_int16 * 48)()
    toc = ctypes.c_ubyte(0)
    offset = ctypes.c_int(0)
    buf = ctypes.create_string_buffer(packet, len(packet))
    count = _lib.packet_parse(
        buf, len(packet), ctypes.byref(toc), frames, sizes, ctypes.byref(offset)
    )
    if count <= 0 or sizes[0] <= 0 or frames[0] is None:
        return None
    return packet[frames[0] - ctypes.addressof(buf)]
