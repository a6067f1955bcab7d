"""The appliance's configuration (``config/appliance.toml``; docs/device.md "Configuration").

One TOML file, default :data:`DEFAULT_CONFIG_PATH`, every key overridable by
``GOCHAT_<SECTION>__<KEY>`` (e.g. ``GOCHAT_DEVICE__USER_ID``, ``GOCHAT_COAP__PORT``).
:meth:`ApplianceSettings.load` raises :class:`~appliance.settings.ConfigError` with one
line naming the key and the reason; the entry point turns it into exit status 78.

Identity: the device's ``user_id`` is its broker username and its MQTT client id
(docs/protocol.md section 1), so ``broker.username`` may be left empty (it then defaults to
the user id) but must not name anyone else.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import SettingsConfigDict

from appliance.audio.config import AudioConfig
from appliance.deploy import pki
from appliance.protocol.models import NAME_MAX
from appliance.protocol.topics import ROOM_ID_RE, is_server_account, is_user_id
from appliance.settings import BrokerSettings, FileSettings, Section

DEFAULT_CONFIG_PATH = Path("/etc/gochat/appliance.toml")
SUBJECT_MAX = 64
BCM_MAX = 27
MOCK_TONE_RE = re.compile(r"tone:\d+(\.\d+)?(:(0(\.\d+)?|1(\.0+)?))?")
_NUMBER = r"-?\d+(\.\d+)?"
_ECHO_KEY = rf"(delay_ms|gain_db|rt60_ms)={_NUMBER}"
MOCK_ECHO_RE = re.compile(rf"off|{_ECHO_KEY}(,{_ECHO_KEY}){{2}}(,clip=[01])?")
"""The shape of ``audio.mock_echo``."""
MOCK_ECHO_RANGES = {"delay_ms": (0.0, 1000.0), "rt60_ms": (0.0, 2000.0), "gain_db": (-200.0, 20.0)}
"""Bounds of its values (as the stand-in room, ``hw_mocks.room``, checks them)."""
MOCK_NOISE_RE = re.compile(r"off|(pink|white|hum):(-\d+(\.\d+)?|0(\.0+)?)")
"""``audio.mock_noise``: ``off`` or ``KIND:L`` with L <= 0 dBFS."""


class DeviceSettings(Section):
    """Who this appliance is."""

    user_id: str
    """Its GoChat user id, which is also its broker username and MQTT client id."""
    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    """The display name sent with ``login`` (default: the user id, cut to 32 chars)."""

    @field_validator("user_id")
    @classmethod
    def _valid_user_id(cls, value: str) -> str:
        if not is_user_id(value):
            raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if is_server_account(value):
            raise ValueError(f"{value!r} is a business server's account")
        return value

    @property
    def display_name(self) -> str:
        """The name to log in with."""
        return self.name if self.name is not None else self.user_id[:NAME_MAX]


class RoomSettings(Section):
    """What to do at start: host a room, join one, or wait for ``PUT /room``."""

    mode: Literal["host", "join", "idle"] = "idle"
    subject: str = Field(default="", max_length=SUBJECT_MAX)
    """``host``: the new room's subject (default: "<name>'s room")."""
    room_id: str = ""
    """``join``: the room to join; empty joins the first open room (oldest first)."""
    auto_accept_when_hand_raised: bool = True
    """Accept an invitation at once when it arrives while our hand is raised."""

    @field_validator("room_id")
    @classmethod
    def _valid_room_id(cls, value: str) -> str:
        if value and ROOM_ID_RE.fullmatch(value) is None:
            raise ValueError("must be empty or 1-32 characters of A-Z a-z 0-9 _ -")
        return value


class GpioSettings(Section):
    """BCM pin numbers (docs/device.md defaults), debounce and hold time."""

    button_raise_hand: int = Field(default=17, ge=0, le=BCM_MAX)
    button_mute: int = Field(default=27, ge=0, le=BCM_MAX)
    button_accept: int = Field(default=22, ge=0, le=BCM_MAX)
    led_status: int = Field(default=5, ge=0, le=BCM_MAX)
    led_hand: int = Field(default=6, ge=0, le=BCM_MAX)
    led_invite: int = Field(default=13, ge=0, le=BCM_MAX)
    led_mic: int = Field(default=19, ge=0, le=BCM_MAX)
    debounce_ms: int = Field(default=30, ge=0, le=500)
    long_press_ms: int = Field(default=1500, ge=100, le=10_000)

    def pins(self) -> dict[str, int]:
        """Every pin by key name."""
        return {k: v for k, v in self.model_dump().items() if k.startswith(("button_", "led_"))}


class AudioSettings(AudioConfig):
    """The ``[audio]`` section: the audio engine's own configuration
    (:class:`~appliance.audio.config.AudioConfig`) plus the stand-in sound card's keys,
    which only ``--mock-hw`` reads."""

    mock_input: str = "silence"
    """With ``--mock-hw``: what the microphone hears: ``silence``, ``tone:440``, a WAV
    file (played once) or ``loop:FILE.wav``."""
    mock_output: Path | None = None
    """With ``--mock-hw``: a WAV file recording what the speaker plays (None: discard)."""
    mock_output_keep_s: float | None = Field(default=None, gt=0)
    """With ``--mock-hw`` and ``mock_output``: bound the recording, keeping at least the
    last this many seconds in ``NAME.wav`` and ``NAME.1.wav`` (None: keep everything)."""
    mock_unplug_file: Path | None = None
    """With ``--mock-hw``: while this file exists the sound card is unplugged."""
    mock_echo: str = "off"
    """With ``--mock-hw``: the stand-in room's echo path from speaker to microphone,
    ``off`` or ``delay_ms=D,gain_db=G,rt60_ms=R`` (all three keys, any order)."""
    mock_noise: str = "off"
    """With ``--mock-hw``: noise the stand-in microphone hears, ``off``, ``pink:L``,
    ``white:L`` or ``hum:L`` (RMS level L dBFS, at most 0)."""

    @field_validator("mock_echo")
    @classmethod
    def _valid_mock_echo(cls, value: str) -> str:
        value = value.strip()
        if MOCK_ECHO_RE.fullmatch(value) is None:
            raise ValueError("must be off or delay_ms=D,gain_db=G,rt60_ms=R")
        if value == "off":
            return value
        fields = dict(part.partition("=")[::2] for part in value.split(","))
        if len(fields) != len(value.split(",")):
            raise ValueError("each of delay_ms, gain_db and rt60_ms must be given once")
        for key, (lo, hi) in MOCK_ECHO_RANGES.items():
            if not lo <= float(fields[key]) <= hi:
                raise ValueError(f"{key} must be {lo:g}..{hi:g}")
        return value

    @field_validator("mock_noise")
    @classmethod
    def _valid_mock_noise(cls, value: str) -> str:
        value = value.strip()
        if MOCK_NOISE_RE.fullmatch(value) is None:
            raise ValueError("must be off, pink:L, white:L or hum:L (L in dBFS, at most 0)")
        return value

    @field_validator("mock_input")
    @classmethod
    def _valid_mock_input(cls, value: str) -> str:
        if value == "silence" or MOCK_TONE_RE.fullmatch(value):
            return value
        path = Path(value.removeprefix("loop:"))
        if path.suffix.lower() != ".wav":
            raise ValueError("must be silence, tone:HZ[:AMPLITUDE], FILE.wav or loop:FILE.wav")
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return value


class CoapSettings(Section):
    """The local API: UDP address and port (docs/device.md: 127.0.0.1:5683)."""

    bind: str = "127.0.0.1"
    port: int = Field(default=5683, ge=1, le=65535)

    @field_validator("bind")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IPv4 or IPv6 address, e.g. 127.0.0.1") from None
        return value


def _device_default() -> Any:
    # An empty section, validated like a given one: a missing [device] then reports
    # "device.user_id: Field required" rather than "device: Field required".
    return {}


class ApplianceSettings(FileSettings):
    """Everything ``gochat-appliance run`` reads."""

    device: DeviceSettings = Field(default_factory=_device_default, validate_default=True)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    room: RoomSettings = Field(default_factory=RoomSettings)
    gpio: GpioSettings = Field(default_factory=GpioSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    coap: CoapSettings = Field(default_factory=CoapSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        username = self.broker.username
        if username and username != self.device.user_id:
            raise _error(
                ("broker", "username"),
                username,
                f"must be empty or equal device.user_id ({self.device.user_id!r}):"
                " the broker username, MQTT client id and user id are one",
            )
        if self.broker.tls_cert_file is not None:
            _check_certificate_cn(self.broker.tls_cert_file, self.device.user_id)
        _check_distinct_pins(self.gpio)
        if self.gpio.long_press_ms <= self.gpio.debounce_ms:
            raise _error(
                ("gpio", "long_press_ms"), self.gpio.long_press_ms, "must exceed gpio.debounce_ms"
            )
        return self

    @property
    def username(self) -> str:
        """The broker username: the user id."""
        return self.device.user_id

    @property
    def subject(self) -> str:
        """The subject of the room this device hosts in ``host`` mode."""
        return self.room.subject or f"{self.device.display_name}'s room"[:SUBJECT_MAX]


def _check_certificate_cn(path: Path, user_id: str) -> None:
    """The broker takes the certificate's CN as our username: it must be our user id,
    or every request would be refused (the ACL ties topics to the username)."""
    loc = ("broker", "tls_cert_file")
    try:
        name = pki.device_name_of(pki.load_certificate(path))
    except ValueError as exc:  # PkiError is one, and so is a file that is no PEM
        raise _error(loc, str(path), f"not a usable certificate: {exc}") from None
    if name != user_id:
        raise _error(
            loc,
            str(path),
            f"the certificate is for {name!r}, not device.user_id {user_id!r}"
            " (the broker would log us in as its CN)",
        )


def _check_distinct_pins(gpio: GpioSettings) -> None:
    seen: dict[int, str] = {}
    for key, pin in gpio.pins().items():
        if pin in seen:
            raise _error(("gpio", key), pin, f"BCM pin {pin} is already gpio.{seen[pin]}")
        seen[pin] = key


def _error(loc: tuple[str, ...], value: object, message: str) -> ValidationError:
    """A validation error at ``loc`` (so the one-line report names the right key)."""
    detail = InitErrorDetails(type=PydanticCustomError("invalid", message), loc=loc, input=value)
    return ValidationError.from_exception_data("ApplianceSettings", [detail])


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ApplianceSettings",
    "AudioSettings",
    "CoapSettings",
    "DeviceSettings",
    "GpioSettings",
    "RoomSettings",
]


class AudioOnlySettings(FileSettings):
    """Only the ``[audio]`` section of an appliance config (with ``GOCHAT_AUDIO__*``):
    what ``test-audio`` and ``audio-devices`` read. The other sections, credentials
    among them, are neither read nor checked: a sound check needs no broker account."""

    model_config = SettingsConfigDict(extra="ignore")
    audio: AudioSettings = Field(default_factory=AudioSettings)
