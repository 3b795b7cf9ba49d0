"""The env's Lua balancer behind a real nginx of its own (OwnRouter) on 127.0.0.1: a swap of backends
reloads nothing (same workers), a keep-alive client that never retries sees no error across swaps,
the control socket is root's only and refuses anything but ADDR:PORT lines, and drain waits for the
requests in flight to an unrouted backend. Every wait is bounded; nginx is stopped by its pid."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sandbox.routing import PortForward, RouterConfig, RouterError
from sandbox.routing.control import ControlSocket, _UnixConnection, check_backend
from sandbox.routing.own import OwnRouter
from sandbox.routing.render import LUA_MODULES, STREAM_MODULE

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or not all(Path(m).exists() for m in LUA_MODULES),
    reason="nginx with the Lua module is installed by ./install.sh (libnginx-mod-http-lua)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Named(BaseHTTPRequestHandler):
    """Answers with the server's name; /slow waits until the test's event is set."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        if self.path == "/slow":
            self.server.entered.set()  # type: ignore[attr-defined]
            self.server.release.wait(20)  # type: ignore[attr-defined]
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()


@dataclasses.dataclass
class Backends:
    servers: list[ThreadingHTTPServer]

    def addr(self, i: int) -> str:
        return f"127.0.0.1:{self.servers[i].server_address[1]}"


@contextlib.contextmanager
def named_servers() -> Iterator[Backends]:
    """Three local backends answering "a", "b" and "c"."""
    servers = []
    for name in ("a", "b", "c"):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Named)
        srv.daemon_threads = True
        srv.name = name  # type: ignore[attr-defined]
        srv.entered = threading.Event()  # type: ignore[attr-defined]
        srv.release = threading.Event()  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
    try:
        yield Backends(servers)
    finally:
        for srv in servers:
            srv.release.set()  # type: ignore[attr-defined]
            srv.shutdown()
            srv.server_close()


def cfg(port: int, *backends: str, **kw: Any) -> RouterConfig:
    return RouterConfig("prod", "127.0.0.1", port, "_", tuple(backends), **kw)


def workers(r: OwnRouter) -> list[int]:
    assert r.pid is not None
    return r._workers(r.pid, shutting_down=False)


def get(port: int, path: str = "/") -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        return c.getresponse().read().decode()
    finally:
        c.close()


def test_a_swap_of_backends_reloads_nothing_and_routes_only_the_new_ones(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    router.apply(cfg(port, backends.addr(0)))
    assert {get(port) for _ in range(6)} == {"a"}
    before, conf = workers(router), router.conf.read_text()
    router.apply(cfg(port, backends.addr(1), backends.addr(2)))
    assert workers(router) == before and not router.draining_workers()  # no reload
    assert {get(port) for _ in range(12)} == {"b", "c"}
    assert router.control().state().routed == (backends.addr(1), backends.addr(2))
    # the file carries the new backends too, for a restart; it differs from the loaded one only there
    assert router.conf.read_text() != conf and backends.addr(1) in router.conf.read_text()


def test_a_dead_backend_costs_no_request_the_others_can_serve(router: OwnRouter, backends: Backends) -> None:
    """A routed backend that refuses connections (an instance that died, or restarts) is retried on
    another one: nginx grants the balancer's extra tries only with a usable placeholder server."""
    port, dead = free_port(), f"127.0.0.1:{free_port()}"
    router.apply(cfg(port, dead, backends.addr(0), backends.addr(1)))
    assert {get(port) for _ in range(30)} == {"a", "b"}  # every request answered by a live one


def test_a_restarted_router_serves_the_last_backends_from_its_file(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    router.apply(cfg(port, backends.addr(0)))
    router.apply(cfg(port, backends.addr(1)))
    router.stop()
    assert router.pid is None
    pid = router._nginx()  # a restart by hand (not through apply): the file's backends serve
    assert pid.returncode == 0, pid.stderr
    deadline = time.monotonic() + 10
    while router.pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {get(port) for _ in range(4)} == {"b"}


def test_a_change_of_the_routers_own_settings_still_reloads_and_keeps_the_backends_and_mode(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    router.apply(cfg(port, backends.addr(0)))
    router.apply(cfg(port, backends.addr(1), readonly=True))
    before = workers(router)
    router.apply(cfg(port, backends.addr(1), readonly=True, drain_timeout=5))
    assert workers(router) != before  # the static config changed: a reload
    assert {get(port) for _ in range(4)} == {"b"}
    assert router.control().mode() == ["maintenance off", "readonly on"]  # the dict outlives a reload


@pytest.mark.skipif(not Path(STREAM_MODULE).exists(), reason="nginx's stream module (libnginx-mod-stream)")
def test_a_swap_of_a_profile_with_forwarded_ports_still_reloads(
    router: OwnRouter, backends: Backends
) -> None:
    """Stated in docs/promotion.md: the stream block lists its backends as static `server` lines."""
    port, fwd = free_port(), free_port()

    def with_ports(i: int) -> RouterConfig:
        ports = (PortForward("127.0.0.1", fwd, "tcp", (backends.addr(i),)),)
        return cfg(port, backends.addr(i), ports=ports)

    router.apply(with_ports(0))
    before = workers(router)
    router.apply(dataclasses.replace(with_ports(0), maintenance=()))  # a mode switch: still none
    assert workers(router) == before
    router.apply(with_ports(1))
    assert workers(router) != before  # the swap changed the stream block: a reload
    assert get(fwd) == "b" and get(port) == "b"


def test_a_keep_alive_client_that_never_retries_sees_no_error_across_swaps(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    router.apply(cfg(port, backends.addr(0)))
    stop = threading.Event()
    errors: list[str] = []
    seen: set[str] = set()
    counts = [0]

    def loop() -> None:  # ONE connection, POST after POST, no retry: any closed idle connection shows
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                c.request("POST", "/", body=b"x=1", headers={"Content-Type": "text/plain"})
                r = c.getresponse()
                seen.add(r.read().decode())
                if r.status != 200:
                    errors.append(f"status {r.status}")
                counts[0] += 1
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            time.sleep(0.002)
        c.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        for i in range(30):
            router.apply(cfg(port, backends.addr(i % 3), backends.addr((i + 1) % 3)))
            time.sleep(0.03)
    finally:
        stop.set()
        t.join(15)
    assert errors == [] and counts[0] > 20 and seen == {"a", "b", "c"}


def test_drain_waits_for_the_request_in_flight_to_an_unrouted_backend(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    router.apply(cfg(port, backends.addr(0)))
    slow: list[str] = []
    t = threading.Thread(target=lambda: slow.append(get(port, "/slow")), daemon=True)
    t.start()
    assert backends.servers[0].entered.wait(10)  # type: ignore[attr-defined]
    assert router.control().state().active[backends.addr(0)] == 1
    router.apply(cfg(port, backends.addr(1)))
    assert get(port) == "b"  # new requests go to the new backend at once
    t0 = time.monotonic()
    assert router.drain(0.5, backends.addr(0)) is False  # still in flight: the drain times out
    assert 0.4 < time.monotonic() - t0 < 3
    threading.Timer(0.3, backends.servers[0].release.set).start()  # type: ignore[attr-defined]
    assert router.drain(10, backends.addr(0)) is True
    t.join(10)
    assert slow == ["a"]
    assert router.control().state().active[backends.addr(0)] == 0


def test_the_control_socket_is_roots_only(router: OwnRouter, backends: Backends) -> None:
    router.apply(cfg(free_port(), backends.addr(0)))
    sock = router.control().path
    st = os.stat(sock.parent)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    # the workers run as nobody: they cannot even reach the socket's directory
    assert not os.access(sock.parent, os.X_OK) or os.getuid() == 0


@pytest.mark.parametrize(
    "line",
    [
        "10.0.0.1",
        "10.0.0.256:80",
        "10.0.0.1:0",
        "10.0.0.1:70000",
        "host.example:80",
        "10.0.0.1:80; server evil",
        "unix:/tmp/x.sock",
        "[::1]",
        "10.0.0.1:80 10.0.0.2:80",
    ],
)
def test_the_control_socket_refuses_anything_but_address_port_lines(
    router: OwnRouter, backends: Backends, line: str
) -> None:
    port = free_port()
    router.apply(cfg(port, backends.addr(0)))
    c = _UnixConnection(router.control().path, timeout=5)
    try:
        c.request("PUT", "/backends", body=(line + "\n").encode())
        r = c.getresponse()
        assert r.status == 400, r.read()
    finally:
        c.close()
    assert router.control().state().routed == (backends.addr(0),)  # unchanged
    with pytest.raises(RouterError, match="not a backend address"):
        check_backend(line)


def test_check_backend_takes_ipv4_and_bracketed_ipv6() -> None:
    assert check_backend("10.213.0.2:8000") == "10.213.0.2:8000"
    assert check_backend("[fd00::2]:8000") == "[fd00::2]:8000"
    for bad in ("[fd00::2]:0", "fd00::2:80", "010.0.0.1:80", "[zz::1]:80"):
        with pytest.raises(RouterError):
            check_backend(bad)


def test_an_unreachable_control_socket_is_a_router_error(tmp_path: Path) -> None:
    c = ControlSocket(tmp_path / "control" / "sock", "prod")
    with pytest.raises(RouterError, match="does not answer") as e:
        c.state(timeout=0.2)
    assert e.value.hint and "nginx running" in e.value.hint


def test_a_deep_workspace_gets_a_short_control_socket(tmp_path: Path, backends: Backends) -> None:
    """PREFIX/control/sock over 107 bytes (a unix socket's limit: nginx would refuse to start, as it
    did for an env staging-<12 hex> in a deep pytest dir) moves to /run/sandbox/ctl/<hash>.sock;
    swaps still reload nothing, and `remove` takes the socket away."""
    from sandbox.routing.render import MAX_SOCKET_PATH, control_socket

    deep = tmp_path / ("d" * 60) / "routers"
    r = OwnRouter(deep, "staging-0123456789ab")
    try:
        assert len(str(r.prefix / "control" / "sock")) > MAX_SOCKET_PATH
        sock = r.control().path
        assert sock.parent == Path("/run/sandbox/ctl") and len(str(sock)) < 50
        assert control_socket(r.prefix) == sock != control_socket(tmp_path / "other")
        port = free_port()
        r.apply(RouterConfig("staging-0123456789ab", "127.0.0.1", port, "_", (backends.addr(0),)))
        assert get(port) == "a"
        before = workers(r)
        r.apply(RouterConfig("staging-0123456789ab", "127.0.0.1", port, "_", (backends.addr(1),)))
        assert get(port) == "b" and workers(r) == before  # through the control socket: no reload
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700 and stat.S_ISSOCK(os.stat(sock).st_mode)
    finally:
        r.remove()
    assert not sock.exists() and not r.prefix.exists()


def test_a_short_prefix_keeps_its_socket_inside() -> None:
    from sandbox.routing.render import control_socket

    assert control_socket(Path("/srv/ws/.sandbox/routers/prod")) == Path(
        "/srv/ws/.sandbox/routers/prod/control/sock"
    )
