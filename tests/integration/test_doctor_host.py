"""`sandbox doctor` on this machine, the real thing: CI's host has everything the default backend
(lxc) needs, so every lxc check passes and the exit code is 0; the run stays far from a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_doctor_json_on_this_host(tmp_path: Path) -> None:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "sandbox", "-C", str(REPO), "doctor", "--json"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - t0
    checks = json.loads(p.stdout)
    failed = [c for c in checks if c["status"] == "fail"]
    assert p.returncode == 0 and failed == [], p.stdout + p.stderr
    status = {c["name"]: c["status"] for c in checks}
    for name in ("root", "overlayfs", "user namespaces", "cgroups", "lxc tools", "ip", "mmdebstrap"):
        assert status[name] == "ok", (name, checks)
    for name in ("apt sources", "nginx", "nginx lua module", "disk: images", "disk: runtime"):
        assert status[name] == "ok", (name, checks)
    assert {"lxd daemon", "docker daemon", "libvirt daemon", "lxd sdk", "docker sdk", "libvirt sdk"} <= set(
        status
    )
    assert all(c["fix"] for c in checks if c["status"] != "ok")  # every problem says what to do
    assert took < 5, took  # ~0.3 s on a quiet machine (bench/cli_bench.py); 2 shared CPUs in CI
