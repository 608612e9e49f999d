"""Serve live metrics over HTTP: ``GET /metrics`` (Prometheus text 0.0.4) and ``GET /healthz``.

:class:`MetricsServer` binds its socket when constructed, so a port in use
is refused before the caller creates anything, and serves from a daemon
thread between :meth:`~MetricsServer.start` and :meth:`~MetricsServer.stop`.
The thread waits in a selector on the listening socket and on a wake-up
socket pair, so ``stop()`` returns at once instead of after a poll interval;
each request is answered in a daemon thread of its own (a slow client holds
up no scrape), at most ``max_connections`` at once: past that a connection is
answered 503 at once and closed, so a flood of idle connections cannot pile up
threads; and a client has 10 s to send its whole request, however it trickles
in (and 10 s more to take the answer). Standard library only: ``http.server``.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import selectors
import socket
import socketserver
import sys
import threading
import time
from typing import Callable

from .errors import ConfigError
from .logs import LOGGER_NAME
from .prometheus import CONTENT_TYPE

_log = logging.getLogger(LOGGER_NAME)
MAX_CONNECTIONS = 16  # answered at once; a scraper or two and a probe need a few
DRAIN_S = 2.0  # at stop, how long the answers under way (and the connections waiting) may take
_BUSY_BODY = b"too many connections\n"
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class MetricsServer:
    """An HTTP server of ``render()`` at ``/metrics`` on ``host:port`` (port 0: any free port).

    Raises :class:`~taskqueue.errors.ConfigError` naming the address when it
    cannot listen there (in use, no such address, not permitted).
    ``render`` is called once per scrape in a request thread; it must be
    thread-safe. An exception from it answers 500 and is logged.
    """

    def __init__(self, render: Callable[[], str], *, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        if type(max_connections) is not int or max_connections <= 0:
            raise ValueError(f"max_connections must be a positive integer, got {max_connections!r}")
        server_class = _Server6 if ":" in host else _Server
        try:
            self._httpd = server_class((host, port), _Handler)
        except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {reason}") from exc
        self._httpd.render = render
        self._httpd.slots = threading.BoundedSemaphore(max_connections)
        self._max_connections = max_connections
        self.host = host
        self.port = self._httpd.server_address[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Start answering requests (those made since construction wait in the backlog until now)."""
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._serve, name="tq-metrics-http", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                try:
                    self._httpd.handle_request()  # accepts the connection; a thread answers it
                except Exception:  # never die silently: log and keep serving
                    _log.exception("metrics server: could not accept a connection",
                                   extra={"event": "metrics_http_error", "task_id": None, "idempotency_key": None})

    def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop serving and close the socket; returns once the serving thread is gone. Idempotent.

        Scrapes made as a run ends get their answer, not a reset connection: those already waiting
        in the listen backlog are answered, and the answers under way finish (the process may exit
        right after), for at most ``drain_s`` seconds in all."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join()
            self._drain(time.monotonic() + drain_s)
        self._httpd.server_close()
        self._wake_r.close()
        self._wake_w.close()


    def _drain(self, deadline: float) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd.socket, selectors.EVENT_READ)
            while time.monotonic() < deadline and selector.select(timeout=0):
                self._httpd.handle_request()  # a connection waits: accept it, a thread answers it
        taken = 0  # every slot back: no answer is under way
        while taken < self._max_connections and self._httpd.slots.acquire(
                timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        for _ in range(taken):
            self._httpd.slots.release()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = False  # never share the port with another listener: in use means refused
    timeout = None  # handle_request() is only called once the socket is readable
    render: Callable[[], str]
    slots: threading.BoundedSemaphore  # one per connection being answered

    def process_request(self, request, client_address) -> None:
        """Answer in a thread of its own while a slot is free; else 503 at once (a few bytes into an
        empty send buffer: this never waits on the client) and close."""
        if not self.slots.acquire(blocking=False):
            _log.debug("metrics server: too many connections, %s refused", client_address,
                       extra={"event": "metrics_http_busy", "task_id": None, "idempotency_key": None})
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # its thread would not start: the slot was never taken up
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        """A request that failed in its thread: logged, never printed on stderr (socketserver's default).
        A client that hung up or timed out is routine (a probe, a scraper giving up): debug level."""
        error = sys.exc_info()[1]
        extra = {"event": "metrics_http_error", "task_id": None, "idempotency_key": None}
        if isinstance(error, (ConnectionError, TimeoutError)):
            _log.debug("metrics server: client %s went away: %s", client_address, error, extra=extra)
        else:
            _log.error("metrics server: a request from %s failed", client_address, exc_info=error, extra=extra)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves socket.getfqdn(host), a DNS look-up that can stall
        # start-up; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _ReadUntil(socket.SocketIO):
    """A socket's reading end whose every read waits only for what is left until ``deadline``
    (``time.monotonic()``); past it a read raises ``TimeoutError``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock, "rb")
        self._socket, self._deadline = sock, deadline

    def readinto(self, buffer) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self._socket.settimeout(left)
        return super().readinto(buffer)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its whole request (not each read of it)

    def setup(self) -> None:
        """Read the request through a socket reader that gives up at ``timeout`` from now: the
        socket's own timeout bounds each read, so a client sending a byte now and then would hold
        its slot for as long as it liked."""
        super().setup()
        self.rfile.close()  # the buffered reader over the socket that setup() made: replaced
        self.rfile = io.BufferedReader(_ReadUntil(self.connection, time.monotonic() + self.timeout))

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        self.connection.settimeout(self.timeout)  # the request is in: the answer gets its own time
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                status, body, content_type = 200, self.server.render().encode("utf-8"), CONTENT_TYPE
            except Exception as exc:
                _log.exception("metrics server: rendering failed", extra={
                    "event": "metrics_http_error", "task_id": None, "idempotency_key": None})
                status, body = 500, f"rendering the metrics failed: {type(exc).__name__}\n".encode()
                content_type = "text/plain; charset=utf-8"
        elif path == "/healthz":
            status, body, content_type = 200, b"ok\n", "text/plain; charset=utf-8"
        else:
            status, body, content_type = 404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # the base class names it `format`
        _log.debug("metrics server: " + format, *args,
                   extra={"event": "metrics_http", "task_id": None, "idempotency_key": None})
