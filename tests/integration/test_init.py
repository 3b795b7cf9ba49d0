"""`sandbox init && sandbox up dev-me --wait`, as the README's newcomer types it: real mmdebstrap, LXC
and nginx. The workspace gets its own bridge, subnet and router ports (appended to the sandbox.yaml
that init wrote); traffic goes only to 127.0.0.1 (the router). Everything made is removed at the end.

CI runs the default template only (a new package set costs a base build of its own, ~35 s here);
SANDBOX_INIT_TEMPLATES=flask,static,worker runs the others the same way.

The build and up times are printed (pytest -s, or the report's captured output): the figures of
issue 13's benchmark "init -> up dev-me --wait, split into build and up".
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    Run,
    http_get,
    lxc_names,
    lxc_problem,
    ok,
    require,
    router_pids,
    sandbox,
    shared_cache,
)

pytestmark = pytest.mark.integration

BRIDGE = "sbxini0"
SETTINGS = "\nnetwork: {bridge: sbxini0, subnet: 10.236.0.0/24}\nrouters: {port_range: [19850, 19869]}\n"
PORTS = range(19850, 19870)
# the builder's phases (`sandbox up` builds first when the recipe changed); the rest is up's own
BUILD_PHASES = {"load", "lock", "fetch", "base", "app", "layer", "normalize", "store", "unpack"}
TEMPLATES = os.environ.get("SANDBOX_INIT_TEMPLATES", "flask").split(",")
PHASE_LINE = re.compile(r"^✓ (\S+)\s.*\((\d+\.\d+)s\)$")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Path]:
    """The folder a newcomer inits; afterwards every env, container and router of it is gone."""
    require(lxc_problem())
    ws = tmp_path / "shop"
    had_bridge = link_exists(BRIDGE)
    # no grant_traverse: like a newcomer's /root/shop, pytest's 0700 tmp dir keeps container ids out,
    # so the runtime goes to /var/lib/sandbox/ID (removed at the session's end: tests/conftest.py)
    try:
        yield ws
    finally:
        if ws.is_dir():
            sandbox(ws, "down", "dev-me", "--json", timeout=300)
            gc = sandbox(ws, "gc", "--json", timeout=300)
            left, nginx = lxc_names(ws, running=True), router_pids(ws)
            for pid in nginx:  # routers this test started
                os.kill(pid, signal.SIGQUIT)
            if not had_bridge and not left and link_exists(BRIDGE):
                subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
            assert gc.code == 0 and left == [] and nginx == [], (gc.stdout + gc.stderr, left, nginx)


def cli(ws: Path, *args: str, timeout: float = 900) -> Run:
    """The CLI in `ws` as a person runs it there (cwd, no -C), with the shared package cache."""
    p = subprocess.run(
        [sys.executable, "-m", "sandbox", *args],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "SANDBOX_CACHE": str(shared_cache()), "PYTHONPATH": str(REPO)},
        timeout=timeout,
        check=False,
    )
    return Run(p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("template", TEMPLATES)
def test_init_then_up_dev_me(newcomer: Path, template: str) -> None:
    newcomer.mkdir()
    t0 = time.monotonic()
    made = ok(cli(newcomer, "init", *(["--template", template] if template != "flask" else []), "--json"))
    assert made["recipe"] == "shop" and "recipes/shop.yaml" in made["written"], made
    with open(newcomer / "sandbox.yaml", "a") as f:  # this test's own network and ports
        f.write(SETTINGS)

    up = cli(newcomer, "up", "dev-me", "--wait")  # no separate build: up builds what it runs
    took = time.monotonic() - t0
    assert up.code == 0, f"exit {up.code}\n{up.stdout}\n{up.stderr}"
    phases = [(m[1], float(m[2])) for ln in up.stderr.splitlines() if (m := PHASE_LINE.match(ln.strip()))]
    build = sum(s for p, s in phases if p in BUILD_PHASES)
    split = f"build {build:.1f}s, up {took - build:.1f}s"
    print(f"\n{template}: init -> up dev-me --wait: {took:.1f}s ({split}) {phases}")

    env = ok(sandbox(newcomer, "status", "dev-me", "--json"))
    assert env["state"] == "running" and env["url"], env
    port = int(env["url"].rsplit(":", 1)[1].split("/")[0])
    assert port in PORTS, env["url"]
    status, body = http_get(f"http://127.0.0.1:{port}/healthz", lambda _h: False)
    assert status == 200 and json.loads(body)["status"] == "ok", body
    if template != "worker":  # the worker has no page, only /healthz
        status, body = http_get(f"http://127.0.0.1:{port}/", lambda _h: False)
        assert status == 200 and b"Hello from sandbox" in body, body

    verified = ok(sandbox(newcomer, "verify", "dev-me", "--json", timeout=300))  # runs the smoke command
    assert verified["ok"] is True, verified

    ok(sandbox(newcomer, "down", "dev-me", "--json", timeout=300))
    assert lxc_names(newcomer) == [] and router_pids(newcomer) == []
