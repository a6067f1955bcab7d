"""The daemon's sound: the audio engine, built from the ``[audio]`` settings on the
PyAudio module the entry point chose (ALSA's, or the stand-in sound card's).

The settings section *is* the engine's :class:`~appliance.audio.config.AudioConfig`,
so nothing is mapped here: this module only decides between the engine and silence.
"""

from __future__ import annotations

import logging

from appliance.audio.config import AudioConfig
from appliance.audio.devices import PyAudioModule
from appliance.audio.engine import AudioEngine, capture_chain
from appliance.audio.port import AudioHooks, AudioPort, NullAudio

log = logging.getLogger("gochat.audio")


def open_sound(config: AudioConfig, pyaudio: PyAudioModule | None, hooks: AudioHooks) -> AudioPort:
    """A started :class:`AudioEngine` on ``pyaudio``; without PyAudio, :class:`NullAudio`.

    The daemon still runs without sound (buttons, LEDs, room), and the status LED shows
    the audio error.
    """
    if pyaudio is None:
        log.error("no audio: PyAudio is not installed")
        hooks.device_lost("PyAudio is not installed")
        return NullAudio()
    engine = AudioEngine(config, pyaudio, hooks, chain=capture_chain(config))
    engine.start()
    return engine
