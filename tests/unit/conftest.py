"""Unit tests keep everything under their tmp dir: a workspace there is closed to unprivileged ids,
so its runtime dir would otherwise be made under /var/lib/sandbox and left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _runtime_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_RUNTIME", str(tmp_path / "runtime"))


@pytest.fixture
def backends() -> Iterator[Any]:
    """Three named HTTP servers on 127.0.0.1 (tests/unit/test_router_balancer.py: Backends)."""
    from tests.unit.test_router_balancer import named_servers

    with named_servers() as b:
        yield b


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Any]:
    """An nginx router of its own for env "prod" under tmp_path, stopped afterwards."""
    from sandbox.routing.own import OwnRouter

    r = OwnRouter(tmp_path / "routers", "prod")
    try:
        yield r
    finally:
        r.stop()
