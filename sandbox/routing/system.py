"""A router as include files in the host's nginx (`routers.nginx: system` in sandbox.yaml).

Per env, one file in the system config's http include dir (the env's upstream and
server, from the same http.j2 piece an nginx of its own uses) and, when the profile
forwards ports, one in a stream include dir (stream.j2), which the system config
includes once from a top-level `stream { include DIR/*.conf; }`. Before every
reload the WHOLE system config is checked (`nginx -T -c SYSTEM_CONF`, which also
shows that our files really are included); a failed check puts the previous files
back, so the running system nginx keeps its config. The reload is a HUP to the pid
in the system nginx's pid file, and returns once the new workers serve.

The env's upstream is a Lua balancer (the system nginx must load Debian's
libnginx-mod-http-lua) reading the routed backends from a shared dict, which sandbox
sets through the env's control socket (a unix socket in a root-only directory under the
env's router dir), and the env's mode (maintenance, read-only) from the same dict: a swap or a
mode switch rewrites the include file's initial values but reloads nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sandbox.fsutil import atomic_write, pid_alive
from sandbox.routing.control import ControlSocket, check_backend
from sandbox.routing.nginx import (
    NginxMaster,
    RouterError,
    is_our_nginx,
    nginx_binary,
    port_in_use,
    same_but_dynamic,
)
from sandbox.routing.render import RouterConfig, control_socket, render_include
from sandbox.settings import Routers

FileSet = dict[Path, str | None]  # path → contents, None: absent


class SystemRouter(NginxMaster):
    def __init__(self, s: Routers, root: Path, env: str, workspace: str) -> None:
        self.settings = s
        self.prefix = root / env  # the env's access log
        self.env = env
        self.workspace = workspace
        self.http_file = Path(s.include_dir) / f"sandbox-{env}.conf"
        stream_dir = s.stream_include_dir
        self.stream_file = Path(stream_dir) / f"sandbox-{env}.conf" if stream_dir else None

    @property
    def pid(self) -> int | None:
        return system_nginx_pid(self.settings)

    @property
    def error_log(self) -> str:
        return f"the system nginx's error log (error_log in {self.settings.system_conf})"

    def control(self) -> ControlSocket:
        return ControlSocket(control_socket(self.prefix), self.env)

    def files(self) -> list[Path]:
        return [f for f in (self.http_file, self.stream_file) if f is not None]

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        """Write the env's include files, check the whole system config, reload; a failed check
        restores the previous files and keeps the running config."""
        del user  # the system nginx runs its workers as its own user
        s = self.settings
        master = self.pid
        if master is None:
            raise RouterError(
                f"the system nginx is not running (no live pid in {s.pid_file})",
                hint=f"start it (nginx -c {s.system_conf}), or set routers.nginx: own in sandbox.yaml",
            )
        if cfg.ports and self.stream_file is None:
            raise RouterError(
                "the profile forwards ports, which a system nginx serves from a stream include dir",
                hint=f"add `stream {{ include /etc/nginx/stream.d/*.conf; }}` once to {s.system_conf} "
                "(top level) and set routers.stream_include_dir: /etc/nginx/stream.d in sandbox.yaml",
            )
        for b in cfg.backends:
            check_backend(b)
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        control = self.control()
        control.prepare()
        want: FileSet = {self.http_file: render_include(cfg, self.prefix, "http", self.workspace)}
        if self.stream_file is not None:
            want[self.stream_file] = (
                render_include(cfg, self.prefix, "stream", self.workspace) if cfg.ports else None
            )
        with self._locked():
            old = self._read()
            if all(same_but_dynamic(old[f], text) for f, text in want.items()):
                # nothing but the backends/mode changed: no check, no reload; the control socket sets them
                if old != want:
                    self._write(want)
                control.serve(cfg.backends, cfg.maintenance, cfg.readonly)
                return
            if old[self.http_file] is None:
                if port_in_use(cfg.port, cfg.listen):
                    raise RouterError(
                        f"{cfg.listen}:{cfg.port} is already taken", hint="ss -ltnp; or router.port: auto"
                    )
                control.remove_stale()
            self._write(want)
            problem = self._check([f for f, text in want.items() if text is not None])
            if problem is not None:
                self._write(old)
                raise RouterError(
                    f"the system nginx rejected the config of router {self.env}: {problem[0]}",
                    hint=problem[1],
                )
            try:
                self.signal_reload(master)
            except RouterError:
                self._write(old)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(master, signal.SIGHUP)
                raise
            control.serve(cfg.backends, cfg.maintenance, cfg.readonly)

    def stop(self, timeout: float = 10.0) -> None:
        """Take the env out of the system nginx (its files removed, then a reload)."""
        del timeout  # the system nginx keeps running; only this env's files go
        with self._locked():
            try:
                old = self._read()
            except RouterError:
                return  # not this workspace's files: nothing of ours to take out
            if all(text is None for text in old.values()):
                return
            self._write(dict.fromkeys(old))
            master = self.pid
            if master is not None:
                self.signal_reload(master)

    def remove(self) -> None:
        self.stop()
        self.control().remove_stale()  # it may live outside the prefix (a deep workspace)
        if self.prefix.exists():
            import shutil

            shutil.rmtree(self.prefix)

    # -- helpers -----------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time for the shared system config (every workspace locks the same dir)."""
        include_dir = Path(self.settings.include_dir)
        if not include_dir.is_dir():
            raise RouterError(
                f"{include_dir} (routers.include_dir) does not exist",
                hint=f"create it and add `include {include_dir}/*.conf;` to the http block of "
                f"{self.settings.system_conf}",
            )
        fd = os.open(include_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> FileSet:
        out: FileSet = {}
        for f in self.files():
            try:
                text = f.read_text()
            except FileNotFoundError:
                out[f] = None
                continue
            first = text.split("\n", 1)[0]
            if f"of workspace {self.workspace};" not in first:
                raise RouterError(
                    f"{f} is not this workspace's router for {self.env}: {first.lstrip('# ')[:200]}",
                    hint="another workspace (or a person) uses that name; pick another env name",
                )
            out[f] = text
        return out

    @staticmethod
    def _write(files: FileSet) -> None:
        for f, text in files.items():
            if text is None:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            else:
                atomic_write(f, text.encode())

    def _check(self, ours: list[Path]) -> tuple[str, str] | None:
        """(problem, hint) when `nginx -T` rejects the system config or does not include our files."""
        conf = self.settings.system_conf
        p = subprocess.run(
            [nginx_binary(), "-T", "-q", "-c", conf], capture_output=True, text=True, check=False, timeout=60
        )
        if p.returncode != 0:
            if re.search(r'unknown directive "(lua_shared_dict|\w+_by_lua_block)"', p.stderr):
                return (
                    f"the system nginx does not load the Lua module that the env's balancer needs ({conf})",
                    "apt-get install libnginx-mod-http-lua (Debian enables it in modules-enabled/); "
                    "or add `load_module modules/ndk_http_module.so;` then "
                    f"`load_module modules/ngx_http_lua_module.so;` at the top of {conf}; then reload it",
                )
            return p.stderr.strip()[-600:], "the running system nginx keeps its previous config"
        included = {
            Path(line[len("# configuration file ") : -1]).resolve()
            for line in p.stdout.splitlines()
            if line.startswith("# configuration file ") and line.endswith(":")
        }
        for f in ours:
            if f.resolve() not in included:
                if f == self.stream_file:
                    hint = f"add `stream {{ include {f.parent}/*.conf; }}` once to {conf} (top level)"
                else:
                    hint = f"add `include {f.parent}/*.conf;` once to the http block of {conf}"
                return f"{conf} does not include {f}", hint
        return None


def system_nginx_pid(s: Routers) -> int | None:
    """The system nginx's master pid, when its pid file names a live process."""
    try:
        pid = int(Path(s.pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and is_our_nginx(pid) else None
