"""``python -m appliance``: the same as ``gochat-appliance``."""

from appliance.cli import appliance_main

appliance_main()
