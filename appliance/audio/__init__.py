"""Voice: the Opus codec (ctypes), the jitter buffer, the mixer and small signal tools.

Everything here is pure and hardware-free; PyAudio (real, or ``hw_mocks.audio``) is
driven by the capture/playback threads that use these parts.
"""
