"""Tools that watch and drive a running appliance from outside, through its local CoAP
API (docs/device.md section 4): ``gochat-appliance console`` and ``status``, and the
CoAP client the test bed and benchmarks share. They are no part of the daemon: they
know its API and its vocabulary (button and LED names, blink rates), nothing else.
"""
