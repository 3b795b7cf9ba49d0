"""docs/tutorial.md works as written: every command of its blocks marked `<!-- tutorial: run -->` runs
in order, through a `sandbox` on PATH, in the folder of a copy of the session build's workspace, and
exits 0; prod then serves what each step says (the promoted image after the promotion, the first one
after the rollback), and the clean-up leaves no env.

The copy has its own bridge, subnet and router ports (sandbox.yaml below), and prod's router port
8080 of the tutorial becomes PROD_PORT here, in prod.yaml and in the commands. Traffic goes only to
127.0.0.1; every env made here is removed at the end, and only processes this run started are
stopped, by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    Built,
    clear_workspace,
    grant_traverse,
    link_exists,
    lxc_names,
    lxc_problem,
    ok,
    require,
    sandbox,
    shared_cache,
    workspace_like,
)

pytestmark = pytest.mark.integration

BRIDGE = "sbxtut0"
PROD_PORT = 19870
SETTINGS = "network: {bridge: sbxtut0, subnet: 10.237.0.0/24}\nrouters: {port_range: [19871, 19889]}\n"
TUTORIAL = REPO / "docs" / "tutorial.md"
MARK = "<!-- tutorial: run -->"
BUDGET = 120.0  # seconds for all the commands (32 on a quiet host); each gets what is left


def tutorial_commands(text: str) -> list[str]:
    """The command lines of the marked ```sh blocks, in order (blank lines and comments left out)."""
    blocks = re.findall(re.escape(MARK) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert len(blocks) == text.count(MARK), "a tutorial marker not followed by a ```sh block"
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture
def tutorial_ws(built: Built, tmp_path: Path) -> Iterator[Path]:
    """A copy of the build workspace with the shipped profiles, prod on PROD_PORT; emptied after."""
    require(lxc_problem())
    ws = workspace_like(built, tmp_path, "tutorial")
    shutil.copytree(REPO / "profiles", ws / "profiles")
    prod = ws / "profiles" / "prod.yaml"
    assert "  port: 8080\n" in prod.read_text()
    prod.write_text(prod.read_text().replace("  port: 8080\n", f"  port: {PROD_PORT}\n"))
    (ws / "sandbox.yaml").write_text(SETTINGS)
    restore = grant_traverse(ws)
    had_bridge = link_exists(BRIDGE)
    try:
        yield ws
    finally:
        clear_workspace(ws, ("staging-2", "prod"), BRIDGE, had_bridge, restore)


def served_image(ws: Path) -> str:
    """The image prod's router answers /healthz with (loopback only)."""
    out = subprocess.run(
        ["curl", "-sf", "--noproxy", "*", "-m", "5", f"http://127.0.0.1:{PROD_PORT}/healthz"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 0, out
    image: str = json.loads(out.stdout)["image"]
    return image


def env_image(ws: Path, env: str) -> str:
    image: str = ok(sandbox(ws, "status", env, "--json"))["image"]
    return image


def test_the_tutorial_runs_as_written(tutorial_ws: Path, tmp_path: Path) -> None:
    ws = tutorial_ws
    commands = tutorial_commands(TUTORIAL.read_text())
    assert commands[0] == "sandbox build web" and "sandbox down prod" in commands, commands
    # `sandbox` on PATH: this checkout's code, with the shared package cache
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "sandbox"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sandbox "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "SANDBOX_CACHE": str(shared_cache()),
    }
    first = staged = None
    pages: list[str] = []
    t0 = time.monotonic()
    for command in commands:
        line = command.replace("127.0.0.1:8080", f"127.0.0.1:{PROD_PORT}")
        if line.startswith("curl "):
            line = line.replace("curl ", "curl --noproxy '*' -m 10 ", 1)
        left = BUDGET - (time.monotonic() - t0)
        assert left > 0, f"the tutorial took over {BUDGET} s before `{command}`"
        started = time.monotonic()
        p = subprocess.run(
            ["sh", "-c", line], cwd=ws, env=env, capture_output=True, text=True, timeout=left, check=False
        )
        print(f"{time.monotonic() - started:6.1f}s  {command}")
        assert p.returncode == 0, f"`{command}`: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        if line.startswith("curl "):
            pages.append(p.stdout)
        # what each step promises
        if command == "sandbox up prod --wait":
            first = env_image(ws, "prod")
            assert served_image(ws) == first
        elif command == "sandbox up staging-2 --wait":
            staged = env_image(ws, "staging-2")
            assert staged != first  # the changed recipe's image
        elif command.startswith("sandbox promote") and "--plan" not in command:
            # `promote --to prod` alone says which verified image it picked: staging-2's
            assert "verified on staging-2" in p.stdout + p.stderr, p.stdout + p.stderr
            assert env_image(ws, "prod") == staged
            assert {served_image(ws) for _ in range(4)} == {staged}  # both instances, via the router
        elif command.startswith("sandbox rollback"):
            assert env_image(ws, "prod") == first
            assert {served_image(ws) for _ in range(4)} == {first}
    print(f"{time.monotonic() - t0:6.1f}s  the whole tutorial")
    assert first and staged
    greetings = [re.search(r"<h1>(.*?)</h1>", page) for page in pages]
    assert [g.group(1) if g else page for g, page in zip(greetings, pages, strict=True)] == [
        "Hello from sandbox",
        "Hello from the tutorial",
        "Hello from sandbox",
    ]
    assert ok(sandbox(ws, "ls", "--json")) == []
    assert lxc_names(ws) == []
    assert "greeting: Hello from sandbox" in (ws / "recipes" / "web.yaml").read_text()
