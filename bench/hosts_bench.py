"""Benchmark for production hosts (issue 11) on the 3-host test rig, anchors in the same run.

    python bench/hosts_bench.py [--runs 3] [--rig /var/lib/sandbox-hostbench] [--engine lxc|docker]
                                [--json FILE]

Brings up `scripts/testhosts.sh up 3 RIG` (3 "machines": netns + own sshd, reached with `ssh -F
RIG/ssh_config`), makes its own workspace (recipes/ copied and images/ hard-linked from --workspace,
default the main checkout, which must hold a built `web` image), and reports:
  ship        a ~250 MB image to 3 hosts in parallel, cold (each host's store emptied first):
              sandbox.hosts.ship.ship over SshTransport + HostAgent, beside the anchors
              `rsync -a` (target: sandbox <= 1.1x), `rsync -a --zc=zstd` and `scp` of the same blob
              files to a scratch dir on the same hosts, each cold; seconds (median of --runs) and
              bytes on the wire (the hosts' veth counters: everything ssh sent, headers included)
  incr        a rebuild that changed only the app layer (a template): blobs and bytes shipped
  promote     prod (3 hosts x 2 instances) and its anchor solo (this machine, 2 instances), both on
              --engine (docker: each rig host runs its own dockerd, `testhosts.sh docker`), each
              `sandbox promote V --to ENV --probe 50` under `hey -c 4` (back-to-back 20 s windows
              while the promotion runs) and a no-retry keep-alive POST client: errors of each, and
              seconds per instance, hosts over local (target <= 1.2x)
  death       a promotion of prod with host 2 cut off the network ~5 s in: seconds from the cut to
              the deploy's "host failed" step, requests failed (probe, hey, posts), then heal and
              `promote --resume`: seconds to converge
Needs root, lxc, nginx, ssh/sshd, rsync, scp, hey (apt-get install hey rsync openssh-server).
Not a test: it reports numbers. Everything it made (envs, workspace, rig) is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SB = [sys.executable, "-m", "sandbox"]
RIG = REPO / "scripts" / "testhosts.sh"
TOOLS = ("rsync", "scp", "ssh", "hey", "lxc-start", "nginx", "ip")
HOSTS = (1, 2, 3)
SCRATCH = "/var/lib/sandbox-host/bench-scratch"  # private to each rig host (its own mount)
PROD_PORT, SOLO_PORT = 19595, 19596
PROFILE = """\
name: {name}
recipe: web
backend: {engine}
{hosts}instances: {instances}
health: {{path: /healthz, interval: 0.5s, timeout: 40s}}
router: {{listen: 127.0.0.1, port: {port}, drain_timeout: 5s}}
"""


class Failed(Exception):
    """A command failed: the bench stops, says which and what it said, and cleans up (`partial`:
    what the step measured before it failed, kept in the report)."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


def sh(argv: list[str], check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and p.returncode != 0:
        raise Failed(f"exit {p.returncode}: {' '.join(argv)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def main_checkout() -> Path:
    common = sh(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"])
    return Path(common.stdout.strip()).parent


# -- the rig ----------------------------------------------------------------------------------------


class Rig:
    def __init__(self, d: Path) -> None:
        self.dir, self.cfg = d, d / "ssh_config"

    def script(self, *args: str) -> None:
        sh([str(RIG), *args], timeout=300)

    def exec(self, i: int, *argv: str) -> None:
        sh([str(RIG), "exec", str(i), *argv])

    def wire(self) -> int:
        """Bytes this machine has sent to the hosts so far (each host's veth, bridge side)."""
        return sum(int(Path(f"/sys/class/net/sbxh{i}-v/statistics/tx_bytes").read_text()) for i in HOSTS)


# -- 1, 2: shipping ---------------------------------------------------------------------------------


def parallel(argvs: list[list[str]]) -> float:
    """Run the commands at once; seconds until the last one ended (each must succeed)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    for a, p in zip(argvs, procs, strict=True):
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise Failed(f"exit {p.returncode}: {' '.join(a)}\n{out}\n{err}")
    return time.perf_counter() - t0


def bench_ship(rig: Rig, ws: Path, digest: str, runs: int) -> tuple[dict[str, Any], Any]:
    from sandbox.hosts.agent import HostAgent
    from sandbox.hosts.ship import ship
    from sandbox.hosts.ssh import SshTransport
    from sandbox.store import ImageStore

    store = ImageStore(ws / "images")
    blobs = [store.blob_path(la["digest"]) for la in store.manifest(digest)["layers"]]
    files = [str(p) for p in [*blobs, store.manifest_path(digest)]]
    raw = sum(Path(f).stat().st_size for f in files)
    for f in files:  # every method reads the blobs from the page cache
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    ts = [
        SshTransport(f"web{i}", f"root@10.250.0.1{i}", ssh_config=rig.cfg, connect_timeout=3) for i in HOSTS
    ]
    agents = [HostAgent(t) for t in ts]
    for a in agents:
        a.ensure()  # the bundle is installed once per version, not per image: not timed
    prefix = agents[0].prefix()
    ssh_e = f"ssh -F {rig.cfg}"
    anchors = {
        "rsync -a": lambda i: ["rsync", "-a", "-e", ssh_e, *files, f"sbxh{i}:{SCRATCH}/"],
        "rsync -a --zc=zstd": lambda i: [
            "rsync",
            "-a",
            "-z",
            "--zc=zstd",
            "--zl=3",
            "-e",
            ssh_e,
            *files,
            f"sbxh{i}:{SCRATCH}/",
        ],
        "scp": lambda i: ["scp", "-q", "-F", str(rig.cfg), *files, f"sbxh{i}:{SCRATCH}/"],
    }
    secs: dict[str, list[float]] = {k: [] for k in ("sandbox", "sandbox none", *anchors)}
    wire: dict[str, list[int]] = {k: [] for k in secs}
    reports = []
    for run in range(runs):
        order = list(secs) if run % 2 == 0 else list(reversed(secs))
        for method in order:
            for i in HOSTS:  # cold: nothing of the image on any host
                rig.exec(i, "rm", "-rf", "/var/lib/sandbox-host/store", SCRATCH)
                rig.exec(i, "mkdir", "-p", SCRATCH)
            before = rig.wire()
            if method.startswith("sandbox"):
                codec = "none" if method == "sandbox none" else "zstd"
                t0 = time.perf_counter()
                rep = ship(store, digest, ts, prefix, lambda e: None, compression=codec)
                secs[method].append(time.perf_counter() - t0)
                if codec == "zstd":
                    reports.append(rep)
            else:
                secs[method].append(parallel([anchors[method](i) for i in HOSTS]))
            wire[method].append(rig.wire() - before)
        print(f"  ship run {run}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in secs.items()), flush=True)
    for i in HOSTS:
        rig.exec(i, "rm", "-rf", SCRATCH)
    # the same image again: every host has it (one `have` round trip each); the loop's last cold
    # clean may have emptied the stores, so ship once untimed first
    ship(store, digest, ts, prefix, lambda e: None)
    t0 = time.perf_counter()
    ship(store, digest, ts, prefix, lambda e: None)
    again = time.perf_counter() - t0
    last = reports[-1]
    res = {
        "image_bytes": raw,
        "hosts": len(HOSTS),
        "codec": sorted({h.codec for h in last.hosts.values()}),
        "seconds": secs,
        "median_s": {k: median(v) for k, v in secs.items()},
        "wire_bytes_median": {k: int(median([float(x) for x in v])) for k, v in wire.items()},
        "sandbox_bytes_wire_reported": sum(h.bytes_wire for h in last.hosts.values()),
        "ratio_sandbox_over": {k: median(secs["sandbox"]) / median(secs[k]) for k in anchors},
        "ratio_sandbox_none_over": {k: median(secs["sandbox none"]) / median(secs[k]) for k in anchors},
        "already_there_s": again,
    }
    return res, (store, ts, prefix)


def bench_incremental(rig: Rig, ws: Path, shipping: Any, digest2: str) -> dict[str, Any]:
    from sandbox.hosts.ship import ship

    store, ts, prefix = shipping
    before = rig.wire()
    t0 = time.perf_counter()
    rep = ship(store, digest2, ts, prefix, lambda e: None)
    secs = time.perf_counter() - t0
    hosts = rep.hosts.values()
    return {
        "seconds": secs,
        "blobs_sent_per_host": sorted({h.blobs_sent for h in hosts}),
        "bytes_raw_total": sum(h.bytes_raw for h in hosts),
        "bytes_wire_reported": sum(h.bytes_wire for h in hosts),
        "wire_bytes_veth": rig.wire() - before,
        "manifest_bytes": store.manifest_path(digest2).stat().st_size,  # sent gzipped to every host
    }


# -- 3, 4: promotions under load --------------------------------------------------------------------


class Hey(threading.Thread):
    """`hey -z 20s -c 4` windows back to back until stopped (at most `limit` windows): the load
    covers a whole promotion however long it takes. Status codes and errors summed over windows."""

    def __init__(self, url: str, window: int, limit: int = 30) -> None:
        super().__init__(daemon=True)
        self.url, self.window, self.limit = url, window, limit
        self.stop_event = threading.Event()
        self.codes: dict[str, int] = {}
        self.errors: list[str] = []
        self.windows = 0

    def run(self) -> None:
        while not self.stop_event.is_set() and self.windows < self.limit:
            p = subprocess.run(
                ["hey", "-z", f"{self.window}s", "-c", "4", self.url],
                capture_output=True,
                text=True,
                timeout=self.window + 60,
                check=False,
            )
            self.windows += 1
            for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", p.stdout):
                self.codes[code] = self.codes.get(code, 0) + int(n)
            m = re.search(r"Error distribution:\n(.*)", p.stdout, re.S)
            if m:
                self.errors += [x.strip() for x in m.group(1).strip().splitlines() if x.strip()]

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join()
        non_2xx = sum(n for c, n in self.codes.items() if not c.startswith("2"))
        return {
            "status_codes": self.codes,
            "non_2xx": non_2xx,
            "errors": self.errors,
            "windows": self.windows,
        }


def under_load(c: list[str], port: int, argv: list[str], hey_window: int) -> dict[str, Any]:
    """Run `sandbox ARGV` (a promotion with --probe) under hey and the keep-alive POST client."""
    from sandbox.promote.probe import KeepAlivePosts

    hey = Hey(f"http://127.0.0.1:{port}/healthz", hey_window)
    posts = KeepAlivePosts(f"http://127.0.0.1:{port}/notes", interval=0.01, max_seconds=1800)
    hey.start()
    posts.start()
    time.sleep(1.0)
    t0 = time.time()
    p = sh([*c, *argv], check=False, timeout=1800)
    t1 = time.time()
    posts.stop()
    res = {
        "argv": argv,
        "exit": p.returncode,
        "started": t0,
        "seconds": t1 - t0,
        "stdout": p.stdout,
        "stderr": p.stderr,
        "hey": hey.stop(),
        "posts": {"requests": posts.requests, "non_2xx": posts.non_2xx, "errors": len(posts.errors)},
        "posts_first_errors": posts.errors[:5],
    }
    return res


def probe_counts(text: str) -> dict[str, dict[str, int]]:
    """The probe's phases as the CLI prints them (a failed promotion prints them as warnings)."""
    out = {}
    for phase, n, nx, err in re.findall(r"probe (\w+)\s+(\d+) requests, (\d+) non-2xx, (\d+) errors", text):
        out[phase] = {"requests": int(n), "non_2xx": int(nx), "errors": int(err)}
    return out


def promote(c: list[str], env: str, port: int, ref: str, rps: int, hey_window: int) -> dict[str, Any]:
    argv = ["promote", ref, "--to", env, "--force", "--yes", "--probe", str(rps), "--json"]
    r = under_load(c, port, argv, hey_window)
    if r["exit"] != 0:
        raise Failed(f"exit {r['exit']}: sandbox {' '.join(argv)}\n{r['stdout']}\n{r['stderr']}")
    doc = json.loads(r["stdout"])
    probe = {
        ph: {k: v[k] for k in ("requests", "non_2xx", "errors", "p99_ms")} for ph, v in doc["probe"].items()
    }
    return {
        "state": doc["state"],
        "seconds": r["seconds"],
        "per_backend": doc["per_backend"],
        "probe": probe,
        "hey": r["hey"],
        "posts": r["posts"],
        "posts_first_errors": r["posts_first_errors"],
    }


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Several promotions of one env as one: their instances' seconds, and every client's counts."""
    probe: dict[str, dict[str, float]] = {}
    for r in rounds:
        for ph, v in r["probe"].items():
            acc = probe.setdefault(ph, {"requests": 0, "non_2xx": 0, "errors": 0, "p99_ms": 0.0})
            for k in ("requests", "non_2xx", "errors"):
                acc[k] += v[k]
            acc["p99_ms"] = max(acc["p99_ms"], v["p99_ms"])  # the worst round's
    codes: dict[str, int] = {}
    for r in rounds:
        for code, n in r["hey"]["status_codes"].items():
            codes[code] = codes.get(code, 0) + n
    return {
        "rounds": rounds,
        "seconds": median([r["seconds"] for r in rounds]),
        "per_backend": [x for r in rounds for x in r["per_backend"]],
        "probe": probe,
        "hey": {
            "status_codes": codes,
            "non_2xx": sum(r["hey"]["non_2xx"] for r in rounds),
            "errors": [e for r in rounds for e in r["hey"]["errors"]],
        },
        "posts": {k: sum(r["posts"][k] for r in rounds) for k in ("requests", "non_2xx", "errors")},
    }


def host_death(c: list[str], rig: Rig, ref: str, rps: int, hey_window: int) -> dict[str, Any]:
    cut_at: list[float] = []

    def cut() -> None:
        """Host 2 off the network 1 s after the deploy started its first new instance (mid-swap, past
        the preflight that ships the image: a cut there fails the promotion before it begins)."""
        end = time.monotonic() + 180
        while time.monotonic() < end:
            h = json.loads(sh([*c, "history", "prod", "--json"], check=False).stdout or "[]")
            if h and h[0]["state"] == "running" and any(st["step"] == "started" for st in h[0]["steps"]):
                break
            time.sleep(0.3)
        time.sleep(1.0)
        rig.script("cut", "2", str(rig.dir))
        cut_at.append(time.time())

    killer = threading.Thread(target=cut)
    killer.start()
    try:
        argv = ["promote", ref, "--to", "prod", "--force", "--yes", "--probe", str(rps)]
        r = under_load(c, PROD_PORT, argv, hey_window)
    finally:
        killer.join()
    out: dict[str, Any] = {
        "promote_exit": r["exit"],
        "promote_output": (r["stdout"] + r["stderr"])[-4000:],
        "cut_after_s": cut_at[0] - r["started"] if cut_at else None,
    }
    if r["exit"] == 0:
        print("  warning: the promotion finished although host 2 was cut", file=sys.stderr)
    last = json.loads(sh([*c, "history", "prod", "--json"]).stdout)[0]
    failed = [s for s in last["steps"] if s["step"] == "host failed"]
    probe = probe_counts(r["stdout"] + r["stderr"])
    out.update(
        {
            "stop_message": next((ln for ln in r["stderr"].splitlines() if "web2" in ln), ""),
            "deploy_state": last.get("state"),
            "cut_to_host_failed_s": failed[0]["ts"] - cut_at[0] if failed and cut_at else None,
            "cut_to_exit_s": r["started"] + r["seconds"] - cut_at[0] if cut_at else None,
            "failed_host": failed[0].get("host") if failed else None,
            "probe": probe,
            "probe_failed": sum(p["non_2xx"] + p["errors"] for p in probe.values()),
            "hey": r["hey"],
            "posts": r["posts"],
            "posts_first_errors": r["posts_first_errors"],
        }
    )
    rig.script("heal", "2", str(rig.dir))
    time.sleep(1.0)
    t0 = time.perf_counter()
    res = sh(
        [*c, "promote", "--to", "prod", "--resume", "--probe", str(rps), "--json"], check=False, timeout=1800
    )
    out["resume_s"] = time.perf_counter() - t0
    if res.returncode != 0:
        out["resume_error"] = res.stdout + res.stderr
        raise Failed(
            f"exit {res.returncode}: sandbox promote --to prod --resume\n{res.stdout}\n{res.stderr}", out
        )
    doc = json.loads(res.stdout)
    status = json.loads(sh([*c, "status", "prod", "--json"]).stdout)
    out.update(
        {
            "resume_state": doc["state"],
            "resume_probe_failed": sum(p["non_2xx"] + p["errors"] for p in (doc.get("probe") or {}).values()),
            "after": sorted(
                (i.get("host", ""), i["state"], i.get("health", "")) for i in status["instances"]
            ),
        }
    )
    return out


# -- the run ----------------------------------------------------------------------------------------


def make_workspace(ws: Path, src: Path, rig: Rig, engine: str) -> None:
    if not (src / "images" / "refs" / "web" / "latest").is_file():
        raise Failed(f"{src} holds no built web image: `sandbox -C {src} build web`, or pass --workspace")
    ws.mkdir(parents=True)
    shutil.copytree(src / "recipes", ws / "recipes")  # with web.lock: a rebuild reuses the base layer
    sh(["cp", "-al", str(src / "images"), str(ws / "images")])  # the store writes by rename: safe
    (ws / "profiles").mkdir()
    hosts = "hosts:\n" + "".join(f"  - {{name: web{i}, ssh: root@10.250.0.1{i}}}\n" for i in HOSTS)
    (ws / "profiles" / "prod.yaml").write_text(
        PROFILE.format(name="prod", hosts=hosts, instances=6, port=PROD_PORT, engine=engine)
    )
    (ws / "profiles" / "solo.yaml").write_text(
        PROFILE.format(name="solo", hosts="", instances=2, port=SOLO_PORT, engine=engine)
    )
    (ws / "sandbox.yaml").write_text(
        "network: {bridge: sbxhbench0, subnet: 10.219.0.0/24}\n"
        f"hosts: {{ssh_config: {rig.cfg}, connect_timeout: 3}}\n"
    )


def remove_workspace(ws: Path) -> None:
    """Every env of the bench's workspace down, then the workspace (unless something is still mounted
    below it: an env that would not go down)."""
    if not ws.exists():
        return
    c = [*SB, "-C", str(ws)]
    for e in json.loads(sh([*c, "ls", "--json"], check=False).stdout or "[]"):
        p = sh([*c, "down", e["name"]], check=False, timeout=600)
        if p.returncode != 0:
            print(f"sandbox down {e['name']}: exit {p.returncode}: {p.stderr.strip()}", file=sys.stderr)
    with open("/proc/self/mountinfo") as f:
        busy = [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{ws}/")]
    if busy:
        print(f"kept {ws}: still mounted: {', '.join(busy[:3])}", file=sys.stderr)
        return
    shutil.rmtree(ws)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def fails(r: dict[str, Any]) -> str:
    probe = sum(p["non_2xx"] + p["errors"] for p in r["probe"].values())
    hey, n = f"{r['hey']['non_2xx']}/{len(r['hey']['errors'])}", sum(r["hey"]["status_codes"].values())
    return f"probe {probe}, hey {hey} of {n}, posts {r['posts']['errors']} of {r['posts']['requests']}"


class Done(Exception):
    """--ship-only: the rest is skipped (the rig and workspace are still removed)."""


def table(rep: dict[str, Any]) -> str:
    """The figures as a markdown table: figure | sandbox | anchor | ratio | target."""
    s, inc = rep["ship"], rep["incremental"]
    m, w = s["median_s"], s["wire_bytes_median"]
    rows = [("figure", "sandbox", "anchor", "ratio", "target"), ("---",) * 5]
    for key, label in (("ratio_sandbox_over", "sandbox"), ("ratio_sandbox_none_over", "sandbox none")):
        for k, ratio in s[key].items():
            target = "<= 1.1x" if k == "rsync -a" else ""
            codec = "zstd" if label == "sandbox" else "none"
            what = f"ship {mb(s['image_bytes'])} to 3 hosts, cold (s), {codec}"
            rows.append((what, f"{m[label]:.2f}", f"{k}: {m[k]:.2f}", f"{ratio:.2f}x", target))
    for k in s["ratio_sandbox_over"]:
        ratio = f"{w['sandbox'] / w[k]:.2f}x"
        rows.append(("bytes on the wire to 3 hosts", mb(w["sandbox"]), f"{k}: {mb(w[k])}", ratio, ""))
    rows.append(("ship again, hosts have it (s)", f"{s['already_there_s']:.2f}", "", "", ""))
    sent = (
        f"{inc['blobs_sent_per_host']} blob/host, {mb(inc['bytes_raw_total'])} raw, "
        f"{mb(inc['wire_bytes_veth'])} on the wire (manifest {mb(inc['manifest_bytes'])}/host), "
        f"{inc['seconds']:.2f} s"
    )
    rows.append(("ship a rebuild (app layer changed)", sent, "", "", "KB, not MB"))
    if "prod" not in rep:  # --ship-only
        return "\n".join("| " + " | ".join(str(x) for x in r) + " |" for r in rows)
    pr, solo, death = rep["prod"], rep["solo"], rep["death"]
    per_h, per_l = median(pr["per_backend"]), median(solo["per_backend"])
    ratio = f"{per_h / per_l:.2f}x"
    rows.append(
        ("promote: s per instance", f"3 hosts x 2: {per_h:.2f}", f"local x 2: {per_l:.2f}", ratio, "<= 1.2x")
    )
    rows.append(("promote: total s (median)", f"{pr['seconds']:.1f}", f"{solo['seconds']:.1f}", "", ""))
    rows.append(("promote: failed requests", fails(pr), fails(solo), "", "0"))
    cut = death["cut_to_host_failed_s"]
    rows.append(("host cut: to 'host failed' (s)", "none" if cut is None else f"{cut:.1f}", "", "", "< 40"))
    failed = (
        f"probe {death['probe_failed']}, hey {death['hey']['non_2xx']}/{len(death['hey']['errors'])}, "
        f"posts {death['posts']['errors']}"
    )
    rows.append(("host cut: failed requests", failed, "", "", "0"))
    resumed = f"{death['resume_s']:.1f} ({death['resume_state']})"
    rows.append(("host cut: `promote --resume` (s)", resumed, "", "", ""))
    return "\n".join("| " + " | ".join(str(x) for x in r) + " |" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="cold ships per method (median)")
    ap.add_argument("--rig", type=Path, default=Path("/var/lib/sandbox-hostbench"), help="the rig's DIR")
    ap.add_argument("--workspace", type=Path, help="copy recipes/ and images/ (a built web) from here")
    ap.add_argument("--rounds", type=int, default=2, help="promotions per env, alternating v2 and v1")
    ap.add_argument("--probe", type=int, default=50, help="the promotions' --probe RPS")
    ap.add_argument("--hey-window", type=int, default=20, help="seconds of each hey -z window")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--ship-only", action="store_true", help="only the shipping figures (1, 2)")
    ap.add_argument("--engine", choices=("lxc", "docker"), default="lxc", help="prod's and solo's backend")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("hosts_bench needs root (the rig, lxc)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"hosts_bench needs {', '.join(missing)}")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    src = args.workspace or main_checkout()
    rig = Rig(args.rig)
    os.environ["TESTHOSTS_DIR"] = str(rig.dir)  # `testhosts.sh exec` picks the rig by it
    ws = REPO / ".sandbox" / "bench-hosts"
    c = [*SB, "-C", str(ws)]
    rep: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "engine": args.engine,
    }
    shipping = None
    code = 0
    try:
        remove_workspace(ws)
        print(f"rig up in {rig.dir} …", flush=True)
        rig.script("up", "3", str(rig.dir))
        if args.engine == "docker":
            rig.script("docker", *map(str, HOSTS))
        make_workspace(ws, src, rig, args.engine)
        v1 = json.loads(sh([*c, "image", "inspect", "web", "--json"]).stdout)["digest"]
        print("building v2 (a template changed) …", flush=True)
        tpl = ws / "recipes" / "web" / "templates" / "settings.py.j2"
        tpl.write_text(
            tpl.read_text().replace('GREETING = "{{ greeting }}"', 'GREETING = "{{ greeting }} (v2)"')
        )
        t0 = time.perf_counter()
        v2 = json.loads(sh([*c, "build", "web", "--tag", "v2", "--json"]).stdout)["digest"]
        rep["build_v2_s"] = time.perf_counter() - t0
        if v2 == v1:
            raise Failed(f"the rebuild gave the same image {v1}: the template edit did not apply")
        rep["images"] = {"v1": v1, "v2": v2}
        print("shipping …", flush=True)
        rep["ship"], shipping = bench_ship(rig, ws, v1, args.runs)
        rep["incremental"] = bench_incremental(rig, ws, shipping, v2)
        if args.ship_only:
            print(table(rep))
            raise Done
        print("up solo, prod …", flush=True)
        for env in ("solo", "prod"):
            t0 = time.perf_counter()
            sh([*c, "up", env, "--image", v1, "--wait", "--json"], timeout=1200)
            rep[f"up_{env}_s"] = time.perf_counter() - t0
        print("promotions under load …", flush=True)
        target = v1
        rounds: dict[str, list[dict[str, Any]]] = {"solo": [], "prod": []}
        for n in range(args.rounds):  # v2, v1, v2, …: solo and prod in turn, so that a change of the
            target = v2 if n % 2 == 0 else v1  # machine's load weighs on both sides of the ratio
            for env, port in (("solo", SOLO_PORT), ("prod", PROD_PORT)):
                rounds[env].append(promote(c, env, port, target, args.probe, args.hey_window))
                print(
                    f"  {env} to {target[7:19]}: {rounds[env][-1]['per_backend']} s per instance", flush=True
                )
        for env in ("solo", "prod"):
            rep[env] = merge(rounds[env])
        print("host death …", flush=True)
        rep["death"] = host_death(c, rig, v1 if target == v2 else v2, args.probe, args.hey_window)
        print(table(rep))
    except Done:
        pass
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        rep["failed"] = str(e)
        if e.partial is not None:
            rep["partial"] = e.partial
        code = 1
    finally:
        if shipping is not None:
            for t in shipping[1]:
                t.close()
        sh([str(RIG), "heal", "2", str(rig.dir)], check=False)  # if a failure left host 2 cut
        remove_workspace(ws)  # before the rig goes: prod's instances are on its hosts
        rig_down = sh([str(RIG), "down", str(rig.dir)], check=False, timeout=600)
        if rig_down.returncode != 0:
            print(f"testhosts.sh down: {rig_down.stderr.strip()}", file=sys.stderr)
        rep["netns_left"] = sh(["ip", "netns", "list"], check=False).stdout.split()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=2, default=str) + "\n")
        print(f"written {args.json}")
    sys.exit(code)


if __name__ == "__main__":
    main()
