"""promote.probe.LoadProbe against tiny local HTTP servers on 127.0.0.1 (bounded, a few seconds each)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sandbox.promote.probe import LoadProbe, PhaseReport, _pct, summary


class App(BaseHTTPRequestHandler):
    """/healthz JSON, POST /notes → 201, /slow?s=N; knobs on the server object."""

    protocol_version = "HTTP/1.1"  # keep-alive unless the server says otherwise

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        srv: Server = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.hits[self.command + " " + urlsplit(self.path).path] = (
                srv.hits.get(self.command + " " + urlsplit(self.path).path, 0) + 1
            )
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if srv.close_after_each:
            # drop the connection without saying "Connection: close": the client finds out when it
            # reuses the connection, as it does with a backend or router that closed an idle one
            self.close_connection = True

    def do_GET(self) -> None:
        srv: Server = self.server  # type: ignore[assignment]
        u = urlsplit(self.path)
        if u.path == "/healthz":
            if srv.health_status != 200:
                self._send(srv.health_status, b"broken\n")
            else:
                self._send(200, json.dumps({"image": srv.image}).encode(), "application/json")
        elif u.path == "/slow":
            time.sleep(min(float(parse_qs(u.query).get("s", ["1"])[0]), 5.0))
            self._send(200, b"slept\n")
        else:
            self._send(404, b"no\n")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        if urlsplit(self.path).path == "/notes":
            self._send(201, b"ok\n")
        else:
            self._send(404, b"no\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), App)
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.close_after_each = False
        self.health_status = 200
        self.image = "x"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


def run(probe: LoadProbe, phases: list[tuple[str, float]]) -> dict[str, PhaseReport]:
    """Start, spend `seconds` in each phase, stop (bounded: the phases plus the stop timeout)."""
    probe.mark(phases[0][0])
    probe.start()
    for phase, seconds in phases:
        probe.mark(phase)
        time.sleep(seconds)
    return probe.stop(timeout=15)


def kinds(probe: LoadProbe) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in probe.samples:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out


def test_probe_mixes_kinds_and_reports_each_phase_without_errors(server: Server) -> None:
    probe = LoadProbe(server.url, rps=60, concurrency=3, slow_seconds=0.4)
    reports = run(probe, [("before", 0.8), ("during", 1.2), ("after", 0.8)])
    assert list(reports) == ["before", "during", "after"]
    for phase, r in reports.items():
        assert r.requests > 0, phase
        assert (r.ok, r.non_2xx, r.errors) == (r.requests, 0, 0), (phase, r)
        assert r.first_errors == [] and r.retried == 0
        assert r.images == ["x"]
        assert 0 < r.p50_ms <= r.p99_ms < 2000
    total = sum(r.requests for r in reports.values())
    assert 60 <= total <= 240, total  # ~60 rps for 2.8 s, and the slow requests
    k = kinds(probe)
    assert set(k) == {"get-keepalive", "get-new", "post-keepalive", "get-slow"}
    assert 3 <= k["get-slow"] <= 8  # one at a time, back to back: about 2.8 s / 0.4 s
    assert server.hits["POST /notes"] == k["post-keepalive"]
    assert server.hits["GET /slow"] == k["get-slow"]


def test_slow_requests_are_not_in_the_latency_percentiles(server: Server) -> None:
    probe = LoadProbe(server.url, rps=40, concurrency=2, slow_seconds=0.5)
    reports = run(probe, [("before", 1.2)])
    assert any(s.kind == "get-slow" and s.latency >= 0.5 for s in probe.samples)
    assert reports["before"].p99_ms < 500


def test_without_a_slow_request_only_the_workers_run(server: Server) -> None:
    probe = LoadProbe(server.url, rps=30, concurrency=2, slow_seconds=0)
    run(probe, [("before", 0.6)])
    assert "get-slow" not in kinds(probe)
    assert "GET /slow" not in server.hits


def test_stop_ends_every_thread_and_returns_the_report(server: Server) -> None:
    probe = LoadProbe(server.url, rps=20, concurrency=2, slow_seconds=0.3)
    t0 = time.monotonic()
    reports = run(probe, [("before", 0.5)])
    assert time.monotonic() - t0 < 5
    assert all(not t.is_alive() for t in probe._threads)
    n = len(probe.samples)
    time.sleep(0.3)
    assert len(probe.samples) == n  # nothing runs after stop
    assert reports == probe.report()


def test_closed_keepalive_connections_are_retried_once_and_are_not_errors(server: Server) -> None:
    server.close_after_each = True
    probe = LoadProbe(server.url, rps=40, concurrency=2, slow_seconds=0)
    reports = run(probe, [("during", 1.5)])
    r = reports["during"]
    assert r.requests > 20
    assert (r.errors, r.non_2xx, r.ok) == (0, 0, r.requests), r.first_errors
    assert r.retried > 5  # every reuse of a keep-alive connection found it closed
    assert all(s.kind != "get-new" for s in probe.samples if s.retried)  # only reused ones retry
    assert r.images == ["x"]


def test_a_500_is_counted_as_non_2xx_with_its_first_errors(server: Server) -> None:
    server.health_status = 500
    probe = LoadProbe(server.url, rps=40, concurrency=3, slow_seconds=0)
    reports = run(probe, [("during", 1.0)])
    r = reports["during"]
    gets = sum(1 for s in probe.samples if s.kind.startswith("get-"))
    posts = sum(1 for s in probe.samples if s.kind == "post-keepalive")
    assert gets > 0 and posts > 0
    assert r.non_2xx == gets and r.ok == posts and r.errors == 0
    assert r.images == []
    assert 1 <= len(r.first_errors) <= 5
    assert all(e.endswith(": 500") for e in r.first_errors)


def test_the_health_path_is_configurable(server: Server) -> None:
    probe = LoadProbe(server.url, rps=30, concurrency=3, slow_seconds=0, health_path="/nothing")
    reports = run(probe, [("before", 0.6)])
    assert reports["before"].non_2xx > 0 and "GET /nothing" in server.hits


def test_connection_refused_counts_as_errors_not_retries() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = LoadProbe(f"http://127.0.0.1:{port}/", rps=30, concurrency=2, slow_seconds=0.2)
    reports = run(probe, [("before", 0.6)])
    r = reports["before"]
    assert r.requests > 0 and r.errors == r.requests and r.ok == 0 and r.retried == 0
    assert any("ConnectionRefusedError" in e for e in r.first_errors)


def test_images_seen_in_a_phase_follow_what_the_server_reports(server: Server) -> None:
    probe = LoadProbe(server.url, rps=40, concurrency=2, slow_seconds=0)
    probe.start()
    time.sleep(0.5)
    probe.mark("during")
    time.sleep(0.25)
    server.image = "y"  # in the middle of "during": requests of "before" have long been answered
    time.sleep(0.25)
    probe.mark("after")
    time.sleep(0.5)
    reports = probe.stop(timeout=15)
    assert reports["before"].images == ["x"]
    assert set(reports["during"].images) <= {"x", "y"} and "y" in reports["during"].images
    assert reports["after"].images == ["y"]


def test_percentiles_and_summary() -> None:
    assert _pct([], 0.5) == 0.0
    xs = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert _pct(xs, 0.5) == pytest.approx(51.0)
    assert _pct(xs, 0.99) == pytest.approx(100.0)
    assert _pct([0.002], 0.99) == pytest.approx(2.0)
    s = summary({"before": PhaseReport(requests=3, ok=3, images=["x"])})
    assert s["before"]["requests"] == 3 and s["before"]["images"] == ["x"]
    json.dumps(s)  # what `promote --probe --json` prints


def test_with_load_probe_stores_its_per_second_series_in_the_deploy(
    server: Server, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The series the web's deploy page plots: a `probe` step of the deploy the run returns."""
    import functools
    import types

    from sandbox.promote import probe as probe_mod
    from sandbox.promote.deploys import Deploys
    from sandbox.state import StateDB

    quick = types.SimpleNamespace(monotonic=time.monotonic, sleep=lambda s: time.sleep(min(s, 0.4)))
    monkeypatch.setattr(probe_mod, "time", quick)  # the 2 s before and after: 0.4 s each
    monkeypatch.setattr(probe_mod, "LoadProbe", functools.partial(LoadProbe, slow_seconds=0.2))
    state = StateDB(tmp_path / "state.db")
    deploys = Deploys(state)
    d = deploys.begin("prod", "sha256:" + "a" * 64, "sha256:" + "b" * 64, "rolling")
    envs: Any = types.SimpleNamespace(
        get=lambda name: types.SimpleNamespace(url=server.url, image="i"),
        app=lambda image: types.SimpleNamespace(health="/healthz"),
        ctx=types.SimpleNamespace(state=state),
    )

    def run() -> Any:
        time.sleep(0.3)
        deploys.finish(d.id, "done")
        return types.SimpleNamespace(deploy=d.id)

    _, summ = probe_mod.with_load_probe(envs, "prod", 40, run)
    step = deploys.get(d.id).steps[-1]
    assert step["step"] == "probe" and step["phases"] == json.loads(json.dumps(summ))
    series = step["series"]
    assert series and [row[0] for row in series] == sorted(row[0] for row in series)
    assert {row[1] for row in series} <= {"before", "during", "after"} and "before" in {r[1] for r in series}
    assert sum(row[2] for row in series) == sum(p["requests"] for p in summ.values())
