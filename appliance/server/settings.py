"""The business server's configuration (``config/server.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from appliance.protocol.topics import SERVER_USER_ID
from appliance.settings import BrokerSettings, FileSettings, Section


class StoreSettings(Section):
    """Where the SQLite database lives."""

    path: Path = Path("/var/lib/gochat/server.db")


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
