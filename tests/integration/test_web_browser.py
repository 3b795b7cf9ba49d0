"""The pages in a real browser: Debian's chromium driven by Playwright (never `playwright install`).

1. Against a real `sandbox serve` on a free loopback port, in a workspace with the session's real
   build (recipes/web) and its own LXC bridge: a developer logs in, sees the envs, presses "create
   dev-dana", and watches the job finish live (SSE -> htmx) while the worker brings up a real LXC
   env; the env page then shows it running.
2. The same clicks against the real app, root side, RPC socket and worker in this process, on the
   fake backend of tests/fakes.py (no disk, no containers: seconds); this one also takes the
   screenshots (into the test's tmp dir; `SANDBOX_WEB_SHOTS=docs/web` refreshes those docs/web.md
   shows) and visits the deploy and audit pages.

Chromium missing is a skip here, and a failure in CI (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.promote.deploys import Deploys
from sandbox.state import StateDB
from sandbox.web.auth import Auth
from tests.fakes import FakeBackend
from tests.integration.conftest import (
    REPO,
    Built,
    clear_workspace,
    grant_traverse,
    link_exists,
    lxc_problem,
    require,
    shared_cache,
    workspace_like,
)
from tests.integration.test_web_serve import free_port, http_side_pid, start_serve, stop_serve

pytestmark = [pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BRIDGE = "sbxweb0"
SETTINGS = "network: {bridge: sbxweb0, subnet: 10.231.0.0/24}\nrouters: {port_range: [19750, 19769]}\n"
# screenshots land in the test's tmp dir; `SANDBOX_WEB_SHOTS=docs/web` refreshes the docs' copies
SHOTS_ENV = "SANDBOX_WEB_SHOTS"
PASSWORD = "correct horse battery"


def create_dev_env(page: Any, url: str) -> Any:
    """Log in as dana on the login page, press "create dev-dana" on the envs page: the job's row."""
    from playwright.sync_api import expect

    page.fill("input[name=user]", "dana")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}/envs")
    expect(page.locator("h1")).to_have_text("Environments")
    page.click("button.job-up")  # "create dev-dana (4 h)"
    expect(page).to_have_url(f"{url}/jobs")
    row = page.locator("#jobs tbody tr").first
    expect(row).to_contain_text("dev-dana")
    return row


@pytest.fixture
def served(built: Built, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`sandbox serve` in a copy of the build workspace; its envs downed and its bridge removed after."""
    require(lxc_problem())
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    ws = workspace_like(built, tmp_path, "webui")
    shutil.copytree(REPO / "profiles", ws / "profiles")
    (ws / "sandbox.yaml").write_text(SETTINGS)
    restore = grant_traverse(ws)
    had_bridge = link_exists(BRIDGE)
    Auth(StateDB(ws / ".sandbox" / "state.db")).add_user(
        "dana", PASSWORD, {"*": "viewer", "dev": "developer"}
    )
    run_dir = Path(f"/tmp/sbx-browser-{os.getpid()}")
    port = free_port()
    proc = start_serve(ws, port, run_dir, env={"SANDBOX_CACHE": str(shared_cache())})
    try:
        http_side_pid(proc)
        yield f"http://127.0.0.1:{port}", ws
    finally:
        stop_serve(proc)
        clear_workspace(ws, ["dev-dana"], BRIDGE, had_bridge, restore)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_developer_creates_a_dev_env_in_the_browser(served: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, ws = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            deadline = time.monotonic() + 20
            while True:  # the HTTP child binds at once; uvicorn needs a moment to import the app
                try:
                    page.goto(f"{url}/login")
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            row = create_dev_env(page, url)
            # no reload by the test: the row turns done through /events -> live.js -> htmx
            expect(row.locator(".badge")).to_have_text(re.compile("done|failed"), timeout=180_000)
            assert row.locator(".badge").inner_text() == "done", row.inner_text()
            page.goto(f"{url}/envs/dev-dana")
            expect(page.locator("h1")).to_contain_text("dev-dana")
            expect(page.locator("h1 .badge[class*='state-']")).to_have_text(re.compile("running"))
            expect(page.locator("#instances")).to_contain_text("dev-dana")
            # the app's log, read by the root side as `sandbox logs` does, polled by the page
            expect(page.locator("#logs pre")).to_contain_text("gunicorn", timeout=30_000)
        finally:
            browser.close()
    env = StateDB(ws / ".sandbox" / "state.db").get_env("dev-dana")
    assert (env.owner, env.state, env.backend) == ("dana", "running", "lxc")


# -- the same on the fake backend, with screenshots -------------------------------------------


class FakeWorldViews:
    """The CLI's own views (Envs.ls/view, ImageStore.summaries, image_diff_view) of the
    fake-backend world."""

    def __init__(self, world: Any) -> None:
        from sandbox.web.views import ImageViews

        self.world = world
        self.image_views = ImageViews(world.ws.images)

    def envs(self) -> list[dict[str, Any]]:
        return [v.to_dict() for v in self.world.envs().ls()]

    def env(self, name: str) -> dict[str, Any]:
        envs = self.world.envs()
        return {**envs.view(name).to_dict(), "events": envs.events(name, limit=10)}

    def images(self) -> list[dict[str, Any]]:
        return self.image_views.images()

    def image_diff(self, a: str, b: str) -> dict[str, Any]:
        return self.image_views.image_diff(a, b)

    def logs(self, name: str, index: int, lines: int) -> list[str]:
        return [f"{name} instance {index}: the fake backend keeps no app log"]


@pytest.fixture
def fake_served(tmp_path: Path) -> Iterator[tuple[str, Any, threading.Event]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    import uvicorn

    from sandbox.web import rpcserver
    from sandbox.web.httpapp import WebConfig, make_app
    from sandbox.web.jobs import Jobs
    from sandbox.web.rootside import RootSide
    from sandbox.web.worker import Worker, WorkspaceRunner
    from tests.unit.test_envs_orchestration import World

    FakeBackend.ops, FakeBackend.crash_at, FakeBackend.fail_at, FakeBackend.unhealthy = [], None, None, set()
    world = World(tmp_path / "ws")
    world.profile("dev", world.a, 1)
    state = world.envs().state
    auth = Auth(state)
    auth.add_user("dana", PASSWORD, {"*": "viewer", "dev": "developer"})
    auth.add_user("ada", PASSWORD, {"*": "admin"})
    views = FakeWorldViews(world)
    root = RootSide(state, views)
    sockdir = Path(tempfile.mkdtemp(prefix="sbx-br-", dir="/tmp"))
    server, _ = rpcserver.start(sockdir / "rpc.sock", root)
    stop, go = threading.Event(), threading.Event()
    worker = Worker(Jobs(state), views, WorkspaceRunner(world.ws, envs=world.envs))
    worker.interval = 0.2

    def work() -> None:  # held until the test has seen the job queued in the page
        if go.wait(60):
            worker.loop(stop)

    wt = threading.Thread(target=work, daemon=True)
    wt.start()
    port = free_port()
    cfg = uvicorn.Config(
        make_app(WebConfig(socket=str(sockdir / "rpc.sock"))),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    web = uvicorn.Server(cfg)
    ut = threading.Thread(target=web.run, daemon=True)
    ut.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", world, go
    finally:
        web.should_exit = True
        ut.join(timeout=10)
        stop.set()
        go.set()
        wt.join(timeout=10)
        rpcserver.stop(server, sockdir / "rpc.sock")
        root.feed.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_the_pages_in_chromium_on_the_fake_backend(
    fake_served: tuple[str, Any, threading.Event], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, world, go = fake_served
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 520})
            page.goto(f"{url}/login")
            page.screenshot(path=str(shots / "login.png"))
            row = create_dev_env(page, url)
            expect(row.locator(".badge")).to_have_text("queued")
            page.wait_for_timeout(300)  # live.js has opened its EventSource
            t0 = time.monotonic()
            go.set()
            # no reload by the test, and the page's own poll is every 30 s: the row turns done
            # through /events -> live.js -> htmx
            expect(row.locator(".badge")).to_have_text(re.compile("done|failed"), timeout=10_000)
            print(f"job row done in the browser {time.monotonic() - t0:.2f} s after the worker started")
            assert row.locator(".badge").inner_text() == "done", row.inner_text()
            page.screenshot(path=str(shots / "jobs.png"))
            page.goto(f"{url}/envs")
            expect(page.locator("#envs")).to_contain_text("dev-dana")
            page.screenshot(path=str(shots / "envs.png"))
            # a change made elsewhere (root's CLI, another user) shows up live here too
            world.envs().state.set_env("dev-dana", health="unhealthy")
            world.envs().state.event("health", "dev-dana went unhealthy", env="dev-dana")
            expect(page.locator("#envs")).to_contain_text("unhealthy", timeout=5_000)
            page.goto(f"{url}/envs/dev-dana")
            expect(page.locator("h1 .badge[class*='state-']")).to_have_text(re.compile("running"))
            expect(page.locator("#instances")).to_contain_text("dev-dana")
            page.screenshot(path=str(shots / "env.png"))
            # a deploy with a probe series, as `promote --probe` records it: the timeline and its plot
            deploys = Deploys(world.envs().state)
            d = deploys.begin("dev-dana", world.a, world.b, "rolling")
            deploys.step(d.id, "started", instance="dev-dana-1")
            deploys.step(d.id, "healthy", instance="dev-dana-1", seconds=0.8)
            deploys.finish(d.id, "done")
            sec = [
                [i, "before" if i < 2 else "during" if i < 6 else "after", 20, 20, 2 + i % 3, 6 + i]
                for i in range(8)
            ]
            sec[4][3] = 17
            deploys.step(d.id, "probe", series=sec, phases={})
            page.goto(f"{url}/deploys/{d.id}")
            expect(page.locator("svg.plot")).to_be_visible()
            expect(page.locator("ol.steps")).to_contain_text("healthy")
            page.screenshot(path=str(shots / "deploy.png"), full_page=True)
            # the images, and the diff of two picked in the form
            page.goto(f"{url}/images")
            expect(page.locator("#images")).to_contain_text("web:latest")
            page.screenshot(path=str(shots / "images.png"))
            page.select_option("select[name=a]", world.a)
            page.select_option("select[name=b]", world.b)
            page.click("form.pick button")
            expect(page.locator("#strategy")).to_contain_text("rolling")
            expect(page.locator("#files")).to_contain_text("/srv/app/main.py")
            page.screenshot(path=str(shots / "image_diff.png"))
            page.click("button:has-text('log out')")
            expect(page).to_have_url(f"{url}/login")
            page.fill("input[name=user]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.goto(f"{url}/audit")
            expect(page.locator("#audit")).to_contain_text("logout")
            expect(page.locator("#audit")).to_contain_text("up (job #1, button)")
            page.screenshot(path=str(shots / "audit.png"))
        finally:
            browser.close()
    env = world.envs().state.get_env("dev-dana")
    assert (env.owner, env.state) == ("dana", "running")
