"""Benchmark for `sandbox up` on LXC beside its anchor, raw lxc-copy + lxc-start, in one run.

    python bench/up_bench.py [--runs 5] [--idle 50] [--out bench/results]

Reports (wall clock; sandbox commands include Python start):
  up_running   `sandbox up staging-N` until it returns (instances started, router up); target < 0.3 s
  up_healthy   `sandbox up staging-N --wait` until the first 200 of the app through the env's router
  raw_running  `lxc-copy -s -B overlayfs` + `lxc-start` of a container on the same unpacked rootfs
  raw_healthy  the same, until the first 200 of the app on the container's address
  up_small / up_big   `sandbox up` of a ~250 MB and a 1 GB+ image (target ratio <= 1.2)
  idle         N envs up at once: memory per env (cgroup memory usage) and host memory used
Needs root, lxc, nginx, mmdebstrap and the host's apt sources (builds recipes/web.yaml once).
Not a test: it reports numbers. Uses its own workspace, bridge and subnet, and removes what it made.
The raw containers live in the workspace's runtime dir, chosen by the tool's own rule
(`Workspace.runtime`: outside the checkout when container ids cannot reach it, as under /root).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's sandbox, here and (PYTHONPATH) in the commands below
SB = [sys.executable, "-m", "sandbox"]
TOOLS = ("lxc-copy", "lxc-start", "lxc-stop", "lxc-destroy", "lxc-cgroup", "nginx", "mmdebstrap")
HEALTH = "/healthz"  # recipes/web.yaml app.health


def sh(
    argv: list[str], env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{p.stdout}\n{p.stderr}")
    return p


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    sh(argv, env)
    return time.perf_counter() - t0


def wait_http(url: str, limit: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{url} did not answer within {limit}s")


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def runtime_dir(ws: Path) -> Path:
    """Where sandbox keeps the containers of workspace `ws` (the tool's rule, not a copy of it)."""
    from sandbox.workspace import Workspace

    return Workspace(ws).runtime


def raw_lxc_dir(ws: Path) -> Path:
    """The anchor's raw LXC containers: beside sandbox's own, so container ids can reach them."""
    return runtime_dir(ws) / "raw-lxc"


def preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("up_bench needs root (it runs containers and builds images)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"up_bench needs {', '.join(missing)} (apt-get install lxc nginx mmdebstrap)")


def remove_raw(raw: Path) -> None:
    """Stop and remove any raw anchor containers (a crashed run leaves them) and their dir."""
    if not raw.is_dir():
        return
    for d in raw.iterdir():
        if d.name != "base" and (d / "config").is_file():
            sh(["lxc-stop", "-P", str(raw), "-n", d.name, "-k"], check=False)
            sh(["lxc-destroy", "-P", str(raw), "-n", d.name], check=False)
    shutil.rmtree(raw)


def mounted_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def remove_runtime(ws: Path) -> None:
    """The runtime dir when it lies outside the workspace (unpacked images, 1 GB+), unless in use."""
    rt = runtime_dir(ws)
    if rt.is_relative_to(ws) or not rt.is_dir():
        return
    busy = mounted_below(rt)
    if busy:
        print(f"  kept {rt}: still mounted: {', '.join(busy[:3])}", file=sys.stderr)
        return
    shutil.rmtree(rt)


def up_until_routed(c: list[str], name: str) -> float:
    """Seconds from `sandbox up NAME --wait` to the first 200 of the app through the env's router."""
    t0 = time.perf_counter()
    view = json.loads(sh([*c, "up", name, "--wait", "--json"]).stdout)
    if not view.get("url"):
        sys.exit(f"sandbox up {name} --json gave no router url: {view}")
    wait_http(view["url"].rstrip("/") + HEALTH)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--only-idle", dest="only_idle", action="store_true", help="Only the idle-envs part.")
    args = ap.parse_args()
    preflight()
    # every sandbox command below runs this checkout, with one package cache across runs
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("SANDBOX_CACHE", str(REPO / ".sandbox" / "cache"))

    ws = REPO / ".sandbox" / "bench-up"
    if ws.exists():
        remove_raw(raw_lxc_dir(ws))
        sh([*SB, "-C", str(ws), "gc"], check=False)
        for e in json.loads(sh([*SB, "-C", str(ws), "ls", "--json"]).stdout):
            sh([*SB, "-C", str(ws), "down", e["name"]], check=False)
        remove_runtime(ws)
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    shutil.copytree(REPO / "recipes", ws / "recipes", ignore=shutil.ignore_patterns("*.lock"))
    shutil.copytree(REPO / "profiles", ws / "profiles")
    (ws / "sandbox.yaml").write_text(
        "network: {bridge: sbxbench0, subnet: 10.215.0.0/24}\nrouters: {port_range: [19500, 19799]}\n"
    )
    # a 1 GB+ image: the web recipe plus 900 MB of ballast in the app layer
    (ws / "recipes" / "big.yaml").write_text(
        "name: big\nextends: web\nrun:\n  - head -c 943718400 /dev/urandom > /opt/ballast\n"
    )
    (ws / "profiles" / "bigstaging.yaml").write_text("name: bigstaging\nextends: staging\nrecipe: big\n")
    env = dict(os.environ)
    c = [*SB, "-C", str(ws)]
    print("building web and big …", flush=True)
    for recipe in ("web", "big"):
        built = sh([*c, "build", recipe], env, check=False)
        if built.returncode != 0:
            sys.exit(
                f"up_bench needs the image {recipe!r} and could not build it (mmdebstrap and the host's "
                f"apt sources):\n{built.stderr.strip()}"
            )
    sizes = {
        r: sum(la["size"] for la in json.loads(sh([*c, "image", "inspect", r, "--json"]).stdout)["layers"])
        for r in ("web", "big")
    }
    # unpack both images once (that is per image, not per up)
    for name in ("staging-warm", "bigstaging-warm"):
        sh([*c, "up", name], env)
        sh([*c, "down", name], env)

    res: dict[str, list[float]] = {
        k: [] for k in ("up_running", "up_healthy", "raw_running", "raw_healthy", "up_small", "up_big")
    }
    for i in range(0 if args.only_idle else args.runs):
        res["up_running"].append(timed([*c, "up", f"staging-r{i}"], env))
        sh([*c, "down", f"staging-r{i}"], env)
        res["up_healthy"].append(up_until_routed(c, f"staging-h{i}"))
        sh([*c, "down", f"staging-h{i}"], env)
        res["up_small"].append(timed([*c, "up", f"staging-s{i}"], env))
        sh([*c, "down", f"staging-s{i}"], env)
        res["up_big"].append(timed([*c, "up", f"bigstaging-b{i}"], env))
        sh([*c, "down", f"bigstaging-b{i}"], env)

    # the anchor: a plain LXC container on the same unpacked rootfs, cloned with overlayfs
    digest = json.loads(sh([*c, "image", "inspect", "web", "--json"]).stdout)["digest"]
    unpacked = sorted((runtime_dir(ws) / "rootfs").glob(digest.removeprefix("sha256:") + "-*"))
    if not unpacked:
        sys.exit(f"no unpacked rootfs of web ({digest}) under {runtime_dir(ws) / 'rootfs'}")
    lower = unpacked[0] / "rootfs"
    raw = raw_lxc_dir(ws)
    remove_raw(raw)
    (raw / "base").mkdir(parents=True)
    (raw / "base" / "rootfs").symlink_to(lower)  # lxc-copy wants the container name in the rootfs path
    from sandbox.subids import runtime_ids  # the id range the tool shifted the rootfs into

    uids, gids = runtime_ids(runtime_dir(ws))
    (raw / "base" / "config").write_text(
        "lxc.include = /usr/share/lxc/config/common.conf\nlxc.include = /usr/share/lxc/config/userns.conf\n"
        f"lxc.idmap = u 0 {uids.start} {uids.count}\nlxc.idmap = g 0 {gids.start} {gids.count}\n"
        f"lxc.rootfs.path = dir:{raw / 'base' / 'rootfs'}\n"
        "lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed\n"
        "lxc.net.0.type = veth\nlxc.net.0.link = sbxbench0\nlxc.net.0.flags = up\n"
        "lxc.net.0.ipv4.address = 10.215.0.250/24\nlxc.net.0.ipv4.gateway = 10.215.0.1\n"
        "lxc.apparmor.profile = unconfined\nlxc.signal.halt = SIGRTMIN+3\n"
    )
    for i in range(0 if args.only_idle else args.runs):
        name = f"raw{i}"
        t0 = time.perf_counter()
        sh(["lxc-copy", "-P", str(raw), "-n", "base", "-N", name, "-s", "-B", "overlayfs"])
        sh(["lxc-start", "-P", str(raw), "-n", name])
        res["raw_running"].append(time.perf_counter() - t0)
        wait_http("http://10.215.0.250:8000/healthz")
        res["raw_healthy"].append(time.perf_counter() - t0)
        sh(["lxc-stop", "-P", str(raw), "-n", name, "-k"])
        sh(["lxc-destroy", "-P", str(raw), "-n", name])
    remove_raw(raw)

    # many idle envs at once
    mem_before = _mem_used()
    names = [f"staging-i{i}" for i in range(args.idle)]
    t0 = time.perf_counter()
    for n in names:
        sh([*c, "up", n], env)
    up_all = time.perf_counter() - t0
    time.sleep(20)  # let every instance finish booting
    usage = []
    for n in names:
        p = sh(
            ["lxc-cgroup", "-P", str(runtime_dir(ws) / "lxc"), "-n", f"{n}-0", "memory.usage_in_bytes"],
            check=False,
        )
        if p.returncode == 0 and p.stdout.strip().isdigit():
            usage.append(int(p.stdout.strip()))
    mem_after = _mem_used()
    healthy = sum(1 for e in json.loads(sh([*c, "ls", "--json"]).stdout) if e["state"] == "running")
    for n in names:
        sh([*c, "down", n], env)

    med = {k: median(v) if v else 0.0 for k, v in res.items()}
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "image_bytes": sizes,
        "seconds": res,
        "median": med,
        "ratios": {}
        if args.only_idle
        else {
            "up_over_raw_running": med["up_running"] / med["raw_running"],
            "up_over_raw_healthy": med["up_healthy"] / med["raw_healthy"],
            "big_over_small": med["up_big"] / med["up_small"],
        },
        "idle": {
            "envs": args.idle,
            "running": healthy,
            "seconds_to_start_all": up_all,
            "cgroup_mib_per_env_median": median(usage) / 2**20 if usage else None,
            "host_mib_used_per_env": (mem_after - mem_before) / args.idle / 2**20,
        },
    }
    for k, v in med.items():
        print(f"  {k:<12} {v * 1000:8.0f} ms   runs: {', '.join(f'{x * 1000:.0f}' for x in res[k])}")
    for k, v in report["ratios"].items():
        print(f"  {k:<22} {v:6.2f}")
    print(f"  image sizes: web {sizes['web'] / 2**20:.0f} MiB, big {sizes['big'] / 2**20:.0f} MiB")
    print(f"  idle: {json.dumps(report['idle'])}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"up-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")
    sh([*c, "gc"], check=False)
    remove_runtime(ws)
    shutil.rmtree(ws, ignore_errors=True)


def _mem_used() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


if __name__ == "__main__":
    main()
