"""`sandbox up` to healthy on each backend beside that backend's own raw path, in one run.

    python bench/backends_bench.py [--runs 3] [--backends docker,lxd,libvirt,lxc] [--out bench/results]

For each backend (skipped with a note when its daemon is not running):
  up_healthy   `sandbox up bbNAME-K --wait` of 1 instance: create, start, router, app answers
               through the router (wall clock, includes Python start)
  raw_healthy  the backend's own client starting the same image until the app answers on the
               instance's address: `docker run`, `lxc launch` (LXD), `virsh create` (libvirt);
               LXC's raw path (`lxc-copy` + `lxc-start`) is measured by bench/up_bench.py
  ratio        up_healthy / raw_healthy (median of --runs each)
Not a test: it reports numbers. Own workspace, bridge and subnet; removes what it made.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sandbox.imageformats.docker import repo_tag
from sandbox.store import ImageStore
from sandbox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SB = [sys.executable, "-m", "sandbox"]
SETTINGS = "network: {bridge: sbxbb0, subnet: 10.222.0.0/24}\nrouters: {port_range: [19800, 19899]}\n"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sh(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{p.stdout}\n{p.stderr}")
    return p


def wait_http(url: str, limit: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        with contextlib.suppress(OSError), NO_PROXY.open(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.02)
    sys.exit(f"{url} did not answer within {limit}s")


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def raw_docker(ws: Path, digest: str, k: int) -> tuple[float, Callable[[], None]]:
    tag = repo_tag(ImageStore(ws / "images"), digest)  # loaded by the sandbox run before
    name = f"bbraw-docker-{k}"
    t0 = time.perf_counter()
    sh(["docker", "run", "-d", "--init", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--name", name, tag])  # fmt: skip
    addr = sh(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]).stdout.strip()
    wait_http(f"http://{addr}:8000/healthz")
    return time.perf_counter() - t0, lambda: sh(["docker", "rm", "-f", name], check=False) and None


def raw_libvirt(ws: Path, digest: str, k: int) -> tuple[float, Callable[[], None]]:
    """`virsh create` of the same domain sandbox defines (same disk, kernel, accel), on a new overlay."""
    from sandbox.backends.libvirtxml import DomainConfig, mac_for, render_domain_xml
    from sandbox.imageformats.vmdisk import kernel_cmdline

    root = Workspace(ws).runtime / "libvirt"
    vm = (root / "images" / f"{digest.removeprefix('sha256:')}.vm").read_text().strip()
    img = root / "images" / vm.removeprefix("sha256:")
    accel = json.loads((root / "accel.json").read_text())["accel"]
    d = root / f"bbraw-{k}"
    d.mkdir(mode=0o755)
    name, addr = f"bbraw-libvirt-{k}", "10.222.0.200"
    t0 = time.perf_counter()
    sh(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(img / "root.raw"),
            str(d / "disk.qcow2"),
        ]
    )
    sh(["truncate", "-s", "4M", str(d / "empty.img")])  # no config disk content: the app runs as built
    xml = render_domain_xml(DomainConfig(
        name=name, instance=name, workspace="bench", env="bench", image=digest,
        domain_type="kvm" if accel == "kvm" else "qemu", memory_mib=512, vcpus=1,
        kernel=str(img / "vmlinuz"), initrd=str(img / "initrd.img"),
        cmdline=kernel_cmdline(addr, "10.222.0.0/24", "10.222.0.1"), disk=str(d / "disk.qcow2"),
        config_disk=str(d / "empty.img"), bridge="sbxbb0", mac=mac_for(name),
        console_log=str(d / "console.log"), address=addr,
    ))  # fmt: skip
    (d / "domain.xml").write_text(xml)
    sh(["virsh", "-c", "qemu:///system", "create", str(d / "domain.xml")])
    wait_http(f"http://{addr}:8000/healthz", limit=900)
    took = time.perf_counter() - t0

    def cleanup() -> None:
        sh(["virsh", "-c", "qemu:///system", "destroy", name], check=False)
        shutil.rmtree(d, ignore_errors=True)

    return took, cleanup


def raw_lxd(ws: Path, digest: str, k: int) -> tuple[float, Callable[[], None]]:
    """`lxc launch` of the image sandbox imported, with a routed NIC, until the app answers."""
    from sandbox.backends.lxdconfig import image_alias

    name, addr = f"bbraw-lxd-{k}", f"10.222.0.{240 + k}"
    pool = ["-s", "sandbox"] if sh(["lxc", "storage", "show", "sandbox"], check=False).returncode == 0 else []
    t0 = time.perf_counter()
    sh(["lxc", "init", image_alias(digest), name, *pool])
    sh(["lxc", "config", "device", "add", name, "eth0", "nic", "nictype=routed", f"ipv4.address={addr}"])
    sh(["lxc", "start", name])
    wait_http(f"http://{addr}:8000/healthz")
    return time.perf_counter() - t0, lambda: sh(["lxc", "delete", "-f", name], check=False) and None


RAW: dict[str, Callable[[Path, str, int], tuple[float, Callable[[], None]]]] = {
    "docker": raw_docker,
    "lxd": raw_lxd,
    "libvirt": raw_libvirt,
}


def available(backend: str) -> str | None:
    probes = {
        "docker": ["docker", "info"],
        "lxd": ["lxc", "info"],
        "libvirt": ["virsh", "-c", "qemu:///system", "version"],
        "lxc": ["lxc-checkconfig"],
    }
    try:
        ok = subprocess.run(probes[backend], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return None if ok else f"{probes[backend][0]} does not answer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default="docker,lxd,libvirt,lxc")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    ws = REPO / ".sandbox" / "bench-backends"
    if ws.exists():
        for e in json.loads(sh([*SB, "-C", str(ws), "ls", "--json"], check=False).stdout or "[]"):
            sh([*SB, "-C", str(ws), "down", e["name"]], check=False)
        shutil.rmtree(ws)
    (ws / "profiles").mkdir(parents=True)
    shutil.copytree(REPO / "recipes", ws / "recipes")
    if (REPO / "images").is_dir():
        sh(["cp", "-al", str(REPO / "images"), str(ws / "images")])
    (ws / "sandbox.yaml").write_text(SETTINGS)
    digest = json.loads(sh([*SB, "-C", str(ws), "build", "web", "--json"]).stdout)["digest"]
    Workspace(ws).runtime  # noqa: B018  (decides the runtime dir before timing)

    results: dict[str, dict[str, object]] = {}
    for backend in args.backends.split(","):
        why = available(backend)
        if why is not None:
            results[backend] = {"skipped": why}
            print(f"{backend:8} skipped: {why}")
            continue
        (ws / "profiles" / f"bb{backend}.yaml").write_text(
            f"name: bb{backend}\nrecipe: web\nbackend: {backend}\ninstances: 1\n"
            "health: {path: /healthz, interval: 0.05s, timeout: 900s}\n"
            "router: {listen: 127.0.0.1, port: auto}\n"
        )
        # one untimed up: imports/unpacks the image into the backend (measured separately)
        t0 = time.perf_counter()
        sh([*SB, "-C", str(ws), "up", f"bb{backend}-0", "--wait"])
        first = time.perf_counter() - t0
        sh([*SB, "-C", str(ws), "down", f"bb{backend}-0"])
        ups, raws = [], []
        for k in range(1, args.runs + 1):
            t0 = time.perf_counter()
            sh([*SB, "-C", str(ws), "up", f"bb{backend}-{k}", "--wait"])
            ups.append(time.perf_counter() - t0)
            sh([*SB, "-C", str(ws), "down", f"bb{backend}-{k}"])
            if backend in RAW:
                took, cleanup = RAW[backend](ws, digest, k)
                raws.append(took)
                cleanup()
        row: dict[str, object] = {
            "first_up_with_image_import_s": round(first, 2),
            "up_healthy_s": [round(x, 3) for x in ups],
            "up_healthy_median_s": round(median(ups), 3),
        }
        if raws:
            row["raw_healthy_s"] = [round(x, 3) for x in raws]
            row["raw_healthy_median_s"] = round(median(raws), 3)
            row["ratio"] = round(median(ups) / median(raws), 2)
        results[backend] = row
        print(
            f"{backend:8} first up {first:6.2f}s  up->healthy {median(ups):6.2f}s"
            + (f"  raw {median(raws):6.2f}s  ratio {median(ups) / median(raws):.2f}" if raws else "")
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"backends-{stamp}.json").write_text(json.dumps({"image": digest, "results": results}, indent=2))
    shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
