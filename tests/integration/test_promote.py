"""Promotion on real LXC behind real nginx: the gate, --plan, 20 promotions under load with no failed
request, kill -9 at random moments and at each step, rollback, maintenance and read-only, and a
candidate that never becomes healthy.

Everything runs in this module's own workspace (the session build's store and lock, plus its variants)
with its own bridge, subnet and router ports (sandbox.yaml below), so it never meets the envs of another
workspace on this host. Traffic goes only to 127.0.0.1 (the routers) and to instance addresses in
SUBNET (containers this run created); every loop is bounded in count and time; every env made here is
removed at the end, and only processes this run started are stopped, by pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.promote.probe import KeepAlivePosts, LoadProbe, PhaseReport
from sandbox.workspace import Workspace
from tests.integration.conftest import (
    REPO,
    Built,
    Run,
    build_variant,
    edited,
    grant_traverse,
    link_exists,
    lxc_names,
    lxc_problem,
    ok,
    require,
    router_pids,
    sandbox,
    shared_cache,
    workspace_like,
)

pytestmark = pytest.mark.integration

BRIDGE = "sbxprom0"
SUBNET = ipaddress.ip_network("10.216.0.0/24")
PROD_PORT = 19490
SETTINGS = f"network: {{bridge: {BRIDGE}, subnet: {SUBNET}}}\nrouters: {{port_range: [19400, 19499]}}\n"
APP_PORT = 8000
HEALTH_TIMEOUT = 30  # prod's health timeout here (the shipped 120 s would make test 7 slow)
SEED = int(os.environ.get("SANDBOX_TEST_SEED", "20260415"))
MADE: set[str] = set()  # every env a test asked for; the session finalizer downs each
GATE = "has not passed `sandbox verify`"

# Runs the real CLI with a kill -9 (or a pause) at a chosen deploy step: a crash at an exact point.
DRIVER = r"""
import os, signal, sys, time
from pathlib import Path
from sandbox import state
from sandbox.promote import deploys

kill_at = os.environ.get("SBX_TEST_KILL_AT", "")
hold_at = os.environ.get("SBX_TEST_HOLD_AT", "")
release = Path(os.environ.get("SBX_TEST_RELEASE", "/nonexistent/release"))
record_step = deploys.Deploys.step

def step(self, deploy_id, name, **data):
    record_step(self, deploy_id, name, **data)
    if name == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if name == hold_at:
        release.with_name("held").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

add_instance = state.StateDB.add_instance

def add_instance_then_die(self, *args, **kw):
    inst = add_instance(self, *args, **kw)
    if kill_at == "add_instance":  # the row is written; no address, container or route yet
        os.kill(os.getpid(), signal.SIGKILL)
    return inst

deploys.Deploys.step = step
state.StateDB.add_instance = add_instance_then_die
from sandbox.cli.main import main
sys.argv = ["sandbox", *sys.argv[1:]]
main()
"""


# -- helpers -----------------------------------------------------------------------------------


def sbx(ws: Path, *args: str, timeout: float = 180) -> Run:
    if len(args) > 1 and args[0] == "up":
        MADE.add(args[1])
    return sandbox(ws, *args, timeout=timeout)


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def send(
    host: str, port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10
) -> Reply:
    """One request on a new connection, only to loopback or to an instance of this run's subnet."""
    assert host == "127.0.0.1" or ipaddress.ip_address(host) in SUBNET, f"refusing to send traffic to {host}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close", "Content-Type": "text/plain"})
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def via_router(method: str, path: str, body: bytes | None = None) -> Reply:
    return send("127.0.0.1", PROD_PORT, method, path, body)


def served_image(host: str = "127.0.0.1", port: int = PROD_PORT) -> str:
    import json

    r = send(host, port, "GET", "/healthz")
    assert r.status == 200, r
    image: str = json.loads(r.body)["image"]
    return image


def router_images(n: int = 6) -> set[str]:
    """The images that answer /healthz through prod's router on `n` new connections (both backends)."""
    return {served_image() for _ in range(n)}


def history(ws: Path) -> list[dict[str, Any]]:
    h: list[dict[str, Any]] = ok(sbx(ws, "history", "prod", "-n", "100", "--json"))
    return h


def status(ws: Path) -> dict[str, Any]:
    s: dict[str, Any] = ok(sbx(ws, "status", "prod", "--json"))
    return s


def prod_state(ws: Path) -> tuple[str, list[str], list[int]]:
    """What must not change when nothing is promoted: image, instances, deploy records."""
    s = status(ws)
    return s["image"], [i["name"] for i in s["instances"]], [d["id"] for d in history(ws)]


def assert_converged(ws: Path, expected: str | None = None) -> str:
    """prod is settled: the last deploy finished, 2 healthy instances all serving the env's image
    (directly and through the router), no orphans. Returns the image."""
    h = history(ws)
    assert h and h[0]["state"] in ("done", "rolled-back"), h[:1]
    assert [d["id"] for d in h if d["state"] == "running"] == []
    s = status(ws)
    image: str = s["image"]
    if expected is not None:
        assert image == expected, (image, expected)
    insts = s["instances"]
    assert len(insts) == 2, f"prod should have its profile's 2 instances, has {[i['name'] for i in insts]}"
    assert all(i["state"] == "running" and i["health"] == "healthy" for i in insts), insts
    for i in insts:
        assert served_image(i["address"], APP_PORT) == image, i
    assert router_images() == {image}
    gc = ok(sbx(ws, "gc", "--json"))
    assert all(v == [] for v in gc.values()), gc
    assert sorted(n for n in lxc_names(ws) if n.startswith("prod-")) == sorted(i["name"] for i in insts)
    return image


# -- load ----------------------------------------------------------------------------------------


class NewConnections(threading.Thread):
    """A second, independent client: GET /, GET /healthz and POST /notes, each on a new connection,
    never retried. Bounded by count and time."""

    def __init__(self, rps: float, max_seconds: float = 900, max_requests: int = 20000) -> None:
        super().__init__(daemon=True)
        self.interval = 1.0 / rps
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.stop = threading.Event()
        self.requests = 0
        self.failures: list[str] = []

    def run(self) -> None:
        calls = [("GET", "/", None), ("GET", "/healthz", None), ("POST", "/notes", b"client")]
        end = time.monotonic() + self.max_seconds
        next_at = time.monotonic()
        while not self.stop.is_set() and self.requests < self.max_requests and time.monotonic() < end:
            method, path, body = calls[self.requests % len(calls)]
            try:
                r = via_router(method, path, body)
                if not 200 <= r.status < 300:
                    self.failures.append(f"{method} {path}: {r.status} {r.body[:80]!r}")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{method} {path}: {type(e).__name__}: {e}")
            self.requests += 1
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))


class Load:
    """The built-in LoadProbe (keep-alive and new-connection GETs, keep-alive POSTs, one slow request
    at a time) plus the independent client, all through prod's router."""

    def __init__(self, rps: float, concurrency: int, client_rps: float, slow: float = 3.0) -> None:
        self.probe = LoadProbe(
            f"http://127.0.0.1:{PROD_PORT}/", rps=rps, concurrency=concurrency, slow_seconds=slow
        )
        self.client = NewConnections(client_rps)
        self.reports: dict[str, PhaseReport] = {}

    def __enter__(self) -> Load:
        self.probe.start()
        self.client.start()
        time.sleep(2.0)
        return self

    def mark(self, phase: str) -> None:
        self.probe.mark(phase)

    def __exit__(self, *exc: object) -> None:
        self.probe.mark("after")
        time.sleep(2.0)
        self.client.stop.set()
        self.reports = self.probe.stop(timeout=60)
        self.client.join(30)
        for phase, r in self.reports.items():
            print(
                f"probe {phase:<13} {r.requests:>5} requests {r.non_2xx} non-2xx {r.errors} errors "
                f"{r.retried} retried p50 {r.p50_ms} ms p99 {r.p99_ms} ms images "
                f"{', '.join(i[7:19] for i in r.images)} {r.first_errors or ''}"
            )
        print(
            f"client: {self.client.requests} requests on new connections, failures {self.client.failures[:5]}"
        )

    def images(self) -> set[str]:
        return {i for r in self.reports.values() for i in r.images}

    def assert_no_failure(self) -> None:
        assert self.reports, "the probe recorded nothing"
        bad = {
            p: (r.non_2xx, r.errors, r.first_errors) for p, r in self.reports.items() if r.non_2xx or r.errors
        }
        assert bad == {}, bad
        assert all(r.requests > 0 for r in self.reports.values()), self.reports
        assert sum(1 for s in self.probe.samples if s.kind == "get-slow" and s.status == 200) >= 1
        assert self.client.requests > 0 and self.client.failures == [], self.client.failures[:10]
        assert not self.client.is_alive()


def driver(ws: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """The real CLI, stopped at a chosen step by the DRIVER above."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, "-C", str(ws), *args],
        env={**os.environ, "SANDBOX_CACHE": str(shared_cache()), **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- fixtures ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Images:
    ws: Path
    v1: str  # the recipe as shipped
    v2: str  # settings.py changed (code → rolling)
    css: str  # only static/style.css changed (→ static)
    broken: str  # an app that never listens (→ unhealthy)
    restore: list[tuple[Path, int]]


def build(ws: Path, *args: str) -> str:
    digest: str = ok(sbx(ws, "build", *args, "--json", timeout=900))["digest"]
    return digest


@pytest.fixture(scope="session")
def promo(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """Own workspace and network; images v1, v2, css and broken; emptied and put back at the end."""
    require(lxc_problem())
    # the session build's lock and store (hard links): v1 is that image, found in the store's cache
    # (not a second mmdebstrap); v2, css and broken add app layers over its base
    ws = workspace_like(built, tmp_path_factory.mktemp("promote"), "ws")
    (ws / "sandbox.yaml").write_text(SETTINGS)
    shutil.copytree(REPO / "profiles", ws / "profiles")
    prod = ws / "profiles" / "prod.yaml"
    text = prod.read_text()
    assert "  port: 8080\n" in text and "  timeout: 120s\n" in text
    prod.write_text(
        text.replace("  port: 8080\n", f"  port: {PROD_PORT}\n").replace("120s", f"{HEALTH_TIMEOUT}s")
    )
    had_bridge = link_exists(BRIDGE)
    restore = grant_traverse(ws)
    try:
        v1 = build(ws, "web", "--tag", "v1")
        assert v1 == built.digest  # the same recipe and lock: the same image
        v2 = build_variant(ws, "v2")
        css = ws / "recipes" / "web" / "app" / "static" / "style.css"
        with edited(css, "", "/* promoted as a static-only change */\n"):
            css_image = build(ws, "web", "--tag", "css")
        recipe = (ws / "recipes" / "web.yaml").read_text()
        assert "name: web\n" in recipe and "  command: gunicorn " in recipe
        broken_recipe = re.sub(r"  command: gunicorn [^\n]*\n", "  command: sleep infinity\n", recipe)
        (ws / "recipes" / "broken.yaml").write_text(broken_recipe.replace("name: web\n", "name: broken\n"))
        (ws / "recipes" / "broken.lock").write_bytes((ws / "recipes" / "web.lock").read_bytes())
        broken = build(ws, "broken")
        assert len({v1, v2, css_image, broken}) == 4
        yield Images(ws, v1, v2, css_image, broken, restore)
    finally:
        with contextlib.suppress(Exception):
            MADE.update(e["name"] for e in ok(sandbox(ws, "ls", "--json")))
        for name in sorted(MADE):
            sandbox(ws, "down", name, timeout=180)
        gc = sandbox(ws, "gc", "--json", timeout=300)
        still = lxc_names(ws, running=True)
        for name in still:  # containers this run started; stop them so the host is left clean
            subprocess.run(
                ["lxc-stop", "-P", str(Workspace(ws).runtime / "lxc"), "-n", name, "-k"],
                timeout=60,
                check=False,
            )
        nginx = router_pids(ws)
        for pid in nginx:  # routers this run started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        if not had_bridge and not still and link_exists(BRIDGE):
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        for d, mode in restore:
            with contextlib.suppress(OSError):
                os.chmod(d, mode)
    assert gc.code == 0, gc.stdout + gc.stderr
    assert still == [] and nginx == [], (still, nginx)


@pytest.fixture
def prod(promo: Images) -> Iterator[Path]:
    """A fresh prod: 2 instances of v1 behind its router on PROD_PORT; removed after the test."""
    ws = promo.ws
    seen = {d for d, _ in promo.restore}  # another pytest session may have reset /tmp/pytest-of-* to 0700
    promo.restore.extend((d, m) for d, m in grant_traverse(ws) if d not in seen)
    with contextlib.suppress(AssertionError, ValueError):
        if any(e["name"] == "prod" for e in ok(sandbox(ws, "ls", "--json"))):
            sandbox(ws, "down", "prod", timeout=180)
    assert not port_busy(PROD_PORT), f"127.0.0.1:{PROD_PORT} is taken by something else"
    v = ok(sbx(ws, "up", "prod", "--image", promo.v1, "--wait", "--json"))
    if history(ws)[:1] and history(ws)[0]["state"] == "running":  # a stale one from an earlier prod
        ok(sbx(ws, "rollback", "--yes", "--to", "prod", timeout=300))
    assert v["url"] == f"http://127.0.0.1:{PROD_PORT}/" and len(v["instances"]) == 2
    assert all(ipaddress.ip_address(i["address"]) in SUBNET for i in v["instances"])
    assert router_images() == {promo.v1}
    yield ws
    with contextlib.suppress(AssertionError, ValueError, IndexError):
        if history(ws)[0]["state"] == "running":  # a test left a promotion interrupted: undo it first
            sandbox(ws, "rollback", "--yes", "--to", "prod", timeout=300)
    sandbox(ws, "down", "prod", timeout=180)


# -- 1. the verification gate ---------------------------------------------------------------------


def test_promote_needs_a_verified_image_or_force(prod: Path, promo: Images) -> None:
    ws = prod
    before = prod_state(ws)
    r = sbx(ws, "promote", promo.v2, "--to", "prod", "--yes")
    assert r.code == 1, r.stdout + r.stderr
    assert GATE in r.stderr and "sandbox verify staging-N" in r.stderr and "--force" in r.stderr
    assert prod_state(ws) == before
    assert router_images() == {promo.v1}

    try:
        ok(sbx(ws, "up", "staging-1", "--image", promo.v2, "--wait", "--json"))
        r = sbx(ws, "promote", "--from", "staging-1", "--to", "prod", "--yes")
        assert r.code == 1 and GATE in r.stderr, r.stderr  # running on staging is not enough
        assert prod_state(ws) == before

        v = ok(sbx(ws, "verify", "staging-1", "--json"))
        assert v["ok"] is True and "smoke passed" in v["detail"], v
        res = ok(sbx(ws, "promote", "--from", "staging-1", "--to", "prod", "--yes", "--json", timeout=300))
        assert (res["state"], res["from_image"], res["to_image"]) == ("done", promo.v1, promo.v2)
        assert router_images() == {promo.v2}
        d = history(ws)[0]
        assert (d["forced"], d["source"], d["kind"], d["state"]) == (False, "staging-1", "promote", "done")
    finally:
        sandbox(ws, "down", "staging-1", timeout=180)

    res = ok(sbx(ws, "promote", promo.v1, "--to", "prod", "--yes", "--force", "--json", timeout=300))
    assert res["state"] == "done" and res["to_image"] == promo.v1
    d = history(ws)[0]
    assert (d["forced"], d["state"], d["to_image"]) == (True, "done", promo.v1)
    text = ok(sbx(ws, "history", "prod"))
    assert text.splitlines()[0].startswith(f"#{d['id']} ") and " forced" in text.splitlines()[0]
    assert_converged(ws, promo.v1)


# -- 2. --plan ------------------------------------------------------------------------------------


def test_plan_prints_the_gentlest_strategy_and_changes_nothing(prod: Path, promo: Images) -> None:
    ws = prod
    before = prod_state(ws)
    code = ok(sbx(ws, "promote", promo.v2, "--to", "prod", "--plan", "--json"))
    assert code["plan"]["strategy"] == "rolling"
    assert code["plan"]["code_files"] == ["/srv/app/settings.py"] and code["plan"]["static_files"] == []
    assert code["diff"]["files"]["changed"] == ["/srv/app/settings.py"]

    static = ok(sbx(ws, "promote", promo.css, "--to", "prod", "--plan", "--json"))
    assert static["plan"]["strategy"] == "static"
    assert (
        static["plan"]["static_files"] == ["/srv/app/static/style.css"] and static["plan"]["code_files"] == []
    )

    same = ok(sbx(ws, "promote", promo.v1, "--to", "prod", "--plan", "--json"))
    assert same["plan"]["strategy"] == "noop"

    text = ok(sbx(ws, "promote", promo.css, "--to", "prod", "--plan"))
    assert "strategy: static" in text and "files: +0 -0 ~1" in text

    assert prod_state(ws) == before  # no deploy recorded, same image, same instances
    assert router_images() == {promo.v1}


def test_static_only_change_syncs_files_without_replacing_instances(prod: Path, promo: Images) -> None:
    ws = prod
    names = [i["name"] for i in status(ws)["instances"]]
    assert b"promoted as a static-only change" not in via_router("GET", "/static/style.css").body
    with Load(rps=20, concurrency=2, client_rps=4) as load:
        load.mark("during")
        res = ok(sbx(ws, "promote", promo.css, "--to", "prod", "--yes", "--force", "--json", timeout=300))
    load.assert_no_failure()
    assert (res["state"], res["plan"]["strategy"]) == ("done", "static")
    s = status(ws)
    assert s["image"] == promo.css and [i["name"] for i in s["instances"]] == names  # no new instance
    for i in s["instances"]:
        r = send(i["address"], APP_PORT, "GET", "/static/style.css")
        assert r.status == 200 and b"promoted as a static-only change" in r.body
    assert all(
        b"promoted as a static-only change" in via_router("GET", "/static/style.css").body for _ in range(4)
    )
    assert [s["step"] for s in history(ws)[0]["steps"]] == ["synced", "synced"]


# -- 3. twenty promotions under load -------------------------------------------------------------


def test_twenty_promotions_under_load_fail_no_request(prod: Path, promo: Images) -> None:
    ws = prod
    t0 = time.monotonic()
    deadline = t0 + 330  # the whole test stays around 6 minutes
    seconds: list[float] = []
    with Load(rps=60, concurrency=6, client_rps=8) as load:
        for n, image in enumerate([promo.v2, promo.v1] * 10, 1):
            left = deadline - time.monotonic()
            assert left > 0, f"only {n - 1} promotions in {time.monotonic() - t0:.0f}s: {seconds}"
            load.mark(f"promote-{n:02d}")
            res = ok(
                sbx(ws, "promote", image, "--to", "prod", "--yes", "--force", "--json", timeout=left + 60)
            )
            assert (res["state"], res["to_image"], res["plan"]["strategy"]) == ("done", image, "rolling")
            assert len(res["per_backend"]) == 2
            assert router_images() == {image}, f"promotion {n} did not change the serving image"
            seconds.append(res["seconds"])
    print(f"20 promotions in {time.monotonic() - t0:.0f}s; each {seconds}")
    load.assert_no_failure()
    assert len([p for p in load.reports if p.startswith("promote-")]) == 20
    assert {promo.v1, promo.v2} <= load.images()
    assert_converged(ws, promo.v1)
    assert [d["state"] for d in history(ws)[:20]] == ["done"] * 20


def test_promotions_cost_no_error_to_wrk_or_a_keep_alive_client_that_never_retries(
    prod: Path, promo: Images
) -> None:
    """A swap reloads nothing (the Lua balancer takes the backends through the control socket), so
    no idle keep-alive connection is closed under a client: wrk -c16 counts 0 socket errors and a
    POST loop on one connection, never retried, 0 errors, over 4 promotions."""
    require(None if shutil.which("wrk") else "wrk is not installed (apt-get install wrk)")
    ws = prod
    url = f"http://127.0.0.1:{PROD_PORT}/"
    posts = KeepAlivePosts(url + "notes", interval=0.005, max_seconds=150)
    wrk = subprocess.Popen(
        # runs its full time (no SIGINT); a request slower than 5 s counts as a timeout error (wrk's
        # default, 2 s, measures this 2-core host's CPU while a container boots beside 16 busy
        # connections, not the swap: bench/promote_bench.py reports the latencies)
        ["wrk", "-t2", "-c16", "-d45s", "--timeout", "5s", "--latency", url + "healthz"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    posts.start()
    try:
        deadline = time.monotonic() + 40  # the promotions end inside wrk's 45 s (about 5 s each here)
        time.sleep(1.0)
        for image in [promo.v2, promo.v1] * 2:
            left = deadline - time.monotonic()
            assert left > 0, "4 promotions took more than 40 s, longer than wrk runs"
            res = ok(
                sbx(ws, "promote", image, "--to", "prod", "--yes", "--force", "--json", timeout=left + 60)
            )
            assert res["state"] == "done" and len(res["per_backend"]) == 2
        time.sleep(1.0)
    finally:
        posts.stop()
        try:
            out, _ = wrk.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            wrk.kill()
            out, _ = wrk.communicate()
    print(out)
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 1000, out
    # 0 of every kind: connect, read (a closed idle keep-alive connection), write, timeout (5 s)
    seen = {
        "wrk": out.split("Latency Distribution")[0],
        "posts": (posts.requests, posts.errors[:5], posts.non_2xx),
    }
    assert "Socket errors" not in out and "Non-2xx" not in out and not posts.errors, (seen, out)
    assert posts.requests > 100 and posts.errors == [] and posts.non_2xx == 0, (
        posts.errors[:5],
        posts.non_2xx,
    )
    assert_converged(ws, promo.v1)


# -- 4. kill -9 -------------------------------------------------------------------------------------


def test_kill_9_at_random_moments_then_resume_or_rollback_converges(prod: Path, promo: Images) -> None:
    ws = prod
    rng = random.Random(SEED)
    print(f"seed {SEED} (SANDBOX_TEST_SEED)")
    current = promo.v1
    outcomes = []
    deadline = time.monotonic() + 480
    env = {**os.environ, "SANDBOX_CACHE": str(shared_cache())}
    with Load(rps=40, concurrency=4, client_rps=6) as load:
        for n in range(6):
            assert time.monotonic() < deadline, f"only {n} rounds in time: {outcomes}"
            target = promo.v2 if current == promo.v1 else promo.v1
            delay = rng.uniform(0.2, 6)
            action = ("resume", "rollback")[n % 2]
            known = {d["id"] for d in history(ws)}
            load.mark(f"round-{n}")
            argv = ["promote", target, "--to", "prod", "--yes", "--force"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "-C", str(ws), *argv],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)  # reaped: its pid is gone, as after a crash
            new = [d for d in history(ws) if d["id"] not in known]
            if new and new[0]["state"] == "running":
                last = new[0]["steps"][-1]["step"] if new[0]["steps"] else "start"
                second = sbx(ws, "promote", target, "--to", "prod", "--yes", "--force")
                assert second.code == 1 and "interrupted" in second.stderr, second.stderr
                assert "--resume" in second.stderr and "rollback" in second.stderr, second.stderr
                if action == "resume":
                    ok(sbx(ws, "promote", "--resume", "--to", "prod", timeout=300))
                    expected = target
                else:
                    ok(sbx(ws, "rollback", "--yes", "--to", "prod", timeout=300))
                    expected = current
                outcomes.append(f"killed after {delay:.2f}s at {last}; {action}")
            else:
                expected = target if new and new[0]["state"] == "done" else current
                outcomes.append(
                    f"exit {proc.returncode} after {delay:.2f}s ({new[0]['state'] if new else 'no deploy'})"
                )
            current = assert_converged(ws, expected)
    print("\n".join(outcomes))
    load.assert_no_failure()
    assert sum("killed" in o for o in outcomes) >= 2, outcomes  # most rounds really interrupt a swap


@pytest.mark.parametrize(
    ("step", "action"),
    [
        ("started", "resume"),
        ("healthy", "rollback"),
        ("unrouted", "resume"),
        ("unrouted", "rollback"),
        ("stopped", "rollback"),
        # a crash between "routed" and "unrouted": the replacement is already routed, so no third instance
        ("routed", "resume"),
        ("routed", "rollback"),
        # a crash right after the instance row is written, before anything of it exists
        ("add_instance", "resume"),
        ("add_instance", "rollback"),
    ],
)
def test_kill_9_at_each_step_converges(prod: Path, promo: Images, step: str, action: str) -> None:
    ws = prod
    with Load(rps=20, concurrency=2, client_rps=4) as load:
        load.mark("killed")
        proc = driver(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force", SBX_TEST_KILL_AT=step)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err)
        d = history(ws)[0]
        assert (d["state"], d["to_image"]) == ("running", promo.v2)
        assert (d["steps"][-1]["step"] if d["steps"] else "start") == (
            "start" if step == "add_instance" else step
        )

        second = sbx(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force")
        assert second.code == 1 and f"#{d['id']} of prod was interrupted" in second.stderr, second.stderr
        assert "sandbox promote --resume --to prod" in second.stderr, second.stderr
        assert "sandbox rollback --to prod" in second.stderr, second.stderr

        load.mark(action)
        ok(
            sbx(
                ws,
                *(["promote", "--resume"] if action == "resume" else ["rollback", "--yes"]),
                "--to",
                "prod",
                timeout=300,
            )
        )
    done = history(ws)[0]
    assert done["id"] == d["id"] and done["state"] == ("done" if action == "resume" else "rolled-back")
    assert_converged(ws, promo.v2 if action == "resume" else promo.v1)
    load.assert_no_failure()


def test_promoting_the_old_image_while_one_is_interrupted_is_refused(prod: Path, promo: Images) -> None:
    ws = prod
    proc = driver(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force", SBX_TEST_KILL_AT="unrouted")
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    r = sbx(ws, "promote", promo.v1, "--to", "prod", "--yes", "--force")
    assert r.code == 1 and "interrupted" in r.stderr, r.stdout + r.stderr
    assert "--resume" in r.stderr and "rollback" in r.stderr
    ok(sbx(ws, "rollback", "--yes", "--to", "prod", timeout=300))
    assert_converged(ws, promo.v1)


def test_a_new_env_does_not_inherit_an_interrupted_promotion(prod: Path, promo: Images) -> None:
    ws = prod
    proc = driver(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force", SBX_TEST_KILL_AT="unrouted")
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    interrupted = history(ws)[0]
    assert interrupted["state"] == "running"
    ok(sbx(ws, "down", "prod"))
    gone = next(d for d in history(ws) if d["id"] == interrupted["id"])
    assert gone["state"] != "running" and gone["finished"] is not None, gone
    ok(sbx(ws, "up", "prod", "--image", promo.v1, "--wait", "--json"))
    r = sbx(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force", timeout=300)
    assert r.code == 0, r.stderr
    assert_converged(ws, promo.v2)


def test_a_second_promote_while_one_runs_fails_clearly(prod: Path, promo: Images, tmp_path: Path) -> None:
    ws = prod
    release = tmp_path / "release"
    args = ("promote", promo.v2, "--to", "prod", "--yes", "--force")
    proc = driver(ws, *args, SBX_TEST_HOLD_AT="healthy", SBX_TEST_RELEASE=str(release))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "held").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (tmp_path / "held").exists(), proc.poll()
        r = sbx(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force")
        assert r.code == 1 and "already running" in r.stderr and f"pid {proc.pid}" in r.stderr, r.stderr
        r = sbx(ws, "promote", promo.v1, "--to", "prod", "--yes", "--force")  # even "nothing to do"
        assert r.code == 1 and "already running" in r.stderr, r.stdout + r.stderr
        r = sbx(ws, "promote", "--resume", "--to", "prod")
        assert r.code == 1 and "no interrupted promotion" in r.stderr, r.stderr
    finally:
        release.touch()
        _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert_converged(ws, promo.v2)


# -- 5. rollback ----------------------------------------------------------------------------------


def test_rollback_after_a_finished_promotion_returns_to_the_previous_image(prod: Path, promo: Images) -> None:
    ws = prod
    ok(sbx(ws, "promote", promo.v2, "--to", "prod", "--yes", "--force", timeout=300))
    assert router_images() == {promo.v2}
    res = ok(sbx(ws, "rollback", "--yes", "--to", "prod", "--probe", "30", "--json", timeout=300))
    assert (res["state"], res["from_image"], res["to_image"]) == ("done", promo.v2, promo.v1)
    assert set(res["probe"]) == {"before", "during", "after"}
    for phase, r in res["probe"].items():
        assert r["requests"] > 0 and r["non_2xx"] == 0 and r["errors"] == 0, (phase, r)
    d = history(ws)[0]
    assert (d["kind"], d["state"], d["from_image"], d["to_image"]) == ("rollback", "done", promo.v2, promo.v1)
    assert_converged(ws, promo.v1)


def test_rollback_without_an_earlier_promotion_says_so(promo: Images) -> None:
    ws = promo.ws
    try:
        ok(sbx(ws, "up", "staging-2", "--image", promo.v1, "--wait", "--json"))
        r = sbx(ws, "rollback", "--yes", "--to", "staging-2")
        assert r.code == 1 and "has no earlier image to roll back to" in r.stderr, r.stderr
        assert "sandbox history staging-2" in r.stderr
        r = sbx(ws, "promote", "--resume", "--to", "staging-2")
        assert r.code == 1 and "no interrupted promotion of staging-2" in r.stderr, r.stderr
        assert ok(sbx(ws, "history", "staging-2", "--json")) == []
        assert ok(sbx(ws, "status", "staging-2", "--json"))["image"] == promo.v1
    finally:
        sandbox(ws, "down", "staging-2", timeout=180)


# -- 6. maintenance and read-only -----------------------------------------------------------------


def test_maintenance_and_readonly_modes(prod: Path, promo: Images) -> None:
    ws = prod
    ok(sbx(ws, "maintenance", "on", "prod", "--allow", "127.0.0.1"))
    r = via_router("GET", "/")
    assert r.status == 200 and b"Hello from sandbox" in r.body  # the allowlist gets through

    ok(sbx(ws, "maintenance", "on", "prod"))
    for path in ("/", "/healthz"):
        r = via_router("GET", path)
        assert r.status == 503 and b"We are updating" in r.body, (path, r)
        assert r.headers.get("retry-after") == "60"

    r = via_router("POST", "/notes", b"during maintenance")  # writes get the page too
    assert r.status == 503 and b"We are updating" in r.body and r.headers.get("retry-after") == "60", r

    ok(sbx(ws, "readonly", "on", "prod"))  # both modes at once: the page still wins for everyone
    r = via_router("GET", "/")
    assert r.status == 503 and b"We are updating" in r.body and r.headers.get("retry-after") == "60", r
    ok(sbx(ws, "readonly", "off", "prod"))

    ok(sbx(ws, "maintenance", "off", "prod"))
    assert via_router("GET", "/").status == 200

    ok(sbx(ws, "readonly", "on", "prod"))
    r = via_router("POST", "/notes", b"while read-only")
    assert r.status == 503 and r.headers.get("retry-after") == "30", r
    assert via_router("GET", "/").status == 200 and via_router("GET", "/healthz").status == 200
    for i in ("0", "1"):
        r = sbx(ws, "exec", "prod", "-i", i, "--", "test", "-f", "/run/sandbox/readonly", timeout=60)
        assert r.code == 0, (i, r.stderr)

    ok(sbx(ws, "readonly", "off", "prod"))
    r = via_router("POST", "/notes", b"writable again")
    assert r.status == 201, r
    for i in ("0", "1"):
        r = sbx(ws, "exec", "prod", "-i", i, "--", "test", "-f", "/run/sandbox/readonly", timeout=60)
        assert r.code == 1, (i, r.stderr)


def test_maintenance_rejects_a_bad_allow_address(prod: Path) -> None:
    r = sbx(prod, "maintenance", "on", "prod", "--allow", "not-an-address")
    assert r.code == 1 and "--allow 'not-an-address'" in r.stderr, r.stderr
    assert via_router("GET", "/").status == 200


# -- 7. a candidate that never becomes healthy -----------------------------------------------------


def test_unhealthy_candidate_is_rolled_back_with_no_failed_request(prod: Path, promo: Images) -> None:
    ws = prod
    t0 = time.monotonic()
    with Load(rps=30, concurrency=3, client_rps=4) as load:
        load.mark("during")
        r = sbx(ws, "promote", promo.broken, "--to", "prod", "--yes", "--force", timeout=HEALTH_TIMEOUT + 120)
    assert r.code == 1, r.stdout + r.stderr
    assert "rolled back" in r.stderr and "did not become healthy" in r.stderr, r.stderr
    assert time.monotonic() - t0 < HEALTH_TIMEOUT + 60
    load.assert_no_failure()
    assert load.images() == {promo.v1}
    d = history(ws)[0]
    assert (d["state"], d["to_image"]) == ("rolled-back", promo.broken)
    assert "did not become healthy" in (d["error"] or "")
    steps = [s["step"] for s in d["steps"]]
    assert steps[:2] == ["started", "unhealthy"] and "rolling back" in steps and "routed" not in steps
    assert_converged(ws, promo.v1)
