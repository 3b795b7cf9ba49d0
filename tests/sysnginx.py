"""A "system" nginx for tests: started from a config tree under a temp dir, the way a host's nginx
is set up (http includes a conf.d, a top-level stream block includes a stream.d), with one site of
its own that must keep serving whatever sandbox does. Stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.fsutil import pid_alive

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
LUA_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")
OTHER_SITE = "the host's own site\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class SystemNginx:
    root: Path
    other_port: int
    stream: bool = True
    lua: bool = True  # Debian's libnginx-mod-http-lua, which the env's balancer needs

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def include_dir(self) -> Path:
        return self.root / "conf.d"

    @property
    def stream_dir(self) -> Path:
        return self.root / "stream.d"

    @property
    def pid_file(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def settings(self, stream: bool = True) -> str:
        """The routers: part of sandbox.yaml that points sandbox at this nginx."""
        return (
            f"routers:\n  nginx: system\n  system_conf: {self.conf}\n  include_dir: {self.include_dir}\n"
            f"  pid_file: {self.pid_file}\n"
            + (f"  stream_include_dir: {self.stream_dir}\n" if stream else "")
        )

    def write(self) -> None:
        for d in ("conf.d", "stream.d", "logs", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        stream = f"\nstream {{\n    include {self.stream_dir}/*.conf;\n}}\n" if self.stream else ""
        self.conf.write_text(
            (f"load_module {STREAM_MODULE};\n" if self.stream else "")
            + ("".join(f"load_module {m};\n" for m in LUA_MODULES) if self.lua else "")
            + f"worker_processes 1;\npid {self.pid_file};\nerror_log {self.root}/logs/error.log;\n"
            "events {\n    worker_connections 1024;\n}\n"
            "http {\n"
            f"    access_log {self.root}/logs/access.log;\n"
            + "".join(
                f"    {k}_temp_path {self.root}/tmp/{k};\n"
                for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"    server {{\n        listen 127.0.0.1:{self.other_port};\n"
            f'        location / {{ return 200 "{OTHER_SITE.strip()}\\n"; }}\n    }}\n'
            f"    include {self.include_dir}/*.conf;\n"
            "}\n" + stream
        )

    def other_site(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.other_port}/", timeout=10) as r:
            body: str = r.read().decode()
            return body

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (OSError, ValueError):
            return False
        return True


@contextlib.contextmanager
def system_nginx(root: Path, stream: bool = True, lua: bool = True) -> Iterator[SystemNginx]:
    n = SystemNginx(root, free_port(), stream, lua)
    n.write()
    p = subprocess.run(
        ["nginx", "-p", str(root), "-c", str(n.conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (n.pid_file.exists() and n.pid_file.read_text().strip()):
        time.sleep(0.05)
    pid = n.pid
    try:
        yield n
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):  # exited: not waiting for PID 1 to reap it
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
