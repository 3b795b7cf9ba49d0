"""Unit tests keep everything under their tmp dir: a workspace there is closed to unprivileged ids,
so its runtime dir would otherwise be made under /var/lib/sandbox and left behind."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _runtime_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_RUNTIME", str(tmp_path / "runtime"))
