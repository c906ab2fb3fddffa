"""The correlation marker, the agenda space it takes, and the one search for a lost create.

Zoom has no idempotency key, so each create carries a marker: the job's own ``[zw:<16 hex>]``
appended to the agenda after a blank line. Why the agenda: it is the one free-text field every
account has (tracking fields must be set up per account first), the list call returns it, and
it does not change the meeting's title in calendars. :data:`RESERVED_AGENDA_CHARS` of Zoom's
2000 are kept for it, so the validator gives the caller only the rest.

The search (:func:`find`) serves both the create retry (:mod:`worker.meetings`, after a reply
was lost) and the orphan pass (:mod:`worker.cleanup`):

1. It lists the meetings of the host the meeting belongs to: ``schedule_for`` when the body
   names one (Zoom lists a meeting under the user it was scheduled for), else the path user.
   It walks every page (``ZoomClient.list_meetings`` follows ``next_page_token``).
2. A listed meeting showing a wanted marker is found. The list shows the agenda cut to 250,
   and Zoom's documents do not say whether it counts code points or UTF-16 units (240 emoji
   are 480 units), nor that it keeps line ends as sent. So a listed agenda that shows no
   marker and could be the start of a wanted agenda, whatever the length of the cut, is
   fetched whole with ``GET /meetings/{id}``. Of the two rules this replaces (the create
   retry fetched only when at least 250 code points were shown; the orphan pass only when
   exactly the first 250 matched) this keeps neither length: it is safer than both, at the
   cost of a GET for a meeting whose whole agenda is a prefix of ours (rare).
3. Instant meetings (type 1) are never listed ("This API does not return information about
   instant meetings"), so no search can see one: :func:`check_searchable` raises
   :class:`~worker.errors.OutcomeUnknown` saying what to check, and the job is not created
   again blindly. A started instant meeting would show in ``type=live``, but one whose host
   never started it would not, so a search there could not prove it absent.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker import errors, zoom

MARKER_SEPARATOR = "\n\n"
MARKER_LENGTH = len("[zw:0123456789abcdef]")
RESERVED_AGENDA_CHARS = len(MARKER_SEPARATOR) + MARKER_LENGTH
MARKER_PATTERN = re.compile(r"\[zw:[0-9a-f]{16}\]")
INSTANT = 1
# What a cut may leave at its end: half a surrogate pair, or its replacement character.
_BROKEN_TAIL = re.compile(r"[\ud800-\udfff\ufffd]+$")


def for_job(job_id: uuid.UUID) -> str:
    """The marker of a create job."""
    return f"[zw:{job_id.hex[:16]}]"


def agenda_with_marker(agenda: object, marker: str) -> str:
    """The agenda a create sends: the caller's agenda, a blank line, then the job's marker."""
    text = agenda if isinstance(agenda, str) else ""
    return f"{text}{MARKER_SEPARATOR}{marker}" if text else marker


def create_body(body: Mapping[str, Any] | None, marker: str) -> dict[str, Any]:
    """The body a create sends: the caller's, with the marker in the agenda and
    ``settings.use_pmi: false`` unless the caller set it.

    Without ``use_pmi`` Zoom follows the host's profile ("use PMI for scheduled meetings") and
    answers the host's Personal Meeting ID: two jobs would share one meeting, and a delete or
    the cleanup would aim at the host's personal room.
    """
    sent = dict(body or {})
    sent["agenda"] = agenda_with_marker(sent.get("agenda"), marker)
    sent["settings"] = {"use_pmi": False} | dict(sent.get("settings") or {})
    return sent


def host_of(user_id: str, body: Mapping[str, Any] | None) -> str:
    """The user whose meetings list shows the meeting: ``schedule_for``, else ``user_id``."""
    schedule_for = (body or {}).get("schedule_for")
    return schedule_for if isinstance(schedule_for, str) and schedule_for else user_id


def markers_in(agenda: str | None) -> list[str]:
    """Every marker an agenda carries."""
    return MARKER_PATTERN.findall(agenda or "")


@dataclass(frozen=True)
class Wanted:
    """A create whose meeting is looked for: its marker and the whole agenda it sent."""

    marker: str
    agenda: str

    @classmethod
    def of(cls, body: Mapping[str, Any] | None, marker: str) -> Wanted:
        return cls(marker, _normalised(agenda_with_marker((body or {}).get("agenda"), marker)))


def check_searchable(body: Mapping[str, Any] | None, marker: str, host: str) -> None:
    """Raise OutcomeUnknown when no search can see this create's meeting (an instant one)."""
    if (body or {}).get("type") == INSTANT:
        raise errors.OutcomeUnknown(
            "outcome unknown: the reply to this instant-meeting create was lost and Zoom does "
            f"not list instant meetings, so it was not created again; check host {host}'s "
            f"meetings in Zoom for one whose agenda ends with {marker} before creating it anew"
        )


def find(
    client: zoom.ZoomClient,
    permit: Callable[[str], None],
    host: str,
    wanted: Iterable[Wanted],
) -> dict[str, zoom.Meeting]:
    """The meetings of ``host`` carrying a wanted marker, by marker (see the module's rule).

    ``permit(operation)`` is called before every Zoom call ("list", then "get" for each fetch).
    One list permit serves every page: a host rarely has more than one page (300) of meetings.
    """
    by_marker = {w.marker: w for w in wanted}
    found: dict[str, zoom.Meeting] = {}
    permit("list")
    for listed in client.list_meetings(host):
        meeting = listed
        shown = [m for m in markers_in(listed.agenda) if m in by_marker]
        if not shown and _could_be_cut(listed.agenda, by_marker.values()):
            permit("get")
            meeting = client.get_meeting(listed.id)
            shown = [m for m in markers_in(meeting.agenda) if m in by_marker]
        for marker in shown:
            found.setdefault(marker, meeting)
    return found


def _normalised(agenda: str) -> str:
    return agenda.replace("\r\n", "\n").replace("\r", "\n")


def _could_be_cut(listed: str | None, wanted: Iterable[Wanted]) -> bool:
    """Whether ``listed`` may be the start of a wanted agenda, cut by any length rule."""
    shown = _BROKEN_TAIL.sub("", _normalised(listed or "")).rstrip()
    if not shown or markers_in(listed):
        return False
    return any(w.agenda.startswith(shown) and len(w.agenda) > len(shown) for w in wanted)
