"""Stand-ins for the physical devices (GPIO pins, sound cards), for tests and --mock-hw.

Only the hardware is stood in for; everything of ours runs for real on top of it. The
stand-ins know only what they stand in for — gpiozero's pin layer (:mod:`.gpio`) and
PyAudio's surface (:mod:`.audio`) — and nothing of the appliance; the entry point
builds them and hands them in, exactly where it would hand in the real ones. Installed
as ``appliance.hw_mocks``.
"""
