"""The router: a real nginx in front of an env's instances.

Two kinds share one set of template pieces (http.j2: the env's upstream and
server; stream.j2: its forwarded ports): `Router`, an nginx process of the env's
own (this module), and `SystemRouter`, include files in the host's nginx
(sysrouter.py). Configs are rendered by pure functions, checked with `nginx -t`
before every reload, and reloaded gracefully (HUP); a failed check keeps the
running config and says why.
"""

from __future__ import annotations

import contextlib
import functools
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
from typing import Any

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


@functools.cache
def _jinja() -> Any:
    from jinja2 import (  # only when a config is written
        Environment,
        FileSystemBytecodeCache,
        FileSystemLoader,
        StrictUndefined,
    )

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sandbox" / "jinja"
    cache.mkdir(parents=True, exist_ok=True)
    return Environment(
        bytecode_cache=FileSystemBytecodeCache(str(cache)),  # compiled once, not on every `up`
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def _variables(cfg: RouterConfig, prefix: Path) -> dict[str, Any]:
    """What the shared pieces (http.j2: upstream + server, stream.j2: ports) are rendered from.

    Every name a piece defines carries the env, so that several envs can share one nginx.
    """
    ident = cfg.env.replace("-", "_")
    return {
        "env": cfg.env,
        "ident": ident,
        "prefix": str(prefix),
        "upstream": "app_" + ident,
        "maintenance_var": "sandbox_maintenance_" + ident,
        "backends": cfg.backends,
        "listen": cfg.listen,
        "port": cfg.port,
        "server_name": cfg.server_name,
        "maintenance": cfg.maintenance,
        "maintenance_page": MAINTENANCE_PAGE.strip().replace("\\", "\\\\").replace('"', '\\"'),
        "readonly": cfg.readonly,
        "ports": cfg.ports,
    }


def render_nginx_conf(cfg: RouterConfig, prefix: Path, user: str = "nobody", group: str = "nogroup") -> str:
    """The whole nginx.conf of a router of its own (pure)."""
    text: str = (
        _jinja()
        .get_template("nginx.conf.j2")
        .render(
            **_variables(cfg, prefix),
            user=user,
            group=group,
            drain_timeout=max(1, int(cfg.drain_timeout)),
            stream_module=STREAM_MODULE if cfg.ports else "",
        )
    )
    return text


def render_include(cfg: RouterConfig, prefix: Path, part: str, workspace: str) -> str:
    """The include file of one env for a system nginx (pure): `part` is "http" or "stream"."""
    text: str = (
        _jinja().get_template("include.j2").render(**_variables(cfg, prefix), part=part, workspace=workspace)
    )
    return text


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


class NginxMaster:
    """What both kinds share: a master process whose workers are replaced by a reload."""

    env: str

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def error_log(self) -> Path | str:
        raise NotImplementedError

    def signal_reload(self, master: int) -> None:
        """HUP the master and wait until the new config serves."""
        before = set(self._workers(master, shutting_down=False))
        os.kill(master, signal.SIGHUP)
        self._wait_reloaded(master, before)

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
            hint=f"see {self.error_log}",
        )

    def draining_workers(self) -> list[int]:
        """Pids of the old workers still finishing requests after a reload."""
        master = self.pid
        return [] if master is None else self._workers(master, shutting_down=True)

    @staticmethod
    def _workers(master: int, shutting_down: bool) -> list[int]:
        """The master's worker processes, old (shutting down) or current.

        Polled every few ms during a reload and a drain, so it reads the master's own
        children list rather than every process in /proc (a busy host has thousands).
        """
        try:
            children = [int(x) for x in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
        except (OSError, ValueError):
            children = []
        out = []
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"worker process" in cmdline and (b"shutting down" in cmdline) == shutting_down:
                out.append(pid)
        return out

    def drain(self, timeout: float) -> bool:
        """Wait until no old worker is left (in-flight requests done); False if `timeout` passed."""
        deadline = time.monotonic() + timeout
        while self.draining_workers():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def nginx_binary() -> str:
    path = shutil.which("nginx")
    if path is None:
        raise RouterError("nginx is not installed", hint="apt-get install nginx-light")
    return path


class Router(NginxMaster):
    """An nginx process of the env's own, with its own prefix and config."""

    def __init__(self, root: Path, env: str) -> None:
        self.prefix = root / env
        self.env = env

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def error_log(self) -> Path | str:
        return self.prefix / "logs" / "error.log"

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _nginx(self, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [nginx_binary(), "-p", str(self.prefix), "-c", str(conf or self.conf), *args],
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
        """Write, check and (re)load the config; a failed check keeps the running one.

        A reload is preceded by `nginx -t`; a first start needs no separate check,
        since nginx checks the config itself and starts nothing if it is invalid.
        """
        if cfg.ports and not Path(STREAM_MODULE).exists():
            raise RouterError(
                "the profile forwards ports, which needs nginx's stream module",
                hint="apt-get install libnginx-mod-stream",
            )
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
        self.signal_reload(pid)

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
