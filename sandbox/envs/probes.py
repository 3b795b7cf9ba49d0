"""Health checks of instances: an HTTP path (2xx) and/or a command inside the instance (exit 0)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.backends.base import Backend

MAX_BODY = 64 << 10
"""The most of a health answer's body that is read: the instance is not trusted to keep it short."""


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


def read_bounded(resp: http.client.HTTPResponse, limit: int, deadline: float) -> bytes:
    """At most `limit` bytes of the body, read until `deadline` (monotonic) at the latest: an
    endless or dripping body costs neither memory nor more than the probe's own time."""
    out = bytearray()
    while len(out) < limit and time.monotonic() < deadline:
        chunk = resp.read1(min(8192, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def http_probe(address: str, port: int, path: str, timeout: float = 2.0) -> Probe:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "sandbox-health"})
        resp = conn.getresponse()
        read_bounded(resp, MAX_BODY, time.monotonic() + timeout)  # then closed: never reused
        ok = 200 <= resp.status < 300
        return Probe(ok, f"GET {path} → {resp.status}")
    except OSError as e:
        return Probe(False, f"GET http://{address}:{port}{path}: {e.strerror or e}")
    except http.client.HTTPException as e:
        return Probe(False, f"GET http://{address}:{port}{path}: {type(e).__name__}")
    finally:
        conn.close()


def probe_instance(
    backend: Backend, name: str, upstream: str | None, path: str | None, command: str | None
) -> Probe:
    """`upstream`: ADDR:PORT where this machine reaches the app (None: no port, no HTTP check)."""
    details = []
    if path is not None and upstream is not None:
        host, _, port = upstream.rpartition(":")
        p = http_probe(host, int(port), path)
        if not p.ok:
            return p
        details.append(p.detail)
    if command is not None:
        r = backend.exec(name, ["/bin/sh", "-c", command], timeout=30)
        if r.code != 0:
            return Probe(False, f"`{command}` exited {r.code}: {(r.stderr or r.stdout).strip()[-200:]}")
        details.append(f"`{command}` ok")
    return Probe(True, "; ".join(details) or "no health check configured")


FIRST_POLL = 0.02  # an app that just started answers within a few polls of this; then back off
BACKOFF = 1.2


def wait_until(check: Callable[[], Probe], timeout: float, interval: float) -> tuple[Probe, float]:
    """Poll `check` until ok or `timeout` seconds; returns the last probe and the time taken.

    The first polls come quickly (20 ms, growing by a fifth each time) and slow down to `interval`
    within about two seconds: a fresh instance is usually healthy within a second, and a fixed
    interval would add up to a whole one to every wait.
    """
    t0 = time.monotonic()
    pause = min(FIRST_POLL, interval)
    while True:
        p = check()
        elapsed = time.monotonic() - t0
        if p.ok or elapsed >= timeout:
            return p, elapsed
        time.sleep(min(pause, max(0.0, timeout - elapsed)))
        pause = min(pause * BACKOFF, interval)
