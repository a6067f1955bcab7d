"""The wire contract shared by the business server and every client.

No other module defines a wire shape: topics live in :mod:`.topics`, JSON shapes in
:mod:`.models` and the binary audio frame in :mod:`.frames`.
"""

from appliance.protocol import frames, models, topics

__all__ = ["frames", "models", "topics"]
