"""The services' settings from the environment: ``RF_S3_*`` (storage) and ``RF_PG_*``
(TimescaleDB), read and validated by pydantic-settings.

Three places hold them: the process environment, an env file (``scripts/services.sh``
writes ``.services/env`` as ``export KEY=value`` lines) and a plain mapping (tests, the
migration command). :meth:`ServiceSettings.load` reads the first two, the file winning: a
shell that sourced an older ``.services/env`` would otherwise save blocks with that run's
ports and passwords. :meth:`ServiceSettings.from_mapping` reads only the mapping given.

Errors name the variable: a missing one raises :class:`MissingSetting` (a ``KeyError``),
a malformed one :class:`InvalidSetting` (a ``ValueError``) saying what is allowed, e.g.
``RF_PG_PORT='54x32': must be a TCP port number, 1-65535``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from blocks.errors import RfAcquisitionError


class SettingError(RfAcquisitionError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


class MissingSetting(SettingError, KeyError):
    """Required variables are not set (or are empty)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidSetting(SettingError):
    """A variable is set to a value outside what it allows."""


def _port_text(value: Any) -> Any:
    # ASCII digits only: int() would take "５４" (full-width) or "5432.0" silently.
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise ValueError("not a number")
        return int(text)
    return value


Port = Annotated[
    int,
    BeforeValidator(_port_text),
    Field(ge=1, le=65535, description="a TCP port number, 1-65535"),
]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class _MappingSource(PydanticBaseSettingsSource):
    """Values from one mapping of variable names, nothing else (no process environment)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        var = self.settings_cls.variable(field_name)  # type: ignore[attr-defined]
        return self.env.get(var), var, False

    def __call__(self) -> dict[str, Any]:
        out = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value not in (None, ""):  # empty counts as not set
                out[name] = value
        return out


class ServiceSettings(BaseSettings):
    """Common behaviour of the settings groups: prefix, sources, errors naming variables."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)
    prefix: ClassVar[str] = ""
    _mapping: ClassVar[Mapping[str, str] | None] = None

    @classmethod
    def variable(cls, field_name: str) -> str:
        """The environment variable of a field, e.g. ``RF_PG_PORT`` for ``port``."""
        return f"{cls.model_config.get('env_prefix', '')}{field_name}".upper()

    @classmethod
    def required_variables(cls) -> tuple[str, ...]:
        return tuple(cls.variable(n) for n, f in cls.model_fields.items() if f.is_required())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if cls._mapping is not None:
            return (_MappingSource(settings_cls, cls._mapping),)
        return (init_settings, dotenv_settings, env_settings)  # the env file wins

    @classmethod
    def load(cls, env_file: str | Path | None = None) -> Self:
        """From ``env_file`` (when given), then the process environment."""
        return cls._validated(lambda: cls(_env_file=env_file))

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Self:
        """From ``env`` only (e.g. ``dict(os.environ)`` or a test's variables)."""
        only = type(cls.__name__, (cls,), {"_mapping": dict(env), "__module__": __name__})
        return cls._validated(only)

    @classmethod
    def _validated(cls, build: Any) -> Self:
        try:
            return build()
        except ValidationError as exc:
            raise cls._error(exc) from None

    @classmethod
    def _error(cls, exc: ValidationError) -> SettingError:
        errors = exc.errors()
        missing = [
            cls.variable(str(e["loc"][0])) for e in errors if e["type"] == "missing" and e["loc"]
        ]
        if missing:
            return MissingSetting(f"missing environment variables: {', '.join(missing)}")
        first = errors[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        field = cls.model_fields.get(name)
        allowed = (field.description if field else None) or first["msg"]
        return InvalidSetting(f"{cls.variable(name)}={first.get('input')!r}: must be {allowed}")


class S3Settings(ServiceSettings):
    """``RF_S3_*``: an S3-compatible endpoint (MinIO, SeaweedFS) and the bucket."""

    model_config = SettingsConfigDict(env_prefix="RF_S3_", extra="ignore", env_ignore_empty=True)

    endpoint: str = Field(description="the endpoint URL, e.g. http://127.0.0.1:9000")
    access_key: str = Field(description="the access key id")
    secret_key: SecretStr = Field(description="the secret key")
    bucket: str = Field(description="a bucket name")
    region: str = Field(default="us-east-1", description="a region name")
    folder: str = Field(default="", description="a folder inside the bucket")


class PostgresSettings(ServiceSettings):
    """``RF_PG_*``: PostgreSQL with TimescaleDB (password and sslmode optional)."""

    model_config = SettingsConfigDict(env_prefix="RF_PG_", extra="ignore", env_ignore_empty=True)

    host: str = Field(description="a host name or address")
    port: Port
    database: str = Field(description="a database name")
    user: str = Field(description="a role name")
    password: SecretStr | None = Field(default=None, description="the role's password")
    sslmode: SslMode = Field(
        default="prefer",
        description="one of disable, allow, prefer, require, verify-ca, verify-full",
    )
