"""Accounts: token requests per credential while many processes need every credential's token.

Three credentials live side by side: the environment's S2S app (``default``), an S2S app of
another account (``acme``) and a user's connection to a registered OAuth app (``alice``,
whose every refresh spends a rotating refresh token). ``--processes`` spawned processes ask
for all three tokens at once, ``--rounds`` times; before each round every stored token is
dropped (as if it had expired). The ideal is one token request per credential per round, and
no refused grant (a refresh token spent twice would be one). Jobs are not scoped by account
yet (the next slice of issue 17), so this measures the token layer alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Any

from rich.console import Console
from sqlalchemy import text

from bench import harness, report
from worker import credentials, db, errors, simulator, token_store
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
    return {
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
