"""The metrics HTTP server, the periodic metrics writer and the Watch bundle, in-process on loopback.

A real run scraped over HTTP is in tests/integration/test_watch_cli.py.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from prometheus_text import parse, values
from taskqueue.errors import ConfigError
from taskqueue.metrics import Metrics
from taskqueue.metrics_http import MetricsServer
from taskqueue.metrics_writer import PeriodicMetricsWriter
from taskqueue.config import FLAG_NAMES, Config
from taskqueue.watch import FIELDS, Watch, add_flags

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30  # hang guard only


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def served():
    """A MetricsServer on a free loopback port rendering a live Metrics; yields (server, metrics)."""
    metrics = Metrics(workers=2, queue_capacity=4)
    server = MetricsServer(metrics.to_prometheus, port=0)
    server.start()
    yield server, metrics
    server.stop()


# -- MetricsServer ----------------------------------------------------------------------------------

def test_metrics_are_served_live_in_the_0_0_4_format(served):
    server, metrics = served
    status, headers, body = get(server.url)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    assert values(parse(body.decode()))['taskqueue_tasks_total{outcome="succeeded"}'] == 0
    metrics.on_outcome("succeeded", 0.01)
    metrics.on_processed(0, 0.003)
    flat = values(parse(get(server.url)[2].decode()))  # every scrape renders anew
    assert flat['taskqueue_tasks_total{outcome="succeeded"}'] == 1
    assert flat['taskqueue_task_duration_seconds_bucket{le="0.005"}'] == 1


def test_healthz_404_and_query_strings(served):
    server, _ = served
    base = f"http://127.0.0.1:{server.port}"
    assert get(base + "/healthz")[:1] == (200,) and get(base + "/healthz")[2] == b"ok\n"
    assert get(base + "/metrics?name=x")[0] == 200
    for path in ("/", "/metric", "/metrics/extra", "/favicon.ico"):
        assert get(base + path)[0] == 404, path
    request = urllib.request.Request(base + "/metrics", method="HEAD")
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        assert response.status == 200 and response.read() == b""
    request = urllib.request.Request(base + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT_S)
    assert refused.value.code == 501


def test_a_port_in_use_is_a_config_error_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*in use"):
            MetricsServer(lambda: "", port=port)


@pytest.mark.parametrize("host, port", [("127.0.0.1", 70000), ("no-such-host.invalid", 0)])
def test_an_address_that_cannot_be_bound_is_a_config_error(host, port):
    with pytest.raises(ConfigError, match="cannot serve metrics"):
        MetricsServer(lambda: "", host=host, port=port)


def test_a_failing_render_answers_500_and_the_server_keeps_serving(caplog):
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n"

    server = MetricsServer(flaky, port=0)
    server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="taskqueue"):
            assert get(server.url)[0] == 500
        assert any("rendering failed" in r.getMessage() for r in caplog.records)
        status, _, body = get(server.url)
        assert status == 200 and values(parse(body.decode())) == {"x_total": 1}
    finally:
        server.stop()


class _Recorded(logging.Handler):
    """Keeps the records it gets; ``seen`` is set by the first whose event is ``event``."""

    def __init__(self, event: str) -> None:
        super().__init__(logging.DEBUG)
        self.event, self.records, self.seen = event, [], threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if getattr(record, "event", None) == self.event:
            self.seen.set()


@pytest.mark.parametrize("fails_in", ["request", "render"])
def test_a_request_that_fails_in_its_thread_is_logged_never_printed_on_stderr(fails_in, monkeypatch):
    """Found by a review: a client resetting its connection mid-request (a probe, a load balancer) made
    socketserver print a traceback on the operator's terminal, around the logging. A client that went
    away is logged at debug level; anything else as an error, with its traceback, in the log."""
    if fails_in == "render":  # not a connection error: a bug, logged as an error (from the handler)
        import taskqueue.metrics_http as mh
        monkeypatch.setattr(mh._Handler, "_answer", lambda self, send_body: (_ for _ in ()).throw(KeyError("bug")))
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    recorded = _Recorded("metrics_http_error")
    logger = logging.getLogger("taskqueue")
    logger.addHandler(recorded)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    server = MetricsServer(lambda: "x 1\n", port=0)
    server.start()
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        if fails_in == "request":
            client.sendall(b"GET /metr")  # part of a request, then a reset (SO_LINGER 0)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        client.close()
        assert recorded.seen.wait(WAIT_S)
    finally:
        server.stop()
        logger.removeHandler(recorded)
        logger.setLevel(old_level)
    [record] = [r for r in recorded.records if getattr(r, "event", None) == "metrics_http_error"]
    if fails_in == "request":
        assert record.levelno == logging.DEBUG and "went away" in record.getMessage()
    else:
        assert record.levelno == logging.ERROR and record.exc_info[0] is KeyError
    assert stderr.getvalue() == ""


def _connection_ends(monkeypatch) -> threading.Semaphore:
    """A semaphore the metrics server releases as each connection's thread ends (its slot given back)."""
    import taskqueue.metrics_http as mh
    ended = threading.Semaphore(0)
    real_thread = mh._Server.process_request_thread

    def counted(self, request, client_address):
        try:
            real_thread(self, request, client_address)
        finally:
            ended.release()

    monkeypatch.setattr(mh._Server, "process_request_thread", counted)
    return ended


def test_connections_past_the_cap_are_answered_503_at_once_and_the_slots_come_back(monkeypatch):
    """Found by a review: each connection held a thread of its own, with no cap, for up to the
    handler's timeout: a flood of idle connections piled up threads without end. Past the cap, a
    connection is answered 503 at once (before it sends anything) and closed."""
    answered = _connection_ends(monkeypatch)
    server = MetricsServer(lambda: "x 1\n", port=0, max_connections=2)
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) for _ in range(2)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        with extra, extra.makefile("rb") as answer:
            status_line, rest = answer.readline(), answer.read()
        assert status_line.startswith(b"HTTP/1.0 503 ") and rest.endswith(b"too many connections\n")
    finally:
        for client in held:
            client.close()
    try:
        assert answered.acquire(timeout=WAIT_S) and answered.acquire(timeout=WAIT_S)  # both held ones ended
        assert get(server.url)[0] == 200
    finally:
        server.stop()


def test_a_client_sending_its_request_a_byte_at_a_time_is_cut_off_at_the_request_deadline(monkeypatch):
    """Found by a review: the handler's timeout bounded each read, not the request, so a client
    sending a byte now and then held its connection's slot (one of ``max_connections``) as long as it
    liked: a handful of them starved the scrapes. The deadline is now for the whole request."""
    import taskqueue.metrics_http as mh
    monkeypatch.setattr(mh._Handler, "timeout", 0.5)
    answered = _connection_ends(monkeypatch)
    server = MetricsServer(lambda: "x 1\n", port=0)
    server.start()
    stop = threading.Event()
    request = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 1200  # a byte per 50 ms: a minute, never finished

    def drip() -> None:  # each byte arrives well within 0.5 s of the one before
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as client:
            for byte in request:
                if stop.wait(0.05):
                    return
                try:
                    client.sendall(bytes([byte]))
                except OSError:  # reset, or a broken pipe: the server closed the connection
                    return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        # Ended by the server within the hang guard (half the drip's minute): before, only once it all came.
        assert answered.acquire(timeout=WAIT_S)
        assert get(server.url)[0] == 200
    finally:
        stop.set()
        dripper.join(WAIT_S)
        server.stop()


@pytest.mark.parametrize("cap", [0, -1, 1.5, True])
def test_the_connection_cap_must_be_a_positive_integer(cap):
    with pytest.raises(ValueError, match="max_connections"):
        MetricsServer(lambda: "", port=0, max_connections=cap)


def test_stop_closes_the_port_and_is_idempotent():
    server = MetricsServer(lambda: "", port=0)
    server.start()
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
    MetricsServer(lambda: "", port=port).stop()  # the port is free again; never started is fine too


SERVE_THEN_EXIT = """
import os, sys, threading, time
from taskqueue.metrics_http import MetricsServer
inside = threading.Event()
def render():
    inside.set()
    time.sleep(0.3)  # an answer under way as the run ends
    return "# HELP x_total X.\\n# TYPE x_total counter\\nx_total 7\\n"
server = MetricsServer(render, port=0)
server.start()
print(server.port, flush=True)
assert inside.wait(30)
server.stop()
os._exit(0)  # as a worker whose grace ran out: no thread is waited for
"""


def test_a_scrape_under_way_when_the_server_stops_gets_its_whole_answer_before_the_process_exits():
    """Found in review: stop() closed the socket and returned at once; a process exiting then cut the
    answers under way (a reset, or a body shorter than its Content-Length)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", SERVE_THEN_EXIT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S) as response:
            body = response.read().decode()
        assert response.status == 200 and "x_total 7" in body
    finally:
        proc.wait(WAIT_S)
    assert proc.returncode == 0


def test_ipv6_loopback_when_the_machine_has_it():
    try:
        server = MetricsServer(lambda: "# HELP x_total X.\n# TYPE x_total counter\nx_total 2\n", host="::1", port=0)
    except ConfigError:
        pytest.skip("no IPv6 loopback here")
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        assert values(parse(get(server.url)[2].decode())) == {"x_total": 2}
    finally:
        server.stop()


# -- PeriodicMetricsWriter --------------------------------------------------------------------------

class Snapshots:
    """A snapshot callable numbering its calls; ``reached(n)`` is set once it has been called n times."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self._changed = threading.Condition()

    def __call__(self) -> dict:
        with self._changed:
            self.calls += 1
            self._changed.notify_all()
            if self.calls <= self.fail_first:
                raise OSError("disk on fire")
            return {"call": self.calls}

    def wait_for(self, n: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.calls >= n, WAIT_S)


def test_the_writer_rewrites_the_file_until_stopped_then_writes_the_final_snapshot(tmp_path):
    path = tmp_path / "metrics.json"
    source = Snapshots()
    writer = PeriodicMetricsWriter(str(path), source, interval_s=0.001)
    writer.start()
    assert source.wait_for(3)
    writer.stop()
    assert writer.writes == source.calls  # one write per snapshot, the final one included
    assert json.loads(path.read_text(encoding="utf-8")) == {"call": source.calls}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left
    writer.stop()
    assert writer.writes == source.calls  # stopped for good


def test_a_writer_that_never_wrote_leaves_the_file_alone(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("the engine's final metrics\n", encoding="utf-8")
    source = Snapshots()
    writer = PeriodicMetricsWriter(str(path), source, interval_s=3600)
    writer.start()
    writer.stop()  # returns at once although the interval is an hour
    assert source.calls == 0 and path.read_text(encoding="utf-8") == "the engine's final metrics\n"


def test_a_failed_write_is_logged_and_the_writer_goes_on(tmp_path, caplog):
    path = tmp_path / "metrics.json"
    source = Snapshots(fail_first=2)
    writer = PeriodicMetricsWriter(str(path), source, interval_s=0.001)
    with caplog.at_level(logging.ERROR, logger="taskqueue"):
        writer.start()
        assert source.wait_for(4)
        writer.stop()
    failures = [r for r in caplog.records if getattr(r, "event", None) == "metrics_write_failed"]
    assert len(failures) == 2 and failures[0].error == "disk on fire"
    assert json.loads(path.read_text(encoding="utf-8")) == {"call": source.calls}


@pytest.mark.parametrize("interval", [0, -1.0, float("inf"), float("nan")])
def test_the_writer_interval_must_be_positive_and_finite(tmp_path, interval):
    with pytest.raises(ValueError):
        PeriodicMetricsWriter(str(tmp_path / "m.json"), dict, interval_s=interval)


# -- Watch ------------------------------------------------------------------------------------------

def parsed(*argv: str, metrics_out: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics-out", default=metrics_out)
    add_flags(parser)
    return parser.parse_args(list(argv))


class FakeQueue:
    def __init__(self) -> None:
        self.final_metrics = None
        self.metrics = Metrics(workers=1, queue_capacity=2)

    def snapshot(self) -> dict:
        return self.metrics.snapshot()


def watch_of(args: argparse.Namespace, environ: dict | None = None, stream=None) -> Watch:
    """What a command builds: its flags over the TQ_* variables (here ``environ`` only), then the Watch."""
    config = Config.from_env({name: getattr(args, name) for name in FIELDS}, environ=environ or {},
                             dotenv_path=None, flags=FLAG_NAMES)
    return Watch.from_config(config, no_progress=args.no_progress, stream=stream or io.StringIO())


def test_watch_defaults_show_nothing_on_a_pipe():
    args = parsed()
    assert (args.no_progress, args.metrics_port, args.metrics_host, args.metrics_interval_s) == \
        (False, None, None, None)  # unset: the setting's variable or default decides
    assert (Config().metrics_port, Config().metrics_host, Config().metrics_interval_s) == (None, "127.0.0.1", 10.0)
    out = io.StringIO()
    watch = watch_of(args, stream=out)
    watch.start(FakeQueue(), total=3)
    watch.stop()
    assert (watch.progress, watch.server, watch.writer) == (None, None, None)
    assert out.getvalue() == ""


@pytest.mark.parametrize("argv, message", [
    (["--metrics-port", "70000"], "--metrics-port"),
    (["--metrics-port", "-1"], "--metrics-port"),
    (["--metrics-interval", "0"], "--metrics-interval"),
    (["--metrics-interval", "nan"], "--metrics-interval"),
])
def test_watch_refuses_bad_flags(argv, message):
    with pytest.raises(ConfigError, match=message):
        watch_of(parsed(*argv))


@pytest.mark.parametrize("variable, value", [
    ("TQ_METRICS_PORT", "65536"), ("TQ_METRICS_PORT", "http"), ("TQ_METRICS_INTERVAL_S", "0"),
    ("TQ_METRICS_HOST", "  "), ("TQ_METRICS_OUT", "a\0b"),
])
def test_watch_refuses_bad_variables_naming_them(variable, value):
    with pytest.raises(ConfigError, match=f"{variable} \\(environment\\)"):
        watch_of(parsed(), environ={variable: value})


def test_a_flag_beats_its_variable_and_a_variable_alone_configures_the_watch(tmp_path):
    environ = {"TQ_METRICS_PORT": "0", "TQ_METRICS_INTERVAL_S": "3600", "TQ_METRICS_OUT": str(tmp_path / "m.json")}
    watch = watch_of(parsed(), environ=environ)
    try:
        assert watch.server is not None and watch._interval == 3600 and watch._metrics_out == str(tmp_path / "m.json")
    finally:
        watch.stop()
    with pytest.raises(ConfigError, match="--metrics-port"):  # the flag is the one that counts, and is wrong
        watch_of(parsed("--metrics-port", "-1"), environ=environ)


def test_watch_serves_and_writes_from_the_final_metrics_once_set(tmp_path):
    out, queue = io.StringIO(), FakeQueue()
    watch = watch_of(parsed("--metrics-port", "0", "--metrics-interval", "3600",
                            metrics_out=str(tmp_path / "m.json")), stream=out)
    watch.start(queue, total=None)
    try:
        assert out.getvalue() == f"serving metrics on {watch.server.url} (and /healthz)\n"
        queue.metrics.on_outcome("succeeded", 0.1)
        assert values(parse(get(watch.server.url)[2].decode()))['taskqueue_tasks_total{outcome="succeeded"}'] == 1
        assert watch.writer.write_now()
        queue.final_metrics = {"final": True, **queue.snapshot()}
        assert watch.snapshot()["final"] is True
    finally:
        watch.stop()
        watch.stop()
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["final"] is True
