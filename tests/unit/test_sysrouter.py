"""Routers as include files in a system nginx (`routers.nginx: system`): against a real nginx started
from a config tree under tmp (tests/sysnginx.py), in front of a tiny local backend."""

from __future__ import annotations

import dataclasses
import http.client
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sandbox.routing import PortForward, RouterConfig, RouterError, router_for, router_kind
from sandbox.routing import system as system_mod
from sandbox.routing.render import STREAM_MODULE
from sandbox.routing.system import SystemRouter
from sandbox.settings import Routers
from tests.sysnginx import OTHER_SITE, SystemNginx, free_port, system_nginx

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or not Path(STREAM_MODULE).exists(),
    reason="nginx with the stream module is installed by ./install.sh",
)
WS = "/ws/of/this/test"


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"backend\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[SystemNginx]:
    with system_nginx(tmp_path / "etc") as n:
        yield n


def settings(n: SystemNginx, stream: bool = True) -> Routers:
    return Routers(
        nginx="system",
        system_conf=str(n.conf),
        include_dir=str(n.include_dir),
        stream_include_dir=str(n.stream_dir) if stream else None,
        pid_file=str(n.pid_file),
    )


def get(port: int, path: str = "/") -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def cfg(backend: int, port: int, **kw: object) -> RouterConfig:
    return dataclasses.replace(RouterConfig("prod", "127.0.0.1", port, "_", (f"127.0.0.1:{backend}",)), **kw)


def test_an_env_is_an_include_file_served_by_the_system_nginx(
    nginx: SystemNginx, backend: int, tmp_path: Path
) -> None:
    r = SystemRouter(settings(nginx), tmp_path / "routers", "prod", WS)
    port = free_port()
    master = nginx.pid
    r.apply(cfg(backend, port))
    assert r.http_file == nginx.include_dir / "sandbox-prod.conf"
    assert f"for env prod of workspace {WS};" in r.http_file.read_text().splitlines()[0]
    assert not (nginx.stream_dir / "sandbox-prod.conf").exists()  # no ports: no stream file
    assert get(port) == (200, "backend\n")
    assert nginx.other_site() == OTHER_SITE
    assert r.pid == master and nginx.pid == master  # reloaded, not restarted
    r.apply(cfg(backend, port, maintenance=()))  # maintenance mode: everyone gets the page
    status, body = get(port)
    assert status == 503 and "We are updating" in body
    r.apply(cfg(backend, port, readonly=True))
    assert get(port) == (200, "backend\n")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/", body=b"x")
    assert c.getresponse().status == 503
    c.close()
    r.remove()
    assert not r.http_file.exists() and not r.prefix.exists()
    with pytest.raises(OSError):
        get(port)
    assert nginx.running() and nginx.pid == master and nginx.other_site() == OTHER_SITE


def test_mode_switches_in_a_system_nginx_reload_nothing(
    nginx: SystemNginx, backend: int, tmp_path: Path
) -> None:
    """Maintenance and read-only are set through the env's control socket, as in an nginx of its own;
    the include file carries the mode as the dict's initial value (for a restart of the system nginx)."""
    r = SystemRouter(settings(nginx), tmp_path / "routers", "prod", WS)
    port = free_port()
    r.apply(cfg(backend, port))
    before = r._workers(nginx.pid, shutting_down=False)

    def post() -> tuple[int, str | None]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("POST", "/", body=b"x")
            resp = c.getresponse()
            resp.read()
            return resp.status, resp.getheader("Retry-After")
        finally:
            c.close()

    r.apply(cfg(backend, port, maintenance=("10.0.0.0/8",)))
    status, body = get(port)
    assert status == 503 and "We are updating" in body and post() == (503, "60")
    assert 'dict:add("mode", "maintenance on allow 10.0.0.0/8 readonly off")' in r.http_file.read_text()
    r.apply(cfg(backend, port, maintenance=("127.0.0.1",), readonly=True))
    assert get(port) == (200, "backend\n") and post() == (503, "30")
    r.apply(cfg(backend, port))
    assert get(port) == (200, "backend\n")
    assert 'dict:add("mode", "maintenance off readonly off")' in r.http_file.read_text()
    assert r._workers(nginx.pid, shutting_down=False) == before and not r.draining_workers()
    assert nginx.other_site() == OTHER_SITE
    r.remove()


def test_a_rejected_config_restores_the_previous_file_and_keeps_serving(
    nginx: SystemNginx, backend: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = SystemRouter(settings(nginx), tmp_path / "routers", "prod", WS)
    port = free_port()
    r.apply(cfg(backend, port))
    before = r.http_file.read_text()
    # a value that is not an address never reaches a file: refused before templating
    with pytest.raises(RouterError) as e:
        r.apply(cfg(backend, port, maintenance=("not-an-address",)))
    assert "maintenance[0]" in e.value.message and "not-an-address" in e.value.message
    assert r.http_file.read_text() == before
    # a config that passes our checks but not nginx's: the previous file comes back
    real = system_mod.render_include

    def broken(*args: object, **kwargs: object) -> str:
        return real(*args, **kwargs).replace("keepalive 32;", "keepalive nonsense;")  # type: ignore[arg-type]

    monkeypatch.setattr(system_mod, "render_include", broken)
    with pytest.raises(RouterError) as e:
        r.apply(cfg(backend, port, maintenance=("10.0.0.0/8",)))
    assert "rejected the config of router prod" in e.value.message and "keepalive" in e.value.message
    assert "keeps its previous config" in (e.value.hint or "")
    assert r.http_file.read_text() == before
    assert get(port) == (200, "backend\n") and nginx.other_site() == OTHER_SITE
    # a new env whose first config is rejected leaves no file behind
    other = SystemRouter(settings(nginx), tmp_path / "routers", "dev-1", WS)
    with pytest.raises(RouterError):
        other.apply(cfg(backend, free_port(), env="dev-1"))
    assert not other.http_file.exists()
    monkeypatch.undo()
    r.remove()


def test_ports_go_to_the_stream_include_dir(nginx: SystemNginx, backend: int, tmp_path: Path) -> None:
    r = SystemRouter(settings(nginx), tmp_path / "routers", "prod", WS)
    fwd = free_port()
    r.apply(
        cfg(backend, free_port(), ports=(PortForward("127.0.0.1", fwd, "tcp", (f"127.0.0.1:{backend}",)),))
    )
    assert r.stream_file is not None and "proxy_pass port_prod_tcp_" in r.stream_file.read_text()
    assert get(fwd) == (200, "backend\n")  # plain TCP through the stream block
    r.apply(cfg(backend, free_port()))  # the profile no longer forwards ports: its stream file goes
    assert not r.stream_file.exists()
    r.remove()


def test_ports_without_a_stream_include_explain_the_one_time_line(tmp_path: Path, backend: int) -> None:
    with system_nginx(tmp_path / "etc", stream=False) as n:
        ports = (PortForward("127.0.0.1", free_port(), "tcp", (f"127.0.0.1:{backend}",)),)
        r = SystemRouter(settings(n, stream=False), tmp_path / "routers", "prod", WS)
        with pytest.raises(RouterError) as e:
            r.apply(cfg(backend, free_port(), ports=ports))
        assert "stream include dir" in e.value.message and "stream { include" in (e.value.hint or "")
        assert not r.http_file.exists()
        # a stream dir sandbox.yaml names but the system config does not include
        r = SystemRouter(settings(n), tmp_path / "routers", "prod", WS)
        with pytest.raises(RouterError) as e:
            r.apply(cfg(backend, free_port(), ports=ports))
        assert f"does not include {n.stream_dir}/sandbox-prod.conf" in e.value.message
        assert f"stream {{ include {n.stream_dir}/*.conf; }}" in (e.value.hint or "")
        assert not r.http_file.exists() and not (n.stream_dir / "sandbox-prod.conf").exists()
        assert n.other_site() == OTHER_SITE


def test_another_workspaces_file_is_left_alone(nginx: SystemNginx, backend: int, tmp_path: Path) -> None:
    theirs = SystemRouter(settings(nginx), tmp_path / "a", "prod", "/elsewhere")
    port = free_port()
    theirs.apply(cfg(backend, port))
    ours = SystemRouter(settings(nginx), tmp_path / "b", "prod", WS)
    with pytest.raises(RouterError) as e:
        ours.apply(cfg(backend, free_port()))
    assert "not this workspace's router" in e.value.message
    ours.remove()  # takes out nothing of theirs
    assert theirs.http_file.exists() and get(port) == (200, "backend\n")
    theirs.remove()


def test_a_stopped_system_nginx_is_reported_with_a_hint(tmp_path: Path, backend: int) -> None:
    n = SystemNginx(tmp_path / "etc", free_port())
    n.write()  # never started
    r = SystemRouter(settings(n), tmp_path / "routers", "prod", WS)
    with pytest.raises(RouterError) as e:
        r.apply(cfg(backend, free_port()))
    assert "system nginx is not running" in e.value.message and "routers.nginx: own" in (e.value.hint or "")


def test_auto_picks_the_system_nginx_only_while_it_runs(tmp_path: Path) -> None:
    n = SystemNginx(tmp_path / "etc", free_port())
    n.write()
    auto = dataclasses.replace(settings(n), nginx="auto")
    assert router_kind(auto) == "own"
    with system_nginx(tmp_path / "etc2") as running:
        auto = dataclasses.replace(settings(running), nginx="auto")
        assert router_kind(auto) == "system"
        assert isinstance(router_for(auto, tmp_path, "prod", "system", WS), SystemRouter)
    assert router_kind(Routers()) == "own"


def test_a_port_taken_by_someone_else_is_refused_before_writing(
    nginx: SystemNginx, backend: int, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = SystemRouter(settings(nginx), tmp_path / "routers", "prod", WS)
        with pytest.raises(RouterError) as e:
            r.apply(cfg(backend, s.getsockname()[1]))
        assert "already taken" in e.value.message and not r.http_file.exists()


def test_a_swap_of_backends_in_a_system_nginx_reloads_nothing(
    nginx: SystemNginx, backend: int, tmp_path: Path
) -> None:
    r = SystemRouter(settings(nginx), tmp_path / "routers", "prod", WS)
    port = free_port()
    r.apply(cfg(backend, port))
    workers = r._workers(nginx.pid, shutting_down=False)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: a request routed to it would fail
    r.apply(cfg(backend, port, backends=(dead, f"127.0.0.1:{backend}")))
    r.apply(cfg(backend, port, backends=(f"127.0.0.1:{backend}",)))
    assert r._workers(nginx.pid, shutting_down=False) == workers and not r.draining_workers()
    assert r.control().state().routed == (f"127.0.0.1:{backend}",)
    assert f'"127.0.0.1:{backend}"' in r.http_file.read_text()  # the file follows, for a restart
    assert get(port) == (200, "backend\n") and nginx.other_site() == OTHER_SITE
    assert r.drain(5, dead) is True
    sock = r.control().path
    assert sock.parent.stat().st_mode & 0o777 == 0o700
    r.remove()
    assert not sock.exists() and nginx.running()


def test_a_system_nginx_without_the_lua_module_is_explained(tmp_path: Path, backend: int) -> None:
    with system_nginx(tmp_path / "etc", lua=False) as n:
        r = SystemRouter(settings(n), tmp_path / "routers", "prod", WS)
        with pytest.raises(RouterError) as e:
            r.apply(cfg(backend, free_port()))
        assert "does not load the Lua module" in e.value.message
        assert "apt-get install libnginx-mod-http-lua" in (e.value.hint or "")
        assert "load_module modules/ngx_http_lua_module.so;" in (e.value.hint or "")
        assert not r.http_file.exists() and n.other_site() == OTHER_SITE
