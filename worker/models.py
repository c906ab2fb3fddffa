"""The tables, typed with SQLAlchemy 2.0. Each table is written by one module:

- ``credentials``: :mod:`worker.token_store` (the circuit's columns through :mod:`worker.circuit`);
  a registered credential's rows, secret and status: :mod:`worker.credentials` (the token store
  writes ``status`` only to mark a user's connection "needs re-authorization", under its lock)
- ``apps``: :mod:`worker.oauth_apps` (in the transactions of :mod:`worker.credentials`)
- ``token_requests``: :mod:`worker.token_budget`
- ``jobs`` and ``meetings``: :mod:`worker.ledger` (with :mod:`worker.recording`); the state
  of stale meetings and the rows of orphans found in Zoom: :mod:`worker.cleanup`
- ``job_status_counts``: only triggers on ``jobs`` (migration 0005); read by the metrics
- ``webhook_events``: :mod:`worker.webhook_events`, which also writes the state and schedule
  of ``meetings`` rows when Zoom's events say a meeting was deleted, moved, started or ended
- ``idempotency_keys``: :mod:`worker.admission` (pruned by :mod:`worker.retention`)
- ``outbox``: :mod:`worker.outbox` (job messages for the relay, and ``on_done`` notifications)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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
# Cancelled by the producer (worker.jobs.cancel_job) before anything was sent to Zoom.
CANCELLED = "cancelled"
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)

# Meeting states in the service's own ledger of meetings it created.
LIVE = "live"
DELETED = "deleted"
ENDED = "ended"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _tz() -> DateTime:
    return DateTime(timezone=True)


# The environment's credential (ZOOM_ACCOUNT_ID, ...): its rows are named so, one per account
# and client id; every other name is a registered credential, unique (migration 0010).
DEFAULT_CREDENTIAL = "default"
# Kinds of credential and their statuses (worker.credentials).
S2S, USER = "s2s", "user"
ACTIVE, DISABLED, NEEDS_REAUTHORIZATION = "active", "disabled", "needs_reauthorization"


class App(Base):
    """A registered Zoom OAuth ("General") app: its client id, and its client secret and
    webhook secret token held once, encrypted (AES-GCM, bound to the row)."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    client_id: Mapped[str] = mapped_column(String(200))
    client_secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    webhook_secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())


class Credential(Base):
    """One credential and the one access token it shares: the environment's S2S app (name
    ``default``), a registered S2S app, or a user's connection to a registered app."""

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("name", "account_id", "client_id"),
        # One row per registered name; the default name has one row per account and client.
        Index(
            "ix_credentials_name_registered",
            "name",
            unique=True,
            postgresql_where=text("name <> 'default'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), server_default=DEFAULT_CREDENTIAL)
    kind: Mapped[str] = mapped_column(String(8), server_default=S2S)
    # A user's connection: the app it authorized. Its account id is "" until learnt.
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="RESTRICT"))
    account_id: Mapped[str] = mapped_column(String(200))
    client_id: Mapped[str] = mapped_column(String(200))
    # A registered S2S app's client secret, and a user's current refresh token: AES-GCM.
    secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    refresh_token_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Raised by every rotation or re-authorization: the circuit probes at once on a change.
    secret_version: Mapped[int] = mapped_column(Integer, server_default="1")
    status: Mapped[str] = mapped_column(String(24), server_default=ACTIVE)
    # The Zoom plan of the credential's account and explicit per-second caps (the format of
    # ZOOM_RATE_LIMITS), sizing its account's rate governor; NULL: the settings' (0012).
    plan: Mapped[str | None] = mapped_column(String(16))
    rate_limits: Mapped[str | None] = mapped_column(String(200))
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_changed_at: Mapped[datetime | None] = mapped_column(_tz())
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
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
    """One create, delete or update job: the ledger row that is the source of truth."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "status", "lease_expires_at"),
        Index(None, "status", "next_attempt_at"),
        CheckConstraint("priority IN ('high', 'normal', 'bulk')", name="priority"),
        # An idempotency key names one job per credential (0012).
        UniqueConstraint("account", "idempotency_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=QUEUED)
    # The credential the job runs under (worker.credentials): ``default`` is the environment's.
    account: Mapped[str] = mapped_column(String(100), server_default=DEFAULT_CREDENTIAL)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 of the canonical request the key was first sent with (worker.jobs): the same
    # key with another request is an IdempotencyConflict. NULL for jobs recorded before 0004.
    request_digest: Mapped[str | None] = mapped_column(String(64))
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
    # Attempts that ended (failed, or the final one); holds are counted apart as deferrals.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    deferrals: Mapped[int] = mapped_column(Integer, server_default="0")
    # Claims since the last recorded outcome: more than one means a worker died mid-job.
    deliveries: Mapped[int] = mapped_column(Integer, server_default="0")
    # True while a create request may have reached Zoom without our learning the outcome.
    maybe_sent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(_tz())
    next_attempt_at: Mapped[datetime | None] = mapped_column(_tz())
    # Why a held job waits: a worker.outcomes.HoldReason ("credentials", "host_daily", ...).
    held_for: Mapped[str | None] = mapped_column(String(16))
    # A failed job gave up (a budget ran out), rather than Zoom refusing it: its create's
    # outcome may be unknown, so the cleanup looks for an orphan.
    gave_up: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Someone waits for this job's outcome (worker.waiting): only then does the trigger
    # NOTIFY it, since every NOTIFY costs each listening backend a transaction (0013).
    awaited: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The first failed attempt, moved later by the time held since: the give-up budget
    # (JOB_GIVE_UP_AFTER) counts from here.
    first_failed_at: Mapped[datetime | None] = mapped_column(_tz())
    # Set at each claim; an outcome is recorded only by the holder of the current claim.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    # An update job's place among its meeting's updates (meetings.update_seq at enqueue):
    # it runs only once every update of the meeting with a lower seq has ended (0008).
    seq: Mapped[int | None] = mapped_column(BigInteger)
    # high, normal or bulk (worker.priority): the job's queue and its place at the governor.
    priority: Mapped[str] = mapped_column(String(8), server_default="normal")
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(_tz())
    finished_at: Mapped[datetime | None] = mapped_column(_tz())
    # The Celery task told of the job's outcome ("billing.tasks.meeting_ready"), if any.
    on_done: Mapped[str | None] = mapped_column(String(255))


class Meeting(Base):
    """A Zoom meeting this service created: the only list cleanup and deletes trust."""

    __tablename__ = "meetings"
    __table_args__ = (Index(None, "state", "scheduled_end"),)

    meeting_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # The credential that created it: the only one it is updated, deleted or cleaned up through.
    account: Mapped[str] = mapped_column(String(100), server_default=DEFAULT_CREDENTIAL)
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
    # The last seq handed to an update job of this meeting (worker.admission, 0008).
    update_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Field -> when our own update job last set it (ms since the epoch, comparable with a
    # webhook's event_ts): a meeting.updated older than that leaves the field alone.
    field_updated_ts: Mapped[dict[str, int] | None] = mapped_column(JSONB)


# -- what the metrics read without scanning jobs (migration 0005) ------------------------------


class JobStatusCount(Base):
    """A shard of the count of jobs in a finished status; written only by triggers on jobs.

    Finished jobs only grow in number, so their counts are kept as jobs change status (the
    triggers of migration 0005): each finishing job adds one to its status's row of the
    writing backend's shard, so concurrent finishes rarely wait on one row. A status's count
    is the sum of its shards.
    """

    __tablename__ = "job_status_counts"

    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    jobs: Mapped[int] = mapped_column(BigInteger, server_default="0")


# -- Zoom's event notifications (migration 0006) ------------------------------------------------


class WebhookEvent(Base):
    """One event notification Zoom sent, stored once before it is answered (worker.webhooks).

    Zoom's body has no event id: ``digest`` (SHA-256 of the event name, ``event_ts``, the
    meeting id and the occurrence ids) makes a second delivery of one event a no-op. The row
    is the durable record: ``applied_at`` NULL means not yet applied to the ledger.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index(None, "meeting_id", "event_ts"),
        # The sweep's probe for events not yet applied, however many were.
        Index(
            "ix_webhook_events_received_at_pending",
            "received_at",
            postgresql_where=text("applied_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String(64))
    # Zoom's event_ts: milliseconds since the epoch when the event happened.
    event_ts: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[str | None] = mapped_column(String(200))
    meeting_id: Mapped[int | None] = mapped_column(BigInteger)
    occurrence_ids: Mapped[list[str] | None] = mapped_column(JSONB)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    applied_at: Mapped[datetime | None] = mapped_column(_tz())
    # What applying it did: a worker.webhook_events.Effect ("deleted", "stale", "foreign", ...).
    effect: Mapped[str | None] = mapped_column(String(32))


# Jobs waiting for a worker, spelled once for the partial index and the query that uses it;
# literal, so that even a prepared statement's generic plan can use the index.
PENDING = text("status IN ('queued', 'retrying')")
# The oldest waiting job in one index probe, however many jobs have finished.
Index("ix_jobs_created_at_pending", Job.created_at, postgresql_where=PENDING)


# -- retention (migration 0007) -----------------------------------------------------------------


class IdempotencyKey(Base):
    """An idempotency key and the request it was first used for, kept after its job is pruned.

    Written with the job (:mod:`worker.admission`), in the same transaction; consulted first,
    so a key keeps naming its job for ``IDEMPOTENCY_KEY_DAYS`` even once the job's row has been
    pruned after ``JOB_RETENTION_DAYS``: the same key never makes a second meeting.
    """

    __tablename__ = "idempotency_keys"

    # Keys are per credential: the same key in two accounts names two jobs (0012).
    account: Mapped[str] = mapped_column(
        String(100), primary_key=True, server_default=DEFAULT_CREDENTIAL
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # NULL for a key whose job was recorded before request digests (0004): matched on kind.
    request_digest: Mapped[str | None] = mapped_column(String(64))
    # No foreign key: the key outlives its job's row.
    job_id: Mapped[uuid.UUID] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now(), index=True)


# What pruning reads and what deleting a job makes PostgreSQL look up (foreign keys to jobs).
Index("ix_jobs_finished_at", Job.finished_at, postgresql_where=text("finished_at IS NOT NULL"))
Index("ix_jobs_after_job_id", Job.after_job_id)
Index("ix_meetings_job_id", Meeting.job_id)


# -- the outbox (migration 0009) -----------------------------------------------------------------


class OutboxMessage(Base):
    """A Celery task to send once the transaction that wrote it has committed (worker.outbox).

    A job written in a producer's own transaction gets one (its dispatch), and so does each
    outcome of a job with ``on_done`` (its notification; ``id`` is the notification id). The
    relay sends the rows whose ``sent_at`` is NULL and sets it once the broker accepted them;
    a trigger (migration 0009) wakes it with a NOTIFY at commit.
    """

    __tablename__ = "outbox"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(255))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(_tz())


# The relay's probe for messages not yet sent, however many were.
Index(
    "ix_outbox_created_at_unsent",
    OutboxMessage.created_at,
    postgresql_where=text("sent_at IS NULL"),
)

# -- update jobs (migration 0008) --------------------------------------------------------------

# An update's claim looks for an unfinished older update of its meeting in one index probe.
Index(
    "ix_jobs_meeting_id_seq",
    Job.meeting_id,
    Job.seq,
    postgresql_where=text("seq IS NOT NULL AND status NOT IN ('succeeded', 'failed', 'cancelled')"),
)
