"""A built-in load probe: constant traffic through a router while a promotion runs.

It mixes keep-alive GETs, GETs on new connections, keep-alive POSTs and one
slow request at a time, records status and latency per phase (before, during,
after), and which image answered. Like a browser, it retries a request once
when a reused keep-alive connection turns out to be closed before any byte
of the response arrived; everything else counts as a failure.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from sandbox.errors import SandboxError
from sandbox.events import Event
from sandbox.promote.deploys import Deploys

if TYPE_CHECKING:
    from sandbox.envs import Envs

T = TypeVar("T")

STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected, ConnectionAbortedError)


MAX_BODY = 64 << 10


def _body(resp: http.client.HTTPResponse) -> bytes:
    """The answer's body, at most 64 KiB (a longer one is an error and its connection is dropped)."""
    body = resp.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ValueError(f"answer body over {MAX_BODY} bytes")
    return body


@dataclass
class Sample:
    t: float
    phase: str
    kind: str
    status: int | None
    latency: float
    error: str | None = None
    image: str | None = None
    retried: bool = False


@dataclass
class PhaseReport:
    requests: int = 0
    ok: int = 0
    non_2xx: int = 0
    errors: int = 0
    retried: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    images: list[str] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


class LoadProbe:
    def __init__(
        self,
        url: str,
        rps: float = 50.0,
        concurrency: int = 4,
        slow_seconds: float = 3.0,
        health_path: str = "/healthz",
        request_timeout: float = 10.0,
    ) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.rps, self.concurrency, self.slow_seconds = rps, concurrency, slow_seconds
        self.health_path = health_path
        self.request_timeout = request_timeout  # a request slower than this counts as an error
        self.phase = "before"
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- control -----------------------------------------------------------
    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._worker, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        if self.slow_seconds > 0:
            t = threading.Thread(target=self._slow, daemon=True)
            t.start()
            self._threads.append(t)

    def mark(self, phase: str) -> None:
        self.phase = phase

    def stop(self, timeout: float = 60.0) -> dict[str, PhaseReport]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        return self.report()

    # -- workers -----------------------------------------------------------
    def _record(self, s: Sample) -> None:
        with self._lock:
            self.samples.append(s)

    def _request(
        self,
        conn: http.client.HTTPConnection | None,
        method: str,
        path: str,
        body: bytes | None,
        timeout: float,
    ) -> tuple[http.client.HTTPConnection, int, bytes, bool]:
        """One request; on a reused keep-alive connection found closed, reconnect and retry once."""
        reused = conn is not None and conn.sock is not None
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
            resp = conn.getresponse()
            return conn, resp.status, _body(resp), False
        except STALE:
            if not reused:
                raise
            conn.close()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
            resp = conn.getresponse()
            return conn, resp.status, _body(resp), True

    def _worker(self, n: int) -> None:
        interval = self.concurrency / self.rps
        kinds = ("get-keepalive", "get-new", "post-keepalive")
        conn: http.client.HTTPConnection | None = None
        i = n
        next_at = time.monotonic()
        while not self._stop.is_set():
            kind = kinds[i % len(kinds)]
            i += 1
            phase, t0 = self.phase, time.monotonic()
            status, err, image, retried = None, None, None, False
            limit, path = self.request_timeout, self.health_path
            try:
                if kind == "get-new":
                    c, status, body, retried = self._request(None, "GET", path, None, limit)
                    c.close()
                elif kind == "get-keepalive":
                    conn, status, body, retried = self._request(conn, "GET", path, None, limit)
                else:
                    conn, status, body, retried = self._request(conn, "POST", "/notes", b"probe", limit)
                if kind != "post-keepalive" and status == 200:
                    image = json.loads(body).get("image")
            except (OSError, http.client.HTTPException, ValueError) as e:
                err = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            self._record(Sample(t0, phase, kind, status, time.monotonic() - t0, err, image, retried))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _slow(self) -> None:
        while not self._stop.is_set():
            phase, t0 = self.phase, time.monotonic()
            status, err = None, None
            try:
                c, status, _b, _r = self._request(None, "GET", f"/slow?s={self.slow_seconds}", None, 60)
                c.close()
            except (OSError, http.client.HTTPException, ValueError) as e:
                err = f"{type(e).__name__}: {e}"
            self._record(Sample(t0, phase, "get-slow", status, time.monotonic() - t0, err))

    # -- results -----------------------------------------------------------
    def report(self) -> dict[str, PhaseReport]:
        out: dict[str, PhaseReport] = {}
        with self._lock:
            samples = list(self.samples)
        for phase in dict.fromkeys(s.phase for s in samples):
            ss = [s for s in samples if s.phase == phase]
            r = PhaseReport(requests=len(ss))
            r.ok = sum(1 for s in ss if s.status is not None and 200 <= s.status < 300)
            r.non_2xx = sum(1 for s in ss if s.status is not None and not 200 <= s.status < 300)
            r.errors = sum(1 for s in ss if s.error)
            r.retried = sum(1 for s in ss if s.retried)
            fast = [s.latency for s in ss if s.kind != "get-slow" and s.error is None]
            r.p50_ms, r.p99_ms = round(_pct(fast, 0.5), 2), round(_pct(fast, 0.99), 2)
            r.images = sorted({s.image for s in ss if s.image})
            r.first_errors = [
                f"{s.kind}: {s.error or s.status}"
                for s in ss
                if s.error or (s.status is not None and not 200 <= s.status < 300)
            ][:5]
            out[phase] = r
        return out


MAX_SECONDS = 900


def series(samples: list[Sample]) -> list[list[Any]]:
    """Per second since the first sample: `[second, phase, requests, ok, p50_ms, max_ms]` (latency of
    the answered fast requests; the slow request only counts in requests and ok). At most
    MAX_SECONDS rows: what a deploy record keeps for its plot."""
    if not samples:
        return []
    t0 = min(s.t for s in samples)
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int(s.t - t0), []).append(s)
    out: list[list[Any]] = []
    for sec in sorted(buckets)[:MAX_SECONDS]:
        ss = buckets[sec]
        ok = sum(1 for s in ss if s.status is not None and 200 <= s.status < 300 and not s.error)
        fast = [s.latency for s in ss if s.kind != "get-slow" and s.error is None]
        out.append(
            [sec, ss[0].phase, len(ss), ok, round(_pct(fast, 0.5), 2), round(max(fast, default=0) * 1000, 2)]
        )
    return out


def summary(reports: dict[str, PhaseReport]) -> dict[str, Any]:
    return {phase: dict(r.__dict__) for phase, r in reports.items()}


def probe_lines(probe: dict[str, Any] | None) -> list[str]:
    """One line per phase of a probe summary, as the CLI prints it."""
    return [
        f"probe {phase:<7} {r['requests']} requests, {r['non_2xx']} non-2xx, {r['errors']} errors, "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, images {', '.join(i[7:19] for i in r['images'])}"
        + (f"; first failures: {'; '.join(r['first_errors'])}" if r.get("first_errors") else "")
        for phase, r in (probe or {}).items()
    ]


def with_load_probe(envs: Envs, target: str, rps: float | None, run: Callable[[], T]) -> tuple[T, Any]:
    """Run `run()` (a promotion or rollback of `target`) with a load probe through the env's router
    at `rps` requests per second, 2 s before and after; returns its result and the probe's summary."""
    if not rps:
        return run(), None
    env = envs.get(target)
    if not env.url:
        raise SandboxError(f"{target} has no router URL to probe", hint="give the profile a router:")
    probe = LoadProbe(env.url, rps=rps, health_path=envs.app(env.image).health or "/")
    probe.start()
    time.sleep(2.0)
    probe.mark("during")
    try:
        result = run()
    except BaseException:
        # the promotion stopped: what the clients saw meanwhile still matters (and is printed)
        probe.mark("after")
        time.sleep(2.0)
        for line in probe_lines(summary(probe.stop())):
            envs.sink(Event("warning", phase="probe", message=line))
        raise
    probe.mark("after")
    time.sleep(2.0)
    reports = probe.stop()
    deploy = getattr(result, "deploy", None)
    if isinstance(deploy, int):  # the web's deploy timeline plots it (sandbox/web/svgplot.py)
        Deploys(envs.ctx.state).step(deploy, "probe", series=series(probe.samples), phases=summary(reports))
    return result, summary(reports)


class KeepAlivePosts(threading.Thread):
    """A strict client: POST after POST on ONE keep-alive connection, never retried (unlike the
    probe and browsers). A connection the router closes while idle shows as an error here, so it
    measures what a reload costs a client that does not retry. Bounded in count and time."""

    def __init__(
        self, url: str, interval: float = 0.005, max_seconds: float = 900, max_requests: int = 200_000
    ) -> None:
        super().__init__(daemon=True)
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = u.path or "/"
        self.interval, self.max_seconds, self.max_requests = interval, max_seconds, max_requests
        self.stop_event = threading.Event()
        self.requests = 0
        self.non_2xx = 0
        self.errors: list[str] = []

    def run(self) -> None:
        end = time.monotonic() + self.max_seconds
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while not self.stop_event.is_set() and self.requests < self.max_requests and time.monotonic() < end:
            try:
                conn.request("POST", self.path, body=b"keep-alive", headers={"Content-Type": "text/plain"})
                r = conn.getresponse()
                r.read()
                if not 200 <= r.status < 300:
                    self.non_2xx += 1
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"{time.monotonic():.3f} {type(e).__name__}: {e}")
                conn.close()  # a new connection, but the request is NOT sent again
            self.requests += 1
            time.sleep(self.interval)
        conn.close()

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        self.join(timeout)
