"""``python -m appliance.server``."""

import sys

from appliance.server.main import main

sys.exit(main())
