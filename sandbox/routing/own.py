"""The own-nginx router driver: an nginx process of the env's own, with its own prefix and config.

Configs are rendered by the pure renderer (render.py), checked with `nginx -t` before every
reload, and reloaded gracefully (HUP); a failed check keeps the running config and says why.
The routed backends and the mode (maintenance, read-only) are not part of what needs a reload: the
env's Lua balancer and access handler read them from a shared dict that `apply` sets through the
control socket (control.py), so a swap or a mode switch reloads nothing.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from sandbox.fsutil import atomic_write, pid_alive
from sandbox.routing.control import ControlSocket, check_backend
from sandbox.routing.nginx import NginxMaster, RouterError, is_our_nginx, nginx_binary, same_but_dynamic
from sandbox.routing.render import (
    LUA_MODULES,
    MAINTENANCE_PAGE,
    STREAM_MODULE,
    RouterConfig,
    control_socket,
    render_nginx_conf,
)


class OwnRouter(NginxMaster):
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

    def control(self) -> ControlSocket:
        return ControlSocket(control_socket(self.prefix), self.env)

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and is_our_nginx(pid, self.prefix) else None

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
        self.control().prepare()

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        """Write, check and (re)load the config when it changed beyond its backends and mode; then set
        the backends and the mode through the control socket. A failed check keeps the running config.

        A swap or a mode switch (only the backends and/or the mode change) reloads nothing: the file
        is rewritten (its backends and mode serve only after a restart, until the control socket
        sets them) and the dict updated. A reload is preceded by `nginx -t`; a first start needs no
        separate check, since nginx checks the config itself and starts nothing if it is invalid.
        """
        if cfg.ports and not Path(STREAM_MODULE).exists():
            raise RouterError(
                "the profile forwards ports, which needs nginx's stream module",
                hint="apt-get install libnginx-mod-stream",
            )
        missing = [m for m in LUA_MODULES if not Path(m).exists()]
        if missing:
            raise RouterError(
                f"the router balances with nginx's Lua module: {missing[-1]} is missing",
                hint="apt-get install libnginx-mod-http-lua",
            )
        pw = pwd.getpwnam(user)
        self.serve(cfg, render_nginx_conf(cfg, self.prefix, user, grp.getgrgid(pw.pw_gid).gr_name), user)

    def serve(self, cfg: RouterConfig, text: str, user: str = "nobody") -> None:
        """`apply` with the config already rendered (for this prefix and user): what a router host
        runs, with no template engine there."""
        for b in cfg.backends:
            check_backend(b)
        self._prepare(user)
        control = self.control()
        pid = self.pid
        if pid is None:
            control.remove_stale()
            atomic_write(self.conf, text.encode())
            p = self._nginx()
            if p.returncode != 0:
                raise RouterError(
                    f"nginx for {self.env} did not start: {p.stderr.strip()}",
                    hint=f"is {cfg.listen}:{cfg.port} free? (ss -ltnp)",
                )
        else:
            try:
                running = self.conf.read_text()
            except FileNotFoundError:
                running = None
            if same_but_dynamic(running, text):
                if running != text:
                    atomic_write(self.conf, text.encode())
            else:
                fd, name = tempfile.mkstemp(dir=self.prefix, prefix="nginx.conf.", suffix=".new")  # O_EXCL
                candidate = Path(name)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.chmod(candidate, 0o644)
                check = self._nginx("-t", "-q", conf=candidate)
                if check.returncode != 0:
                    candidate.unlink()
                    raise RouterError(
                        f"nginx rejected the config of router {self.env}: {check.stderr.strip()}",
                        hint="the running router keeps its previous config",
                    )
                os.replace(candidate, self.conf)
                self.signal_reload(pid)
        control.serve(cfg.backends, cfg.maintenance, cfg.readonly)

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # graceful: finish in-flight requests
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and pid_alive(pid):
                time.sleep(0.05)
            if pid_alive(pid) and is_our_nginx(pid, self.prefix):  # still ours, not a new process
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.stop()
        self.control().remove_stale()  # it may live outside the prefix (a deep workspace)
        if self.prefix.exists():
            shutil.rmtree(self.prefix)
