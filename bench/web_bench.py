"""Benchmark of the web frontend (`sandbox serve`, issue 12): the envs page, SSE, idle memory.

    python bench/web_bench.py [--requests 200] [--sse 30] [--envs 100] [--no-memory] [--json FILE]

  envs page  GET /envs as an admin, with 100 envs (each with its job buttons), on a real uvicorn
             on loopback with the real app and the real root side (RootSide on its unix socket, a
             temp state DB). The envs come from the views of tests/unit/webworld.py (FakeViews, as
             in the unit tests): no backend. Round trips on a keep-alive connection after 20
             warm-up requests; median and p90. Beside it, on the same uvicorn setup: a bare
             Starlette "hello" route (the anchor: the ratio is page / hello), and GET /api/v1/envs
             (the same 100 envs as JSON, a bearer token). The three take turns, request by request.
  SSE        a job inserted by another connection to the state DB -> its event at an admin's
             SSE client of GET /events (tests/unit/webworld.py sse_latencies, as the unit test).
  memory     a real `sandbox serve` (needs root) of an empty workspace on a free loopback port:
             VmRSS of the root side and of its HTTP child after 5 s idle; stopped by its pid.
Targets: envs page median < 100 ms, SSE median < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from tests.unit.webworld import PASSWORD, Served, World, env_row, sse_latencies  # noqa: E402

TARGETS = {"envs_page_median_ms": 100.0, "sse_median_ms": 200.0}
WARMUP = 20


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def stats_ms(xs: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(xs) * 1000, 2),
        "p90_ms": round(pct(xs, 0.9) * 1000, 2),
        "max_ms": round(max(xs) * 1000, 2),
        "n": len(xs),
    }


def timed(gets: dict[str, tuple[httpx.Client, str, dict[str, str]]], n: int) -> dict[str, list[float]]:
    """Seconds per GET of each URL, each on its own keep-alive connection, after the warm-up. The
    URLs take turns, so that the machine's other load falls on all of them alike."""
    out: dict[str, list[float]] = {k: [] for k in gets}
    for i in range(WARMUP + n):
        for k, (c, url, headers) in gets.items():
            t0 = time.perf_counter()
            r = c.get(url, headers=headers)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                sys.exit(f"GET {url}: {r.status_code} {r.text[:200]}")
            if i >= WARMUP:
                out[k].append(dt)
    return out


def many_envs(w: World, n: int) -> None:
    """`n` envs in the views: prod, staging-N of alice, dev-userN of userN."""
    rows = {"prod": env_row("prod", "prod", "root")}
    for i in range(n - 1):
        name, profile, owner = (
            (f"staging-{i}", "staging", "alice") if i % 3 else (f"dev-u{i}", "dev", f"u{i}")
        )
        rows[name] = env_row(name, profile, owner)
    w.views.rows = rows  # type: ignore[attr-defined]


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def bench_pages(tmp: Path, n_envs: int, n: int) -> dict[str, Any]:
    w = World(tmp)
    many_envs(w, n_envs)
    site, bare = Served(w.app), Served(Starlette(routes=[Route("/", hello)]))
    try:
        with (
            httpx.Client(base_url=site.url, timeout=10) as c,
            httpx.Client(base_url=site.url, timeout=10) as api_c,
            httpx.Client(base_url=bare.url, timeout=10) as bare_c,
        ):
            c.get("/login")
            r = c.post("/login", data={"csrf": c.cookies["sbx_csrf"], "user": "admin", "password": PASSWORD})
            if r.status_code != 303:
                sys.exit(f"login: {r.status_code}")
            page = c.get("/envs").text
            shown = len(re.findall(r'href="/envs/[a-z0-9-]+"', page))
            if len(api_c.get("/api/v1/envs", headers=w.api("admin")).json()) != n_envs:
                sys.exit("the API did not list every env")
            got = timed(
                {
                    "envs": (c, "/envs", {}),
                    "api": (api_c, "/api/v1/envs", w.api("admin")),
                    "hello": (bare_c, "/", {}),
                },
                n,
            )
    finally:
        site.stop()
        bare.stop()
        w.close()
    envs, api, base = got["envs"], got["api"], got["hello"]
    page_ms = statistics.median(envs) * 1000
    base_ms = statistics.median(base) * 1000
    return {
        "envs": n_envs,
        "env_links_on_page": shown,
        "page_bytes": len(page.encode()),
        "envs_page": stats_ms(envs),
        "api_envs": stats_ms(api),
        "hello": stats_ms(base),
        "page_over_hello": round(page_ms / base_ms, 1),
    }


def bench_sse(tmp: Path, n: int) -> dict[str, Any]:
    w = World(tmp)
    site = Served(w.app)
    try:
        return stats_ms(sse_latencies(w, site.url, n))
    finally:
        # the stream's long poll (up to 25 s) outlives its client; uvicorn cancels it after 1 s
        # and logs the cancellation as an error: expected here, so not printed
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        site.stop()
        w.close()


def rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def bench_memory(tmp: Path, idle: float) -> dict[str, Any]:
    """VmRSS of a real `sandbox serve` (root side, HTTP child) after `idle` seconds."""
    from tests.integration.test_web_serve import free_port, http_side_pid, start_serve

    if os.geteuid() != 0:
        return {"skipped": "needs root"}
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").write_text("")
    run_dir = Path(f"/tmp/sbx-bench-{os.getpid()}")
    port = free_port()
    proc = start_serve(ws, port, run_dir)
    try:
        try:
            child = http_side_pid(proc)
        except AssertionError as e:
            sys.exit(f"sandbox serve did not start: {e}")
        deadline = time.monotonic() + 20
        while True:  # up when it answers
            try:
                httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("sandbox serve did not answer")
                time.sleep(0.1)
        time.sleep(idle)
        root_kib, child_kib = rss_kib(proc.pid), rss_kib(child)
        proc.send_signal(signal.SIGTERM)  # by its pid
        code = proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "idle_s": idle,
        "root_side_mib": round(root_kib / 1024, 1),
        "http_side_mib": round(child_kib / 1024, 1),
        "total_mib": round((root_kib + child_kib) / 1024, 1),
        "exit": code,
    }


def table(rep: dict[str, Any]) -> str:
    p, s = rep["pages"], rep["sse"]
    lines = [
        f"machine: {rep['machine']}",
        f"{'what':<34} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'n':>5}",
    ]
    for label, row in (
        (f"GET /envs, {p['envs']} envs, admin", p["envs_page"]),
        (f"GET /api/v1/envs, {p['envs']} envs", p["api_envs"]),
        ("bare Starlette hello (anchor)", p["hello"]),
        ("SSE: DB write -> client", s),
    ):
        lines.append(
            f"{label:<34} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} {row['max_ms']:>8.2f} {row['n']:>5}"
        )
    lines.append(
        f"envs page / hello: {p['page_over_hello']}x"
        f"  ({p['page_bytes']} bytes, {p['env_links_on_page']} env links)"
    )
    mem = rep["memory"]
    if "skipped" in mem:
        lines.append(f"memory: skipped ({mem['skipped']})")
    else:
        lines.append(
            f"idle RSS after {mem['idle_s']:.0f} s: root side {mem['root_side_mib']} MiB,"
            f" HTTP side {mem['http_side_mib']} MiB, together {mem['total_mib']} MiB"
        )
    for k, target in TARGETS.items():
        v = rep["results"][k]
        lines.append(f"{k:<22} {v:8.2f}  target < {target:.0f}  {'met' if v < target else 'MISSED'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="timed requests per URL (after 20 warm-up)")
    ap.add_argument("--envs", type=int, default=100)
    ap.add_argument("--sse", type=int, default=30, help="SSE round trips")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before the RSS is read")
    ap.add_argument("--no-memory", action="store_true", help="skip the real `sandbox serve` (root)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    a = ap.parse_args()
    if not (1 <= a.requests <= 100_000 and 2 <= a.envs <= 10_000 and 1 <= a.sse <= 1000):
        sys.exit("out of range")
    with tempfile.TemporaryDirectory(prefix="sbx-webbench-", dir="/var/tmp") as d:
        tmp = Path(d)
        (tmp / "p").mkdir()
        (tmp / "s").mkdir()
        pages = bench_pages(tmp / "p", a.envs, a.requests)
        sse = bench_sse(tmp / "s", a.sse)
        memory = {"skipped": "--no-memory"} if a.no_memory else bench_memory(tmp, a.idle)
    rep = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pages": pages,
        "sse": sse,
        "memory": memory,
        "results": {
            "envs_page_median_ms": pages["envs_page"]["median_ms"],
            "sse_median_ms": sse["median_ms"],
        },
    }
    print(table(rep))
    if a.json:
        a.json.write_text(json.dumps(rep, indent=2) + "\n")
        print(f"written {a.json}")


if __name__ == "__main__":
    main()
