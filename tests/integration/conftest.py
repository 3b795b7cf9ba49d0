"""One real build of recipes/web.yaml (mmdebstrap) shared by the whole integration suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def sandbox(
    ws: Path, *args: str, cache: Path | None = None, prefix: tuple[str, ...] = (), timeout: float = 600
) -> Run:
    """Run the real CLI in a subprocess against workspace `ws`."""
    env = {**os.environ, "SANDBOX_CACHE": str(cache or shared_cache())}
    p = subprocess.run(
        [*prefix, sys.executable, "-m", "sandbox", "-C", str(ws), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def shared_cache() -> Path:
    """Package cache kept across test runs (content-addressed, so sharing is safe)."""
    p = Path(os.environ.get("SANDBOX_TEST_CACHE", REPO / ".sandbox" / "test-cache"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def new_workspace(base: Path, name: str) -> Path:
    ws = base / name
    ws.mkdir()
    shutil.copytree(REPO / "recipes", ws / "recipes", ignore=shutil.ignore_patterns("*.lock"))
    return ws


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below `path` with size and mtime, to show that nothing changed."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_size, int(st.st_mtime_ns))
    return out


def mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


@dataclass
class Built:
    ws: Path
    digest: str
    result: dict[str, Any]

    def manifest(self) -> dict[str, Any]:
        r = sandbox(self.ws, "image", "inspect", self.digest, "--files", "--json")
        assert r.code == 0, r.stderr
        m: dict[str, Any] = r.json
        return m


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    ws = new_workspace(tmp_path_factory.mktemp("ws"), "main")
    r = sandbox(ws, "build", "web", "--json")
    assert r.code == 0, r.stdout + r.stderr
    yield Built(ws, r.json["digest"], r.json)
    assert mounts_below(ws) == []
