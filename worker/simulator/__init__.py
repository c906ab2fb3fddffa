"""A built-in Zoom simulator: a real HTTP server answering like Zoom's S2S OAuth and Meetings API.

It serves tests, the demo and benchmarks, so it is standard library only
(``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, one daemon thread per connection),
never logs a request line, and is made of parts owned by one :class:`Simulator` under one
``threading.Lock``: the token issuer (``tokens``), the meeting book (``meetings``, with
``recurrence``), the rate windows (``limits``, one set per account), users' grants
(``user_oauth``), the counters and the clock (``state``).

Zoom's side
-----------
``POST /oauth/token``
    ``Authorization: Basic base64(client_id:client_secret)`` and the form body
    ``grant_type=account_credentials&account_id=<id>`` (an S2S client), or for a "General"
    app (``oauth_apps``) ``grant_type=authorization_code&code=..&redirect_uri=..`` or
    ``grant_type=refresh_token&refresh_token=..``: codes are single use, and every refresh
    answers a new ``refresh_token`` and kills the one spent (spent twice: 400
    ``invalid_grant``, see :mod:`.user_oauth`). Answers ``access_token``,
    ``token_type``, ``expires_in``, ``scope`` and ``api_url`` (this server's own root).
    Errors are ``{"reason", "error", "code"}``: parameters in the query string 400
    ``invalid_request``; no Basic auth or no grant type 4706; another grant type 4705; bad
    client id or secret 401 4702; another account id 400 4704; a disabled app 400 4717.
``POST /v2/users/{userId}/meetings``, ``GET /v2/users/{userId}/meetings``,
``GET|PATCH|DELETE /v2/meetings/{meetingId}``, ``GET /v2/users/me``
    Bearer token required (``users/me``: the token's user, ``id``, ``email``, ``account_id``;
    an S2S token's is its account's admin). Every refusal is ``{"code", "message"}`` as
    Zoom sends it: 401
    code 124 (unknown, invalidated or expired token), 401 4711 (missing scopes), 404 1001
    (no such user), 404 3001 (no such meeting; legacy 300), 400 3002 / 3007 (deleting a
    started / ended meeting), 400 300 (validation), 429 (per-second and per-user daily limits).
    As Zoom: the list leaves out instant meetings and lists a ``schedule_for`` meeting under
    its host; a series answers ``occurrences`` (``show_previous_occurrences``, per-occurrence
    ``DELETE``/``PATCH`` with ``occurrence_id``); a host whose profile uses the PMI gets it for
    a type 2/3 create without ``settings.use_pmi: false``. See :mod:`.meetings`.

Switches (:class:`SimulatorConfig`, also settable at run time with ``POST /_sim/config``)
-----------------------------------------------------------------------------------------
Credentials ``account_id``, ``client_id``, ``client_secret``; more accounts ``s2s_clients``
(client id -> ``{"account_id", "client_secret"}``), each with its own per-second windows and
daily counts (``account_rate_limits``: account id -> caps, else ``rate_limits``), and
``refused_accounts`` (every token of those accounts answered 401 code 124); users' OAuth
``oauth_apps`` (client id -> secret) and ``grant_error_style`` ("invalid_grant", or Zoom's
``invalid_request`` "Invalid Token!"). Tokens ``token_lifetime_s``,
``scopes``, ``token_tolerance`` (N: a new token kills all but the newest N, as Zoom did before
2023; None: tokens live until expiry, as today), ``token_error_codes``, ``token_latency_s``,
``token_endpoint_down`` (the token endpoint answers 503 to every request),
``app_disabled``, ``refuse_fresh_tokens`` (tokens are issued but every API call is answered
401 code 124: the "ownership transferred" state that only a secret rotation ends),
``missing_scopes``. Meetings ``missing_users``, ``legacy_not_found_code``, ``list_agenda_cut``
("code_points" or "utf16": how the list counts the 250 characters of agenda it shows). Rate limits
``rate_limits`` (per category, calls accepted per second), ``rate_window`` ("sliding": in any
1 s span, the default; "fixed": in each wall-clock second), ``rate_limit_headers``,
``categories`` and ``create_category`` (operation -> category; an explicit
``categories["create"]`` wins over ``create_category``), ``daily_create_limit`` and
``daily_limit_style`` ("429", or "400" with code 300 as in an older spec),
``meeting_update_limit`` (updates of one meeting in any 24 hours, 100 as Zoom documents;
beyond, 429 naming the meeting). A PATCH ignores a past ``start_time``, as Zoom does.
Faults, drawn from ``random.Random(seed)``: ``error_rate`` (500/502/503 before doing
anything), ``drop_rate`` (connection closed without an answer before doing anything),
``reply_lost_rate`` (creates only: the meeting is made, then the connection is closed
without an answer) and
``latency_s`` (a sleep before every API answer). Event notifications ``webhook_url`` and
``webhook_secret_token``: when both are set, ``meeting.created``, ``.updated``, ``.deleted``,
``.started`` and ``.ended`` are POSTed there, signed as Zoom signs them, from a background
thread that never holds the lock (:mod:`.webhooks`), for the API's changes and the control
API's alike.

Control API (a token, or loopback only)
---------------------------------------
Started with a control token (``SIMULATOR_CONTROL_TOKEN``, or ``start_simulator``'s
``control_token``), the simulator answers ``/_sim/...`` only with that token in
``X-Sim-Control-Token``; without one, only requests from loopback. Anything else gets a 403.

``GET /_sim/stats``, ``GET /_sim/meetings`` (every meeting ever made, with ``deleted``, never
``start_url``), ``GET|POST /_sim/config``, ``POST /_sim/reset`` (everything but the config),
``POST /_sim/invalidate-tokens``, ``POST /_sim/faults`` ``{"operation", "count", "status"}``
(the next ``count`` API calls of the operation answered 500, 502 or 503),
``POST /_sim/rotate-secret`` ``{"client_secret"}`` (also ends ``refuse_fresh_tokens`` and
kills every token), ``POST /_sim/meetings``
``{"user_id", "body"}`` (a meeting made by another app), ``POST /_sim/meetings/{id}/status``
``{"status": "waiting" | "started" | "ended"}``, ``PATCH /_sim/meetings/{id}`` (the host moves
or changes it in Zoom's web page), ``DELETE /_sim/meetings/{id}`` ``{"occurrence_id"?}`` (the
host deletes it, or one occurrence, there), ``POST /_sim/clock`` ``{"advance_s"}`` (move the clock;
negative moves it back, so a create makes a meeting that already started or ended) and
``POST /_sim/users/{user}/settings`` ``{"use_pmi"}`` (answers the host's ``pmi``),
``POST /_sim/oauth/authorize`` ``{"client_id", "user_id", "redirect_uri", "account_id"?}``
(the user consents: answers the ``code`` Zoom's redirect would carry) and
``POST /_sim/oauth/revoke`` ``{"user_id"}`` (the user removes the app: their refresh tokens
die). ``GET /_sim/stats`` also counts ``tokens_by_client``, ``grants`` by type and each
account's peak rates (``accounts``).
:class:`SimulatorClient` wraps them.
"""

from worker.simulator.behaviour import Simulator
from worker.simulator.client import SimulatorClient
from worker.simulator.config import RATE_CATEGORIES, SimulatorConfig
from worker.simulator.server import RunningSimulator, serve_forever, start_simulator
from worker.simulator.wire import Reply, Request

__all__ = [
    "RATE_CATEGORIES",
    "Reply",
    "Request",
    "RunningSimulator",
    "Simulator",
    "SimulatorClient",
    "SimulatorConfig",
    "serve_forever",
    "start_simulator",
]
