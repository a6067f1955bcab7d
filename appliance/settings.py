"""Settings shared by the server and the appliance: TOML file + environment.

Every key can be overridden by ``GOCHAT_<SECTION>__<KEY>``. An invalid configuration
raises :class:`ConfigError` with one line naming the key, where its value came from
(the file, or the environment variable) and the reason; the entry points turn it into
exit status 78 (EX_CONFIG) so systemd does not restart-loop. A value written in the
file must have the type the key has (``port = "1883"`` is an error, not a port):
environment variables are text, and only they are converted.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import ssl
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
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

MADE_BY = {
    "password_file": "a broker account's password, from gochat-admin add-device or add-server",
    "tls_ca_file": "the deployment CA's certificate, from gochat-admin ca-init",
    "tls_cert_file": "this device's certificate, from gochat-admin sign-device",
    "tls_key_file": "this device's key, from gochat-appliance enroll",
}
"""Where each file the broker settings name comes from: a missing one says so (the
shipped examples name the installed paths, which exist only once the installer's
printed steps have run)."""


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
    def _file_exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and path.is_dir():
            raise ValueError(f"a folder, not a file: {path}")
        if path is not None and not path.is_file():
            made_by = MADE_BY.get(info.field_name or "")
            raise ValueError(f"no such file: {path}" + (f" ({made_by})" if made_by else ""))
        return path

    @field_validator("password_file")
    @classmethod
    def _password_readable(cls, path: Path | None) -> Path | None:
        # Read now: an empty or unreadable file would otherwise surface only as the
        # broker's "Not authorized", over and over.
        if path is not None and not _read_password(path):
            raise ValueError(f"{path} is empty: its first line must be the password")
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
        return SecretStr(_read_password(self.password_file))


def _read_password(path: Path) -> str:
    """The first line of ``path``, stripped; ValueError if it cannot be read."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"cannot read {path}: {reason}") from None
    return lines[0].strip() if lines else ""


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

        Raises :class:`ConfigError` with one line naming the key, where its value
        came from and the reason.
        """
        toml_path = Path(path) if path is not None else None
        data: dict[str, Any] = {}
        if toml_path is not None:
            data = _read_toml(toml_path)
            _check_toml_types(cls, data, (), toml_path)
        cls._toml_path = toml_path
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError(_one_line(cls, exc, toml_path, data)) from None
        finally:
            cls._toml_path = None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: a folder, not a file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _check_toml_types(
    model: type[BaseModel], data: dict[str, Any], loc: tuple[str, ...], path: Path
) -> None:
    """Refuse a value of the wrong TOML type (pydantic strict mode: ``"1883"`` is
    a string, not a port). Range and format checks follow in the full validation,
    under the environment's overrides; unknown keys are reported there too."""
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None or field.annotation is None:
            continue
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if is_section and isinstance(value, dict):
            _check_toml_types(annotation, value, (*loc, key), path)  # type: ignore[arg-type]
            continue
        try:
            # JSON keeps TOML's types (a string stays a string) and lets a path be text.
            _adapter(annotation).validate_json(json.dumps(value, default=str), strict=True)
        except ValidationError as exc:
            msg = str(exc.errors(include_url=False)[0]["msg"])
            got = f"{_toml_kind(value)} {json.dumps(value, default=str)}"
            name = ".".join((*loc, key))
            raise ConfigError(f"invalid config: {name} (in {path}): {msg}, not {got}") from None


_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


def _adapter(annotation: object) -> TypeAdapter[Any]:
    if annotation not in _ADAPTERS:
        _ADAPTERS[annotation] = TypeAdapter(annotation)  # type: ignore[arg-type]
    return _ADAPTERS[annotation]


def _toml_kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    return (
        "a table"
        if isinstance(value, dict)
        else "an array"
        if isinstance(value, list)
        else "a value"
    )


def _one_line(
    model: type[BaseModel], exc: ValidationError, toml_path: Path | None, data: dict[str, Any]
) -> str:
    errors = exc.errors(include_url=False)
    # A misspelt key first: it is why a required one is "missing".
    typos = [e for e in errors if e["type"] == "extra_forbidden"]
    err: dict[str, Any] = dict((typos or errors)[0])
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "config"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _did_you_mean(model, loc)
    return f"invalid config: {key} ({_source(loc, toml_path, data)}): {msg}"


def _did_you_mean(model: type[BaseModel], loc: tuple[str, ...]) -> str:
    """`` (did you mean device.user_id?)`` for a misspelt key, else the keys its section
    takes (a whole section misspelt: the sections)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return ""
        model = section
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {'.'.join((*loc[:-1], close[0]))}?)"
    where = f"[{'.'.join(loc[:-1])}]" if loc[:-1] else "the file"
    return f" ({where} takes: {', '.join(known)})"


def _source(loc: tuple[str, ...], toml_path: Path | None, data: dict[str, Any]) -> str:
    """Where the value at ``loc`` came from: an environment variable (they override
    the file), the file, or neither (a default, or missing)."""
    names = ["GOCHAT_" + "__".join(loc[: i + 1]).upper() for i in range(len(loc))]
    set_names = {name.upper() for name in os.environ}
    for name in reversed(names):  # the key's own variable, then its section's
        if name in set_names:
            return f"env {name}"
    node: Any = data
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None and toml_path is not None:
        return f"in {toml_path}"
    if not names:
        return "config"
    if toml_path is None:
        return f"no config file, and env {names[-1]} is not set"
    return f"not in {toml_path} nor env {names[-1]}"
