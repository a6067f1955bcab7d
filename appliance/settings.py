"""Settings shared by the server and the appliance: TOML file + environment.

Every key can be overridden by ``GOCHAT_<SECTION>__<KEY>``. An invalid configuration
raises :class:`ConfigError` with one line naming the key and the reason; the entry
points turn it into exit status 78 (EX_CONFIG) so systemd does not restart-loop.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

EX_CONFIG = 78


class ConfigError(Exception):
    """An invalid configuration; ``str()`` is one line naming the key."""


class Section(BaseModel):
    """A config section: unknown keys are typos, and typos are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PLAIN_PORT = 1883
CERT_PORT = 8883  # TLS, the client certificate is the login
TLS_PORT = 8884  # TLS, username and password


class BrokerSettings(Section):
    """How to reach the MQTT broker.

    ``tls_ca_file`` turns TLS on (the broker is verified against it, host name
    included); ``tls_cert_file`` + ``tls_key_file`` log in with a client certificate
    instead of a password. The port defaults to the shipped broker's listener for
    that choice: 1883 plain, 8883 client certificate, 8884 password over TLS.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=PLAIN_PORT, ge=1, le=65535)
    username: str = Field(default="", max_length=64)
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    keepalive_s: int = Field(default=15, ge=5, le=600)

    @field_validator("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("port") is None and data.get("tls_ca_file"):
            data = {**data, "port": CERT_PORT if data.get("tls_cert_file") else TLS_PORT}
        return data

    @model_validator(mode="after")
    def _tls_complete(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a client certificate needs tls_ca_file (TLS) too")
        if self.tls_ca_file is None and not _is_loopback(self.host):
            # docs/protocol.md 1.2: no credentials in plain text over a network.
            raise ValueError(
                f"host {self.host!r} without TLS: plain MQTT is for the loopback only"
                " (set tls_ca_file)"
            )
        if self.tls_ca_file is not None:
            self.tls_context()  # unreadable or mismatched files: an error now, not later
        return self

    def tls_context(self) -> ssl.SSLContext:
        """A client context verifying the broker against ``tls_ca_file`` (host name
        included), with the client certificate if configured. ValueError if unusable."""
        if self.tls_ca_file is None:
            raise ValueError("no tls_ca_file")
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca_file))
            if self.tls_cert_file is not None and self.tls_key_file is not None:
                context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS files unusable: {' '.join(str(exc).split())}") from None
        return context

    @property
    def tls(self) -> bool:
        """Whether the connection is TLS."""
        return self.tls_ca_file is not None

    def password(self) -> SecretStr | None:
        """The password, read from ``password_file`` (first line, stripped)."""
        if self.password_file is None:
            return None
        lines = self.password_file.read_text(encoding="utf-8").splitlines()
        return SecretStr(lines[0].strip() if lines else "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that is not "localhost" may lead anywhere


class FileSettings(BaseSettings):
    """Base of a process's settings: a TOML file under environment overrides."""

    model_config = SettingsConfigDict(
        env_prefix="GOCHAT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )
    _toml_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

    @classmethod
    def load(cls, path: Path | str | None) -> Self:
        """Read ``path`` (may be None: defaults and environment only).

        Raises :class:`ConfigError` with one line naming the key and the reason.
        """
        toml_path = Path(path) if path is not None else None
        if toml_path is not None:
            _check_toml(toml_path)
        cls._toml_path = toml_path
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None
        finally:
            cls._toml_path = None


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _one_line(exc: ValidationError) -> str:
    err: dict[str, Any] = dict(exc.errors(include_url=False)[0])
    key = ".".join(str(p) for p in err["loc"]) or "config"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    env = "GOCHAT_" + "__".join(str(p).upper() for p in err["loc"])
    return f"invalid config: {key} (env {env}): {msg}"
