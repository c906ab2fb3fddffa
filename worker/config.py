"""Settings, read from the environment once per process (never at import).

Field names equal the environment variable names. An invalid value stops the process with a
:class:`~worker.errors.ConfigurationError` that names the variable and never echoes a value.
"""

from __future__ import annotations

import functools
import ipaddress
import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker import errors, redis_client

RATE_CATEGORIES = ("light", "medium", "heavy")

# Zoom's per-second limits by plan (account level, shared by every app on the account).
PLAN_RATE_LIMITS: dict[str, dict[str, int]] = {
    "free": {"light": 4, "medium": 2, "heavy": 1},
    "pro": {"light": 30, "medium": 20, "heavy": 10},
    "business": {"light": 80, "medium": 60, "heavy": 40},
}

# What a lease keeps beyond the longest call after the claim check (recording the outcome).
LEASE_MARGIN_S = 1.0


class Settings(BaseSettings):
    """Every setting of the service, typed; see the README's configuration table."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, env_ignore_empty=True
    )

    DATABASE_URL: str = "postgresql+psycopg://postgres@127.0.0.1:5432/zoom_worker"
    # Bounds on every database conversation: a dead or blackholed server fails fast, a stuck
    # statement or a transaction left open by a frozen process does not hold locks for ever.
    DATABASE_CONNECT_TIMEOUT: int = Field(10, ge=1, le=300)
    DATABASE_STATEMENT_TIMEOUT: float = Field(30.0, gt=0, le=3600)
    DATABASE_IDLE_IN_TRANSACTION_TIMEOUT: float = Field(60.0, gt=0, le=3600)
    CELERY_BROKER_URL: str = "redis://127.0.0.1:6379/0"
    # The rate governor keeps its counters in Redis: by default the broker's server when the
    # broker is Redis; required when it is RabbitMQ (see broker_kind). Behind Sentinel:
    # redis+sentinel://host:port,host:port/master/db (see worker.redis_client).
    REDIS_URL: str | None = None
    # Sentinel's name for the master, for Celery's sentinel:// broker URL (its transport's
    # master_name) and a sentinel:// REDIS_URL.
    REDIS_SENTINEL_MASTER: str | None = None

    ZOOM_ACCOUNT_ID: str | None = None
    ZOOM_CLIENT_ID: str | None = None
    ZOOM_CLIENT_SECRET: SecretStr | None = None
    ZOOM_CLIENT_SECRET_FILE: Path | None = None
    ZOOM_API_URL: str = "https://api.zoom.us/v2"
    ZOOM_OAUTH_URL: str = "https://zoom.us/oauth/token"
    TOKEN_ENCRYPTION_KEY: SecretStr | None = None
    # The same key in a file (re-read at each use); required, like the key, once a secret is
    # kept in the database (the credential registry: worker.credentials).
    TOKEN_ENCRYPTION_KEY_FILE: Path | None = None

    ZOOM_TOKEN_REFRESH_MARGIN: int = Field(60, ge=0, le=3000)
    ZOOM_TOKEN_LOCK_TIMEOUT: float = Field(15.0, gt=0, le=300)
    ZOOM_TOKEN_REQUEST_TIMEOUT: float = Field(10.0, gt=0, le=120)
    ZOOM_TOKEN_BUDGET_PER_HOUR: int = Field(20, ge=1)
    # After a failed token request the fleet's next one waits: MIN seconds, doubling, at most MAX.
    ZOOM_TOKEN_BACKOFF_MIN: float = Field(1.0, gt=0, le=60)
    ZOOM_TOKEN_BACKOFF_MAX: float = Field(30.0, gt=0, le=900)
    ZOOM_HTTP_TIMEOUT: float = Field(30.0, gt=0, le=300)

    ZOOM_PLAN: Literal["free", "pro", "business"] = "pro"
    ZOOM_RATE_LIMITS: str | None = None
    # Zoom's specs disagree on the create endpoint (Light in 2026, Medium in 2023 and the forum):
    # the stricter one is the default.
    ZOOM_CREATE_CATEGORY: Literal["light", "medium", "heavy"] = "medium"
    ZOOM_DAILY_CREATE_LIMIT: int = Field(100, ge=1)
    # Zoom: "You can update a meeting for a maximum of 100 times within a 24-hour period."
    ZOOM_MEETING_UPDATE_LIMIT: int = Field(100, ge=1)
    RATE_GOVERNOR: bool = True
    # The governor plans for this share of each per-second limit (below 1: room for other
    # clients of the same account).
    RATE_HEADROOM: float = Field(1.0, gt=0, le=1)
    # How much the time from permit to Zoom varies between calls (seconds): the governor
    # paces each limit over 1 + this, so no second at Zoom, fixed or sliding, sees more.
    RATE_ARRIVAL_SPREAD_S: float = Field(0.04, ge=0, lt=0.5)

    JOB_LEASE_SECONDS: int = Field(300, ge=5)
    JOB_MAX_ATTEMPTS: int = Field(6, ge=1, le=100)
    JOB_MAX_DELIVERIES: int = Field(10, ge=1, le=1000)
    # Transient failures (Zoom or our infrastructure unwell) give up only after this many
    # seconds counted from the first failed attempt; time held (rate limits, credentials)
    # does not count. JOB_MAX_ATTEMPTS then bounds only unexpected errors.
    JOB_GIVE_UP_AFTER: float = Field(86400.0, gt=0)
    RETRY_BACKOFF_BASE: float = Field(2.0, gt=0)
    RETRY_BACKOFF_MAX: float = Field(300.0, gt=0)
    CELERY_VISIBILITY_TIMEOUT: int = Field(3600, ge=60)
    SWEEP_INTERVAL_SECONDS: float = Field(30.0, gt=0)
    # The outbox relay (worker.relay) is woken by NOTIFY at each commit; it also scans this
    # often, as a safety net, and a worker whose relay stands by tries to take over this often.
    OUTBOX_SCAN_SECONDS: float = Field(10.0, gt=0)
    CLEANUP_INTERVAL_MINUTES: float = Field(15.0, gt=0)
    STALE_AFTER_MINUTES: float = Field(60.0, ge=0)
    METRICS_PORT: int = Field(9808, ge=0, le=65535)
    FLOWER_BASIC_AUTH: SecretStr | None = None
    # Task events for Flower (received, started, succeeded, failed; sent by the producers):
    # false saves their Redis traffic on a fleet nobody watches in Flower.
    CELERY_TASK_EVENTS: bool = True

    # -- RabbitMQ as broker, operators' logs (issue 16) --
    # RabbitMQ closes a channel holding a delivered message unacknowledged longer than its
    # consumer_timeout (30 minutes by default): set this to the server's value, in seconds.
    RABBITMQ_CONSUMER_TIMEOUT: int = Field(1800, ge=60)
    LOG_FORMAT: Literal["text", "json"] = "text"

    # -- the outage breaker (issue 10) --
    # ZOOM_OUTAGE_THRESHOLD Zoom faults (5xx, no answer) within ZOOM_OUTAGE_WINDOW seconds,
    # and more of them than good answers, hold every job until a probe finds Zoom back;
    # 0 turns the breaker off.
    ZOOM_OUTAGE_THRESHOLD: int = Field(5, ge=0, le=10000)
    ZOOM_OUTAGE_WINDOW: float = Field(10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _check_broker(self) -> Settings:
        # Raised as is (not a ValueError), so it names the variable, not "settings".
        if broker_kind(self.CELERY_BROKER_URL) is None:
            raise errors.ConfigurationError(
                "CELERY_BROKER_URL", "must be a redis://, rediss://, sentinel:// or amqp:// URL"
            )
        if self.broker_behind_sentinel and not self.REDIS_SENTINEL_MASTER:
            raise errors.ConfigurationError(
                "REDIS_SENTINEL_MASTER",
                "is not set: CELERY_BROKER_URL names Sentinels (sentinel://), which need "
                "the master's name",
            )
        if self.REDIS_URL is None and self.broker_kind == "rabbitmq":
            raise errors.ConfigurationError(
                "REDIS_URL",
                "is not set: the broker is RabbitMQ and the rate governor keeps its "
                "counters in Redis",
            )
        if (
            self.broker_kind == "rabbitmq"
            and self.JOB_LEASE_SECONDS >= self.RABBITMQ_CONSUMER_TIMEOUT
        ):
            raise errors.ConfigurationError(
                "JOB_LEASE_SECONDS",
                "must be below RABBITMQ_CONSUMER_TIMEOUT: a job's message stays "
                "unacknowledged while it runs, up to its lease",
            )
        return self

    @model_validator(mode="after")
    def _check_redis_url(self) -> Settings:
        # Raised as is (not a ValueError), so it names the variable, not "settings".
        if self.REDIS_URL is None:
            return self
        if _scheme(self.REDIS_URL) == redis_client.CELERY_SENTINEL_SCHEME:
            if not self.REDIS_SENTINEL_MASTER:
                raise errors.ConfigurationError(
                    "REDIS_URL",
                    "names Sentinels (sentinel://) but REDIS_SENTINEL_MASTER is not set",
                )
            return self
        try:
            redis_client.check(self.REDIS_URL)
        except ValueError as exc:
            raise errors.ConfigurationError("REDIS_URL", str(exc)) from None
        return self

    @property
    def broker_behind_sentinel(self) -> bool:
        """True when ``CELERY_BROKER_URL`` is Celery's ``sentinel://`` list."""
        return _scheme(self.CELERY_BROKER_URL) == redis_client.CELERY_SENTINEL_SCHEME

    @property
    def broker_kind(self) -> BrokerKind:
        """Which broker ``CELERY_BROKER_URL`` names (any other scheme is refused at load,
        after the validators that run before that check saw "redis")."""
        return broker_kind(self.CELERY_BROKER_URL) or "redis"

    @property
    def broker_hold_limit_s(self) -> int:
        """How long the broker lets a worker hold a delivered, unacknowledged message (a
        countdown waits on the worker unacknowledged): Redis redelivers it after its
        visibility timeout, RabbitMQ closes the channel after its consumer timeout."""
        if self.broker_kind == "rabbitmq":
            return self.RABBITMQ_CONSUMER_TIMEOUT
        return self.CELERY_VISIBILITY_TIMEOUT

    @property
    def broker_hold_limit_name(self) -> str:
        """The setting behind ``broker_hold_limit_s``."""
        if self.broker_kind == "rabbitmq":
            return "RABBITMQ_CONSUMER_TIMEOUT"
        return "CELERY_VISIBILITY_TIMEOUT"

    # -- where secrets may go (issue 12) --
    # The exporter's address: loopback unless an operator opens it (e.g. 0.0.0.0).
    METRICS_HOST: str = "127.0.0.1"
    # Plain-HTTP Zoom URLs on a non-loopback host (the simulator on a compose network).
    ZOOM_ALLOW_INSECURE_URLS: bool = False

    # -- Zoom's event notifications (issue 14): `zoom-worker webhooks` --
    # The app's "Secret Token" (Features > Access > Event Subscriptions); no secret, no events.
    ZOOM_WEBHOOK_SECRET_TOKEN: SecretStr | None = None
    # Requests signed longer ago than this are refused (401): a replay window, not a clock skew.
    ZOOM_WEBHOOK_MAX_AGE: float = Field(300.0, gt=0, le=3600)
    ZOOM_WEBHOOK_PATH: str = Field("/zoom/webhooks", pattern=r"^/[A-Za-z0-9._~/-]*$")
    # uvicorn processes serving the endpoint (each verifies, stores and queues on its own).
    WEBHOOK_WORKERS: int = Field(1, ge=1, le=64)
    # -- retention (issue 15): finished jobs and token requests pruned after this many days;
    # an idempotency key keeps naming its job (never a second meeting) for IDEMPOTENCY_KEY_DAYS.
    JOB_RETENTION_DAYS: float = Field(30.0, gt=0)
    IDEMPOTENCY_KEY_DAYS: float = Field(90.0, gt=0)
    PRUNE_INTERVAL_MINUTES: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check_zoom_urls(self) -> Settings:
        # Raised as is, not as a ValueError: pydantic would drop the variable's name.
        for name in ("ZOOM_OAUTH_URL", "ZOOM_API_URL"):
            problem = insecure_url_problem(getattr(self, name), self.ZOOM_ALLOW_INSECURE_URLS)
            if problem:
                raise errors.ConfigurationError(name, problem)
        return self

    @field_validator("ZOOM_RATE_LIMITS")
    @classmethod
    def _parse_rate_limits(cls, value: str | None) -> str | None:
        if value:
            parse_rate_limits(value)
        return value

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.broker_hold_limit_s <= self.RETRY_BACKOFF_MAX:
            raise ValueError(f"RETRY_BACKOFF_MAX must be below {self.broker_hold_limit_name}")
        return self

    @model_validator(mode="after")
    def _check_token_backoff(self) -> Settings:
        if self.ZOOM_TOKEN_BACKOFF_MAX < self.ZOOM_TOKEN_BACKOFF_MIN:
            raise ValueError("ZOOM_TOKEN_BACKOFF_MAX must be at least ZOOM_TOKEN_BACKOFF_MIN")
        return self

    @model_validator(mode="after")
    def _check_lease(self) -> Settings:
        # Raised as is (not a ValueError), so it names JOB_LEASE_SECONDS, not "settings".
        if self.attempt_bound_s + LEASE_MARGIN_S > self.JOB_LEASE_SECONDS:
            raise errors.ConfigurationError(
                "JOB_LEASE_SECONDS",
                f"must be at least {self.attempt_bound_s + LEASE_MARGIN_S:g}: "
                "2 x ZOOM_HTTP_TIMEOUT + ZOOM_TOKEN_LOCK_TIMEOUT + ZOOM_TOKEN_REQUEST_TIMEOUT "
                f"+ {LEASE_MARGIN_S:g}, so a call made after the claim was checked ends "
                "before the lease does",
            )
        return self

    @property
    def attempt_bound_s(self) -> float:
        """The longest a call that changes Zoom can take once the claim was checked: the
        token (its row lock, then a token request) and the call, twice (a 401 renews the
        token and retries once). The lease must outlast it (see ``_check_lease``)."""
        return (
            2 * self.ZOOM_HTTP_TIMEOUT
            + self.ZOOM_TOKEN_LOCK_TIMEOUT
            + self.ZOOM_TOKEN_REQUEST_TIMEOUT
        )

    @property
    def redis_url(self) -> str:
        """Where the rate governor keeps its counters (the broker's Redis by default; with
        RabbitMQ as broker ``REDIS_URL`` is required at load), a Sentinel list given as
        ``sentinel://`` turned into ``redis+sentinel://`` (see :mod:`worker.redis_client`)."""
        url = self.REDIS_URL or self.CELERY_BROKER_URL
        if _scheme(url) == redis_client.CELERY_SENTINEL_SCHEME and self.REDIS_SENTINEL_MASTER:
            return redis_client.from_celery_sentinel(url, self.REDIS_SENTINEL_MASTER)
        return url

    @property
    def rate_limits(self) -> dict[str, int]:
        """Per-second caps by category: the plan's, overridden by ``ZOOM_RATE_LIMITS``."""
        limits = dict(PLAN_RATE_LIMITS[self.ZOOM_PLAN])
        if self.ZOOM_RATE_LIMITS:
            limits.update(parse_rate_limits(self.ZOOM_RATE_LIMITS))
        return limits

    @property
    def has_credentials(self) -> bool:
        """True when an account id, a client id and a secret (or its file) are all set."""
        return bool(self.ZOOM_ACCOUNT_ID and self.ZOOM_CLIENT_ID and self._has_secret)

    @property
    def names_no_credential(self) -> bool:
        """True when none of the environment's credential is set (a fleet that serves
        registered credentials only); a half-set one is a mistake require_credentials names."""
        return not (self.ZOOM_ACCOUNT_ID or self.ZOOM_CLIENT_ID or self._has_secret)

    @property
    def _has_secret(self) -> bool:
        return self.ZOOM_CLIENT_SECRET is not None or self.ZOOM_CLIENT_SECRET_FILE is not None

    def require_credentials(self) -> tuple[str, str]:
        """The account id and client id, or a ConfigurationError naming what is missing."""
        for name in ("ZOOM_ACCOUNT_ID", "ZOOM_CLIENT_ID"):
            if not getattr(self, name):
                raise errors.ConfigurationError(name, "is not set")
        if not self._has_secret:
            raise errors.ConfigurationError(
                "ZOOM_CLIENT_SECRET", "is not set (nor ZOOM_CLIENT_SECRET_FILE)"
            )
        assert self.ZOOM_ACCOUNT_ID and self.ZOOM_CLIENT_ID
        return self.ZOOM_ACCOUNT_ID, self.ZOOM_CLIENT_ID

    def read_encryption_key(self) -> str | None:
        """``TOKEN_ENCRYPTION_KEY``, or the content of ``TOKEN_ENCRYPTION_KEY_FILE``, or None."""
        if self.TOKEN_ENCRYPTION_KEY is not None:
            return self.TOKEN_ENCRYPTION_KEY.get_secret_value()
        if self.TOKEN_ENCRYPTION_KEY_FILE is None:
            return None
        return _read_secret_file(self.TOKEN_ENCRYPTION_KEY_FILE, "TOKEN_ENCRYPTION_KEY_FILE")

    def read_client_secret(self) -> str:
        """The client secret, re-read from ``ZOOM_CLIENT_SECRET_FILE`` on every call."""
        if self.ZOOM_CLIENT_SECRET_FILE is not None:
            return _read_secret_file(self.ZOOM_CLIENT_SECRET_FILE, "ZOOM_CLIENT_SECRET_FILE")
        if self.ZOOM_CLIENT_SECRET is None:
            raise errors.ConfigurationError("ZOOM_CLIENT_SECRET", "is not set")
        return self.ZOOM_CLIENT_SECRET.get_secret_value()


def _read_secret_file(path: Path, setting: str) -> str:
    """A secret kept in a file, stripped; ConfigurationError naming ``setting`` otherwise."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise errors.ConfigurationError(setting, f"cannot be read ({exc.strerror})") from exc
    if not secret:
        raise errors.ConfigurationError(setting, "is empty")
    return secret


BrokerKind = Literal["redis", "rabbitmq"]
_BROKER_SCHEMES: dict[str, BrokerKind] = {
    "redis": "redis",
    "rediss": "redis",
    "sentinel": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "pyamqp": "rabbitmq",
}


def broker_kind(url: str) -> BrokerKind | None:
    """The broker a Celery broker URL names by its scheme, or None for one we do not run on
    (Celery's ``sentinel://`` list is Redis behind Sentinel)."""
    return _BROKER_SCHEMES.get(_scheme(url))


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower()


def parse_rate_limits(value: str) -> dict[str, int]:
    """Parse ``light=30,medium=20,heavy=10`` into a dict; ValueError names the bad part."""
    limits: dict[str, int] = {}
    for part in value.split(","):
        name, sep, number = part.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in RATE_CATEGORIES:
            raise ValueError(
                f"expected category=calls_per_second with a category in {RATE_CATEGORIES}"
            )
        try:
            limits[name] = int(number)
        except ValueError:
            raise ValueError(f"the limit for {name} is not a whole number") from None
        if limits[name] < 1:
            raise ValueError(f"the limit for {name} must be at least 1")
    return limits


def insecure_url_problem(url: str, allow_insecure: bool) -> str | None:
    """Why ``url`` must not carry a Zoom secret, or None: only ``https://``, or ``http://``
    to a loopback host (or any host when ``allow_insecure``), since the client secret and
    the access token travel in its headers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme != "http" or not parts.hostname:
        return "must be an https:// URL"
    if allow_insecure or _is_loopback(parts.hostname):
        return None
    return (
        "must be an https:// URL: http:// is accepted only for a loopback host, or with "
        "ZOOM_ALLOW_INSECURE_URLS=true (a simulator on a private network)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings() -> Settings:
    """Read the environment into Settings, translating pydantic's error into one that names
    the variable and leaves its value out."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        setting = ".".join(str(part) for part in first["loc"]) or "settings"
        message = first["msg"].removeprefix("Value error, ")
        raise errors.ConfigurationError(setting, message) from None


@functools.cache
def get_settings() -> Settings:
    """The process's Settings, built on first use."""
    return load_settings()
