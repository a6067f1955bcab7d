"""Stand-ins for the physical devices (GPIO pins, sound cards), for tests and --mock-hw.

Only the hardware is mocked; everything of ours runs for real on top of it.
"""
