"""Issue 10, class 9: robustness against what an instance, a stale file or the caller's environment
hands sandbox: a pid file naming a stranger's process, an endless health body, predictable temp names,
tags with a trailing newline, a bytecode cache from the caller's $XDG_CACHE_HOME."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.routing.nginx import is_our_nginx
from sandbox.routing.own import OwnRouter
from sandbox.routing.system import SystemRouter, system_nginx_pid
from sandbox.settings import Routers

# -- a stale pid file never signals a stranger -----------------------------------------------------


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours that is not nginx (stopped by its pid at the end)."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def alive_and_not_signalled(p: subprocess.Popen[bytes]) -> bool:
    return p.poll() is None


def test_an_own_router_pid_file_naming_a_stranger_is_not_a_router(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    r = OwnRouter(tmp_path, "prod")
    r.prefix.mkdir()
    (r.prefix / "nginx.pid").write_text(f"{stranger.pid}\n")
    assert not is_our_nginx(stranger.pid, r.prefix)
    assert r.pid is None
    assert r.draining_workers() == []
    r.stop(timeout=0.2)  # would SIGQUIT then SIGKILL the pid if it trusted the file
    r.remove()
    time.sleep(0.1)
    assert alive_and_not_signalled(stranger)


def test_a_system_nginx_pid_file_naming_a_stranger_is_not_the_system_nginx(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "conf.d").mkdir()
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text(f"{stranger.pid}\n")
    s = Routers(
        nginx="system",
        system_conf=str(tmp_path / "nginx.conf"),
        include_dir=str(tmp_path / "conf.d"),
        stream_include_dir=None,
        pid_file=str(pid_file),
    )
    assert system_nginx_pid(s) is None
    from sandbox.routing import RouterConfig, RouterError

    r = SystemRouter(s, tmp_path / "routers", "prod", "/ws")
    with pytest.raises(RouterError, match="not running"):  # rather than a HUP to the stranger
        r.apply(RouterConfig("prod", "127.0.0.1", 18000, "_", ()))
    r.stop()
    time.sleep(0.1)
    assert alive_and_not_signalled(stranger)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is installed by ./install.sh")
def test_our_own_nginx_is_recognised_by_binary_and_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log; daemon off; events {{}}\n")
    # a real master in the foreground (no server: it binds nothing), stopped by its pid
    p = subprocess.Popen([shutil.which("nginx") or "nginx", "-p", str(prefix), "-c", str(conf)])
    try:
        deadline = time.monotonic() + 5
        while not is_our_nginx(p.pid, prefix) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert is_our_nginx(p.pid, prefix)
        assert is_our_nginx(p.pid)  # the system check: the binary only
        assert not is_our_nginx(p.pid, tmp_path / "other")
    finally:
        os.kill(p.pid, signal.SIGQUIT)
        p.wait(10)


# -- health checks read a bounded body --------------------------------------------------------------


class Endless(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()  # no length: the body runs until the connection closes
        try:
            while True:
                self.wfile.write(b"x" * 65536)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_a_health_check_reads_at_most_64k_of_an_endless_body() -> None:
    from sandbox.envs.probes import MAX_BODY, http_probe, read_bounded

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        p = http_probe("127.0.0.1", srv.server_address[1], "/healthz", timeout=2.0)
        assert p.ok and time.monotonic() - t0 < 2.5
        c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=2)
        c.request("GET", "/")
        assert len(read_bounded(c.getresponse(), MAX_BODY, time.monotonic() + 2)) == MAX_BODY
        c.close()
    finally:
        srv.shutdown()


def test_the_load_probe_refuses_a_body_over_64k() -> None:
    from sandbox.promote.probe import _body

    class Resp:
        def read(self, n: int) -> bytes:
            return b"x" * n

    with pytest.raises(ValueError, match="over"):
        _body(Resp())  # type: ignore[arg-type]


# -- temp files and crash reports: new files at unpredictable names --------------------------------


def test_a_crash_report_never_writes_through_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox.cli import main

    victim = tmp_path / "victim"
    victim.write_text("host file\n")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    now = int(time.time())
    for t in range(now - 2, now + 5):  # every name the old scheme could have picked
        (shared / f"sandbox-crash-{t}-{os.getpid()}.log").symlink_to(victim)
    monkeypatch.setenv("SANDBOX_LOG_DIR", str(shared))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        report = Path(main._crash_report())
    assert victim.read_text() == "host file\n"
    assert not report.is_symlink() and "boom" in report.read_text()
    assert report.stat().st_mode & 0o777 == 0o600


def test_an_export_never_writes_through_a_planted_temp_name(tmp_path: Path) -> None:
    from sandbox.export import final_path, temp_path

    victim = tmp_path / "victim"
    victim.write_text("host file\n")
    out = tmp_path / "web.tar"
    (tmp_path / f".web.tar.{os.getpid()}.tmp").symlink_to(victim)  # the old, predictable name
    tmp = temp_path(out)
    assert tmp.parent.parent == tmp_path and (tmp.parent.stat().st_mode & 0o777) == 0o700
    assert (
        final_path(tmp) == out
        and final_path(tmp.with_name("web.tar.vmlinuz")) == tmp_path / "web.tar.vmlinuz"
    )
    tmp.write_text("image\n")
    assert victim.read_text() == "host file\n"
    shutil.rmtree(tmp.parent)


def test_an_own_router_candidate_config_is_a_new_file(tmp_path: Path) -> None:
    import inspect

    from sandbox.routing import own

    src = inspect.getsource(own.OwnRouter.serve)
    assert "mkstemp" in src and '"nginx.conf.new"' not in src


def test_the_router_templates_load_no_bytecode_from_the_callers_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox.routing import RouterConfig, render

    render._jinja.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    render.render_nginx_conf(RouterConfig("prod", "127.0.0.1", 18000, "_", ()), Path("/ws/r/prod"))
    assert render._jinja().bytecode_cache is None
    assert not (tmp_path / "cache").exists() and not (tmp_path / "home").exists()


# -- tags and digests: a trailing newline is no match ----------------------------------------------


def test_tags_and_digests_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    from sandbox.errors import SandboxError
    from sandbox.store.store import HEX64, TAG, ImageStore, _hex

    assert HEX64.fullmatch("a" * 64) and not HEX64.fullmatch("a" * 64 + "\n")
    assert TAG.fullmatch("v1") and not TAG.fullmatch("v1\n")
    with pytest.raises(SandboxError):
        _hex("sha256:" + "a" * 64 + "\n")
    store = ImageStore(tmp_path / "images")
    (tmp_path / "images" / "refs" / "web").mkdir(parents=True)
    with pytest.raises(SandboxError, match="not an image reference"):
        store.resolve("web:v1\n:x")
    (tmp_path / "images" / "refs" / "web" / "latest").write_text("sha256:" + "a" * 64 + "\n/../../x\n")
    with pytest.raises(SandboxError):
        store.resolve("web")


# -- root reads no client key from a directory the caller's environment chose ------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule is for root")
def test_root_reads_lxd_keys_only_from_a_root_only_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pylxd")
    import pwd

    from sandbox.backends.base import BackendError
    from sandbox.backends.lxdapi import config_dir, root_only

    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == Path(pwd.getpwuid(0).pw_dir) / ".config" / "sandbox"
    user_dir = tmp_path / "user"  # writable by anyone: not root's alone
    user_dir.mkdir()
    os.chmod(user_dir, 0o777)
    monkeypatch.setenv("SANDBOX_CONFIG", str(user_dir))
    assert not root_only(user_dir)
    assert not root_only(user_dir / "lxd")  # missing: anyone could make it first
    assert not root_only(Path("/tmp") / f"sandbox-missing-{os.getpid()}")  # same in a sticky /tmp
    mine = tmp_path / "root-only"  # root's, below a sticky /tmp: no one else can replace it
    mine.mkdir(mode=0o700)
    assert root_only(mine) and root_only(mine / "lxd")
    with pytest.raises(BackendError, match="SANDBOX_CONFIG"):
        config_dir()
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    os.chown(nobody, 65534, 65534)
    assert not root_only(nobody / "lxd")
    assert root_only(Path("/etc"))
