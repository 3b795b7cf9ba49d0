"""`sandbox init && sandbox up dev-me --wait`, as the README's newcomer types it: real mmdebstrap, LXC
and nginx. The workspace gets its own bridge, subnet and router ports (appended to the sandbox.yaml
that init wrote); traffic goes only to 127.0.0.1 (the router). Everything made is removed at the end.

CI runs the default template only (each template is a base build of its own, 15-40 s here);
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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    Run,
    http_get,
    link_exists,
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


def cli(ws: Path, *args: str, timeout: float = 900) -> tuple[Run, list[tuple[float, str]]]:
    """The CLI in `ws` as a person runs it there (cwd, no -C), with the shared package cache; also
    each line of its output (stderr into stdout) with the seconds since the start when it came."""
    env = {**os.environ, "SANDBOX_CACHE": str(shared_cache()), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "sandbox", *args]
    t0 = time.monotonic()
    with subprocess.Popen(
        argv, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as p:
        killer = threading.Timer(timeout, p.kill)  # bounded: a hung command is killed, the test fails
        killer.start()
        try:
            assert p.stdout is not None
            lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in p.stdout]
        finally:
            killer.cancel()
    text = "\n".join(ln for _, ln in lines)
    return Run(p.returncode, text, text), lines


@pytest.mark.parametrize("template", TEMPLATES)
def test_init_then_up_dev_me(newcomer: Path, template: str) -> None:
    newcomer.mkdir()
    t0 = time.monotonic()
    made = ok(cli(newcomer, "init", *(["--template", template] if template != "flask" else []), "--json")[0])
    assert made["recipe"] == "shop" and "recipes/shop.yaml" in made["written"], made
    with open(newcomer / "sandbox.yaml", "a") as f:  # this test's own network and ports
        f.write(SETTINGS)
    t_init = time.monotonic() - t0

    up, lines = cli(newcomer, "up", "dev-me", "--wait")  # no separate build: up builds what it runs
    took = time.monotonic() - t0
    assert up.code == 0, f"exit {up.code}\n{up.stdout}"
    # the build ends with the builder's last phase line; what follows is up's own work
    build = max(
        (t for t, ln in lines if (m := PHASE_LINE.match(ln.strip())) and m[1] in BUILD_PHASES), default=0
    )
    phases = [(m[1], float(m[2])) for _, ln in lines if (m := PHASE_LINE.match(ln.strip()))]
    split = f"init {t_init:.1f}s, build {build:.1f}s, up {took - t_init - build:.1f}s"
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
