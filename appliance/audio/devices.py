"""ALSA devices through PyAudio: finding them by name, listing them, loading PyAudio.

The ``pyaudio`` module is loaded lazily and can be swapped for the stand-in of
:mod:`hw_mocks.audio` (``--mock-hw``): everything here takes the module as a value.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Side = Literal["input", "output"]
DEFAULT_DEVICE = "default"


class PyAudioModule(Protocol):
    """The part of the ``pyaudio`` module the appliance uses."""

    paInt16: int  # noqa: N815 - PyAudio's name
    paContinue: int  # noqa: N815
    paComplete: int  # noqa: N815
    paInputOverflow: int  # noqa: N815 - callback status flags
    paOutputUnderflow: int  # noqa: N815

    def PyAudio(self) -> Any: ...  # noqa: N802 - PyAudio's name


class DeviceNotFoundError(LookupError):
    """No ALSA device of that name (with channels on that side)."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device as PortAudio lists it."""

    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float

    def has(self, side: Side) -> bool:
        """Whether the device can capture (``input``) or play (``output``)."""
        channels = self.max_input_channels if side == "input" else self.max_output_channels
        return channels > 0


def load_pyaudio() -> PyAudioModule:
    """The ``pyaudio`` module (ImportError if PyAudio is not installed)."""
    real: PyAudioModule = importlib.import_module("pyaudio")
    return real


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence ALSA's chatter on stderr while PortAudio probes every PCM."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            sys.stderr.flush()
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def list_devices(pa: Any) -> list[DeviceInfo]:
    """Every device of a ``PyAudio()`` instance."""
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        devices.append(
            DeviceInfo(
                index=index,
                name=str(info.get("name", "")),
                max_input_channels=int(info.get("maxInputChannels", 0)),
                max_output_channels=int(info.get("maxOutputChannels", 0)),
                default_sample_rate=float(info.get("defaultSampleRate", 0.0)),
            )
        )
    return devices


def find_device(pa: Any, name: str, side: Side) -> int | None:
    """The index of the device called ``name`` for ``side`` (None: PortAudio's default).

    An exact name wins; otherwise a unique device whose name contains ``name`` (ALSA
    names such as ``USB Audio Device: - (hw:1,0)`` are long). Raises
    :class:`DeviceNotFoundError`.
    """
    if name in ("", DEFAULT_DEVICE):
        return None
    candidates = [d for d in list_devices(pa) if d.has(side)]
    for device in candidates:
        if device.name == name:
            return device.index
    partial = [d for d in candidates if name in d.name]
    if len(partial) == 1:
        return partial[0].index
    known = ", ".join(repr(d.name) for d in candidates) or "none"
    if partial:
        raise DeviceNotFoundError(f"{side} device {name!r} is ambiguous (known: {known})")
    raise DeviceNotFoundError(f"no {side} device {name!r} (known: {known})")
