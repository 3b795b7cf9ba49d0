"""Benchmark for the lxd backend beside its raw path, in one run.

    python bench/lxd_bench.py WORKSPACE [--repeat 3] [--address 10.218.0.240]

WORKSPACE holds an image `web:latest` and a profile `clxd` with `backend: lxd` and a router.
Measures (wall clock, median of --repeat):
  import   the backend's prepare_image of an image LXD does not have yet (flatten + tar + upload)
  up       `sandbox up clxd-bench-N --wait` (create, start, router, health through the router)
  raw      `lxc launch` of the same imported image with a routed NIC, until /healthz answers
and the ratio up/raw. Needs root and a running LXD. Traffic goes only to the address given (in the
workspace's subnet) and to 127.0.0.1. Not a test: it reports numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.backends.lxd import LxdBackend  # noqa: E402
from sandbox.backends.lxdconfig import image_alias  # noqa: E402
from sandbox.store import ImageStore  # noqa: E402
from sandbox.workspace import Workspace  # noqa: E402

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(url: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with NO_PROXY.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not healthy in {limit}s")


def sandbox(ws: Path, *args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "sandbox", "-C", str(ws), *args], capture_output=True, text=True, check=True
    )
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--address", default="10.218.0.240")
    a = ap.parse_args()
    ws = a.workspace.resolve()
    digest = ImageStore(Workspace(ws).images).resolve("web:latest")
    backend = LxdBackend(Workspace(ws))
    alias = image_alias(digest)
    res: dict[str, list[float]] = {"import": [], "up": [], "raw": []}

    backend.forget_image(digest)
    t0 = time.monotonic()
    backend.prepare_image(digest)
    res["import"].append(time.monotonic() - t0)

    for i in range(a.repeat):
        env = f"clxd-bench{i}"
        t0 = time.monotonic()
        view = json.loads(sandbox(ws, "up", env, "--wait", "--json"))
        res["up"].append(time.monotonic() - t0)
        sandbox(ws, "down", env)
        assert view["health"] == "healthy"

        name = f"wlxd-bench-{i}"
        t0 = time.monotonic()
        subprocess.run(["lxc", "init", alias, name, "-q"], check=True, capture_output=True)
        nic = ["nic", "nictype=routed", f"ipv4.address={a.address}"]
        subprocess.run(
            ["lxc", "config", "device", "add", name, "eth0", *nic], check=True, capture_output=True
        )
        subprocess.run(["lxc", "start", name], check=True, capture_output=True)
        healthy(f"http://{a.address}:8000/healthz")
        res["raw"].append(time.monotonic() - t0)
        subprocess.run(["lxc", "delete", "-f", name], check=True, capture_output=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    print(json.dumps({"runs": res, "median": med, "up/raw": med["up"] / med["raw"]}, indent=2))


if __name__ == "__main__":
    main()
