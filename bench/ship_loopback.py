"""Shipping an image to 3 hosts without the rig: 3 sshds of its own on 127.0.0.1, beside rsync and scp.

    python bench/ship_loopback.py [--images DIR] [--image DIGEST] [--runs 3] [--methods ...]
                                  [--python PY] [--json F]

Starts 3 sshds on free loopback ports (each with its own host key, in a mount namespace with its own
/run when this machine has no /run/sshd), one ssh_config with an alias per host (`lbh1`..`lbh3`, as
the rig's `sbxhI`), and a host root per host (`SANDBOX_HOST_ROOT` in the agent's command line: the
three "hosts" share this machine's disk and CPUs, as the rig's do). Then, for --runs rounds, each
method cold (every host's store and scratch dir emptied first), order reversed every other round:
  sandbox CODEC   sandbox.hosts.ship.ship over SshTransport + the agent bundle, hosts in parallel,
                  the store's compressed copies (packed/) removed first: a first ship, that compresses
  sandbox CODEC kept   the same with the compressed copies an earlier ship made (to other hosts)
  rsync -a        `rsync -a -e "ssh -F CFG"` of the same blob files + manifest, the 3 hosts at once
                  (the rig bench's anchor: the issue's target is sandbox <= 1.1x of it)
  rsync -a gcm    the same with `ssh -c aes128-gcm@openssh.com`, the cipher sandbox prefers on a CPU
                  with AES instructions (sandbox/hosts/ssh.py): the anchor at an equal cipher
  scp             `scp -q -F CFG` of the same files, the 3 hosts at once
and prints each run and the medians: seconds, and CPU seconds of everything the method ran (this
process is the subreaper of all it starts, the ssh masters that fork into the background too: the
sum of the CPU times below it, ended processes included; on a machine shared with other work the
CPU seconds are steadier than the seconds). The image is --image (default: the newest manifest) of
--images (default: the main checkout's images/, which must hold a built image). The agent runs
under --python (default python3 from the login's PATH, as HostAgent runs it: give /usr/bin/python3
where that is a pyenv shim, which costs about 0.12 s of CPU a start). The blobs are read once first,
so every method reads them from the page cache, and `sync` runs before each method (rsync does
not fsync what it wrote: the disk writes it leaves would land in the next method's time).
Everything it made is removed at the end (the compressed copies it made in the store too); the
sshds are stopped by their pids. Not a test: it reports numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SSHD = "/usr/sbin/sshd"
HOSTS = (1, 2, 3)
PR_SET_CHILD_SUBREAPER = 36


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(d: Path, port: int, authorized: Path) -> subprocess.Popen[bytes]:
    keygen(d / "host_key")
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\nUseDNS no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "AllowTcpForwarding no\nX11Forwarding no\nPrintMotd no\nMaxSessions 64\nMaxStartups 64:30:128\n"
        "Subsystem sftp internal-sftp\n"
    )
    cmd = [SSHD, "-D", "-e", "-f", str(d / "sshd_config")]
    if not Path("/run/sshd").is_dir():  # a /run of its own (private mount namespace, a tmpfs)
        cmd = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs -o mode=755 lbh /run && mkdir -m 755 /run/sshd && exec "$@"',
            "sh",
            *cmd,
        ]
    with (d / "sshd.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"sshd did not start: {(d / 'sshd.log').read_text()[-2000:]}")


def descendants(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [p for k in map(int, kids) for p in (k, *descendants(k))]


@contextlib.contextmanager
def loopback_hosts(d: Path) -> Iterator[Path]:
    """3 sshds; yields the ssh_config that names them lbh1..lbh3."""
    client_pub = keygen(d / "client_key")
    (d / "authorized_keys").write_text(client_pub + "\n")
    procs: list[subprocess.Popen[bytes]] = []
    known, cfg = [], []
    try:
        for i in HOSTS:
            h = d / f"lbh{i}"
            h.mkdir()
            port = free_port()
            procs.append(start_sshd(h, port, d / "authorized_keys"))
            known.append(f"[127.0.0.1]:{port} {(h / 'host_key.pub').read_text().strip()}")
            cfg.append(
                f"Host lbh{i}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
                f"  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  IdentityAgent none\n"
                f"  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n  UpdateHostKeys no\n  BatchMode yes\n"
            )
        (d / "known_hosts").write_text("\n".join(known) + "\n")
        (d / "ssh_config").write_text("\n".join(cfg))
        yield d / "ssh_config"
    finally:
        for p in procs:
            left = descendants(p.pid)
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


def tree_cpu() -> float:
    """CPU seconds of this process and every process below it; the ended ones are in their parent's
    children times (cutime, cstime)."""
    kids: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for d in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{d}/stat").read_text() if d.isdigit() else ""
        except OSError:
            continue
        if stat:
            fields = stat[stat.rindex(")") + 2 :].split()  # state ppid ... utime stime cutime cstime
            kids.setdefault(int(fields[1]), []).append(int(d))
            ticks[int(d)] = sum(int(x) for x in fields[11:15])
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += kids.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def compressed_copies(store: Any, digest: str, codec: str, kept: bool) -> None:
    """The image's compressed copies in the store: removed (the ship compresses, as a first one
    does), or made (as an earlier ship to other hosts did; not timed)."""
    from sandbox.store.packed import packed_copy

    for layer in store.manifest(digest)["layers"]:
        if kept:
            with tempfile.TemporaryDirectory(dir=store.root) as tmp:
                packed_copy(store, codec, layer["digest"], Path(tmp))
        else:
            for p, _ in store.packed():
                if p.parent.name == codec and p.name.startswith(layer["digest"][7:]):
                    p.unlink()


def parallel(argvs: list[list[str]]) -> None:
    """Run the commands at once, until the last one ended (each must succeed)."""
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]
    for a, p in zip(argvs, procs, strict=True):
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"exit {p.returncode}: {' '.join(a)}\n{out[-2000:]!r}\n{err[-2000:]!r}")


def bench(
    images: Path, digest: str | None, runs: int, methods: list[str], work: Path, python: str = "python3"
) -> dict[str, Any]:
    from sandbox.hosts.agent import bundle
    from sandbox.hosts.ship import ship
    from sandbox.hosts.ssh import SshTransport
    from sandbox.hosts.transport import Transport
    from sandbox.store import ImageStore

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    store = ImageStore(images)
    had = {p for p, _ in store.packed()}
    digest = digest or max(store.digests(), key=lambda x: store.manifest_path(x).stat().st_mtime)
    blobs = [store.blob_path(la["digest"]) for la in store.manifest(digest)["layers"]]
    files = [str(p) for p in [*blobs, store.manifest_path(digest)]]
    raw = sum(Path(f).stat().st_size for f in files)
    for f in files:  # every method reads them from the page cache
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    pyz = work / "agent.pyz"
    pyz.write_bytes(bundle()[1])
    roots = {f"lbh{i}": work / f"lbh{i}" / "root" for i in HOSTS}
    scratch = {f"lbh{i}": work / f"lbh{i}" / "scratch" for i in HOSTS}

    def prefix(t: Transport) -> list[str]:
        return ["env", f"SANDBOX_HOST_ROOT={roots[t.name]}", python, str(pyz)]

    with loopback_hosts(work) as cfg:
        ctl = Path(tempfile.mkdtemp(prefix="lbh-", dir="/tmp"))  # control sockets: a short path
        ts = [SshTransport(f"lbh{i}", f"lbh{i}", ssh_config=cfg, control_root=ctl) for i in HOSTS]
        anchors = {
            "rsync -a": lambda h: ["rsync", "-a", "-e", f"ssh -F {cfg}", *files, f"{h}:{scratch[h]}/"],
            "rsync -a gcm": lambda h: [
                "rsync",
                "-a",
                "-e",
                f"ssh -F {cfg} -c aes128-gcm@openssh.com",
                *files,
                f"{h}:{scratch[h]}/",
            ],
            "scp": lambda h: ["scp", "-q", "-F", str(cfg), *files, f"{h}:{scratch[h]}/"],
        }
        secs: dict[str, list[float]] = {m: [] for m in methods}
        cpu: dict[str, list[float]] = {m: [] for m in methods}
        try:
            ship(store, digest, ts, prefix, lambda e: None)  # opens the multiplexed connections
            for run in range(runs):
                for method in methods if run % 2 == 0 else reversed(methods):
                    for h in roots:  # cold: nothing of the image on any host
                        shutil.rmtree(roots[h], ignore_errors=True)
                        shutil.rmtree(scratch[h], ignore_errors=True)
                        scratch[h].mkdir(parents=True)
                    codec = method.split()[1] if method.startswith("sandbox") else ""
                    if codec in ("zstd", "gzip"):
                        compressed_copies(store, digest, codec, kept=method.endswith(" kept"))
                    os.sync()  # what the method before wrote is on disk: not written during this one
                    c0, t0 = tree_cpu(), time.perf_counter()
                    if codec:
                        ship(store, digest, ts, prefix, lambda e: None, compression=codec)
                    else:
                        parallel([anchors[method](h) for h in roots])
                    secs[method].append(time.perf_counter() - t0)
                    cpu[method].append(tree_cpu() - c0)
                print(
                    f"run {run}: "
                    + ", ".join(f"{m} {v[-1]:.2f}s ({cpu[m][-1]:.2f} cpu)" for m, v in secs.items()),
                    flush=True,
                )
        finally:
            for t in ts:
                t.close()
            shutil.rmtree(ctl, ignore_errors=True)
            for p, _ in store.packed():
                if p not in had:
                    p.unlink()
    med = {m: statistics.median(v) for m, v in secs.items()}
    ratio = {m: med[m] / med["rsync -a"] for m in med if "rsync -a" in med}
    mcpu = {m: statistics.median(v) for m, v in cpu.items()}
    return {
        "image": digest,
        "bytes": raw,
        "seconds": secs,
        "median_s": med,
        "over_rsync": ratio,
        "cpu_s": cpu,
        "median_cpu_s": mcpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    ap.add_argument("--images", type=Path, default=Path(common).parent / "images" if common else None)
    ap.add_argument("--image", help="the image's digest (default: the newest)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[
            "sandbox zstd",
            "sandbox zstd kept",
            "sandbox gzip",
            "sandbox none",
            "rsync -a",
            "rsync -a gcm",
            "scp",
        ],
    )
    ap.add_argument(
        "--python",
        default="python3",
        help="the hosts' interpreter for the agent (python3 from the login's PATH, as HostAgent runs it)",
    )
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("rsync") is None or not Path(SSHD).exists():
        raise SystemExit("needs root, rsync, scp and sshd (apt-get install rsync openssh-server)")
    work = Path(tempfile.mkdtemp(prefix="ship-loopback-", dir="/var/tmp"))
    try:
        rep = bench(args.images, args.image, args.runs, args.methods, work, args.python)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{rep['bytes'] / 1e6:.0f} MB to {len(HOSTS)} loopback hosts, cold, median of {args.runs}:")
    for m, s in rep["median_s"].items():
        over = f"  {rep['over_rsync'][m]:.2f}x rsync" if m in rep["over_rsync"] else ""
        print(f"  {m:<18} {s:6.2f} s{over:<14}  {rep['median_cpu_s'][m]:6.2f} cpu s")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")


if __name__ == "__main__":
    main()
