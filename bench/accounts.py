"""Accounts: token requests per credential while many processes need every credential's token.

Three credentials live side by side: the environment's S2S app (``default``), an S2S app of
another account (``acme``) and a user's connection to a registered OAuth app (``alice``,
whose every refresh spends a rotating refresh token). ``--processes`` spawned processes ask
for all three tokens at once, ``--rounds`` times; before each round every stored token is
dropped (as if it had expired). The ideal is one token request per credential per round, and
no refused grant (a refresh token spent twice would be one). That is the token layer alone.

Then jobs scoped by account (unless ``--no-jobs``): a fleet (``--workers`` x
``--concurrency``) runs creates for two S2S accounts side by side, ``alpha`` capped by Zoom
(the simulator) at ``--cap-a`` calls/s and ``bravo`` at ``--cap-b``, each credential told its
caps (``credentials add --rate-limits``), for about ``--seconds`` at each cap. Every pool
process needs both accounts' tokens at once when the jobs arrive (a storm per account): the
ideal is one token request per account. How near each account gets to its cap is its steady
rate at Zoom's side (the creates Zoom accepted for that account, after the first 10%, per
second) and its peak in any one second; 429s should be none.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Any

from rich.console import Console
from sqlalchemy import text

from bench import harness, report, workload
from worker import credentials, db, errors, jobs, simulator, token_store
from worker.config import get_settings

NAME = "accounts"
TITLE = "Token requests per account under storms"
KEY = "bench-accounts-encryption-key-0123456789"
APP = ("bench-general", "bench-general-secret")
ACME = {"acme-client": {"account_id": "acme-acc", "client_secret": "acme-secret"}}
REDIRECT = "https://app.example.com/zoom/callback"
CLIENTS = {"default": "sim-client", "acme": "acme-client", "alice": APP[0]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "jobs" so that `bench all --scale` scales it like the others' job counts.
    parser.add_argument("--processes", dest="jobs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-jobs", action="store_true", help="the token storms only")
    parser.add_argument("--cap-a", type=int, default=5, help="alpha's calls/s at Zoom (5)")
    parser.add_argument("--cap-b", type=int, default=20, help="bravo's calls/s at Zoom (20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="jobs per account: cap x this")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="processes per worker")


def _child(env: dict[str, str], ready: Any, rounds: list[Any], out: Any) -> None:
    os.environ.update(env)
    settings = get_settings()
    stores = [
        token_store.TokenStore(settings, db.sessions(settings), credential=name) for name in CLIENTS
    ]
    ready.put(os.getpid())
    for start in rounds:
        start.wait(600)
        token_store.forget_process_tokens()
        failures = 0
        for store in stores:
            try:
                store.get()
            except errors.ZoomWorkerError:
                failures += 1
        out.put(failures)


def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    harness.reset_database()
    config = simulator.SimulatorConfig(s2s_clients=ACME, oauth_apps={APP[0]: APP[1]})
    with simulator.start_simulator(config) as sim:
        env = {"DATABASE_URL": harness.DATABASE_URL, "TOKEN_ENCRYPTION_KEY": KEY}
        env |= sim.worker_env()
        os.environ.update(env)
        get_settings.cache_clear()
        _register(sim)
        failures, wall_s = _storms(args, env, out)
        stats = sim.simulator.stats()
    by_client = stats["tokens_by_client"]
    tokens = {name: by_client.get(client, 0) for name, client in CLIENTS.items()}
    # The user's first token came from registering it (an authorization code), not a storm.
    tokens["alice"] -= stats["grants"].get("authorization_code", 0)
    ideal = args.rounds
    rows = [[f"tokens fetched: {name}", str(n), "-", str(ideal)] for name, n in tokens.items()]
    rows.append(
        ["refused grants (a refresh token spent twice)", str(stats["token_errors"]), "-", "0"]
    )
    rows.append(["processes that got no token", str(failures), "-", "0"])
    rows.append(["wall time", f"{wall_s:.1f}s", "-", "-"])
    scoped = None if args.no_jobs else _scoped_jobs(args, out)
    if scoped is not None:
        rows += scoped.pop("rows")
    result: dict[str, Any] = {
        "name": NAME,
        "title": f"Accounts: {args.jobs} processes need 3 credentials' tokens at once, "
        f"{args.rounds} times",
        "machine": harness.machine(),
        "params": vars(args),
        "ours": {"tokens": tokens, "token_errors": stats["token_errors"], "failures": failures},
        "ideal": {"tokens_per_credential": ideal},
        "rows": rows,
        "panels": [
            report.panel(
                "token requests per credential",
                "tokens fetched",
                tokens,
                {f"ideal: {ideal} per credential (one per round)": ideal},
            )
        ],
    }
    if scoped is not None:
        result["ours_scoped_jobs"] = scoped
        result["panels"].append(
            report.panel(
                "steady rate at Zoom's side, share of each account's cap",
                "% of cap",
                {
                    name: 100 * side["steady_per_s"] / side["cap"]
                    for name, side in scoped["accounts"].items()
                },
                {"cap": 100.0},
                fmt="{:.0f}%",
            )
        )
    return result


def _scoped_jobs(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    """Creates of two accounts with their own caps, side by side (see the module)."""
    caps = {"alpha": args.cap_a, "bravo": args.cap_b}
    clients = {f"{n}-client": {"account_id": f"{n}-acc", "client_secret": f"{n}-s"} for n in caps}
    config = simulator.SimulatorConfig(
        s2s_clients=clients,
        account_rate_limits={
            f"{name}-acc": dict.fromkeys(simulator.RATE_CATEGORIES, cap)
            for name, cap in caps.items()
        },
    )
    fleet = harness.Fleet(args.workers, args.concurrency)
    counts = {name: max(1, round(cap * args.seconds)) for name, cap in caps.items()}
    out.print(f"[bold]accounts[/]: jobs of {counts} side by side at caps {caps}, {fleet}")
    with harness.service(config, fleet, out, TOKEN_ENCRYPTION_KEY=KEY) as svc:
        for name, cap in caps.items():
            limits = ",".join(f"{c}={cap}" for c in simulator.RATE_CATEGORIES)
            credentials.add_s2s(
                name,
                account_id=f"{name}-acc",
                client_id=f"{name}-client",
                client_secret=f"{name}-s",
                rate_limits=limits,
            )
        svc.warm_up(0)
        started = time.time()
        for name, count in counts.items():
            requests = [
                {
                    "user_id": workload.host(n),
                    "meeting": workload.new_body(n),
                    "idempotency_key": f"bench-{svc.run_id}-{name}-{n}",
                }
                for n in range(count)
            ]
            jobs.create_meetings(requests, account=name)
        done, waited_s = svc.wait_final(sum(counts.values()), 60 + 3 * args.seconds)
        stats = svc.stats()
        category = config.category_for("create")
        arrivals = {
            name: [
                t for t in svc.sim.simulator.accepted_calls(category, f"{name}-acc") if t >= started
            ]
            for name in caps
        }
    sides: dict[str, Any] = {}
    for name, cap in caps.items():
        seen = sorted(arrivals[name])
        skip = len(seen) // 10
        span = seen[-1] - seen[skip] if len(seen) > skip + 1 else 0.0
        sides[name] = {
            "cap": cap,
            "jobs": counts[name],
            "tokens": stats["tokens_by_client"].get(f"{name}-client", 0),
            "steady_per_s": (len(seen) - 1 - skip) / span if span else 0.0,
            "peak_any_second": workload.peak_any_second(seen),
        }
    rows = [
        [
            f"{name}: steady rate / peak in any 1 s at Zoom (cap {side['cap']}/s)",
            f"{side['steady_per_s']:.1f}/s ({side['steady_per_s'] / side['cap']:.0%}) / "
            f"{side['peak_any_second']}",
            "-",
            f"{side['cap']}/s",
        ]
        for name, side in sides.items()
    ]
    rows += [
        [f"{name}: token requests while its jobs ran", str(side["tokens"]), "-", "1"]
        for name, side in sides.items()
    ]
    rows.append(["429s (both accounts)", str(stats["api_429"]), "-", "0"])
    rows.append(
        ["jobs final / time", f"{done} of {sum(counts.values())} in {waited_s:.1f}s", "-", "-"]
    )
    return {"accounts": sides, "api_429": stats["api_429"], "rows": rows}


def _register(sim: simulator.RunningSimulator) -> None:
    with credentials.from_settings() as registry:
        client = ACME["acme-client"]
        registry.add_s2s(
            "acme",
            account_id="acme-acc",
            client_id="acme-client",
            client_secret=client["client_secret"],
        )
        registry.add_app("general", client_id=APP[0], client_secret=APP[1])
        code = sim.simulator.authorize_user(APP[0], "alice@example.com", REDIRECT)
        registry.register_user_authorization(account="alice", code=code, redirect_uri=REDIRECT)


def _storms(args: argparse.Namespace, env: dict[str, str], out: Console) -> tuple[int, float]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        ready, out_q = manager.Queue(), manager.Queue()
        rounds = [manager.Event() for _ in range(args.rounds)]
        procs = [
            context.Process(target=_child, args=(env, ready, rounds, out_q))
            for _ in range(args.jobs)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=600)
        failures, started = 0, time.monotonic()
        for number, start in enumerate(rounds, 1):
            with db.sessions(get_settings())() as session, session.begin():
                session.execute(text("UPDATE credentials SET token_ciphertext = NULL"))
            start.set()
            failures += sum(out_q.get(timeout=600) for _ in procs)
            out.print(f"[bold]accounts[/]: round {number} done")
        wall_s = time.monotonic() - started
        for proc in procs:
            proc.join(60)
    return failures, wall_s
