"""The router's nginx config (pure, against a fixture; `nginx -t` when installed) and port checks."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.fsutil import pid_alive
from sandbox.routing import RouterConfig, port_in_use
from sandbox.routing.own import OwnRouter as Router
from sandbox.routing.render import render_nginx_conf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nginx"
PREFIX = Path("/ws/.sandbox/routers/staging-1")
TWO = RouterConfig("staging-1", "127.0.0.1", 18000, "_", ("10.213.0.2:8000", "10.213.0.3:8000"))


def upstream_servers(text: str) -> list[str]:
    block = text.split("upstream ", 1)[1].split("balancer_by_lua_block", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("server ")]


def balancer_defaults(text: str) -> list[str]:
    """The backends written into the Lua balancer (served until the control socket sets them)."""
    line = next(ln for ln in text.splitlines() if 'dict:add("backends", ' in ln)
    return line.split('"')[3].split()


def test_two_backends_match_the_fixture() -> None:
    assert render_nginx_conf(TWO, PREFIX) == (FIXTURES / "two-backends.conf").read_text()


def test_rendered_config_routes_to_every_backend_and_keeps_files_under_the_prefix() -> None:
    text = render_nginx_conf(TWO, PREFIX, user="www-data", group="www-data")
    assert balancer_defaults(text) == ["10.213.0.2:8000", "10.213.0.3:8000"]
    assert upstream_servers(text) == ["server 127.0.0.1:9 max_fails=0;"]  # the balancer picks every peer
    assert "upstream app_staging_1 {" in text and "proxy_pass http://app_staging_1;" in text
    assert "listen 127.0.0.1:18000;" in text and "server_name _;" in text
    assert "user www-data www-data;" in text
    paths = [
        ln.split()[1].rstrip(";") for ln in text.splitlines() if ln.strip().startswith(("pid", "error_log"))
    ]
    paths += [
        ln.split()[1].rstrip(";")
        for ln in text.splitlines()
        if "_temp_path" in ln or ("access_log" in ln and "access_log off" not in ln)
    ]
    paths += [
        ln.split()[1].removeprefix("unix:").rstrip(";") for ln in text.splitlines() if "listen unix:" in ln
    ]
    assert len(paths) == 9 and all(p.startswith(f"{PREFIX}/") for p in paths), paths


def test_no_backends_gives_a_down_placeholder_server() -> None:
    text = render_nginx_conf(RouterConfig("dev-1", "0.0.0.0", 8080, "dev.example", ()), PREFIX)
    assert upstream_servers(text) == ["server 127.0.0.1:9 max_fails=0;"]
    assert balancer_defaults(text) == []
    assert "upstream app_dev_1 {" in text and "listen 0.0.0.0:8080;" in text
    assert "server_name dev.example;" in text


def test_render_is_pure_and_deterministic() -> None:
    assert render_nginx_conf(TWO, PREFIX) == render_nginx_conf(TWO, PREFIX)
    assert render_nginx_conf(TWO, PREFIX) != render_nginx_conf(TWO, Path("/elsewhere"))


def test_drain_timeout_bounds_the_old_workers() -> None:
    assert "worker_shutdown_timeout 30s;" in render_nginx_conf(TWO, PREFIX)
    assert "worker_shutdown_timeout 5s;" in render_nginx_conf(
        dataclasses.replace(TWO, drain_timeout=5.7), PREFIX
    )
    assert "worker_shutdown_timeout 1s;" in render_nginx_conf(
        dataclasses.replace(TWO, drain_timeout=0), PREFIX
    )


def test_no_maintenance_or_readonly_by_default() -> None:
    text = render_nginx_conf(TWO, PREFIX)
    assert 'dict:add("mode", "maintenance off readonly off")' in text
    assert "geo " not in text and "@maintenance" not in text and "limit_except" not in text


VARIANTS = {
    "two-backends": TWO,
    "no-backends": dataclasses.replace(TWO, backends=()),
    "maintenance": dataclasses.replace(TWO, maintenance=("127.0.0.1", "10.0.0.0/8")),
    "readonly": dataclasses.replace(TWO, readonly=True),
}


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nginx_accepts_the_rendered_config(tmp_path: Path, variant: str) -> None:
    me = pwd.getpwuid(os.getuid())
    for d in ("logs", "control", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (tmp_path / d).mkdir(parents=True)
    with socket.socket() as s:  # a port nothing listens on (nginx -t does not bind it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = dataclasses.replace(VARIANTS[variant], port=port)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(cfg, tmp_path, me.pw_name, grp.getgrgid(me.pw_gid).gr_name))
    p = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "syntax is ok" in p.stderr and "test is successful" in p.stderr
    pid = tmp_path / "nginx.pid"  # nginx -t may create it, but writes no pid: nothing was started
    assert not pid.exists() or pid.read_text() == ""


def test_port_in_use_while_a_socket_listens_and_free_after_close() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert port_in_use(port) is True
        assert port_in_use(port, "127.0.0.1") is True
    finally:
        s.close()
    assert port_in_use(port) is False


def test_port_in_use_for_a_bound_but_not_listening_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert port_in_use(port) is True
    assert port_in_use(port) is False


def test_a_wildcard_listener_makes_the_loopback_port_busy() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        assert port_in_use(s.getsockname()[1], "127.0.0.1") is True


# -- the Router object without a running nginx ------------------------------------------------


def test_router_paths_and_no_pid_without_a_running_nginx(tmp_path: Path) -> None:
    r = Router(tmp_path, "staging-1")
    assert r.prefix == tmp_path / "staging-1" and r.conf == tmp_path / "staging-1" / "nginx.conf"
    assert r.pid is None
    r.prefix.mkdir()
    (r.prefix / "nginx.pid").write_text("garbage\n")
    assert r.pid is None
    dead = subprocess.Popen(["true"])
    dead.wait()
    (r.prefix / "nginx.pid").write_text(f"{dead.pid}\n")
    assert r.pid is None  # a stale pid file does not count as a running router


def test_remove_without_a_running_nginx_deletes_the_prefix(tmp_path: Path) -> None:
    r = Router(tmp_path, "dev-1")
    (r.prefix / "logs").mkdir(parents=True)
    (r.prefix / "nginx.conf").write_text("events {}\n")
    r.remove()
    assert not r.prefix.exists()
    r.remove()  # idempotent
    r.stop()


def proc_state(pid: int) -> bytes:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :][:1]


def test_an_exited_process_is_not_alive_before_it_is_reaped() -> None:
    """A router's nginx master exits, then waits for PID 1 to reap it (seconds on a host without an
    init): `stop` must not wait for that. A zombie is not alive; a running process is."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert pid_alive(child.pid)
        assert child.stdin is not None
        child.stdin.close()  # it exits; not waited for, it stays a zombie
        deadline = time.monotonic() + 10
        while proc_state(child.pid) != b"Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc_state(child.pid) == b"Z"
        assert not pid_alive(child.pid)
    finally:
        child.wait(10)
    assert not pid_alive(child.pid)
