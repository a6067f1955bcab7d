"""The audio engine as the daemon's audio port: built from the ``audio`` config section."""

from __future__ import annotations

import logging

from appliance.audio.devices import PyAudioModule, load_pyaudio
from appliance.audio.engine import AudioConfig, AudioEngine
from appliance.device.audio_port import AudioHooks, AudioPort, NullAudio
from appliance.device.settings import AudioSettings

log = logging.getLogger("gochat.audio")


def engine_factory(settings: AudioSettings, hooks: AudioHooks, *, mock_hw: bool) -> AudioPort:
    """An :class:`AudioEngine` on ALSA (or on the stand-in devices with ``mock_hw``).

    Without PyAudio installed there is no sound: the daemon still runs (buttons, LEDs,
    room) and the status LED shows the audio error.
    """
    try:
        module = pyaudio_module(settings, mock_hw)
    except ImportError as exc:
        log.error("no audio: PyAudio is not installed (%s)", exc)
        hooks.device_lost("PyAudio is not installed")
        return NullAudio()
    engine = AudioEngine(config_of(settings), module, hooks)
    engine.start()
    return engine


def pyaudio_module(settings: AudioSettings, mock_hw: bool) -> PyAudioModule:
    """The real ``pyaudio`` module, or with ``mock_hw`` the stand-in the settings name."""
    if not mock_hw:
        return load_pyaudio()
    from hw_mocks.audio import mock_pyaudio  # noqa: PLC0415 - stand-ins only with --mock-hw

    return mock_pyaudio(settings.mock_input, settings.mock_output, settings.mock_unplug_file)


def config_of(settings: AudioSettings) -> AudioConfig:
    """The engine's view of the config section."""
    return AudioConfig(
        input_device=settings.input_device,
        output_device=settings.output_device,
        profile=settings.profile,
        bitrate=settings.bitrate,
        dtx=settings.dtx,
        jitter_min_packets=settings.jitter_min_packets,
        jitter_max_packets=settings.jitter_max_packets,
        jitter_cap_ms=settings.jitter_cap_ms,
    )
