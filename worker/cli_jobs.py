"""``zoom-worker create|delete|update|retry|cancel|job|jobs``: the producers' API
(:mod:`worker.jobs`) on the command line. The commands are registered on the ``zoom-worker``
group by :mod:`worker.cli`, which turns the service's errors into messages and exit codes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from worker import errors, jobs, models, priorities
from worker.cli_credentials import console
from worker.cli_credentials import print_fields as _print_fields
from worker.cli_credentials import show_text as _text

STATUSES = (models.QUEUED, models.RUNNING, models.RETRYING, models.WAITING, *models.FINAL_STATUSES)


# The options every job command takes.
priority_option = click.option(
    "--priority",
    type=click.Choice(priorities.PRIORITIES),
    default=priorities.NORMAL,
    show_default=True,
    help="Which queue the job waits in (high for a person waiting, bulk for a backfill).",
)
account_option = click.option(
    "--account",
    help="The credential the job runs under (zoom-worker credentials list); default: the "
    "environment's.",
)


@click.command()
@click.argument("user_id")
@click.option("--topic", help="The meeting's topic (at most 200 characters).")
@click.option("--start-time", help="ISO 8601, e.g. 2026-12-01T10:00:00Z.")
@click.option("--duration", type=int, help="Minutes.")
@click.option("--timezone", help="An IANA time zone, e.g. Europe/Paris.")
@click.option("--agenda", help="The meeting's description.")
@click.option(
    "--body",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON file with Zoom's create-meeting body; the options above override it.",
)
@click.option("--idempotency-key", help="The same key always returns the same job.")
@priority_option
@account_option
def create(
    user_id: str,
    body: Path | None,
    idempotency_key: str | None,
    priority: str,
    account: str | None,
    **fields: str | int | None,
) -> None:
    """Queue a job that creates a meeting for USER_ID (a Zoom user id or email); prints its id."""
    meeting: dict[str, Any] = {}
    if body is not None:
        try:
            loaded = json.loads(body.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidMeeting("body", f"{body} is not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise errors.InvalidMeeting("body", f"{body} must hold a JSON object")
        meeting.update(loaded)
    meeting.update({name: value for name, value in fields.items() if value is not None})
    job_id = jobs.create_meeting(
        user_id, meeting, idempotency_key=idempotency_key, priority=priority, account=account
    )
    click.echo(str(job_id))


@click.command()
@click.argument("meeting_id", type=int, required=False)
@click.option(
    "--create-job", help="Delete the meeting of this create job (waits for or cancels it)."
)
@click.option("--occurrence-id", help="Delete one occurrence of a recurring meeting.")
@click.option("--idempotency-key", help="The same key always returns the same job.")
@priority_option
@account_option
def delete(
    meeting_id: int | None,
    create_job: str | None,
    occurrence_id: str | None,
    idempotency_key: str | None,
    priority: str,
    account: str | None,
) -> None:
    """Queue a job that deletes MEETING_ID (only meetings this service created, through the
    credential that created it); prints its id."""
    job_id = jobs.delete_meeting(
        meeting_id,
        occurrence_id,
        idempotency_key,
        create_job_id=create_job,
        priority=priority,
        account=account,
    )
    click.echo(str(job_id))


@click.command(name="update")
@click.argument("meeting_id", type=int)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    required=True,
    metavar="FIELD=VALUE",
    help="A field to change, as Zoom names it; VALUE is read as JSON when it parses "
    "(30, true, {...}), else as a string. settings.KEY=VALUE changes one setting.",
)
@click.option("--occurrence", "occurrence_id", help="Update one occurrence of a series.")
@click.option("--idempotency-key", help="The same key always returns the same job.")
@priority_option
@account_option
def update_command(
    meeting_id: int,
    assignments: tuple[str, ...],
    occurrence_id: str | None,
    idempotency_key: str | None,
    priority: str,
    account: str | None,
) -> None:
    """Queue a job that updates MEETING_ID (only meetings this service created); prints its id.

    Updates of one meeting are applied in the order they were queued."""
    changes = parse_assignments(assignments)
    job_id = jobs.update_meeting(
        meeting_id, changes, occurrence_id, idempotency_key, priority=priority, account=account
    )
    click.echo(str(job_id))


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as an update's changes; ``a.b=v`` sets key ``b`` of object ``a``."""
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or not name:
            raise errors.InvalidMeeting("--set", f"expected FIELD=VALUE, got {assignment!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = name.split(".")
        target = changes
        for parent in parents:
            nested = target.setdefault(parent, {})
            if not isinstance(nested, dict):
                raise errors.InvalidMeeting("--set", f"{parent} is set to a value and a field")
            target = nested
        target[leaf] = value
    return changes


@click.command()
@click.argument("job_id")
def retry(job_id: str) -> None:
    """Run the failed job JOB_ID again under its idempotency key; prints its id.

    A create that may already have made its meeting looks for it first; an instant meeting
    whose outcome is unknown is refused with the reason."""
    click.echo(str(jobs.retry_job(job_id).id))


@click.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel the queued or waiting job JOB_ID before it reaches Zoom; prints its id.

    A running job, or a create that may already have made its meeting, is refused with the
    reason and the way out (delete the meeting with ``delete --create-job JOB_ID``)."""
    click.echo(str(jobs.cancel_job(job_id).id))


def _json_value(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@click.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_job(job_id: str, as_json: bool) -> None:
    """Show one job: status, meeting, error, attempts and times."""
    job = jobs.get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    fields = asdict(job)
    if as_json:
        click.echo(json.dumps(fields, default=_json_value))
        return
    _print_fields([(name, _text(value)) for name, value in fields.items()])


@click.command("jobs")
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this status.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def list_jobs(status: str | None, limit: int) -> None:
    """The most recently updated jobs, and how many jobs are in each status."""
    table = Table(title="jobs, most recently updated first")
    for name in ("id", "status", "kind", "user", "topic", "meeting", "attempts", "updated"):
        table.add_column(name, no_wrap=name in {"id", "status", "meeting", "updated"})
    for job in jobs.list_jobs(status, limit=limit):
        cells = (job.id, job.status, job.kind, job.user_id, job.topic, job.meeting_id)
        table.add_row(*map(_text, (*cells, job.attempts, job.updated_at)))
    out = console()
    out.print(table)
    counts = jobs.count_by_status()
    out.print("  ".join(f"{name}: {counts.get(name, 0)}" for name in STATUSES))
