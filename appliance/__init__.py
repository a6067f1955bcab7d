"""GoChat Appliance: live voice rooms over MQTT 5.

Subpackages: ``protocol`` (the wire contract), ``server`` (the business server),
``device`` (the appliance daemon) and ``audio`` (Opus voice through ALSA).
"""

__version__ = "0.1.0"
