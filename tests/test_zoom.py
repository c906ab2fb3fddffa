"""Parsing one Zoom response at a time (httpx.MockTransport), and the error mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from worker import errors, oauth, zoom

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def _response(
    status: int, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    request = httpx.Request("GET", "https://api.zoom.us/v2/meetings/1")
    return httpx.Response(status, content=content, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (401, {"code": 124, "message": "Invalid access token."}, {}, errors.Unauthorized),
        (
            401,
            {"code": 4711, "message": "Invalid access token, does not contain scopes:[x]"},
            {},
            errors.MissingScopes,
        ),
        (400, {"code": 4700, "message": "no scopes"}, {}, errors.MissingScopes),
        (401, {"code": 104, "message": "Invalid access token"}, {}, errors.MissingScopes),
        (404, {"code": 3001, "message": "Meeting does not exist: 1."}, {}, errors.MeetingNotFound),
        (404, {"code": 300, "message": "Meeting does not exist"}, {}, errors.MeetingNotFound),
        (404, {"code": 1001, "message": "User does not exist: x."}, {}, errors.ZoomClientError),
        (400, {"code": 3007, "message": "Meeting has ended"}, {}, errors.ZoomClientError),
        (
            429,
            {
                "code": 429,
                "message": "You have reached the maximum per-second rate limit for this API. Try again later.",
            },
            {"X-RateLimit-Type": "QPS"},
            errors.RateLimited,
        ),
        (
            429,
            {
                "code": 429,
                "message": "You have exceeded the daily rate limit (100) of Meeting Create/Update API requests",
            },
            {},
            errors.DailyLimitReached,
        ),
        (
            400,
            {
                "code": 300,
                "message": "You have exceeded the daily rate limit (100) of Meeting Create/Update API requests",
            },
            {},
            errors.DailyLimitReached,
        ),
        (429, None, {}, errors.RateLimited),
        (500, {"code": 500, "message": "Internal"}, {}, errors.ZoomServerError),
        (503, None, {}, errors.ZoomServerError),
    ],
)
def test_raise_for_response__maps_zoom_answers(
    status: int, body: Any, headers: dict[str, str], expected: type[errors.ZoomError]
) -> None:
    with pytest.raises(expected) as caught:
        zoom.raise_for_response(_response(status, body, headers))
    assert type(caught.value) is expected
    assert caught.value.status == status
    if isinstance(body, dict):
        assert caught.value.code == body["code"]


def test_raise_for_response__2xx__returns() -> None:
    assert zoom.raise_for_response(_response(204)) is None


def test_raise_for_response__validation_errors__fields_in_message() -> None:
    body = {
        "code": 300,
        "message": "Validation Failed.",
        "errors": [{"field": "topic", "message": "too long"}],
    }
    with pytest.raises(errors.ZoomClientError) as caught:
        zoom.raise_for_response(_response(400, body))
    assert caught.value.zoom_message is not None and "topic: too long" in caught.value.zoom_message


def test_rate_limited__daily__retry_at_is_iso_or_midnight() -> None:
    headers = {"X-RateLimit-Type": "Daily-limit", "Retry-After": "2026-11-30T00:00:00Z"}
    with pytest.raises(errors.DailyLimitReached) as caught:
        zoom.raise_for_response(_response(429, {"code": 429, "message": "daily"}, headers))
    assert caught.value.retry_at == datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)),
        ("2020-05-31T00:00:00Z", datetime(2020, 5, 31, tzinfo=UTC)),
        ("Sun, 29 Nov 2026 12:01:00 GMT", datetime(2026, 11, 29, 12, 1, tzinfo=UTC)),
        ("soon", None),
        (None, None),
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("1e400", None),
        ("-5", NOW),
        ("99999999999999", NOW + zoom.RETRY_AFTER_MAX),
        ("9999-12-31T23:59:59Z", NOW + zoom.RETRY_AFTER_MAX),
    ],
)
def test_parse_retry_after__seconds_http_date_iso(
    value: str | None, expected: datetime | None
) -> None:
    assert zoom.parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", ["inf", "1e308", "99999999999999", "nan"])
def test_raise_for_response__absurd_retry_after__rate_limited_not_overflow(value: str) -> None:
    with pytest.raises(errors.RateLimited) as caught:
        zoom.raise_for_response(_response(429, {"code": 429}, {"Retry-After": value}))
    retry_at = caught.value.retry_at
    assert retry_at is None or retry_at <= datetime.now(UTC) + zoom.RETRY_AFTER_MAX


def test_next_utc_midnight() -> None:
    assert zoom.next_utc_midnight(NOW) == datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "maybe_sent"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow"), False),
        (httpx.PoolTimeout("pool"), False),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (httpx.ReadError("reset"), True),
        (httpx.WriteError("reset"), True),
    ],
)
def test_translate_transport_error__every_kind_mapped(
    exc: httpx.TransportError, maybe_sent: bool
) -> None:
    error = zoom.translate_transport_error(exc, what="POST /users/x/meetings")
    assert isinstance(error, errors.ZoomUnreachable)
    assert error.maybe_sent is maybe_sent


def test_meeting_from_zoom__drops_start_url() -> None:
    body = {
        "id": 85746065432,
        "join_url": "https://zoom.us/j/1",
        "start_url": "https://zoom.us/s/1?zak=SECRET",
    }
    meeting = zoom.Meeting.from_zoom(body)
    assert meeting.id == 85746065432
    assert "zak=SECRET" not in repr(meeting)
    assert not hasattr(meeting, "start_url")


def test_request_token__form_body_and_basic_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "abc", "expires_in": 3599, "scope": "x"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        grant = oauth.request_token(
            http,
            "https://zoom.us/oauth/token",
            account_id="acc",
            client_id="cid",
            client_secret="sec",
            timeout_s=5,
        )
    request = seen[0]
    assert request.url.query == b""
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.content == b"grant_type=account_credentials&account_id=acc"
    assert request.headers["authorization"].startswith("Basic ")
    assert grant.token.value == "abc" and grant.expires_in_s == 3599
    assert 3590 < grant.token.seconds_left() <= 3599


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            {
                "reason": "Invalid client_id or client_secret",
                "error": "invalid_client",
                "code": 4702,
            },
            errors.CredentialsRejected,
        ),
        (
            400,
            {"reason": "Invalid client_id or client_secret", "error": "invalid_client"},
            errors.CredentialsRejected,
        ),
        (
            400,
            {"reason": "The app has been disabled", "error": "invalid_client", "code": 4717},
            errors.CredentialsRejected,
        ),
        (
            400,
            {"reason": "unsupported grant type", "error": "unsupported_grant_type", "code": 4705},
            errors.TokenRequestFailed,
        ),
        (503, None, errors.TokenRequestFailed),
    ],
)
def test_request_token__refusals_typed(
    status: int, body: Any, expected: type[errors.ZoomError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(expected) as caught,
    ):
        oauth.request_token(
            http,
            "https://zoom.us/oauth/token",
            account_id="a",
            client_id="c",
            client_secret="hunter2-secret",
            timeout_s=5,
        )
    assert (
        "hunter2-secret" not in str(caught.value)
        and "hunter2-secret" not in caught.value.describe()
    )
    assert caught.value.status == status


# -- ZoomAuth: what each answer reports to the token source ---------------------------------


class _Source:
    """A TokenSource that hands out t1, t2, ... and records every report."""

    def __init__(self) -> None:
        self.issued = 0
        self.reports: list[tuple[str, bool]] = []
        self.renewed: list[str] = []

    def get(self) -> oauth.AccessToken:
        self.issued += 1
        return oauth.AccessToken(
            value=f"t{self.issued}", expires_at=NOW, fetched_at=NOW, expires_monotonic=1e12
        )

    def report(self, token: oauth.AccessToken, accepted: bool, *, renewed: bool = False) -> None:
        self.reports.append((token.value, accepted))
        if renewed:
            self.renewed.append(token.value)


@pytest.mark.parametrize(
    ("answers", "reports", "raised"),
    [
        ([(200, {"id": 1})], [("t1", True)], None),
        ([(404, {"code": 3001})], [("t1", True)], errors.MeetingNotFound),
        ([(429, {"code": 429})], [("t1", True)], errors.RateLimited),
        ([(503, None)], [], errors.ZoomServerError),
        ([(401, {"code": 4711})], [], errors.MissingScopes),
        ([(401, {"code": 124}), (200, {"id": 1})], [("t1", False), ("t2", True)], None),
        (
            [(401, {"code": 124}), (401, {"code": 124})],
            [("t1", False), ("t2", False)],
            errors.Unauthorized,
        ),
    ],
)
def test_zoom_auth__each_answer__reported_to_the_token_source(
    answers: list[tuple[int, Any]], reports: list[tuple[str, bool]], raised: type | None
) -> None:
    source = _Source()
    pending = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = pending.pop(0)
        return httpx.Response(status, json=body)

    client = zoom.ZoomClient(
        "https://api.zoom.us/v2", zoom.ZoomAuth(source), transport=httpx.MockTransport(handler)
    )
    try:
        if raised is None:
            client.get_meeting(1)
        else:
            with pytest.raises(raised):
                client.get_meeting(1)
    finally:
        client.close()
    assert source.reports == reports and not pending
    assert source.renewed == [value for value, _ in reports[1:]], "the retry's token is renewed"
