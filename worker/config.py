"""Configuration from the environment (docs/contracts.md#configuration), validated at start.

A bad value, or a ``VOICEALERT_*`` variable nobody reads (a typo), stops the process with
one line naming the variable. Secrets are ``SecretStr`` and URLs are shown with their
password masked, so neither reaches a log line.
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schema import normalize_phone
from worker.twiml import INTRO, Speech
from worker.webhook_urls import WebhookUrls

# Read by scripts/services.py (which runs before the package is installed), not by Settings.
_SCRIPT_VARIABLES = frozenset({"VOICEALERT_STATE_DIR", "VOICEALERT_SERVICES_FORCE_THROWAWAY"})
# False while load_settings(mapping) builds Settings: then only the mapping is read.
_READ_PROCESS_ENVIRONMENT = contextvars.ContextVar("_READ_PROCESS_ENVIRONMENT", default=True)


class ConfigError(Exception):
    """A configuration problem, phrased as the one line an operator should read."""


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _env(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(name, *aliases)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICEALERT_", extra="forbid", case_sensitive=False, populate_by_name=True
    )

    # --- docs/contracts.md#connections-and-provider --------------------------------------
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/voicealert",
        validation_alias=_env("DATABASE_URL"),
    )
    twilio_account_sid: str | None = Field(
        default=None, validation_alias=_env("TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None, validation_alias=_env("TWILIO_AUTH_TOKEN")
    )
    twilio_from_number: str | None = Field(
        default=None, validation_alias=_env("TWILIO_FROM_NUMBER")
    )
    twilio_api_base_url: str = Field(
        default="https://api.twilio.com", validation_alias=_env("TWILIO_API_BASE_URL")
    )
    provider: Literal["twilio", "simulated"] | None = Field(
        default=None, validation_alias=_env("VOICEALERT_PROVIDER")
    )
    public_url: str | None = Field(default=None, validation_alias=_env("VOICEALERT_PUBLIC_URL"))
    # The web process binds here. PORT (set by Heroku and honcho for the Procfile's web line)
    # is read when VOICEALERT_WEB_PORT is not set.
    web_host: str = Field(
        default="127.0.0.1", min_length=1, validation_alias=_env("VOICEALERT_WEB_HOST")
    )
    web_port: int = Field(
        default=8080, ge=1, le=65535, validation_alias=_env("VOICEALERT_WEB_PORT", "PORT")
    )
    # The cap catches a typo that would all but switch the limit off; 10,000 (a 0.1 ms spacing,
    # below what a job poll can observe) leaves room for accounts allowed a high call rate and
    # for measuring fan-out with no effective limit (issue 12). It was 1,000, which made the
    # limiter, not the worker, the bound of the fan-out benchmark.
    calls_per_second: float = Field(
        default=1.0, gt=0, le=10_000, validation_alias=_env("VOICEALERT_CALLS_PER_SECOND")
    )
    redis_prefix: str = Field(
        default="voicealert:", min_length=1, validation_alias=_env("VOICEALERT_REDIS_PREFIX")
    )

    # --- docs/contracts.md#api-rate-limit: requests per token (GCRA, kept in Redis) ------
    api_rate_per_s: float = Field(default=20.0, gt=0, le=100_000)
    api_rate_burst: int = Field(default=100, ge=1, le=100_000)

    # --- docs/contracts.md#worker-tuning (why arq is tuned: worker/app.py) ----------------
    consumer_name: str = Field(default_factory=_default_consumer_name, min_length=1)
    # 1,000: a batch costs about eight round trips whatever its size (read, groups, dedup
    # locks, duplicates, ack), so a storm drains ten times faster than at 100; a read
    # returns what is there, so a quiet stream is not slowed.
    ingest_batch: int = Field(default=1000, ge=1, le=1000)
    ingest_block_ms: int = Field(default=1000, ge=1, le=60_000)
    reclaim_idle_s: float = Field(default=15.0, gt=0)
    reclaim_interval_s: float = Field(default=5.0, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    stream_retention_s: float = Field(default=86400.0, ge=0)
    concurrency: int = Field(default=50, ge=1, le=1000)
    poll_delay_s: float = Field(default=0.05, gt=0, le=5)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    call_job_timeout_s: float = Field(default=15.0, gt=0)
    database_timeout_s: float = Field(default=5.0, gt=0, le=300)
    redis_timeout_s: float = Field(default=5.0, gt=0, le=300)
    sweep_interval_s: float = Field(default=30.0, gt=0, le=60)
    provider_timeout_s: float = Field(default=5.0, gt=0)
    ring_timeout_s: int = Field(default=30, ge=5, le=600)
    poll_margin_s: float = Field(default=30.0, ge=0)
    max_call_duration_s: float = Field(default=3600.0, gt=0)
    max_call_attempts: int = Field(default=8, ge=1)
    max_call_age_s: float = Field(default=1800.0, gt=0)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_cap_s: float = Field(default=60.0, gt=0)
    # --- docs/contracts.md#calls-and-webhooks -------------------------------------------
    speech_intro: str = Field(default=INTRO, min_length=1, max_length=500,
                              pattern=r"^[^\x00-\x1F\x7F]+$")
    speech_voice: str = Field(default="alice", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    speech_language: str = Field(default="en-US",
                                 pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
    merge_window_s: float = Field(default=2.0, ge=0, le=60)
    machine_detection: Literal["Enable", "DetectMessageEnd", "off"] = "Enable"
    voicemail: bool = False
    simulated_outcomes: str = "completed"
    simulated_ring_s: float = Field(default=1.0, ge=0)
    simulated_talk_s: float = Field(default=2.0, ge=0)
    health_check_interval_s: float = Field(default=10.0, gt=0)
    # /metrics of each worker replica (worker/metrics_http.py): off unless the port is set.
    # All interfaces by default: Prometheus scrapes from another host, and the page holds
    # counts only (no phone number, no secret).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not _READ_PROCESS_ENVIRONMENT.get():
            return (init_settings,)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("simulated_outcomes")
    @classmethod
    def _check_outcomes(cls, value: str) -> str:
        from worker.simulated import parse_outcomes

        parse_outcomes(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_public_url(value)

    @model_validator(mode="after")
    def _check_provider(self) -> Settings:
        if self.provider is None:
            self.provider = "twilio" if self.twilio_account_sid else "simulated"
        if self.provider == "twilio":
            missing = [
                name
                for name, value in (
                    ("TWILIO_ACCOUNT_SID", self.twilio_account_sid),
                    ("TWILIO_AUTH_TOKEN", self.twilio_auth_token),
                    ("TWILIO_FROM_NUMBER", self.twilio_from_number),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"provider twilio needs {', '.join(missing)}")
            try:
                self.twilio_from_number = normalize_phone(self.twilio_from_number or "")
            except ValueError as exc:
                raise ValueError(f"TWILIO_FROM_NUMBER {exc}") from None
        for name, url, schemes in (
            ("REDIS_URL", self.redis_url, ("redis", "rediss", "unix")),
            ("DATABASE_URL", self.database_url, ("postgresql", "postgres")),
        ):
            if urlsplit(url).scheme not in schemes:
                raise ValueError(f"{name} must start with one of {', '.join(schemes)}://")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs may carry a password (rediss://user:pass@...): show them redacted.
        for name, value in super().__repr_args__():
            if name in ("redis_url", "database_url") and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    @property
    def provider_name(self) -> Literal["twilio", "simulated"]:
        return self.provider or "simulated"

    @property
    def webhook_urls(self) -> WebhookUrls | None:
        """The URLs calls give Twilio for its webhooks, when the web process is public."""
        return WebhookUrls(self.public_url) if self.public_url else None

    @property
    def callbacks(self) -> bool:
        """Calls report their progress to the web process (Twilio and a public URL): polling
        the provider is then only a slow safety net."""
        return self.public_url is not None and self.provider_name == "twilio"

    @property
    def keypress_acknowledgement(self) -> bool:
        """Calls ask the callee to press 1, and only that (or an ack event) acknowledges an
        alert; without a public URL nobody could receive the digit, and a human answering
        stands in for an acknowledgement."""
        return self.public_url is not None

    @property
    def detection(self) -> str | None:
        """The MachineDetection mode calls ask for, or None when it is off."""
        return None if self.machine_detection == "off" else self.machine_detection

    @property
    def speech(self) -> Speech:
        return Speech(intro=self.speech_intro.strip(), voice=self.speech_voice,
                      language=self.speech_language)


def check_public_url(url: str) -> str:
    """The public base URL Twilio calls back: absolute https (http only for a loopback host,
    for local tests), no query or fragment. Returned without its trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute https:// URL, like https://alerts.example.com")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("must use https (http is allowed only for a loopback host such as "
                         "localhost or 127.0.0.1)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must be a base URL, without credentials, query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("has an invalid port") from None
    return urlunsplit(parts).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _known_variables() -> set[str]:
    names: set[str] = set()
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(f"VOICEALERT_{field_name.upper()}")
    return names | _SCRIPT_VARIABLES


def check_unknown_variables(environ: Mapping[str, str]) -> None:
    """Refuse ``VOICEALERT_*`` variables that no setting reads: a typo must not be ignored."""
    known = _known_variables()
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith("VOICEALERT_") and upper not in known:
            # Compare what follows the shared prefix, or every name looks close.
            suffixes = {k.removeprefix("VOICEALERT_"): k for k in known}
            close = difflib.get_close_matches(
                upper.removeprefix("VOICEALERT_"), suffixes, n=1, cutoff=0.7
            )
            hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")


def _variable_for(field_name: str) -> str:
    if field_name not in Settings.model_fields and field_name.upper() in _known_variables():
        return field_name.upper()  # read from the environment: the error names the alias
    info = Settings.model_fields.get(field_name)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0]).upper()
    return f"VOICEALERT_{field_name.upper()}"


def _variables_for(field_name: str) -> list[str]:
    """The variables a setting reads, in order of precedence."""
    info = Settings.model_fields[field_name]
    if isinstance(info.validation_alias, AliasChoices):
        return [str(choice).upper() for choice in info.validation_alias.choices]
    return [f"VOICEALERT_{field_name.upper()}"]


def _variable_given(field_name: str, env: Mapping[str, str]) -> str | None:
    """The variable ``env`` sets for this setting (the first in precedence), if any."""
    return next((v for v in _variables_for(field_name) if v in env), None)


def _variable_named_in(loc: str, env: Mapping[str, str]) -> str:
    """The variable an error about ``loc`` (a setting or one of its variables) is about:
    the one the operator set, so the error names what they wrote."""
    for field_name in Settings.model_fields:
        names = _variables_for(field_name)
        if loc == field_name or loc.upper() in names:
            upper_env = {k.upper() for k in env}
            return next((v for v in names if v in upper_env), names[0])
    return _variable_for(loc)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process environment), or ConfigError."""
    env = dict(os.environ if environ is None else environ)
    check_unknown_variables(env)
    try:
        if environ is None:
            return Settings()
        # Explicit mapping: pass values by name, never read the process environment.
        values = {
            field: env[var]
            for field in Settings.model_fields
            if (var := _variable_given(field, env)) is not None
        }
        # (BaseSettings.model_validate would still merge os.environ in: switch that off.)
        token = _READ_PROCESS_ENVIRONMENT.set(False)
        try:
            return Settings.model_validate(values)
        finally:
            _READ_PROCESS_ENVIRONMENT.reset(token)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ()
        where = _variable_named_in(str(loc[0]), env) if loc else "configuration"
        # The message only, never the input: the input may be a secret.
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid {where}: {message}") from None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
