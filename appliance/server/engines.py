"""Which store a configuration names: :func:`open_store`."""

from __future__ import annotations

from appliance.server.settings import StoreSettings
from appliance.server.sqlite_store import SqliteStore
from appliance.server.store import Store, StoreError


def open_store(settings: StoreSettings, instance: str) -> Store:
    """The store ``settings`` name: PostgreSQL if ``url`` is set, else SQLite at
    ``path``. ``instance``: this server's name (its broker account), the lease holder's
    name in a shared store."""
    if settings.url is not None:
        try:
            from appliance.server.pg_store import PostgresStore  # noqa: PLC0415 (optional)
        except ImportError:
            raise StoreError(
                "store.url needs psycopg: pip install 'gochat-appliance[postgres]'"
            ) from None
        return PostgresStore(settings.url.get_secret_value(), instance)
    return SqliteStore(settings.path)
