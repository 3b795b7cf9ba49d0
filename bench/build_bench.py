"""Benchmark for `sandbox build` beside its anchor, raw mmdebstrap, in one run.

    python bench/build_bench.py [--recipe web] [--repeat 1] [--out bench/results]

Measures (wall clock, including Python start for sandbox commands):
  raw      mmdebstrap --variant=minbase --include=<recipe packages> with the host's sources
  lock     sandbox lock RECIPE (resolution against the host's sources)
  cold     sandbox build RECIPE with its lock, an empty package cache and an empty store
  noop     sandbox build RECIPE again (nothing changed)
  template sandbox build RECIPE after one template changed (base layer reused)
and reports ratios: cold/raw (target <= 1.15), noop (target < 1 s), template/cold (target < 0.15).
Needs root, network to the host's apt sources, and mmdebstrap. Not a test: it reports numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.build.hostapt import host_sources  # noqa: E402
from sandbox.config import load_recipe  # noqa: E402


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    dt_ = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{p.stdout}\n{p.stderr}")
    return dt_


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{mem:.1f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="web")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    loaded = load_recipe(REPO / "recipes" / f"{args.recipe}.yaml", display_root=REPO)
    r = loaded.recipe
    sb = [sys.executable, "-m", "sandbox"]
    rows: dict[str, list[float]] = {k: [] for k in ("raw", "lock", "cold", "noop", "template")}
    with tempfile.TemporaryDirectory(
        prefix="sandbox-bench-", dir=REPO / ".sandbox" if (REPO / ".sandbox").is_dir() else None
    ) as tmp:
        tmpd = Path(tmp)
        sources = tmpd / "host.sources"
        sources.write_text(host_sources(r.base.suite))
        for i in range(args.repeat):
            out = tmpd / f"raw-{i}.tar"
            rows["raw"].append(
                timed(
                    [
                        "mmdebstrap",
                        f"--variant={r.base.variant}",
                        "--include=" + ",".join(r.packages),
                        r.base.suite,
                        str(out),
                        str(sources),
                    ]
                )
            )
            out.unlink()
            ws = tmpd / f"ws-{i}"
            shutil.copytree(REPO / "recipes", ws / "recipes", ignore=shutil.ignore_patterns("*.lock"))
            env = {**os.environ, "SANDBOX_CACHE": str(tmpd / f"cache-{i}")}
            rows["lock"].append(timed([*sb, "-C", str(ws), "lock", args.recipe], env))
            rows["cold"].append(timed([*sb, "-C", str(ws), "build", args.recipe, "--locked"], env))
            rows["noop"].append(timed([*sb, "-C", str(ws), "build", args.recipe, "--locked"], env))
            tpl = next(ws.glob("recipes/**/*.j2"))
            tpl.write_text(tpl.read_text() + f"\n# bench change {i}\n")
            rows["template"].append(timed([*sb, "-C", str(ws), "build", args.recipe, "--locked"], env))
            shutil.rmtree(tmpd / f"cache-{i}")
            shutil.rmtree(ws)

    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    ratios = {
        "cold_over_raw": med["cold"] / med["raw"],
        "noop_seconds": med["noop"],
        "template_over_cold": med["template"] / med["cold"],
    }
    targets = {"cold_over_raw": ("<=", 1.15), "noop_seconds": ("<", 1.0), "template_over_cold": ("<", 0.15)}
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "recipe": args.recipe,
        "packages": len(r.packages),
        "seconds": rows,
        "median": med,
        "ratios": ratios,
    }
    print(f"machine: {report['machine']}")
    for k in rows:
        print(f"  {k:<9} {med[k]:8.2f} s   runs: {', '.join(f'{x:.2f}' for x in rows[k])}")
    for k, v in ratios.items():
        op, target = targets[k]
        ok = v <= target if op == "<=" else v < target
        print(f"  {k:<19} {v:6.3f}  target {op} {target}  {'met' if ok else 'MISSED'}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"build-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
