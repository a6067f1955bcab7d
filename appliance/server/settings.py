"""The business server's configuration (``config/server.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from appliance.protocol.topics import SERVER_USER_ID
from appliance.settings import BrokerSettings, FileSettings, Section


class StoreSettings(Section):
    """Where the rooms are stored: SQLite at ``path`` (the default), or PostgreSQL at
    ``url`` (``postgresql://user:password@host/db``), which wins over ``path`` and lets
    several server instances share the rooms."""

    path: Path = Path("/var/lib/gochat/server.db")
    url: SecretStr | None = None  # may carry a password: never logged

    @field_validator("url")
    @classmethod
    def _postgresql(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = value.get_secret_value().split(":", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value


class LogSettings(Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ServerSettings(FileSettings):
    """Everything ``gochat-server`` reads; env ``GOCHAT_<SECTION>__<KEY>`` overrides."""

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @property
    def username(self) -> str:
        """The broker account: ``gochat-server`` unless configured otherwise."""
        return self.broker.username or SERVER_USER_ID
