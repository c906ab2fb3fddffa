"""The HTTP server in front of a :class:`Simulator` (``ThreadingHTTPServer``), and how to run it."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import socket
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.simulator.behaviour import Simulator
from worker.simulator.config import CONTROL_TOKEN_HEADER, SimulatorConfig, control_token_from_env
from worker.simulator.wire import Request, error_reply

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; hands every request to the Simulator."""

    protocol_version = "HTTP/1.1"
    server_version = "ZoomSimulator/1"
    # Idle keep-alive connections are closed after this; httpx's pool forgets them after 5 s.
    timeout = 120
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK can add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a line per request on stderr would drown benchmarks and tests."""

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        target = urllib.parse.urlsplit(self.path)
        request = Request(
            method=self.command,
            path=target.path,
            query=urllib.parse.parse_qs(target.query),
            authorization=self.headers.get("Authorization"),
            host=self.headers.get("Host") or f"{self.server.server_name}:{self.server.server_port}",
            body=body,
        )
        if target.path.startswith("/_sim/") and not self._may_control():
            reply = error_reply(403, 403, f"the control API needs {CONTROL_TOKEN_HEADER}")
        else:
            reply = self.server.simulator.handle(request)
        if reply.drop:
            # Close without a status line: the client cannot know whether the call took effect.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.status != 204:
            self.wfile.write(reply.body)

    def _may_control(self) -> bool:
        # With a token (the compose demo), only a request carrying it; without one, only a
        # request from this machine: the control API can rotate the secret and see everything.
        token = self.server.control_token
        if token is not None:
            offered = self.headers.get(CONTROL_TOKEN_HEADER) or ""
            return hmac.compare_digest(offered.encode(), token.encode())
        return _is_loopback(self.client_address[0])

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # e.g. a scoped IPv6 address ("fe80::1%eth0"): not loopback
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(
        self, address: tuple[str, int], simulator: Simulator, control_token: str | None = None
    ) -> None:
        self.simulator = simulator
        self.control_token = control_token
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake every handler blocked on an idle keep-alive connection, so it ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request is normal under fault injection: no traceback.
        log.debug("simulator.connection_error client=%s", client_address, exc_info=True)


class RunningSimulator:
    """A simulator served on a daemon thread; ``stop()`` (or leaving ``with``) ends it."""

    def __init__(self, server: _Server, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self._stopped = False
        self.simulator = server.simulator
        self.url = f"http://{host}:{server.server_port}"
        self.api_url = f"{self.url}/v2"
        self.oauth_url = f"{self.url}/oauth/token"

    def worker_env(self) -> dict[str, str]:
        """The settings that point zoom-worker at this simulator, with its credentials."""
        config = self.simulator.config
        return {
            "ZOOM_ACCOUNT_ID": config.account_id,
            "ZOOM_CLIENT_ID": config.client_id,
            "ZOOM_CLIENT_SECRET": config.client_secret,
            "ZOOM_API_URL": self.api_url,
            "ZOOM_OAUTH_URL": self.oauth_url,
        }

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    control_token: str | None = None,
) -> RunningSimulator:
    """Serve a new simulator on ``host:port`` (0: any free port) from a daemon thread.

    The control API answers only requests carrying ``control_token`` in
    ``X-Sim-Control-Token``; without a token, only requests from loopback.
    """
    server = _Server((host, port), Simulator(config), control_token)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="zoom-simulator"
    )
    thread.daemon = True
    thread.start()
    return RunningSimulator(server, thread, host)


def serve_forever(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 9900
) -> None:
    """Serve a simulator in this thread until interrupted (``zoom-worker simulator``).

    The control token is ``SIMULATOR_CONTROL_TOKEN`` from the environment, if set.
    """
    server = _Server((host, port), Simulator(config), control_token_from_env())
    log.info("simulator.started url=http://%s:%d", host, server.server_port)
    try:
        server.serve_forever()
    finally:
        server.close_connections()
        server.server_close()
