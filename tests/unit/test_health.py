"""Health checks: http_probe against a real local HTTP server, probe_instance, wait_until."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sandbox.backends.base import ExecResult
from sandbox.envs.probes import Probe, http_probe, probe_instance, wait_until

STATUS = {"/healthz": 200, "/created": 201, "/broken": 500, "/moved": 302}


class Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        Handler.seen.append((self.path, self.headers.get("User-Agent")))
        code = STATUS.get(self.path, 404)
        body = b'{"status": "ok"}' if code < 300 else b"no"
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/healthz")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- http_probe --------------------------------------------------------------------------------


def test_200_is_healthy(server: int) -> None:
    Handler.seen.clear()
    p = http_probe("127.0.0.1", server, "/healthz")
    assert p == Probe(True, "GET /healthz → 200")
    assert Handler.seen == [("/healthz", "sandbox-health")]


def test_any_2xx_is_healthy(server: int) -> None:
    assert http_probe("127.0.0.1", server, "/created").ok


@pytest.mark.parametrize(("path", "code"), [("/broken", 500), ("/moved", 302), ("/nosuch", 404)])
def test_non_2xx_is_unhealthy(server: int, path: str, code: int) -> None:
    p = http_probe("127.0.0.1", server, path)
    assert not p.ok
    assert p.detail == f"GET {path} → {code}"


def test_closed_port_is_unhealthy_with_a_message() -> None:
    port = closed_port()
    p = http_probe("127.0.0.1", port, "/healthz", timeout=2)
    assert not p.ok
    assert p.detail.startswith(f"GET http://127.0.0.1:{port}/healthz: ")
    assert "refused" in p.detail.lower()


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        t0 = time.monotonic()
        p = http_probe("127.0.0.1", s.getsockname()[1], "/healthz", timeout=0.3)
        took = time.monotonic() - t0
    assert not p.ok and "timed out" in p.detail
    assert 0.25 <= took < 5


def test_a_server_that_hangs_up_is_unhealthy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)

        def hang_up() -> None:
            conn, _ = s.accept()
            conn.recv(1024)
            conn.close()

        t = threading.Thread(target=hang_up, daemon=True)
        t.start()
        p = http_probe("127.0.0.1", s.getsockname()[1], "/healthz", timeout=2)
        t.join(timeout=5)
    assert not p.ok
    assert p.detail.startswith("GET http://127.0.0.1:")


# -- probe_instance with a stand-in backend ----------------------------------------------------


class FakeBackend:
    def __init__(self, code: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.result = ExecResult(code, stdout, stderr)
        self.calls: list[tuple[str, list[str]]] = []

    def address(self, name: str) -> str:
        return "127.0.0.1"

    def exec(self, name: str, argv: list[str], **kw: Any) -> ExecResult:
        self.calls.append((name, argv))
        return self.result


def test_probe_instance_path_only(server: int) -> None:
    p = probe_instance(FakeBackend(), "web-0", f"127.0.0.1:{server}", "/healthz", None)  # type: ignore[arg-type]
    assert p == Probe(True, "GET /healthz → 200")


def test_probe_instance_path_and_command_both_pass(server: int) -> None:
    b = FakeBackend(0)
    p = probe_instance(b, "web-0", f"127.0.0.1:{server}", "/healthz", "test -e /run/ok")  # type: ignore[arg-type]
    assert p.ok and p.detail == "GET /healthz → 200; `test -e /run/ok` ok"
    assert b.calls == [("web-0", ["/bin/sh", "-c", "test -e /run/ok"])]


def test_probe_instance_failing_command(server: int) -> None:
    b = FakeBackend(3, stderr="no such file\n")
    p = probe_instance(b, "web-0", f"127.0.0.1:{server}", "/healthz", "test -e /run/ok")  # type: ignore[arg-type]
    assert p == Probe(False, "`test -e /run/ok` exited 3: no such file")


def test_probe_instance_failing_http_skips_the_command(server: int) -> None:
    b = FakeBackend(0)
    p = probe_instance(b, "web-0", f"127.0.0.1:{server}", "/broken", "true")  # type: ignore[arg-type]
    assert not p.ok and "500" in p.detail
    assert b.calls == []


def test_probe_instance_without_checks_is_healthy() -> None:
    p = probe_instance(FakeBackend(), "web-0", None, "/healthz", None)  # type: ignore[arg-type]
    assert p == Probe(True, "no health check configured")


# -- wait_until --------------------------------------------------------------------------------


class Flaky:
    """Fails `bad` times, then succeeds."""

    def __init__(self, bad: int) -> None:
        self.bad = bad
        self.calls = 0

    def __call__(self) -> Probe:
        self.calls += 1
        return Probe(self.calls > self.bad, f"call {self.calls}")


def test_wait_until_returns_the_first_ok_probe() -> None:
    check = Flaky(2)
    p, took = wait_until(check, timeout=5, interval=0.01)
    assert p == Probe(True, "call 3") and check.calls == 3
    assert 0.02 <= took < 2


def test_wait_until_ok_at_once_does_not_sleep() -> None:
    check = Flaky(0)
    p, took = wait_until(check, timeout=5, interval=1.0)
    assert p.ok and check.calls == 1 and took < 0.5


def test_wait_until_gives_up_with_the_last_probe() -> None:
    check = Flaky(10**6)
    t0 = time.monotonic()
    p, took = wait_until(check, timeout=0.2, interval=0.02)
    assert not p.ok and p.detail == f"call {check.calls}"
    assert 0.2 <= took < 2 and time.monotonic() - t0 < 2
    assert 2 <= check.calls <= 12


def test_wait_until_with_zero_timeout_checks_once() -> None:
    check = Flaky(10**6)
    p, _ = wait_until(check, timeout=0, interval=0.01)
    assert not p.ok and check.calls == 1
