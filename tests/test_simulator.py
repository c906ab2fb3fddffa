"""The Zoom simulator, spoken to over real HTTP on 127.0.0.1 as the worker speaks to Zoom:
one account, then several accounts and a "General" app's user OAuth (single-use codes,
rotating and single-use refresh tokens)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from worker.simulator import (
    RunningSimulator,
    SimulatorClient,
    SimulatorConfig,
    start_simulator,
)

FORM = {"grant_type": "account_credentials", "account_id": "sim-account"}
CREDENTIALS = ("sim-client", "sim-secret")


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with start_simulator(SimulatorConfig(seed=7)) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # verify=False: plain HTTP only, and it saves loading the CA bundle for every test.
    with httpx.Client(timeout=10, verify=False) as client:
        yield client


@pytest.fixture
def control(sim: RunningSimulator) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        yield client


def request_token(
    http: httpx.Client, sim: RunningSimulator, secret: str = "sim-secret"
) -> httpx.Response:
    return http.post(sim.oauth_url, auth=("sim-client", secret), data=FORM)


def token(http: httpx.Client, sim: RunningSimulator, secret: str = "sim-secret") -> str:
    response = request_token(http, sim, secret)
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


class Api:
    """A bearer-authenticated view of the simulator's /v2 API."""

    def __init__(self, http: httpx.Client, sim: RunningSimulator, access_token: str) -> None:
        self.http, self.sim, self.token = http, sim, access_token

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.http.request(method, f"{self.sim.api_url}{path}", headers=headers, **kwargs)

    def create(self, user: str = "alice@example.com", **body: Any) -> httpx.Response:
        return self.call("POST", f"/users/{user}/meetings", json=body)


@pytest.fixture
def api(http: httpx.Client, sim: RunningSimulator) -> Api:
    return Api(http, sim, token(http, sim))


# -- token endpoint ------------------------------------------------------------------------


def test_simulator__token_request__bearer_token_with_scopes_and_api_url(
    http: httpx.Client, sim: RunningSimulator
) -> None:
    response = request_token(http, sim)

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert "meeting:write:meeting:admin" in body["scope"].split()
    assert body["api_url"] == sim.url
    assert len(body["access_token"]) >= 32
    assert Api(http, sim, body["access_token"]).create().status_code == 201


def test_simulator__token_params_in_query_string__400_invalid_request(
    http: httpx.Client, sim: RunningSimulator
) -> None:
    response = http.post(sim.oauth_url, auth=CREDENTIALS, params=FORM)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "reason" in response.json()


def test_simulator__token_without_basic_auth_or_grant_type__4706_and_4705(
    http: httpx.Client, sim: RunningSimulator
) -> None:
    no_auth = http.post(sim.oauth_url, data=FORM)
    no_grant = http.post(sim.oauth_url, auth=CREDENTIALS, data={"account_id": "sim-account"})
    other_grant = http.post(
        sim.oauth_url, auth=CREDENTIALS, data=FORM | {"grant_type": "client_credentials"}
    )

    assert (no_auth.status_code, no_auth.json()["code"]) == (400, 4706)
    assert (no_grant.status_code, no_grant.json()["code"]) == (400, 4706)
    assert (other_grant.status_code, other_grant.json()["code"]) == (400, 4705)


def test_simulator__bad_secret__401_code_4702(http: httpx.Client, sim: RunningSimulator) -> None:
    response = request_token(http, sim, secret="wrong")

    assert response.status_code == 401
    assert response.json() == {
        "reason": "Invalid client_id or client_secret",
        "error": "invalid_client",
        "code": 4702,
    }


def test_simulator__token_error_codes_off__body_without_code(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(token_error_codes=False)

    response = request_token(http, sim, secret="wrong")

    assert response.status_code == 401
    assert set(response.json()) == {"reason", "error"}


def test_simulator__wrong_account__400_code_4704(http: httpx.Client, sim: RunningSimulator) -> None:
    response = http.post(sim.oauth_url, auth=CREDENTIALS, data=FORM | {"account_id": "other"})

    assert response.status_code == 400
    assert response.json()["code"] == 4704
    assert response.json()["error"] == "invalid_client"


def test_simulator__app_disabled__400_code_4717(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(app_disabled=True)

    response = request_token(http, sim)

    assert response.status_code == 400
    assert response.json()["code"] == 4717
    assert response.json()["reason"].startswith("The app has been disabled")


def test_simulator__default_policy__old_tokens_stay_valid(
    http: httpx.Client, sim: RunningSimulator
) -> None:
    first, second = token(http, sim), token(http, sim)

    assert Api(http, sim, first).create().status_code == 201
    assert Api(http, sim, second).create().status_code == 201


def test_simulator__token_tolerance__new_token_kills_all_but_newest_n(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(token_tolerance=2)
    first, second, third = token(http, sim), token(http, sim), token(http, sim)

    refused = Api(http, sim, first).create()

    assert refused.status_code == 401
    assert refused.json() == {"code": 124, "message": "Invalid access token."}
    assert Api(http, sim, second).create().status_code == 201
    assert Api(http, sim, third).create().status_code == 201
    assert control.stats()["tokens_valid"] == 2


def test_simulator__invalidate_tokens__every_token_refused(
    api: Api, control: SimulatorClient
) -> None:
    control.invalidate_tokens()

    response = api.create()

    assert response.status_code == 401
    assert response.json()["code"] == 124


def test_simulator__expired_token__401_access_token_is_expired(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(token_lifetime_s=0)

    response = Api(http, sim, token(http, sim)).create()

    assert response.status_code == 401
    assert response.json() == {"code": 124, "message": "Access token is expired."}


def test_simulator__refuse_fresh_tokens__401_until_secret_rotated(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(refuse_fresh_tokens=True)
    fresh = token(http, sim)
    refused = Api(http, sim, fresh).create()

    control.rotate_secret("new-secret")

    assert refused.status_code == 401
    assert refused.json()["code"] == 124
    assert request_token(http, sim).json()["code"] == 4702
    assert Api(http, sim, fresh).create().status_code == 401
    assert Api(http, sim, token(http, sim, secret="new-secret")).create().status_code == 201
    assert control.configure()["refuse_fresh_tokens"] is False


def test_simulator__missing_scopes__401_code_4711(api: Api, control: SimulatorClient) -> None:
    control.configure(missing_scopes=True)

    response = api.create()

    assert response.status_code == 401
    assert response.json()["code"] == 4711
    assert "does not contain scopes" in response.json()["message"]


def test_simulator__users_me__the_tokens_account_and_user(
    api: Api, http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(oauth_apps={"general-client": "general-secret"})
    redirect = "https://app.example.com/callback"
    code = control.authorize_user("general-client", "bob@example.com", redirect, "bob-account")
    granted = http.post(
        sim.oauth_url,
        auth=("general-client", "general-secret"),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
    ).json()

    s2s = api.call("GET", "/users/me").json()
    user = Api(http, sim, granted["access_token"]).call("GET", "/users/me").json()

    assert s2s["account_id"] == FORM["account_id"] and s2s["id"].startswith("admin@")
    assert (user["account_id"], user["email"]) == ("bob-account", "bob@example.com")
    assert api.call("GET", "/users/someone@example.com").status_code == 404


# -- meetings ------------------------------------------------------------------------------


def test_simulator__create__full_meeting_with_defaults(api: Api) -> None:
    response = api.create(topic="Standup", settings={"waiting_room": True})

    assert response.status_code == 201
    meeting = response.json()
    assert 10_000_000_000 <= meeting["id"] <= 99_999_999_999
    assert meeting["host_email"] == "alice@example.com"
    assert (meeting["topic"], meeting["type"], meeting["duration"]) == ("Standup", 2, 60)
    assert meeting["status"] == "waiting"
    assert meeting["timezone"] == "UTC"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meeting["start_time"])
    assert meeting["join_url"].startswith(f"https://sim.zoom.us/j/{meeting['id']}?pwd=")
    assert meeting["start_url"].startswith(f"https://sim.zoom.us/s/{meeting['id']}?zak=")
    assert meeting["settings"]["waiting_room"] is True
    assert meeting["settings"]["auto_recording"] == "none"
    assert meeting["pre_schedule"] is False
    assert {"uuid", "host_id", "created_at", "password", "agenda"} <= meeting.keys()


def test_simulator__create_user_id_without_at__sim_host_email(api: Api) -> None:
    meeting = api.create("u123").json()

    assert meeting["host_email"] == "u123@sim.zoom.us"


def test_simulator__create_invalid_fields__400_code_300_names_fields(api: Api) -> None:
    response = api.create(topic="x" * 201, agenda="y" * 2001, duration="60", type=4)

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["message"]) == (300, "Validation Failed.")
    assert {e["field"] for e in body["errors"]} == {"topic", "agenda", "duration", "type"}


def test_simulator__missing_user__404_code_1001(api: Api, control: SimulatorClient) -> None:
    control.configure(missing_users=["ghost@example.com"])

    response = api.create("ghost@example.com")

    assert response.status_code == 404
    assert response.json() == {"code": 1001, "message": "User does not exist: ghost@example.com."}


def test_simulator__get_update_delete__then_404_code_3001(api: Api) -> None:
    meeting_id = api.create(topic="Before").json()["id"]

    updated = api.call("PATCH", f"/meetings/{meeting_id}", json={"topic": "After"})
    fetched = api.call("GET", f"/meetings/{meeting_id}")
    deleted = api.call("DELETE", f"/meetings/{meeting_id}", params={"occurrence_id": "1"})
    gone = api.call("GET", f"/meetings/{meeting_id}")
    deleted_again = api.call("DELETE", f"/meetings/{meeting_id}")

    assert updated.status_code == 204
    assert fetched.status_code == 200
    assert fetched.json()["topic"] == "After"
    assert "start_url" in fetched.json()
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert gone.status_code == 404
    assert gone.json() == {"code": 3001, "message": f"Meeting does not exist: {meeting_id}."}
    assert (deleted_again.status_code, deleted_again.json()["code"]) == (404, 3001)


def test_simulator__legacy_not_found_code__delete_answers_code_300(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(legacy_not_found_code=True)

    response = api.call("DELETE", "/meetings/81234567890")

    assert response.status_code == 404
    assert response.json()["code"] == 300


def test_simulator__delete_started_or_ended__400_codes_3002_3007(
    api: Api, control: SimulatorClient
) -> None:
    started, ended = api.create().json()["id"], api.create().json()["id"]
    control.set_meeting_status(started, "started")
    control.set_meeting_status(ended, "ended")

    in_progress = api.call("DELETE", f"/meetings/{started}")
    over = api.call("DELETE", f"/meetings/{ended}")

    assert in_progress.status_code == 400
    assert in_progress.json() == {
        "code": 3002,
        "message": "Sorry, you cannot delete this meeting since it is in progress.",
    }
    assert (over.status_code, over.json()["code"]) == (400, 3007)


def test_simulator__list__pages_in_creation_order_without_start_url(api: Api) -> None:
    ids = [api.create("bob", topic=f"m{i}", agenda="a" * 300).json()["id"] for i in range(5)]
    api.create("carol")  # another host's meeting is not listed
    api.call("DELETE", f"/meetings/{ids[4]}")

    pages, page_token = [], ""
    for _ in range(5):
        params = {"type": "scheduled", "page_size": 2, "next_page_token": page_token}
        response = api.call("GET", "/users/bob/meetings", params=params)
        assert response.status_code == 200
        pages.append(response.json())
        page_token = response.json()["next_page_token"]
        if not page_token:
            break

    assert [len(p["meetings"]) for p in pages] == [2, 2]
    assert {p["total_records"] for p in pages} == {4}
    listed = [m for p in pages for m in p["meetings"]]
    assert [m["id"] for m in listed] == ids[:4]
    assert all(len(m["agenda"]) == 250 for m in listed)
    assert all("start_url" not in m for m in listed)
    assert set(listed[0]) == {
        *("id", "uuid", "host_id", "topic", "type", "start_time", "duration", "timezone"),
        *("created_at", "join_url", "agenda"),
    }


def test_simulator__list_live__only_started_meetings(api: Api, control: SimulatorClient) -> None:
    waiting, live = api.create("dan").json()["id"], api.create("dan").json()["id"]
    control.set_meeting_status(live, "started")

    response = api.call("GET", "/users/dan/meetings", params={"type": "live"})

    assert [m["id"] for m in response.json()["meetings"]] == [live]
    assert waiting != live


def test_simulator__unknown_path__404(api: Api) -> None:
    response = api.call("GET", "/webinars/1")

    assert response.status_code == 404
    assert "code" in response.json()


# -- rate limits ---------------------------------------------------------------------------


def test_simulator__per_second_burst__429_with_headers(api: Api, control: SimulatorClient) -> None:
    control.configure(rate_limits={"light": 3})
    created = api.create()  # creates are Light too: one of the three

    responses = [api.call("GET", f"/meetings/{created.json()['id']}") for _ in range(8)]

    statuses = [r.status_code for r in responses]
    assert created.status_code == 201
    assert statuses[:2] == [200, 200]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json() == {
        "code": 429,
        "message": "You have reached the maximum per-second rate limit for this API. "
        "Try again later.",
    }
    assert refused.headers["X-RateLimit-Category"] == "Light"
    assert refused.headers["X-RateLimit-Type"] == "QPS"
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert control.stats()["max_calls_per_second"]["light"] == 3


@pytest.mark.parametrize(("window", "after_the_second"), [("fixed", 201), ("sliding", 429)])
def test_simulator__rate_window__fixed_resets_each_wall_second_sliding_does_not(
    api: Api, control: SimulatorClient, window: str, after_the_second: int
) -> None:
    control.configure(rate_limits={"light": 2}, rate_window=window)
    # Two calls late in a wall-clock second, then one just after it turns.
    while time.time() % 1 < 0.8 or time.time() % 1 > 0.85:
        time.sleep(0.01)
    first = [api.create().status_code for _ in range(2)]
    time.sleep(1 - time.time() % 1 + 0.02)
    third = api.create().status_code

    assert first == [201, 201]
    assert third == after_the_second


def test_simulator__per_second_429_headers_off__no_rate_limit_headers(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(rate_limits={"medium": 1}, rate_limit_headers=False)

    responses = [api.call("GET", "/users/eve/meetings") for _ in range(4)]

    refused = [r for r in responses if r.status_code == 429]
    assert refused
    assert not any(h.lower().startswith("x-ratelimit") for h in refused[0].headers)


def test_simulator__create_category_medium__counts_in_medium_window(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(create_category="medium", rate_limits={"medium": 2, "light": 100})

    statuses = [api.create().status_code for _ in range(4)]

    assert statuses[:2] == [201, 201]
    assert 429 in statuses[2:]


def test_simulator__daily_cap__429_with_iso_retry_after(api: Api, control: SimulatorClient) -> None:
    control.configure(daily_create_limit=2)
    meeting_id = api.create("frank").json()["id"]
    assert api.call("PATCH", f"/meetings/{meeting_id}", json={"topic": "x"}).status_code == 204

    refused = api.create("frank")
    other_host = api.create("grace")

    assert refused.status_code == 429
    assert refused.json()["code"] == 429
    assert refused.json()["message"].startswith("You have exceeded the daily rate limit (2)")
    assert refused.headers["X-RateLimit-Type"] == "Daily-limit"
    retry_at = datetime.strptime(refused.headers["Retry-After"], "%Y-%m-%dT%H:%M:%SZ")
    retry_at = retry_at.replace(tzinfo=UTC)
    assert (retry_at.hour, retry_at.minute, retry_at.second) == (0, 0, 0)
    assert timedelta(0) < retry_at - datetime.now(UTC) <= timedelta(days=1)
    assert other_host.status_code == 201
    assert control.stats()["api_429_daily"] == 1


def test_simulator__daily_cap_400_style__400_code_300(api: Api, control: SimulatorClient) -> None:
    control.configure(daily_create_limit=1, daily_limit_style="400")
    api.create()

    refused = api.create()

    assert refused.status_code == 400
    assert refused.json()["code"] == 300
    assert "daily rate limit (1)" in refused.json()["message"]


# -- faults --------------------------------------------------------------------------------


def test_simulator__reply_lost__meeting_exists_but_no_answer(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(reply_lost_rate=1.0)

    with pytest.raises(httpx.RemoteProtocolError):
        api.create(topic="lost")

    meetings = control.meetings()
    assert [m["topic"] for m in meetings] == ["lost"]
    assert control.stats()["replies_lost"] == 1
    control.configure(reply_lost_rate=0.0)
    assert api.create().status_code == 201  # the server is still serving


def test_simulator__drop_rate__no_answer_and_nothing_done(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(drop_rate=1.0)

    with pytest.raises(httpx.TransportError):
        api.create()

    assert control.meetings() == []
    assert control.stats()["connections_dropped"] == 1


def test_simulator__error_rate__5xx_before_doing_anything(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(error_rate=1.0)

    responses = [api.create() for _ in range(6)]

    assert {r.status_code for r in responses} <= {500, 502, 503}
    assert all(r.json()["code"] == r.status_code for r in responses)
    assert control.meetings() == []
    assert control.stats()["api_5xx"] == 6


# -- control API ---------------------------------------------------------------------------


def test_simulator__stats__counts_tokens_calls_and_meetings(
    http: httpx.Client, sim: RunningSimulator, api: Api, control: SimulatorClient
) -> None:
    request_token(http, sim, secret="wrong")
    meeting_id = api.create().json()["id"]
    api.call("DELETE", f"/meetings/{meeting_id}")
    api.create()
    control.invalidate_tokens()
    api.create()

    stats = control.stats()

    assert (stats["token_requests"], stats["tokens_issued"], stats["token_errors"]) == (2, 1, 1)
    assert (stats["api_calls"], stats["api_401"]) == (4, 1)
    assert stats["calls_by_operation"] == {"create": 3, "delete": 1}
    assert (stats["meetings_created"], stats["meetings_deleted"], stats["live_meetings"]) == (
        2,
        1,
        1,
    )


def test_simulator__seed_meeting__listed_but_not_in_api_stats(
    api: Api, control: SimulatorClient
) -> None:
    seeded = control.seed_meeting("henry", {"topic": "Foreign"})

    listed = api.call("GET", "/users/henry/meetings").json()["meetings"]
    stats = control.stats()

    assert [m["id"] for m in listed] == [seeded["id"]]
    assert (stats["meetings_created"], stats["meetings_seeded"], stats["api_calls"]) == (0, 1, 1)
    assert control.meetings()[0]["foreign"] is True


def test_simulator__sim_meetings__includes_deleted_never_start_url(
    api: Api, control: SimulatorClient
) -> None:
    kept, deleted = api.create().json()["id"], api.create().json()["id"]
    api.call("DELETE", f"/meetings/{deleted}")

    meetings = {m["id"]: m for m in control.meetings()}

    assert (meetings[kept]["deleted"], meetings[deleted]["deleted"]) == (False, True)
    assert meetings[kept]["status"] == "waiting"
    assert all("start_url" not in m for m in meetings.values())


def test_simulator__configure__unknown_or_bad_switch_400_and_no_secret_echoed(
    control: SimulatorClient,
) -> None:
    config = control.configure(error_rate=0.5)

    with pytest.raises(httpx.HTTPStatusError) as unknown:
        control.configure(no_such_switch=True)
    with pytest.raises(httpx.HTTPStatusError) as bad:
        control.configure(error_rate=2)

    assert config["error_rate"] == 0.5
    assert "client_secret" not in config
    assert unknown.value.response.status_code == 400
    assert "no_such_switch" in unknown.value.response.json()["message"]
    assert bad.value.response.status_code == 400


def test_simulator__reset__forgets_meetings_tokens_counters_keeps_config(
    api: Api, control: SimulatorClient
) -> None:
    control.configure(daily_create_limit=5)
    api.create()

    control.reset()

    assert control.meetings() == []
    assert control.stats()["api_calls"] == 0
    assert api.create().status_code == 401
    assert control.configure()["daily_create_limit"] == 5


def test_simulator__stop__port_closed(http: httpx.Client) -> None:
    running = start_simulator()
    assert http.get(f"{running.url}/_sim/stats").status_code == 200

    running.stop()
    running.stop()

    with pytest.raises(httpx.TransportError):
        http.get(f"{running.url}/_sim/stats")


# -- behaving like Zoom (issue 9) -----------------------------------------------------------

SCHEMAS = Path(__file__).parent / "zoom_schemas"  # cut from Zoom's Meetings OpenAPI file


def _schema_errors(name: str, answer: Any) -> list[str]:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    validator = jsonschema.Draft4Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(answer)]


def _weekly_from(start: datetime, end_times: int) -> dict[str, Any]:
    zoom_day = start.isoweekday() % 7 + 1  # Zoom counts 1 = Sunday ... 7 = Saturday
    return {"type": 2, "repeat_interval": 1, "weekly_days": str(zoom_day), "end_times": end_times}


def test_simulator__answers__match_zoom_openapi_response_schemas(
    api: Api, control: SimulatorClient
) -> None:
    start = datetime.now(UTC) + timedelta(days=1)
    created = api.create(
        topic="Schema",
        type=8,
        start_time=f"{start:%Y-%m-%dT%H:%M:%SZ}",
        recurrence=_weekly_from(start, 3),
        tracking_fields=[{"field": "team", "value": "ops"}],
    )
    fetched = api.call("GET", f"/meetings/{created.json()['id']}")
    listed = api.call("GET", "/users/alice@example.com/meetings", params={"page_size": 300})

    assert created.status_code == 201 and fetched.status_code == 200
    assert _schema_errors("create_meeting_201", created.json()) == []
    assert _schema_errors("get_meeting_200", fetched.json()) == []
    assert _schema_errors("list_meetings_200", listed.json()) == []
    assert len(fetched.json()["occurrences"]) == 3


def test_simulator__list__leaves_out_instant_meetings(api: Api) -> None:
    instant = api.create("ivy", type=1).json()["id"]
    scheduled = api.create("ivy", type=2).json()["id"]

    listed = api.call("GET", "/users/ivy/meetings").json()["meetings"]
    fetched = api.call("GET", f"/meetings/{instant}")

    assert [m["id"] for m in listed] == [scheduled]
    assert fetched.status_code == 200, "an instant meeting exists; it is just not listed"


def test_simulator__schedule_for__other_user_is_host_and_lists_it(api: Api) -> None:
    created = api.create("assistant@example.com", schedule_for="boss@example.com").json()

    under_boss = api.call("GET", "/users/boss@example.com/meetings").json()["meetings"]
    under_assistant = api.call("GET", "/users/assistant@example.com/meetings").json()["meetings"]

    assert created["host_email"] == "boss@example.com"
    assert [m["id"] for m in under_boss] == [created["id"]]
    assert under_assistant == []


def test_simulator__series__occurrences_past_only_when_asked_deleted_marked(
    api: Api, control: SimulatorClient
) -> None:
    control.advance_clock(-8 * 86400)  # the series began eight days ago
    past_start = datetime.now(UTC) - timedelta(days=8)
    meeting_id = api.create(type=8, duration=30, recurrence=_weekly_from(past_start, 3)).json()[
        "id"
    ]
    control.advance_clock(8 * 86400)

    upcoming = api.call("GET", f"/meetings/{meeting_id}").json()["occurrences"]
    every = api.call(
        "GET", f"/meetings/{meeting_id}", params={"show_previous_occurrences": "true"}
    ).json()["occurrences"]
    deleted = api.call(
        "DELETE", f"/meetings/{meeting_id}", params={"occurrence_id": upcoming[0]["occurrence_id"]}
    )
    after = api.call("GET", f"/meetings/{meeting_id}").json()["occurrences"]

    assert len(every) == 3 and len(upcoming) == 1 and upcoming[0] == every[2]
    assert deleted.status_code == 204
    assert [o["status"] for o in after] == ["deleted"]
    assert api.call("GET", f"/meetings/{meeting_id}").status_code == 200, "the series remains"
    assert control.stats()["occurrences_deleted"] == 1


def test_simulator__clock_moved_forward__series_has_no_upcoming_occurrence(
    api: Api, control: SimulatorClient
) -> None:
    start = datetime.now(UTC) + timedelta(hours=1)
    body = {"type": 8, "start_time": f"{start:%Y-%m-%dT%H:%M:%SZ}", "duration": 30}
    meeting_id = api.create(**body, recurrence=_weekly_from(start, 2)).json()["id"]

    before = api.call("GET", f"/meetings/{meeting_id}").json()["occurrences"]
    control.advance_clock(15 * 86400)
    after = api.call("GET", f"/meetings/{meeting_id}").json()["occurrences"]

    assert len(before) == 2 and after == []


def test_simulator__clock_moved_back__create_starts_in_the_past(
    api: Api, control: SimulatorClient
) -> None:
    now = control.advance_clock(-7200)

    meeting = api.create(duration=30).json()

    assert meeting["start_time"] == meeting["created_at"] == now
    started = datetime.fromisoformat(now.replace("Z", "+00:00"))
    assert datetime.now(UTC) - started > timedelta(minutes=119)


def test_simulator__update_by_host__moves_the_meeting(api: Api, control: SimulatorClient) -> None:
    meeting_id = api.create().json()["id"]

    control.update_meeting(meeting_id, {"start_time": "2099-01-05T10:00:00Z", "duration": 90})

    fetched = api.call("GET", f"/meetings/{meeting_id}").json()
    assert (fetched["start_time"], fetched["duration"]) == ("2099-01-05T10:00:00Z", 90)
    assert control.stats()["api_calls"] == 2, "the host's change is not one of the app's calls"


def test_simulator__host_uses_pmi__create_without_use_pmi_false_gets_the_pmi(
    api: Api, control: SimulatorClient
) -> None:
    pmi = control.set_use_pmi("pat@example.com")

    plain = api.create("pat@example.com").json()
    again = api.create("pat@example.com").json()
    refused = api.create("pat@example.com", settings={"use_pmi": False}).json()
    series = api.create("pat@example.com", type=8).json()

    assert plain["id"] == again["id"] == pmi, "two creates share the host's personal room"
    assert refused["id"] != pmi and series["id"] != pmi
    assert 1_000_000_000 <= pmi <= 9_999_999_999


@pytest.mark.parametrize("rule", ["code_points", "utf16"])
def test_simulator__list_agenda_cut__by_the_configured_rule(
    api: Api, control: SimulatorClient, rule: str
) -> None:
    control.configure(list_agenda_cut=rule)
    api.create("uma", agenda="\N{GRINNING FACE}" * 240)

    [listed] = api.call("GET", "/users/uma/meetings").json()["meetings"]

    expected = 240 if rule == "code_points" else 125  # 250 UTF-16 units: 125 emoji
    assert listed["agenda"] == "\N{GRINNING FACE}" * expected


@pytest.mark.parametrize("password", ["abc#123!", "", "!@#$%^&*()"])
def test_simulator__passcode_of_2026_spec__accepted(api: Api, password: str) -> None:
    response = api.create(password=password)

    assert response.status_code == 201, response.text
    assert response.json()["password"] == (password or response.json()["password"])
    assert response.json()["password"], "an empty passcode is none given: one is made"


def test_simulator__passcode_with_space_or_too_long__400(api: Api) -> None:
    assert api.create(password="abc 123").status_code == 400
    assert api.create(password="x" * 11).status_code == 400


# -- several accounts, and a "General" app's user OAuth ---------------------------------------

GENERAL = ("general-client", "general-secret")
REDIRECT = "https://app.example.com/cb"
ACME = {"acme-client": {"account_id": "acme-acc", "client_secret": "acme-secret"}}


def _grant(http: httpx.Client, sim: RunningSimulator, **form: str) -> httpx.Response:
    return http.post(sim.oauth_url, auth=GENERAL, data=form)


def _s2s(http: httpx.Client, sim: RunningSimulator, client: str, secret: str, account: str) -> str:
    form = {"grant_type": "account_credentials", "account_id": account}
    response = http.post(sim.oauth_url, auth=(client, secret), data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _get(http: httpx.Client, sim: RunningSimulator, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return http.get(f"{sim.api_url}/meetings/1", headers=headers).status_code


def test_simulator__refresh_token__rotates_and_spending_one_twice_is_invalid_grant(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(oauth_apps={GENERAL[0]: GENERAL[1]})
    code = control.authorize_user(GENERAL[0], "alice@example.com", REDIRECT)
    first = _grant(http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    again = _grant(http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    refresh = first.json()["refresh_token"]
    rotated = _grant(http, sim, grant_type="refresh_token", refresh_token=refresh)
    spent_twice = _grant(http, sim, grant_type="refresh_token", refresh_token=refresh)
    latest = _grant(
        http, sim, grant_type="refresh_token", refresh_token=rotated.json()["refresh_token"]
    )

    assert first.status_code == 200 and _get(http, sim, first.json()["access_token"]) == 404
    assert again.status_code == 400, "an authorization code is single use"
    assert rotated.status_code == 200 and rotated.json()["refresh_token"] != refresh
    assert spent_twice.status_code == 400
    assert spent_twice.json() == {"reason": "Invalid Token!", "error": "invalid_grant"}
    assert latest.status_code == 200, "the latest refresh token still works"


def test_simulator__code_with_another_redirect_uri__refused(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(oauth_apps={GENERAL[0]: GENERAL[1]})
    code = control.authorize_user(GENERAL[0], "bob@example.com", REDIRECT)

    response = _grant(
        http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT + "x"
    )

    assert response.status_code == 400
    assert response.json()["reason"] == "Redirect URI mismatch."


def test_simulator__revoked_user__refresh_invalid_request_style(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(oauth_apps={GENERAL[0]: GENERAL[1]}, grant_error_style="invalid_request")
    code = control.authorize_user(GENERAL[0], "carol@example.com", REDIRECT)
    granted = _grant(http, sim, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)

    assert control.revoke_user("carol@example.com") == 1
    response = _grant(
        http, sim, grant_type="refresh_token", refresh_token=granted.json()["refresh_token"]
    )

    assert response.json() == {"reason": "Invalid Token!", "error": "invalid_request"}


def test_simulator__two_accounts__own_rate_limits_daily_counts_and_refusal(
    http: httpx.Client, sim: RunningSimulator, control: SimulatorClient
) -> None:
    control.configure(
        s2s_clients=ACME, account_rate_limits={"acme-acc": {"light": 3}}, daily_create_limit=1
    )
    main = _s2s(http, sim, "sim-client", "sim-secret", "sim-account")
    acme = _s2s(http, sim, "acme-client", "acme-secret", "acme-acc")
    wrong = http.post(
        sim.oauth_url,
        auth=("acme-client", "acme-secret"),
        data={"grant_type": "account_credentials", "account_id": "sim-account"},
    )

    creates = [
        http.post(
            f"{sim.api_url}/users/host@example.com/meetings",
            headers={"Authorization": f"Bearer {t}"},
            json={"topic": "t"},
        ).status_code
        for t in (main, acme)
    ]
    acme_calls = [_get(http, sim, acme) for _ in range(8)]
    main_calls = [_get(http, sim, main) for _ in range(8)]
    control.configure(refused_accounts=["acme-acc"])
    refused = (_get(http, sim, acme), _get(http, sim, main))

    assert wrong.status_code == 400 and wrong.json()["code"] == 4704
    assert acme_calls[:2] == [404, 404] and 429 in acme_calls
    assert main_calls == [404] * 8, "another account's limits are its own"
    assert creates == [201, 201], "daily counts are per account"
    assert refused == (401, 404)
    stats = control.stats()
    assert stats["tokens_by_client"] == {"sim-client": 1, "acme-client": 1}
    assert stats["accounts"]["acme-acc"]["max_calls_per_second"]["light"] == 3
