"""Issue 12: "The server is killed during a promotion and restarted: the job's state is correct, and
the promotion converges after resume."

A real `sandbox serve` (root) in a copy of the session build's workspace, on its own bridge, subnet
and router ports. A deployer's API token queues a promote job of prod (2 LXC instances of v1) to
v2, verified on staging-1. When the deploy has started its first new instance, the test kills the
serve process (by its pid) with SIGKILL: its HTTP child must end too (PR_SET_PDEATHSIG), so that a
restarted serve can bind the same port. After the restart the job is `interrupted` and holds prod's
queue (a new job stays queued); a `resume` job with a load probe then converges: the job done,
2 healthy instances of v2 behind the router, the probe's series on the deploy, no leftover
container. Traffic goes only to 127.0.0.1 and to this run's subnet; every loop is bounded.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.promote.deploys import Deploys
from sandbox.state import StateDB
from tests.integration.conftest import (
    REPO,
    Built,
    build_variant,
    clear_workspace,
    grant_traverse,
    healthz,
    in_subnet,
    link_exists,
    lxc_names,
    lxc_problem,
    ok,
    promotion_workspace,
    require,
    sandbox,
    shared_cache,
)
from tests.integration.test_web_serve import http_side_pid, start_serve, stop_serve

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandbox serve needs root"),
]

BRIDGE = "sbxkil0"
SUBNET = ipaddress.ip_network("10.233.0.0/24")
PROD_PORT = 19790
WEB_PORT = 19809  # the last port of this test's range: the routers take theirs from the start
SETTINGS = f"network: {{bridge: {BRIDGE}, subnet: {SUBNET}}}\nrouters: {{port_range: [19791, 19808]}}\n"
PASSWORD = "correct horse battery"
PROD = f"http://127.0.0.1:{PROD_PORT}"


def until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """check()'s first truthy value, polled for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def started(
    run_dir: Path, ws: Path, port: int, procs: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], int]:
    """`sandbox serve` on PORT (added to `procs`, to stop), answering: it and its HTTP child's pid."""
    proc = start_serve(ws, port, run_dir, env={"SANDBOX_CACHE": str(shared_cache())})
    procs.append(proc)
    child = http_side_pid(proc, max_lines=20)  # first, a line per job the last stop interrupted

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, "sandbox serve ended"
            return False

    until("the HTTP side", answers, 30)
    return proc, child


@pytest.fixture
def kill_ws(built: Built, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A copy of the build workspace with v2 built, prod on v1 (2 instances, router on PROD_PORT)
    and staging-1 on v2, verified. Everything removed after, bridge included."""
    require(lxc_problem())
    ws = promotion_workspace(built, tmp_path, "kill", PROD_PORT, SETTINGS)
    restore = grant_traverse(ws)
    had_bridge = link_exists(BRIDGE)
    try:
        v2 = build_variant(ws, "v2")
        assert v2 != built.digest
        ok(sandbox(ws, "up", "prod", "--image", built.digest, "--wait", "--json", timeout=300))
        ok(sandbox(ws, "up", "staging-1", "--image", v2, "--wait", "--json", timeout=300))
        ok(sandbox(ws, "verify", "staging-1", "--json", timeout=300))
        yield ws, v2
    finally:
        clear_workspace(ws, ("prod", "staging-1"), BRIDGE, had_bridge, restore)


def test_serve_killed_during_a_promotion_then_resumed_converges(kill_ws: tuple[Path, str]) -> None:
    ws, v2 = kill_ws
    allowed = in_subnet(SUBNET)
    v1 = healthz(PROD, allowed)["image"]
    assert v1 != v2
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "-C", str(ws), "user", "add", "dora", "--role", "*=deployer"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    token = ok(sandbox(ws, "user", "token", "add", "dora", "ci", "--json"))["token"]
    headers = {"Authorization": f"Bearer {token}"}
    api = f"http://127.0.0.1:{WEB_PORT}/api/v1"
    state = StateDB(ws / ".sandbox" / "state.db")
    run_dir = Path(f"/tmp/sbx-kill-{os.getpid()}")
    procs: list[subprocess.Popen[str]] = []
    try:
        proc, child = started(run_dir, ws, WEB_PORT, procs)
        job = httpx.post(
            f"{api}/jobs",
            json={"kind": "promote", "args": {"env": "prod", "source": "staging-1", "image": v2}},
            headers=headers,
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]

        def first_instance_started() -> bool:
            d = Deploys(state).running("prod")
            return d is not None and any(s["step"] == "started" for s in d.steps)

        until("the promotion's first new instance", first_instance_started, 120, 0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the serve process this test started, mid-promotion
        proc.wait(timeout=10)
        until("the HTTP side to end with its parent", lambda: not Path(f"/proc/{child}").exists(), 10)

        proc, child = started(run_dir, ws, WEB_PORT, procs)  # the same port: nothing holds it any more
        killed = httpx.get(f"{api}/jobs", params={"env": "prod"}, headers=headers).json()
        mine = next(j for j in killed if j["id"] == job_id)
        assert (mine["state"], mine["error"]) == ("interrupted", "the server stopped while it ran")
        deploy = Deploys(state).interrupted("prod")
        assert deploy is not None and deploy.to_image == v2

        # the interrupted job holds prod's queue: a new job waits; a cancel takes it away
        held = httpx.post(
            f"{api}/jobs", json={"kind": "readonly", "args": {"env": "prod", "on": True}}, headers=headers
        ).json()
        time.sleep(2.0)  # four turns of the worker
        assert httpx.get(f"{api}/jobs", headers=headers).json()[0]["state"] == "queued"
        assert httpx.delete(f"{api}/jobs/{held['id']}", headers=headers).json()["state"] == "cancelled"

        resume = httpx.post(
            f"{api}/jobs", json={"kind": "resume", "args": {"env": "prod", "probe": 20}}, headers=headers
        )
        assert resume.status_code == 201, resume.text

        def finished() -> dict[str, Any] | None:
            rows = httpx.get(f"{api}/jobs", params={"env": "prod"}, headers=headers).json()
            row: dict[str, Any] = next(j for j in rows if j["id"] == resume.json()["id"])
            return row if row["state"] in ("done", "failed") else None

        done = until("the resume job", finished, 150, 0.5)
        assert done["state"] == "done", done["error"]
        assert done["result"]["state"] == "done" and done["result"]["probe"]["during"]["requests"] > 0
        print(
            "probe",
            {p: (r["requests"], r["non_2xx"], r["errors"]) for p, r in done["result"]["probe"].items()},
        )
        again = httpx.get(f"{api}/jobs", params={"env": "prod"}, headers=headers).json()
        assert next(j for j in again if j["id"] == job_id)["resolved"] is not None
        last = Deploys(state).history("prod", 1)[0]
        assert (last.id, last.state) == (deploy.id, "done")
        assert any(s["step"] == "probe" and s["series"] for s in last.steps)

        # converged: 2 healthy instances of v2, behind the router; no leftover container
        status = ok(sandbox(ws, "status", "prod", "--json"))
        assert status["image"] == v2
        insts = status["instances"]
        assert len(insts) == 2 and all(i["state"] == "running" and i["health"] == "healthy" for i in insts)
        assert {healthz(PROD, allowed)["image"] for _ in range(6)} == {v2}
        gc = ok(sandbox(ws, "gc", "--json"))
        assert all(v == [] for v in gc.values()), gc
        assert sorted(n for n in lxc_names(ws) if n.startswith("prod-")) == sorted(i["name"] for i in insts)
    finally:
        for p in procs:
            stop_serve(p)
        shutil.rmtree(run_dir, ignore_errors=True)
