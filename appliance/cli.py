"""Console entry points (see ``[project.scripts]`` in pyproject.toml)."""

from __future__ import annotations

import sys


def server_main() -> None:
    """``gochat-server``: the business server."""
    from appliance.server.main import main

    sys.exit(main())


def admin_main() -> None:
    """``gochat-admin``: broker credentials for devices and the server."""
    from appliance.deploy.admin import main

    sys.exit(main(sys.argv[1:]))


def appliance_main() -> None:
    """``gochat-appliance``: the appliance daemon, config check and console."""
    from appliance.device.main import main

    sys.exit(main(sys.argv[1:]))


def page_main() -> None:
    """``gochat-page``: the browser page on the loopback (development)."""
    from appliance.pageserver import main

    sys.exit(main(sys.argv[1:]))
