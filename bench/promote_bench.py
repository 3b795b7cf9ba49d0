"""Benchmark for `sandbox promote`: time per backend, latency during the swap, wrk/hey beside it.

    python bench/promote_bench.py [--rounds 5] [--out bench/results]

In one run, against prod (2 instances behind its router):
  rounds     `rounds` times: a steady window (wrk for 8 s beside the probe, no promotion), then a
             promotion (alternating two images) under the same wrk and probe: seconds per backend,
             wrk's p99, non-2xx and socket errors, the probe's p99. Each round's ratio is its swap
             p99 over the steady p99 just before it (other work on the host changes slowly, so
             adjacent windows compare like with like); the report gives the median and the max
  hey        one more promotion under `hey`, with its status-code counts and errors
  posts      throughout, a strict client: POST after POST on ONE keep-alive connection, never
             retried (sandbox.promote.probe.KeepAlivePosts); its errors are counted per promotion
The table printed at the end gives, per promotion side by side: wrk socket errors and non-2xx, the
keep-alive POST loop's errors, wrk's p99 steady vs during the swap, and the seconds per backend.
Target: 0 errors of every kind, p99 during the swap <= 1.5x steady.
Needs root, lxc, nginx (with libnginx-mod-http-lua), wrk, hey (apt-get install wrk hey).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SB = [sys.executable, "-m", "sandbox"]
PORT = 19690


def sh(
    argv: list[str], check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if check and p.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{p.stdout}\n{p.stderr}")
    return p


def parse_wrk(out: str) -> dict[str, float]:
    def ms(v: str) -> float:
        n = float(re.match(r"[\d.]+", v).group(0))  # type: ignore[union-attr]
        return n / 1000 if v.endswith("us") else n * 1000 if v.endswith("s") and not v.endswith("ms") else n

    res: dict[str, float] = {"non_2xx": 0, "socket_errors": 0}
    for q in ("50%", "99%"):
        m = re.search(rf"^\s+{re.escape(q)}\s+(\S+)", out, re.M)
        if m:
            res[f"p{q[:-1]}_ms"] = ms(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = float(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = float(sum(int(x) for x in m.groups())) if m else 0
    return res


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2 if s else 0.0


def by_step(samples: list[Any], steps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The probe's p99 in the second after each kind of deploy step (where the swap's latency comes from)."""
    offset = time.time() - time.monotonic()  # samples are on the monotonic clock, steps on the wall clock
    out: dict[str, dict[str, float]] = {}
    for name in sorted({s["step"] for s in steps}):
        at = [s["ts"] - offset for s in steps if s["step"] == name]
        lat = sorted(
            x.latency for x in samples if x.kind != "get-slow" and any(0 <= x.t - t < 1.0 for t in at)
        )
        if lat:
            out[name] = {
                "n": len(lat),
                "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 2),
            }
    return out


def table(rounds: list[dict[str, Any]]) -> str:
    """One line per promotion: what each client saw, the p99 ratio and the time per backend."""
    lines = [
        f"{'#':>2} {'wrk sock err':>12} {'wrk non-2xx':>11} {'posts err':>9} {'posts n':>7} "
        f"{'p99 steady ms':>13} {'p99 swap ms':>11} {'ratio':>5}  s per backend"
    ]
    for i, r in enumerate(rounds):
        steady, swap = r["wrk_steady"].get("p99_ms", 0.0), r["wrk"].get("p99_ms", 0.0)
        lines.append(
            f"{i:>2} {r['wrk']['socket_errors']:>12.0f} {r['wrk']['non_2xx']:>11.0f} "
            f"{r['posts']['errors']:>9} "
            f"{r['posts']['requests']:>7} {steady:>13.2f} {swap:>11.2f} {swap / max(steady, 1e-9):>5.2f}  "
            f"{r['per_backend']}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install wrk hey")
    from sandbox.promote.probe import KeepAlivePosts, LoadProbe, summary

    ws = REPO / ".sandbox" / "bench-promote"
    c = [*SB, "-C", str(ws)]
    if ws.exists():
        for e in json.loads(sh([*c, "ls", "--json"], check=False).stdout or "[]"):
            sh([*c, "down", e["name"]], check=False)
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    shutil.copytree(REPO / "recipes", ws / "recipes", ignore=shutil.ignore_patterns("*.lock"))
    shutil.copytree(REPO / "profiles", ws / "profiles")
    prod = (ws / "profiles" / "prod.yaml").read_text()
    (ws / "profiles" / "prod.yaml").write_text(re.sub(r"port: 8080", f"port: {PORT}", prod))
    (ws / "sandbox.yaml").write_text(
        "network: {bridge: sbxpbench0, subnet: 10.217.0.0/24}\nrouters: {port_range: [19600, 19680]}\n"
    )
    env = {**os.environ, "SANDBOX_CACHE": str(REPO / ".sandbox" / "cache")}
    print("building two images …", flush=True)
    sh([*c, "build", "web", "--tag", "v1"], env=env)
    tpl = ws / "recipes" / "web" / "templates" / "settings.py.j2"
    tpl.write_text(tpl.read_text().replace("GREETING", "GREETING_V2 = 1\nGREETING"))
    sh([*c, "build", "web", "--tag", "v2"], env=env)
    sh([*c, "up", "prod", "--image", "web:v1", "--wait"], env=env)
    url = f"http://127.0.0.1:{PORT}/healthz"

    probe = LoadProbe(f"http://127.0.0.1:{PORT}/", rps=100, concurrency=6)
    probe.start()
    posts = KeepAlivePosts(f"http://127.0.0.1:{PORT}/notes", interval=0.01, max_seconds=3600)
    posts.start()
    time.sleep(5)  # "before": the probe alone (the steady state of earlier versions of this bench)
    rounds = []
    for i in range(args.rounds):
        target = "v2" if i % 2 == 0 else "v1"
        probe.mark(f"steady{i}")  # the same load as during a swap (wrk + probe), without a promotion
        steady = parse_wrk(sh(["wrk", "-t2", "-c16", "-d8s", "--latency", url]).stdout)
        probe.mark(f"idle{i}")
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c16", "-d20s", "--latency", url], stdout=subprocess.PIPE, text=True
        )
        time.sleep(3)
        probe.mark(f"swap{i}")
        errors_before, posts_before = len(posts.errors), posts.requests
        p = sh([*c, "--json", "promote", f"web:{target}", "--to", "prod", "--yes", "--force"], env=env)
        probe.mark(f"between{i}")
        out, _ = wrk.communicate()
        r = json.loads(p.stdout)
        rounds.append(
            {
                "to": target,
                "seconds": r["seconds"],
                "per_backend": r["per_backend"],
                "wrk_steady": steady,
                "wrk": parse_wrk(out),
                # the no-retry keep-alive POST loop during this promotion
                "posts": {
                    "requests": posts.requests - posts_before,
                    "errors": len(posts.errors) - errors_before,
                },
            }
        )
        print(
            f"  round {i}: {r['per_backend']} s per backend, wrk {rounds[-1]['wrk']}, "
            f"posts {rounds[-1]['posts']}",
            flush=True,
        )
    hey = subprocess.Popen(["hey", "-z", "20s", "-c", "16", url], stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    probe.mark("swap-hey")
    sh(
        [*c, "promote", "web:v2" if args.rounds % 2 == 0 else "web:v1", "--to", "prod", "--yes", "--force"],
        env=env,
    )
    probe.mark("after")
    hey_out, _ = hey.communicate()
    time.sleep(3)
    posts.stop()
    reports = summary(probe.stop())
    history = json.loads(sh([*c, "--json", "history", "prod"]).stdout)
    deploy_steps = [s for d in history for s in d["steps"]]
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", hey_out))
    hey_errors = re.findall(r"Error distribution:(.*)", hey_out, re.S)

    swap_p99 = [reports[f"swap{i}"]["p99_ms"] for i in range(len(rounds))]
    wrk_ratios = [r["wrk"].get("p99_ms", 0) / max(r["wrk_steady"].get("p99_ms", 1), 1e-9) for r in rounds]
    probe_ratios = [
        reports[f"swap{i}"]["p99_ms"] / max(reports[f"steady{i}"]["p99_ms"], 1e-9) for i in range(len(rounds))
    ]
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wrk_p99_ms": [(r["wrk_steady"].get("p99_ms"), r["wrk"].get("p99_ms")) for r in rounds],
        "probe_p99_ms": [(reports[f"steady{i}"]["p99_ms"], swap_p99[i]) for i in range(len(rounds))],
        "rounds": rounds,
        "probe": reports,
        "hey": {"status_codes": codes, "errors": hey_errors[0].strip() if hey_errors else ""},
        "seconds_per_backend_median": sorted(x for r in rounds for x in r["per_backend"])[
            len([x for r in rounds for x in r["per_backend"]]) // 2
        ],
        # per round: that promotion's p99 over the steady p99 just before it; median and worst
        "p99_swap_over_steady_wrk": {"median": median(wrk_ratios), "max": max(wrk_ratios), "all": wrk_ratios},
        "p99_swap_over_steady_probe": {
            "median": median(probe_ratios),
            "max": max(probe_ratios),
            "all": probe_ratios,
        },
        # earlier versions of this bench divided by the p99 of the probe ALONE (no wrk beside it)
        "p99_swap_over_probe_alone": max(swap_p99) / max(reports["before"]["p99_ms"], 1e-9),
        "p99_by_step": by_step(probe.samples, deploy_steps),
        "loadavg": os.getloadavg(),
        "failures": {
            "probe_non_2xx": sum(r["non_2xx"] for r in reports.values()),
            "probe_errors": sum(r["errors"] for r in reports.values()),
            "wrk_non_2xx": sum(r["wrk"]["non_2xx"] for r in rounds),
            "wrk_socket_errors": sum(r["wrk"]["socket_errors"] for r in rounds),
            "posts_errors_during_promotions": sum(r["posts"]["errors"] for r in rounds),
            "posts_errors_total": len(posts.errors),
            "posts_non_2xx_total": posts.non_2xx,
            "posts_requests_total": posts.requests,
            "posts_first_errors": posts.errors[:5],
        },
    }
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "wrk_p99_ms",
                    "probe_p99_ms",
                    "seconds_per_backend_median",
                    "p99_by_step",
                    "loadavg",
                    "p99_swap_over_steady_wrk",
                    "p99_swap_over_steady_probe",
                    "failures",
                    "hey",
                )
            },
            indent=1,
        )
    )
    print(table(rounds))
    sh([*c, "down", "prod"], check=False)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"promote-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
