"""bench/up_bench.py puts its raw LXC anchor where the tool puts its containers (Workspace.runtime)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "up_bench.py"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench puts its checkout first
    spec = importlib.util.spec_from_file_location("up_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_raw_containers_follow_the_runtime_the_tool_chose(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # under /root (0700) the tool picks /var/lib/sandbox/ID and records it in .sandbox/runtime
    monkeypatch.delenv("SANDBOX_RUNTIME", raising=False)
    ws = tmp_path / "checkout" / "bench-up"
    (ws / ".sandbox").mkdir(parents=True)
    (ws / ".sandbox" / "runtime").write_text(f"{tmp_path / 'var-lib-sandbox' / 'id'}\n")
    (tmp_path / "checkout").chmod(0o700)
    assert bench.raw_lxc_dir(ws) == tmp_path / "var-lib-sandbox" / "id" / "raw-lxc"
    assert bench.runtime_dir(ws) / "lxc" == tmp_path / "var-lib-sandbox" / "id" / "lxc"


def test_sandbox_runtime_overrides_for_the_bench_too(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_RUNTIME", str(tmp_path / "rt"))
    assert bench.raw_lxc_dir(tmp_path / "ws") == tmp_path / "rt" / "raw-lxc"


def test_mounted_below_matches_whole_path_segments(bench: ModuleType) -> None:
    assert "/proc" in bench.mounted_below(Path("/proc"))
    assert bench.mounted_below(Path("/pro")) == []
