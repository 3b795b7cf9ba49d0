"""The deploy buttons in a real browser against a real `sandbox serve` and real LXC envs.

A deployer logs in. With prod (2 instances of v1 behind its router) and staging (v2, verified) up,
they press "promote staging → prod", check the exact digest on the confirm page and confirm; the
deploy's steps stream to "done" on its page (SSE, no reload) while this test's own load probe
(about 30 GETs a second on new connections to prod's router on loopback) sees no failed request.
Then they roll back from the env page (no failure again), switch maintenance on with an allowlist
that holds 127.0.0.2 but not 127.0.0.1, and the test sees the maintenance page from 127.0.0.1 and the
app from 127.0.0.2; then maintenance off. Screenshots land in the test's tmp dir (SANDBOX_WEB_SHOTS).

Own bridge sbxweb1 (10.234.0.0/24) and router ports 19810-19829."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox.state import StateDB
from sandbox.web.auth import Auth
from tests.integration.conftest import (
    Built,
    build_variant,
    clear_workspace,
    grant_traverse,
    link_exists,
    lxc_problem,
    ok,
    promotion_workspace,
    require,
    sandbox,
    shared_cache,
)
from tests.integration.test_web_browser import ARGS, CHROMIUM, PASSWORD, SHOTS_ENV
from tests.integration.test_web_serve import free_port, http_side_pid, start_serve, stop_serve

pytestmark = [pytest.mark.integration]

BRIDGE = "sbxweb1"
PROD_PORT = 19810
SETTINGS = f"network: {{bridge: {BRIDGE}, subnet: 10.234.0.0/24}}\nrouters: {{port_range: [19811, 19829]}}\n"
MAINTENANCE = b"We are updating"
APP = b"Hello from sandbox"


def get(path: str = "/", source: str = "127.0.0.1", timeout: float = 5) -> tuple[int, bytes]:
    """One GET on a new connection to prod's router on loopback, from `source` (a loopback address)."""
    assert source.startswith("127.")
    conn = http.client.HTTPConnection("127.0.0.1", PROD_PORT, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@dataclass
class Probe:
    """GETs at about `rps` a second in a thread, at most `limit` seconds; every non-200 is a failure,
    and so is an answer slower than 10 s (the limit of test_promote.py's probes)."""

    rps: float = 30.0
    limit: float = 150.0
    requests: int = 0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - t0 < self.limit:
            started = time.monotonic()
            try:
                status, body = get(timeout=10)
                if status != 200 or APP not in body:
                    self.failures.append(f"{status} {body[:80]!r}")
            except OSError as e:
                self.failures.append(f"{e!r} after {time.monotonic() - started:.1f} s")
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.requests += 1
            self.stop.wait(max(0.0, 1 / self.rps - (time.monotonic() - started)))

    def __enter__(self) -> Probe:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def flows(built: Built, tmp_path: Path) -> Iterator[tuple[str, Path, str, str]]:
    """`sandbox serve` in a copy of the build workspace, prod on v1 and staging on v2 (verified)."""
    require(lxc_problem())
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    ws = promotion_workspace(built, tmp_path, "flows", PROD_PORT, SETTINGS)
    restore = grant_traverse(ws)
    had_bridge = link_exists(BRIDGE)
    Auth(StateDB(ws / ".sandbox" / "state.db")).add_user("dora", PASSWORD, {"*": "deployer"})
    run_dir = Path(f"/tmp/sbx-flows-{os.getpid()}")
    proc = None
    try:
        v1 = built.digest
        v2 = build_variant(ws, "v2")
        ok(sandbox(ws, "up", "prod", "--image", v1, "--wait", "--json", timeout=300))
        ok(sandbox(ws, "up", "staging", "--image", v2, "--wait", "--json", timeout=300))
        ok(sandbox(ws, "verify", "staging", "--json", timeout=120))
        port = free_port()
        proc = start_serve(ws, port, run_dir, env={"SANDBOX_CACHE": str(shared_cache())})
        http_side_pid(proc)
        # the worker's progress goes to the server's stderr: read it, or the pipe fills and blocks it
        log = tmp_path / "serve.log"
        drain = threading.Thread(target=lambda: shutil.copyfileobj(proc.stderr, log.open("w")), daemon=True)
        drain.start()
        yield f"http://127.0.0.1:{port}", ws, v1, v2
    finally:
        if proc is not None:
            stop_serve(proc)
        clear_workspace(ws, ("prod", "staging"), BRIDGE, had_bridge, restore)
        shutil.rmtree(run_dir, ignore_errors=True)


def newest_job_done(page: Any, kind: str, timeout: float = 120_000) -> None:
    """The env page's newest job is `kind` and turns done, live (no reload by the test)."""
    from playwright.sync_api import expect

    row = page.locator("#jobs tbody tr").first
    expect(row).to_contain_text(kind)
    expect(row.locator(".badge")).to_have_text(re.compile("done|failed|interrupted"), timeout=timeout)
    assert row.locator(".badge").inner_text() == "done", row.inner_text()


def test_promote_rollback_and_maintenance_from_the_env_page(
    flows: tuple[str, Path, str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, ws, v1, v2 = flows
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    assert get()[0] == 200
    t_start = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            deadline = time.monotonic() + 20
            while True:  # uvicorn needs a moment to import the app
                try:
                    page.goto(f"{url}/login")
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            page.fill("input[name=user]", "dora")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{url}/envs")
            page.goto(f"{url}/envs/prod")
            expect(page.locator("#promote")).to_contain_text("staging")
            page.screenshot(path=str(shots / "env-buttons.png"), full_page=True)

            # 1. promote staging -> prod: the confirm page names the exact verified digest
            with Probe() as promote_probe:
                page.click("a.job-promote")
                expect(page.locator("#promote-digest")).to_have_text(v2)
                page.screenshot(path=str(shots / "promote-confirm.png"))
                page.click("button.job-promote")
                expect(page).to_have_url(f"{url}/envs/prod")
                first = page.locator("#env-deploys tbody tr").first
                expect(first).to_contain_text("promote", timeout=30_000)
                first.locator("a").click()
                expect(page.locator("h1")).to_contain_text("Deploy #")
                page.evaluate("window.sbxNoReload = 1")  # gone if the page were reloaded
                steps_at_first = page.locator("ol.steps li").count()
                state_at_first = page.locator("h1 .badge").inner_text()
                expect(page.locator("h1 .badge")).to_have_text(
                    re.compile("done|failed|rolled-back"), timeout=120_000
                )
                assert page.locator("h1 .badge").inner_text() == "done"
                assert page.evaluate("window.sbxNoReload") == 1
                steps = page.locator("ol.steps").inner_text()
                assert "routed" in steps and "stopped" in steps, steps
                print(
                    f"deploy page: {state_at_first} with {steps_at_first} steps, then done with "
                    f"{page.locator('ol.steps li').count()}"
                )
                page.screenshot(path=str(shots / "promote-done.png"), full_page=True)
            assert promote_probe.failures == [], promote_probe.failures[:5]
            assert promote_probe.requests >= 100, promote_probe.requests
            assert {served_image() for _ in range(4)} == {v2}

            # 2. roll back to the kept release v1, from the env page
            page.goto(f"{url}/envs/prod")
            with Probe() as rollback_probe:
                page.click(f"#releases button:has-text('roll back to {v1[7:19]}')")
                expect(page).to_have_url(f"{url}/envs/prod")
                newest_job_done(page, "rollback")
            assert rollback_probe.failures == [], rollback_probe.failures[:5]
            assert rollback_probe.requests >= 50, rollback_probe.requests
            assert {served_image() for _ in range(4)} == {v1}

            # 3. maintenance on, letting through 127.0.0.2 but not 127.0.0.1
            page.click("a.job-maintenance")
            page.fill("input[name=allow]", "127.0.0.2")
            page.click("button.job-maintenance")
            expect(page).to_have_url(f"{url}/envs/prod")
            newest_job_done(page, "maintenance", 30_000)
            expect(page.locator("#mode-maintenance")).to_contain_text("127.0.0.2")
            page.screenshot(path=str(shots / "env-maintenance.png"), full_page=True)
            status, body = get("/")
            assert status == 503 and MAINTENANCE in body, (status, body[:200])
            status, body = get("/", source="127.0.0.2")
            assert status == 200 and APP in body, (status, body[:200])

            # 4. maintenance off
            page.click("button.job-maintenance")  # "maintenance off"
            expect(page.locator("#mode-maintenance")).to_have_text("off", timeout=30_000)
            status, body = get("/")
            assert status == 200 and APP in body
        finally:
            browser.close()
    print(
        f"promote, rollback, maintenance on/off in the browser: {time.monotonic() - t_start:.1f} s; "
        f"probe {promote_probe.requests} + {rollback_probe.requests} requests, 0 failed, slowest "
        f"{max(promote_probe.slowest, rollback_probe.slowest) * 1000:.0f} ms"
    )
    env = StateDB(ws / ".sandbox" / "state.db").get_env("prod")
    assert (env.image, env.maintenance) == (v1, None)


def served_image() -> str:
    import json

    status, body = get("/healthz")
    assert status == 200, body
    image: str = json.loads(body)["image"]
    return image
