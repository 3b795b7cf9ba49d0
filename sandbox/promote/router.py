"""The router: a real nginx in front of an env's instances, one process per env.

The config is rendered by a pure function from a template, checked with
`nginx -t` before every start or reload, and reloaded gracefully (HUP); a
failed check keeps the running config and says why.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.fsutil import atomic_write, pid_alive

TEMPLATES = Path(__file__).parent / "templates"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"  # Debian's libnginx-mod-stream
MAINTENANCE_PAGE = (
    "<!doctype html><title>Back soon</title><h1>We are updating</h1>"
    "<p>This site is being updated and will be back in a moment.</p>\n"
)


class RouterError(SandboxError):
    """nginx refused the config or could not start."""


@dataclass(frozen=True)
class PortForward:
    """A profile port: address:host on the host → container port of every routed instance."""

    address: str
    host: int
    proto: str
    backends: tuple[str, ...]


@dataclass(frozen=True)
class RouterConfig:
    env: str
    listen: str
    port: int
    server_name: str
    backends: tuple[str, ...]  # "ADDR:PORT"
    drain_timeout: float = 30.0
    maintenance: tuple[str, ...] | None = None  # None: off; else the addresses that still get through
    readonly: bool = False
    ports: tuple[PortForward, ...] = ()


def render_nginx_conf(cfg: RouterConfig, prefix: Path, user: str = "nobody", group: str = "nogroup") -> str:
    """The nginx.conf for a router (pure)."""
    from jinja2 import (  # only when a config is written
        Environment,
        FileSystemBytecodeCache,
        FileSystemLoader,
        StrictUndefined,
    )

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sandbox" / "jinja"
    cache.mkdir(parents=True, exist_ok=True)
    jenv = Environment(
        bytecode_cache=FileSystemBytecodeCache(str(cache)),  # compiled once, not on every `up`
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    return jenv.get_template("nginx.conf.j2").render(
        env=cfg.env,
        prefix=str(prefix),
        user=user,
        group=group,
        upstream="app_" + cfg.env.replace("-", "_"),
        backends=cfg.backends,
        listen=cfg.listen,
        port=cfg.port,
        server_name=cfg.server_name,
        drain_timeout=max(1, int(cfg.drain_timeout)),
        maintenance=cfg.maintenance,
        maintenance_page=MAINTENANCE_PAGE.strip().replace("\\", "\\\\").replace('"', '\\"'),
        readonly=cfg.readonly,
        ports=cfg.ports,
        stream_module=STREAM_MODULE if cfg.ports else "",
    )


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


class Router:
    def __init__(self, root: Path, env: str) -> None:
        self.prefix = root / env
        self.env = env

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _nginx(self, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess[str]:
        if shutil.which("nginx") is None:
            raise RouterError("nginx is not installed", hint="apt-get install nginx-light")
        return subprocess.run(
            ["nginx", "-p", str(self.prefix), "-c", str(conf or self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _prepare(self, user: str) -> None:
        pw = pwd.getpwnam(user)
        (self.prefix / "html").mkdir(parents=True, exist_ok=True)
        page = self.prefix / "html" / "maintenance.html"
        if not page.exists():
            page.write_text(MAINTENANCE_PAGE)
        for d in ("logs", "tmp", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        for d in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            os.chown(self.prefix / d, pw.pw_uid, pw.pw_gid)

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        if cfg.ports and not Path(STREAM_MODULE).exists():
            raise RouterError(
                "the profile forwards ports, which needs nginx's stream module",
                hint="apt-get install libnginx-mod-stream",
            )
        """Write, check and (re)load the config; a failed check keeps the running one.

        A reload is preceded by `nginx -t`; a first start needs no separate check,
        since nginx checks the config itself and starts nothing if it is invalid.
        """
        self._prepare(user)
        pw = pwd.getpwnam(user)
        text = render_nginx_conf(cfg, self.prefix, user, grp.getgrgid(pw.pw_gid).gr_name)
        pid = self.pid
        if pid is None:
            atomic_write(self.conf, text.encode())
            p = self._nginx()
            if p.returncode != 0:
                raise RouterError(
                    f"nginx for {self.env} did not start: {p.stderr.strip()}",
                    hint=f"is {cfg.listen}:{cfg.port} free? (ss -ltnp)",
                )
            return
        candidate = self.prefix / "nginx.conf.new"
        candidate.write_text(text)
        check = self._nginx("-t", "-q", conf=candidate)
        if check.returncode != 0:
            candidate.unlink()
            raise RouterError(
                f"nginx rejected the config of router {self.env}: {check.stderr.strip()}",
                hint="the running router keeps its previous config",
            )
        os.replace(candidate, self.conf)
        before = set(self._workers(pid, shutting_down=False))
        os.kill(pid, signal.SIGHUP)
        self._wait_reloaded(pid, before)

    def _wait_reloaded(self, master: int, before: set[int], timeout: float = 10.0) -> None:
        """Wait until the new config serves: new workers up, every old one shutting down.

        Until then an old worker may still accept connections with the old config, so
        the caller must not, say, stop an instance it has just taken out.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = set(self._workers(master, shutting_down=False))
            if live and not (live & before):
                return
            time.sleep(0.01)
        raise RouterError(
            f"nginx of {self.env} did not apply its new config within {timeout:.0f}s",
            hint=f"see {self.prefix / 'logs' / 'error.log'}",
        )

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # graceful: finish in-flight requests
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and pid_alive(pid):
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.stop()
        if self.prefix.exists():
            shutil.rmtree(self.prefix)

    def draining_workers(self) -> list[int]:
        """Pids of this router's old workers still finishing requests after a reload."""
        master = self.pid
        return [] if master is None else self._workers(master, shutting_down=True)

    def _workers(self, master: int, shutting_down: bool) -> list[int]:
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid != master:
                    continue
                cmdline = (proc / "cmdline").read_bytes()
                if b"worker process" in cmdline and (b"shutting down" in cmdline) == shutting_down:
                    out.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
        return out

    def drain(self, timeout: float) -> bool:
        """Wait until no old worker is left (in-flight requests done); False if `timeout` passed."""
        deadline = time.monotonic() + timeout
        while self.draining_workers():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
