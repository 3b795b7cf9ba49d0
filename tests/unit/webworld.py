"""A web frontend for the tests: a temp state DB, the real root side (RootSide) on a real unix socket
(rpcserver), the real Starlette app driven over httpx's ASGI transport, users of every role, and
fake env views (the only fake: no backend). `Served` runs an app on a real uvicorn on loopback, and
`sse_latencies` times a DB write to an SSE client (test_web_events.py and bench/web_bench.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from argon2 import PasswordHasher

from sandbox.errors import EnvNotFound, NotFound
from sandbox.settings import Hook, Pipeline
from sandbox.state import StateDB
from sandbox.web import rpcserver
from sandbox.web.auth import Auth
from sandbox.web.httpapp import CSRF_COOKIE, WebConfig, make_app
from sandbox.web.jobs import Jobs
from sandbox.web.rootside import RootSide
from sandbox.web.views import ImageViews

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"
D = "sha256:" + "c" * 64
SECRET = "It's a Secret to Everybody"

ROLES: dict[str, dict[str, str]] = {
    "nobody": {},
    "viewer": {"*": "viewer"},
    "dave": {"*": "viewer", "staging": "developer", "dev": "developer"},  # a developer
    "deployer": {"*": "deployer"},
    "admin": {"*": "admin"},
}


def env_row(name: str, profile: str, owner: str) -> dict[str, Any]:
    return {
        "name": name,
        "profile": profile,
        "image": D,
        "backend": "fake",
        "owner": owner,
        "state": "running",
        "health": "healthy",
        "created": 1.0,
        "expires": None,
        "url": None,
        "instances": [{"name": f"{name}-0", "address": "10.0.0.2", "image": D, "state": "running"}],
        "error": None,
    }


class FakeViews:
    """What Envs.ls/view and ImageStore.summaries would give, for three envs and one image; with
    `image_views` set (tests/unit/test_web_images.py), the real images and diffs of a real store."""

    def __init__(self) -> None:
        self.image_views: ImageViews | None = None
        self.rows = {
            "staging-1": env_row("staging-1", "staging", "alice"),
            "prod": env_row("prod", "prod", "root"),
            "dev-dave": env_row("dev-dave", "dev", "dave"),
        }

    def envs(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    def env(self, name: str) -> dict[str, Any]:
        if name not in self.rows:
            raise EnvNotFound(f"environment {name} not found", hint="sandbox ls")
        return {**self.rows[name], "events": []}

    def images(self) -> list[dict[str, Any]]:
        if self.image_views:
            return self.image_views.images()
        return [{"digest": D, "refs": ["web:latest"], "recipe": "web", "packages": 1, "files": 2}]

    def logs(self, name: str, index: int, lines: int) -> list[str]:
        """Each instance's log: its name, then a line with markup in it."""
        self.env(name)
        return [f"{name}-{index} started", "<script>alert(1)</script> GET /healthz 200"][-lines:]

    def image_diff(self, a: str, b: str) -> dict[str, Any]:
        if self.image_views:
            return self.image_views.image_diff(a, b)
        raise NotFound(f"image {a} not found", hint="sandbox images")


class Client:
    """A synchronous httpx client on the app's ASGI transport (cookies kept between calls)."""

    def __init__(self, app: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)),
            base_url="http://testserver",
        )

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)

    @property
    def csrf(self) -> str:
        if CSRF_COOKIE not in self.http.cookies:
            self.get("/login")
        return str(self.http.cookies[CSRF_COOKIE])

    def login(self, user: str, password: str = PASSWORD) -> httpx.Response:
        return self.post("/login", data={"csrf": self.csrf, "user": user, "password": password})

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


class World:
    def __init__(self, tmp: Path) -> None:
        self.state = StateDB(tmp / "state.db")
        self.auth = Auth(self.state, hasher=CHEAP)
        self.tokens: dict[str, str] = {}
        for name, roles in ROLES.items():
            self.auth.add_user(name, PASSWORD, roles)
            self.tokens[name] = self.auth.add_token(name, "t")
        self.views = FakeViews()
        hooks = (
            Hook(
                name="web",
                format="github",
                secret_env="HOOK_SECRET",
                branches={"main": Pipeline(recipe="web")},
            ),
        )
        self.root = RootSide(self.state, self.views, hooks=lambda: hooks)
        self.root.auth = Auth(self.state, hasher=CHEAP)
        self.sockdir = Path(tempfile.mkdtemp(prefix="sbx-rpc-", dir="/tmp"))
        self.socket = self.sockdir / "rpc.sock"
        self.server, _ = rpcserver.start(self.socket, self.root)
        self.app = make_app(WebConfig(socket=str(self.socket)))
        self.clients: list[Client] = []

    def client(self) -> Client:
        c = Client(self.app)
        self.clients.append(c)
        return c

    def api(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def close(self) -> None:
        for c in self.clients:
            c.close()
        rpcserver.stop(self.server, self.socket)
        self.sockdir.rmdir()


def world(tmp: Path) -> Iterator[World]:
    w = World(tmp)
    try:
        yield w
    finally:
        w.close()


class Served:
    """ASGI `app` on a real uvicorn on a free loopback port, in a thread (httpx's ASGI transport
    buffers whole bodies: no SSE over it)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        cfg.timeout_graceful_shutdown = 1
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_events(lines: Iterator[str], n: int) -> list[dict[str, Any]]:
    """The next `n` events (not comments) of an SSE stream."""
    out: list[dict[str, Any]] = []
    ev: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "data" in ev:
                out.append(ev)
                if len(out) == n:
                    return out
            ev = {}
        elif not line.startswith(":"):
            k, _, v = line.partition(": ")
            ev[k] = json.loads(v) if k == "data" else v
    raise AssertionError(f"the stream ended after {out}")


def sse_latencies(w: World, url: str, n: int) -> list[float]:
    """Seconds from a job's insert, by another connection to the state DB (the worker's, the CLI's),
    to its event at an admin's SSE client of `url`/events, `n` times at varied phases of the root
    side's 50 ms poll."""
    other = Jobs(StateDB(w.state.path))
    auth = {"Authorization": f"Bearer {w.tokens['admin']}"}
    lat: list[float] = []
    with httpx.Client(base_url=url, timeout=5) as c, c.stream("GET", "/events", headers=auth) as r:
        lines = r.iter_lines()
        for i in range(n):
            time.sleep(0.05 + (i % 15) * 0.007)  # the stream is in its long poll, at varied phases
            t0 = time.monotonic()
            job = other.submit("verify", {"env": "staging-1"}, who="root", trigger="cli")
            ev = read_events(lines, 1)[0]
            lat.append(time.monotonic() - t0)
            assert ev["data"]["id"] == job.id
            other.cancel(job.id)
            read_events(lines, 1)
    return lat
