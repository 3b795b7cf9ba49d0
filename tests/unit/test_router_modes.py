"""The router's maintenance and read-only modes: rendered config (fixtures), `nginx -t`, and what a real
nginx on 127.0.0.1 answers in each mode (in front of a tiny local backend; every wait bounded)."""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sandbox.fsutil import pid_alive
from sandbox.routing import RouterError
from sandbox.routing.control import ControlSocket, _UnixConnection, check_mode
from sandbox.routing.nginx import same_but_dynamic
from sandbox.routing.own import OwnRouter
from sandbox.routing.render import MAINTENANCE_PAGE, RouterConfig, mode_lines, render_nginx_conf
from tests.unit.test_router_balancer import Backends, workers
from tests.unit.test_router_balancer import cfg as balancer_cfg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nginx"
PREFIX = Path("/ws/.sandbox/routers/prod")
BASE = RouterConfig("prod", "127.0.0.1", 19490, "_", ("10.216.0.2:8000", "10.216.0.3:8000"))
MODES = {
    "prod-modes-none": BASE,
    "prod-maintenance-allow": dataclasses.replace(BASE, maintenance=("127.0.0.1", "10.0.0.0/8")),
    "prod-maintenance": dataclasses.replace(BASE, maintenance=()),
    "prod-readonly": dataclasses.replace(BASE, readonly=True),
    "prod-maintenance-readonly": dataclasses.replace(BASE, maintenance=("192.0.2.7",), readonly=True),
}
NGINX = shutil.which("nginx")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def me() -> tuple[str, str]:
    pw = pwd.getpwuid(os.getuid())
    return pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name


def prepare(prefix: Path) -> None:
    """What Router._prepare makes: logs, temp dirs and the maintenance page."""
    for d in ("logs", "html", "control", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    (prefix / "html" / "maintenance.html").write_text(MAINTENANCE_PAGE)


# -- rendering (pure) -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODES))
def test_each_mode_matches_its_fixture(name: str) -> None:
    assert render_nginx_conf(MODES[name], PREFIX) == (FIXTURES / f"{name}.conf").read_text()


def mode_default(text: str) -> str:
    """The mode written into the file: what the dict starts with until the control socket sets it."""
    line = next(ln for ln in text.splitlines() if 'dict:add("mode", ' in ln)
    return line.split('"')[3]


def test_no_mode_renders_both_off() -> None:
    assert mode_default(render_nginx_conf(BASE, PREFIX)) == "maintenance off readonly off"


@pytest.mark.parametrize("name", sorted(MODES))
def test_no_mode_is_static_config(name: str) -> None:
    """The modes live in the shared dict: no geo block, no limit_except, no error_page locations."""
    text = render_nginx_conf(MODES[name], PREFIX)
    for static in ("geo ", "@maintenance", "limit_except", "@readonly", "error_page", "if ("):
        assert static not in text, static
    assert text.count("access_by_lua_block {") == 1 and text.count("proxy_pass http://app_prod;") == 1


def test_every_mode_differs_from_the_others_only_in_the_dicts_initial_values() -> None:
    texts = {name: render_nginx_conf(cfg, PREFIX) for name, cfg in MODES.items()}
    for a in texts.values():
        for b in texts.values():
            assert same_but_dynamic(a, b)
    # and with other backends too (a promotion step that also switches a mode)
    other = dataclasses.replace(MODES["prod-maintenance-readonly"], backends=("10.216.0.9:8000",))
    assert same_but_dynamic(texts["prod-modes-none"], render_nginx_conf(other, PREFIX))
    # anything else still counts: a new port is a reload
    assert not same_but_dynamic(
        texts["prod-modes-none"], render_nginx_conf(dataclasses.replace(BASE, port=1), PREFIX)
    )


def test_maintenance_lists_exactly_the_allowlist_as_canonical_networks() -> None:
    text = render_nginx_conf(MODES["prod-maintenance-allow"], PREFIX)
    assert mode_default(text) == "maintenance on allow 127.0.0.1/32 allow 10.0.0.0/8 readonly off"
    assert '"<!doctype html><title>Back soon</title><h1>We are updating</h1>' in text
    assert 'ngx.header["Retry-After"] = "60"' in text and 'ngx.header["Content-Type"] = "text/html"' in text


def test_maintenance_without_allowlist_lets_nobody_through() -> None:
    assert mode_default(render_nginx_conf(MODES["prod-maintenance"], PREFIX)) == "maintenance on readonly off"


def test_readonly_denies_everything_but_reads_with_a_retry_after() -> None:
    text = render_nginx_conf(MODES["prod-readonly"], PREFIX)
    assert mode_default(text) == "maintenance off readonly on"
    assert 'method ~= "GET" and method ~= "HEAD" and method ~= "OPTIONS"' in text
    assert (
        'ngx.header["Retry-After"] = "30"' in text
        and '"read-only for a moment: try again shortly\\n"' in text
    )


def test_both_modes_render_both() -> None:
    text = render_nginx_conf(MODES["prod-maintenance-readonly"], PREFIX)
    assert mode_default(text) == "maintenance on allow 192.0.2.7/32 readonly on"


def test_mode_lines_are_canonical_and_refuse_anything_else() -> None:
    assert mode_lines(None, False) == ["maintenance off", "readonly off"]
    assert mode_lines(("10.1.2.3/8", "10.0.0.0/8", "::1", "192.0.2.7"), True) == [
        "maintenance on",
        "allow 10.0.0.0/8",  # host bits dropped, the duplicate with them
        "allow ::1/128",
        "allow 192.0.2.7/32",
        "readonly on",
    ]
    for bad in (
        ("10.0.0.0/8 0;",),
        ("10.0.0.0/33",),
        ("host.example",),
        ("",),
        tuple(f"10.0.{i // 256}.{i % 256}" for i in range(257)),
    ):
        with pytest.raises(ValueError):
            mode_lines(bad, False)
    with pytest.raises(ValueError):
        mode_lines(None, "on")  # type: ignore[arg-type]


# -- nginx -t -------------------------------------------------------------------------------------


@needs_nginx
@pytest.mark.parametrize("name", sorted(MODES))
def test_nginx_accepts_each_mode(tmp_path: Path, name: str) -> None:
    prepare(tmp_path)
    user, group = me()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_nginx_conf(dataclasses.replace(MODES[name], port=free_port()), tmp_path, user, group)
    )
    p = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "test is successful" in p.stderr


# -- a real nginx on 127.0.0.1 in each mode ------------------------------------------------------


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, b"from the backend\n")

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(201, b"stored\n")


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Live:
    """nginx started by this test (stopped by its own pid) in front of a local backend."""

    prefix: Path
    backend: str
    port: int = 0
    pid: int | None = None

    def start(self, maintenance: tuple[str, ...] | None, readonly: bool) -> None:
        self.port = free_port()
        user, group = me()
        cfg = RouterConfig(
            "prod", "127.0.0.1", self.port, "_", (self.backend,), maintenance=maintenance, readonly=readonly
        )
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_nginx_conf(cfg, self.prefix, user, group))
        p = subprocess.run(
            ["nginx", "-p", str(self.prefix), "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.pid = int((self.prefix / "nginx.pid").read_text())
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            time.sleep(0.05)
        raise AssertionError("nginx did not start listening within 10 s")

    def stop(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):  # exited (not waiting for PID 1 to reap it)
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def request(self, method: str, path: str = "/") -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            body = b"a note" if method == "POST" else None
            conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    prepare(tmp_path)
    lv = Live(tmp_path, f"127.0.0.1:{srv.server_address[1]}")
    try:
        yield lv
    finally:
        lv.stop()
        srv.shutdown()
        srv.server_close()
        t.join(5)


def is_maintenance_page(r: Reply) -> bool:
    return (
        r.status == 503
        and b"We are updating" in r.body
        and r.headers.get("retry-after") == "60"
        and r.headers.get("content-type", "").startswith("text/html")
    )


def test_live_no_mode_passes_reads_and_writes(live: Live) -> None:
    live.start(None, False)
    assert live.request("GET").status == 200
    r = live.request("POST", "/notes")
    assert (r.status, r.body) == (201, b"stored\n")


def test_live_maintenance_shows_the_page_to_everyone_not_allowed(live: Live) -> None:
    live.start((), False)
    for path in ("/", "/healthz", "/static/style.css"):
        r = live.request("GET", path)
        assert is_maintenance_page(r), (path, r)
    assert live.request("HEAD").status == 503


def test_live_maintenance_answers_writes_with_the_page_too(live: Live) -> None:
    live.start((), False)
    r = live.request("POST", "/notes")
    assert r.status == 503 and r.headers.get("retry-after") == "60" and b"We are updating" in r.body


def test_live_maintenance_lets_the_allowlist_through(live: Live) -> None:
    live.start(("127.0.0.1",), False)
    assert live.request("GET").body == b"from the backend\n"
    assert live.request("POST", "/notes").status == 201


def test_live_maintenance_allowlist_takes_cidrs(live: Live) -> None:
    live.start(("127.0.0.0/8",), False)
    assert live.request("GET").status == 200


def test_live_readonly_refuses_writes_with_retry_after_and_serves_reads(live: Live) -> None:
    live.start(None, True)
    r = live.request("POST", "/notes")
    assert r.status == 503 and r.headers.get("retry-after") == "30", r
    assert b"read-only" in r.body
    for method in ("PUT", "DELETE", "PATCH"):
        assert live.request(method, "/notes").status == 503, method
    assert live.request("GET").status == 200
    assert live.request("HEAD").status == 200


def test_live_readonly_with_maintenance_allowlist_still_refuses_writes(live: Live) -> None:
    live.start(("127.0.0.1",), True)
    assert live.request("GET").status == 200
    r = live.request("POST", "/notes")
    assert r.status == 503 and r.headers.get("retry-after") == "30"


def test_live_maintenance_and_readonly_together_still_show_the_page(live: Live) -> None:
    live.start((), True)
    assert is_maintenance_page(live.request("GET")), live.request("GET")


# -- switched through the control socket: no reload (an OwnRouter, as test_router_balancer) -------


def _reply(port: int, method: str, path: str = "/") -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"a note" if method == "POST" else None)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def test_switching_each_mode_on_and_off_reloads_nothing_and_takes_effect_at_once(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    on = balancer_cfg(port, backends.addr(0))
    router.apply(on)
    before = workers(router)
    loaded = router.conf.read_text()

    router.apply(dataclasses.replace(on, maintenance=()))
    assert is_maintenance_page(_reply(port, "GET"))
    r = _reply(port, "POST", "/notes")
    assert r.status == 503 and r.headers.get("retry-after") == "60" and b"We are updating" in r.body
    assert r.body == MAINTENANCE_PAGE.strip().encode()  # the same page as ever
    assert router.control().mode() == ["maintenance on", "readonly off"]

    router.apply(dataclasses.replace(on, maintenance=("127.0.0.1",)))  # the allowlist changes: no reload
    assert _reply(port, "GET").body == b"a" and _reply(port, "POST").status == 200

    router.apply(dataclasses.replace(on, readonly=True))
    r = _reply(port, "POST", "/notes")
    assert (r.status, r.headers.get("retry-after")) == (503, "30") and b"read-only" in r.body
    for method in ("PUT", "DELETE", "PATCH"):
        assert _reply(port, method).status == 503, method
    for method in ("GET", "HEAD", "OPTIONS"):  # reach the backend (which answers 501 to HEAD, OPTIONS)
        assert _reply(port, method).status in (200, 501), method
    assert router.control().mode() == ["maintenance off", "readonly on"]

    router.apply(dataclasses.replace(on, backends=(backends.addr(1),), maintenance=(), readonly=True))
    assert is_maintenance_page(_reply(port, "GET"))  # backends and mode in one apply: no reload either

    router.apply(dataclasses.replace(on, backends=(backends.addr(1),)))
    assert _reply(port, "GET").body == b"b" and _reply(port, "POST").status == 200
    assert workers(router) == before and not router.draining_workers()  # never reloaded
    # the file on disk followed every switch (for a restart); beyond the dict's initial values it is
    # the file nginx loaded
    assert same_but_dynamic(router.conf.read_text(), loaded)
    assert 'dict:add("mode", "maintenance off readonly off")' in router.conf.read_text()


def test_a_keep_alive_client_sees_no_connection_closed_across_20_mode_toggles(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    base = balancer_cfg(port, backends.addr(0))
    router.apply(base)
    before = workers(router)
    stop = threading.Event()
    errors: list[str] = []
    statuses: dict[tuple[str, int], int] = {}
    connects = [0]

    class Counted(http.client.HTTPConnection):
        def connect(self) -> None:
            connects[0] += 1
            super().connect()

    def loop() -> None:  # ONE connection, GET and POST in turn, no retry: a closed connection shows
        c = Counted("127.0.0.1", port, timeout=10)
        n = 0
        while not stop.is_set():
            method = "POST" if n % 2 else "GET"
            n += 1
            try:
                c.request(method, "/", body=b"x=1" if method == "POST" else None)
                r = c.getresponse()
                body = r.read()
                statuses[(method, r.status)] = statuses.get((method, r.status), 0) + 1
                if r.status == 503 and r.getheader("Retry-After") not in ("60", "30"):
                    errors.append(f"503 without Retry-After: {body[:60]!r}")
                if r.will_close:
                    errors.append(f"the router closes the connection after a {r.status}")
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e))
                c.close()
                c = Counted("127.0.0.1", port, timeout=10)
            time.sleep(0.002)
        c.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    modes = [
        dataclasses.replace(base, maintenance=()),
        base,
        dataclasses.replace(base, readonly=True),
        base,
    ]
    try:
        for i in range(20):
            router.apply(modes[i % 4])
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(15)
    assert errors == [] and connects[0] == 1, (errors, connects)
    assert workers(router) == before
    # every mode was seen by the client: the page (GET and POST), read-only (POST), and through
    assert {("GET", 503), ("POST", 503), ("GET", 200), ("POST", 200)} <= set(statuses), statuses


def test_a_restarted_router_comes_up_in_the_mode_of_its_file(router: OwnRouter, backends: Backends) -> None:
    port = free_port()
    router.apply(balancer_cfg(port, backends.addr(0)))
    router.apply(
        balancer_cfg(port, backends.addr(0), maintenance=("10.0.0.0/8",), readonly=True)
    )  # no reload
    router.stop()
    p = router._nginx()  # a restart by hand (not through apply): the file's mode serves
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + 10
    while router.pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_maintenance_page(_reply(port, "GET"))
    assert router.control().mode() == ["maintenance on", "allow 10.0.0.0/8", "readonly on"]


@pytest.mark.parametrize(
    ("allow", "through"),
    [
        (("127.0.0.1",), True),
        (("127.0.0.1/32",), True),
        (("127.0.0.0/31",), True),
        (("127.0.0.2/31",), False),
        (("126.0.0.0/7",), True),
        (("128.0.0.0/1",), False),
        (("0.0.0.0/0",), True),
        (("10.0.0.0/8", "127.0.0.0/8"), True),
        (("127.0.0.10",), False),
        (("::1",), False),  # IPv6 entries never match: the router listens on IPv4
        (("::ffff:127.0.0.1",), False),
        (("::/0",), False),
    ],
)
def test_the_allowlist_matches_ipv4_cidrs_in_lua(
    router: OwnRouter, backends: Backends, allow: tuple[str, ...], through: bool
) -> None:
    port = free_port()
    router.apply(balancer_cfg(port, backends.addr(0), maintenance=allow))
    r = _reply(port, "GET")
    assert (r.status == 200) is through and (is_maintenance_page(r) is not through), r


@pytest.mark.parametrize(
    "body",
    [
        "",
        "maintenance off\n",  # no readonly line
        "readonly off\nmaintenance off\n",  # order
        "maintenance off\nallow 10.0.0.0/8\nreadonly off\n",  # an allowlist without maintenance
        "maintenance on\nreadonly off\nallow 10.0.0.0/8\n",  # after readonly
        "maintenance on\nmaintenance off\nreadonly off\n",
        "maintenance yes\nreadonly off\n",
        "maintenance off\nreadonly off\nreadonly on\n",
        "maintenance on\nallow 10.0.0.1/8\nreadonly off\n",  # host bits set: not canonical
        "maintenance on\nallow 10.0.0.0/33\nreadonly off\n",
        "maintenance on\nallow 10.0.0.256/32\nreadonly off\n",
        "maintenance on\nallow 10.0.0.0\nreadonly off\n",  # no prefix length
        "maintenance on\nallow 10.0.0.0/8 0;\nreadonly off\n",
        "maintenance on\nallow 10.0.0.0/8\nallow 10.0.0.0/8\nreadonly off\n",
        "maintenance on\nallow host.example/32\nreadonly off\n",
        "maintenance on\nallow ::1/129\nreadonly off\n",
        "maintenance on\nallow :::1/128\nreadonly off\n",
        "maintenance on\nallow 12345::/16\nreadonly off\n",
        "maintenance on\nallow 1::2::3/128\nreadonly off\n",
        "maintenance on\nallow fd00/8\nreadonly off\n",
        "maintenance on\nallow 1:2:3:4:5:6:7:8:9/128\nreadonly off\n",
        "maintenance  on\nreadonly off\n",
        "maintenance on\r\nreadonly off\r\n",
        "maintenance on\n"
        + "".join(f"allow 10.0.{i // 256}.{i % 256}/32\n" for i in range(257))
        + "readonly off\n",
    ],
)
def test_the_control_socket_refuses_anything_but_mode_lines(
    router: OwnRouter, backends: Backends, body: str
) -> None:
    port = free_port()
    router.apply(balancer_cfg(port, backends.addr(0), maintenance=("127.0.0.1",)))
    c = _UnixConnection(router.control().path, timeout=5)
    try:
        c.request("PUT", "/mode", body=body.encode())
        r = c.getresponse()
        assert r.status == 400, r.read()
    finally:
        c.close()
    assert router.control().mode() == ["maintenance on", "allow 127.0.0.1/32", "readonly off"]  # unchanged
    assert _reply(port, "GET").status == 200


def test_the_control_socket_takes_ipv6_entries_that_never_match(
    router: OwnRouter, backends: Backends
) -> None:
    port = free_port()
    router.apply(balancer_cfg(port, backends.addr(0)))
    body = "maintenance on\nallow 1:2:3:4:5:6:7::/112\nallow 64:ff9b::102:304/128\nallow ::/0\nreadonly off\n"
    c = _UnixConnection(router.control().path, timeout=5)
    try:
        c.request("PUT", "/mode", body=body.encode())
        r = c.getresponse()
        assert (r.status, r.read().decode()) == (200, body)
    finally:
        c.close()
    assert is_maintenance_page(_reply(port, "GET"))  # 127.0.0.1 is in none of them


def test_the_control_client_refuses_a_bad_mode_before_sending(tmp_path: Path) -> None:
    c = ControlSocket(tmp_path / "control" / "sock", "prod")  # nothing listens: a send would say so
    for allow, readonly in ((("10.0.0.0/8 0;\n}",), False), (("nope",), False), (None, "on")):
        with pytest.raises(RouterError, match="not a router mode"):
            c.set_mode(allow, readonly)  # type: ignore[arg-type]
    assert check_mode(("10.0.0.7/24",), True) == ["maintenance on", "allow 10.0.0.0/24", "readonly on"]
