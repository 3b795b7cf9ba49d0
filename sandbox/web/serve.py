"""`sandbox serve`: the root side (state DB, job worker, schedules loop, RPC socket) and the HTTP
side, a child process of the unprivileged system user `sandbox-web` that only talks to the RPC
socket.

Root binds the listening socket (so a port below 1024 works) and hands it to the child as an
inherited fd. Any address but loopback is refused unless TLS is configured (cert and key) or the
operator says a TLS proxy is in front (--behind-tls-proxy).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.settings import load_settings
from sandbox.state import StateDB
from sandbox.web import rpcserver
from sandbox.web.jobs import Jobs
from sandbox.web.rootside import RootSide
from sandbox.web.scheduler import Scheduler
from sandbox.web.views import WorkspaceViews
from sandbox.web.worker import MAX_THREADS, Worker, WorkspaceRunner, join
from sandbox.workspace import Workspace

WEB_USER = "sandbox-web"
RUN_DIR = Path("/run/sandbox-web")


@dataclass
class ServeOptions:
    listen: str = "127.0.0.1:8700"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    behind_tls_proxy: bool = False
    user: str = WEB_USER
    run_dir: Path = RUN_DIR
    workers: int = 2


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8700', '[::1]:8700' -> (host, port); SandboxError if malformed."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        n = int(port)
    except ValueError:
        n = -1
    if not sep or not 1 <= n <= 65535:
        raise SandboxError(f"invalid listen address {text[:80]!r}", hint="ADDRESS:PORT, e.g. 127.0.0.1:8700")
    return host, n


def check_exposure(host: str, tls: bool, behind_proxy: bool) -> None:
    """Plain HTTP only on loopback: sessions and passwords would cross the network in clear text."""
    if ipaddress.ip_address(host).is_loopback or tls or behind_proxy:
        return
    raise SandboxError(
        f"refusing to serve plain HTTP on {host}, which is not a loopback address",
        hint="give --tls-cert and --tls-key, or --behind-tls-proxy if a TLS proxy is in front",
    )


def ensure_user(name: str) -> tuple[int, int]:
    """The uid and gid of system user `name`, made with useradd --system if missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                nologin,
                name,
            ],
            check=True,
            capture_output=True,
        )
        pw = pwd.getpwnam(name)
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise SandboxError(f"user {name} is root or in group root", hint="use an unprivileged system user")
    return pw.pw_uid, pw.pw_gid


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise SandboxError(f"cannot listen on {host}:{port}: {e.strerror}", hint="another port?") from e
    s.listen(128)
    s.set_inheritable(True)
    return s


def _tls_copy(opts: ServeOptions, uid: int, gid: int) -> Path | None:
    """The cert and key, copied where only the HTTP user can read them (it terminates TLS)."""
    if opts.tls_cert is None or opts.tls_key is None:
        return None
    d = opts.run_dir / "tls"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o500)
    for src, name in ((opts.tls_cert, "cert.pem"), (opts.tls_key, "key.pem")):
        data = Path(src).read_bytes()
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chown(d / name, uid, gid)
    os.chown(d, uid, gid)
    return d


def serve(
    ws: Workspace,
    opts: ServeOptions,
    ready: threading.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, or until the HTTP child ends; its exit status."""
    host, port = parse_listen(opts.listen)
    tls = opts.tls_cert is not None and opts.tls_key is not None
    if (opts.tls_cert is None) != (opts.tls_key is None):
        raise SandboxError("--tls-cert and --tls-key go together")
    check_exposure(host, tls, opts.behind_tls_proxy)
    if not 1 <= opts.workers <= MAX_THREADS:
        raise SandboxError(f"invalid --workers {opts.workers}", hint=f"1 to {MAX_THREADS}")
    if os.geteuid() != 0:
        raise SandboxError("sandbox serve runs as root", hint="sudo sandbox serve")
    settings = load_settings(ws)
    state = StateDB.for_workspace(ws)
    interrupted = Jobs(state).interrupt_running()
    for job in interrupted:
        print(f"job #{job.id} ({job.kind} {job.env}) was interrupted by the last stop", file=sys.stderr)
    uid, gid = ensure_user(opts.user)
    rpcserver.socket_dir(opts.run_dir, gid)
    sock_path = opts.run_dir / "rpc.sock"
    root = RootSide(state, WorkspaceViews(ws), hooks=lambda: load_settings(ws).hooks)
    del settings
    listener = bind(host, port)
    tls_dir = _tls_copy(opts, uid, gid)
    server, _ = rpcserver.start(sock_path, root, gid)
    stop = threading.Event()
    workers = Worker(Jobs(state), root.views, WorkspaceRunner(ws)).start(stop, opts.workers)
    scheduler = threading.Thread(
        target=Scheduler(Jobs(state), lambda: load_settings(ws).schedules).loop, args=(stop,), daemon=True
    )
    scheduler.start()
    import sandbox

    argv = [
        sys.executable,
        "-m",
        "sandbox.web.httpmain",
        "--socket",
        str(sock_path),
        "--fd",
        str(listener.fileno()),
        "--parent",
        str(os.getpid()),
    ]
    if tls_dir is not None:
        argv += ["--tls-dir", str(tls_dir), "--secure-cookies"]
    elif opts.behind_tls_proxy:
        argv += ["--secure-cookies"]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(sandbox.__file__).resolve().parent.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }
    children: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        for c in children:
            c.terminate()

    # before the child starts: a signal in between must not leave it serving without a root side
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    stopped = False
    try:
        child = subprocess.Popen(
            argv, user=uid, group=gid, extra_groups=[], env=env, cwd="/", pass_fds=(listener.fileno(),)
        )
        children.append(child)
        if stop.is_set():
            child.terminate()
        listener.close()
        url = f"http{'s' if tls else ''}://{opts.listen}"
        print(f"sandbox serve: {url} (HTTP side pid {child.pid})", file=sys.stderr)
        if on_ready is not None:
            on_ready({"url": url, "pid": os.getpid(), "http_pid": child.pid, "workers": opts.workers})
        if ready is not None:
            ready.set()
        code = child.wait()
        stopped = stop.is_set()  # asked to stop, or the child ended by itself
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        stop.set()
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        listener.close()
        rpcserver.stop(server, sock_path)
        root.feed.stop()
        if tls_dir is not None:  # the key's copy goes with the process that needed it
            shutil.rmtree(tls_dir, ignore_errors=True)
        scheduler.join(timeout=5)
        left = join(workers, timeout=30)
        if left:
            print(
                f"sandbox serve: {len(left)} job(s) still running; interrupted at the next start",
                file=sys.stderr,
            )
    if not stopped:
        print(f"sandbox serve: the HTTP side ended with status {code}", file=sys.stderr)
        return code or 1
    return 0
