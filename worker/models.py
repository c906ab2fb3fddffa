"""The tables, typed with SQLAlchemy 2.0. Each table is written by one module:

- ``credentials``: :mod:`worker.token_store` (the circuit's columns through :mod:`worker.circuit`)
- ``token_requests``: :mod:`worker.token_budget`
- ``jobs`` and ``meetings``: :mod:`worker.jobs` (the ledger); the state of stale meetings and
  the rows of orphans found in Zoom: :mod:`worker.cleanup`
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Job statuses, as the public API names them.
QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"
WAITING = "waiting"
SUCCEEDED = "succeeded"
FAILED = "failed"
FINAL_STATUSES = (SUCCEEDED, FAILED)

# Meeting states in the service's own ledger of meetings it created.
LIVE = "live"
DELETED = "deleted"
ENDED = "ended"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _tz() -> DateTime:
    return DateTime(timezone=True)


class Credential(Base):
    """One S2S OAuth credential (account + client id) and the one access token it shares."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("account_id", "client_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(200))
    client_id: Mapped[str] = mapped_column(String(200))
    # AES-GCM(nonce || ciphertext) of the access token; never stored in clear.
    token_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # SHA-256 of the token, so a 401 can invalidate compare-and-swap style.
    token_sha256: Mapped[str | None] = mapped_column(String(64))
    token_expires_at: Mapped[datetime | None] = mapped_column(_tz())
    token_fetched_at: Mapped[datetime | None] = mapped_column(_tz())
    scope: Mapped[str | None] = mapped_column(Text)
    # Circuit breaker: "closed" (calls flow) or "open" (the credential is refused by Zoom).
    circuit_state: Mapped[str] = mapped_column(String(16), server_default="closed")
    circuit_reason: Mapped[str | None] = mapped_column(Text)
    circuit_opened_at: Mapped[datetime | None] = mapped_column(_tz())
    circuit_next_probe_at: Mapped[datetime | None] = mapped_column(_tz())
    circuit_probes: Mapped[int] = mapped_column(Integer, server_default="0")
    # A salted digest of the secret in force when the circuit opened, to notice a rotation.
    circuit_secret_digest: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(_tz())
    updated_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())


class TokenRequest(Base):
    """One request to Zoom's token endpoint, kept so operators can count them."""

    __tablename__ = "token_requests"
    __table_args__ = (Index(None, "credential_id", "requested_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id", ondelete="CASCADE"))
    requested_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int | None] = mapped_column(Integer)
    zoom_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    """One create or delete job: the ledger row that is the source of truth."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "status", "lease_expires_at"),
        Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=QUEUED)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(256))
    topic: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The marker appended to the agenda of a create, to find the meeting if the reply is lost.
    marker: Mapped[str | None] = mapped_column(String(32))
    meeting_id: Mapped[int | None] = mapped_column(BigInteger)
    occurrence_id: Mapped[str | None] = mapped_column(String(64))
    # A delete that names its create job: it waits for, or cancels, that create.
    after_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL")
    )
    join_url: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # Real attempts (calls that failed); rate-limit deferrals are counted apart.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    deferrals: Mapped[int] = mapped_column(Integer, server_default="0")
    # Claims since the last recorded outcome: more than one means a worker died mid-job.
    deliveries: Mapped[int] = mapped_column(Integer, server_default="0")
    # True while a create request may have reached Zoom without our learning the outcome.
    maybe_sent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(_tz())
    next_attempt_at: Mapped[datetime | None] = mapped_column(_tz())
    # Why a waiting job is held: "credentials" (the circuit is open) or "host_daily".
    held_for: Mapped[str | None] = mapped_column(String(16))
    # Set at each claim; an outcome is recorded only by the holder of the current claim.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(_tz())
    finished_at: Mapped[datetime | None] = mapped_column(_tz())


class Meeting(Base):
    """A Zoom meeting this service created: the only list cleanup and deletes trust."""

    __tablename__ = "meetings"
    __table_args__ = (Index(None, "state", "scheduled_end"),)

    meeting_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    user_id: Mapped[str] = mapped_column(String(256))
    topic: Mapped[str | None] = mapped_column(String(200))
    start_time: Mapped[datetime | None] = mapped_column(_tz())
    duration_min: Mapped[int | None] = mapped_column(Integer)
    scheduled_end: Mapped[datetime | None] = mapped_column(_tz())
    state: Mapped[str] = mapped_column(String(16), server_default=LIVE)
    cleanup_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    cleanup_claimed_until: Mapped[datetime | None] = mapped_column(_tz())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(_tz())
