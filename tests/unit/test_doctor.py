"""`sandbox doctor`'s checks against a fake host tree (every path under a tmp root), each problem with
its fix; and the CLI's rendering (table, --json, exit code)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import sandbox.cli.doctor_cmds  # noqa: F401  (registers the command)
from sandbox.cli.main import cli
from sandbox.doctor import Check, Host, daemons, hostchecks, kernel
from sandbox.doctor.run import exit_code, run_checks
from sandbox.routing.render import LUA_MODULES, STREAM_MODULE
from sandbox.workspace import Workspace

TOOLS = {
    t: f"/usr/bin/{t}"
    for t in [
        "lxc-start",
        "lxc-stop",
        "lxc-attach",
        "lxc-info",
        "lxc-freeze",
        "lxc-unfreeze",
        "ip",
        "mmdebstrap",
        "newuidmap",
        "newgidmap",
        "nginx",
        "qemu-system-x86_64",
        "qemu-img",
    ]
}
MOUNTS_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\nproc /proc proc rw 0 0\n"


def _write(root: Path, path: str, text: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def healthy(root: Path) -> Host:
    """A fake host that has everything the lxc backend needs."""
    _write(root, "/proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n\text4\n")
    _write(root, "/proc/self/ns/user", "")
    _write(root, "/proc/sys/user/max_user_namespaces", "63000\n")
    _write(root, "/proc/self/mounts", MOUNTS_V2)
    for key, want in kernel.LIMITS:
        _write(root, "/proc/sys/" + key.replace(".", "/"), f"{want}\n")
    _write(root, "/etc/subuid", "root:100000:65536\n")
    _write(root, "/etc/subgid", "root:100000:65536\n")
    _write(root, "/etc/os-release", "ID=debian\nVERSION_CODENAME=bookworm\n")
    _write(root, "/etc/apt/sources.list", "deb http://deb.debian.org/debian bookworm main\n")
    for m in (*LUA_MODULES, STREAM_MODULE):
        _write(root, m, "")
    return Host(root=root, which=TOOLS.get, importer=lambda m: "1.0", euid=0, release="6.1.0-test")


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return healthy(tmp_path / "host")


def test_a_healthy_host_passes_every_lxc_check(host: Host, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    checks = run_checks(host, "lxc", ws)
    assert [c for c in checks if c.status != "ok"] == []
    assert exit_code(checks) == 0
    names = {c.name for c in checks}
    assert {"overlayfs", "user namespaces", "cgroups", "lxc tools", "nginx", "mmdebstrap"} <= names
    assert {"apt sources", "subuid", "subgid", "disk: images", "disk: runtime"} <= names


def test_overlayfs_loadable_is_a_warning_absent_a_failure(host: Host) -> None:
    _write(host.root, "/proc/filesystems", "nodev\tsysfs\n")
    c = kernel.overlayfs(host, True)
    assert c.status == "fail" and "no overlay module" in c.found
    _write(host.root, "/lib/modules/6.1.0-test/kernel/fs/overlayfs/overlay.ko.xz", "")
    c = kernel.overlayfs(host, True)
    assert (c.status, c.command) == ("warn", "modprobe overlay")


def test_user_namespaces(host: Host) -> None:
    _write(host.root, "/proc/sys/user/max_user_namespaces", "0\n")
    [c] = kernel.user_namespaces(host, True)
    assert c.status == "fail" and c.command == "sysctl -w user.max_user_namespaces=15000"
    _write(host.root, "/proc/sys/user/max_user_namespaces", "63000\n")
    _write(host.root, "/proc/sys/kernel/unprivileged_userns_clone", "0\n")
    ns, unpriv = kernel.user_namespaces(host, True)
    assert ns.status == "ok" and unpriv.status == "warn"
    assert unpriv.command == "sysctl -w kernel.unprivileged_userns_clone=1"
    (host.root / "proc/self/ns/user").unlink()
    [c] = kernel.user_namespaces(host, True)
    assert c.status == "fail" and "no user namespaces" in c.found


def test_cgroups(host: Host) -> None:
    assert kernel.cgroups(host, True).status == "ok"
    _write(
        host.root,
        "/proc/self/mounts",
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
    )
    c = kernel.cgroups(host, True)
    assert c.status == "ok" and "v1" in c.found and "hybrid" in c.found
    _write(host.root, "/proc/self/mounts", "proc /proc proc rw 0 0\n")
    c = kernel.cgroups(host, True)
    assert c.status == "fail" and c.command == "mount -t cgroup2 cgroup2 /sys/fs/cgroup"
    assert kernel.cgroups(host, False).status == "warn"  # lxc not the required backend


def test_limits_below_the_recommended_values_warn_with_the_sysctl(host: Host) -> None:
    _write(host.root, "/proc/sys/fs/inotify/max_user_instances", "128\n")
    (host.root / "proc/sys/kernel/keys/maxbytes").unlink()
    checks = by_name(kernel.limits(host, True))
    c = checks["fs.inotify.max_user_instances"]
    assert c.status == "warn" and c.command == "sysctl -w fs.inotify.max_user_instances=1048576"
    assert "/etc/sysctl.d/" in (c.fix or "")
    assert checks["kernel.keys.maxkeys"].status == "ok"
    assert checks["kernel.keys.maxbytes"].status == "ok"  # absent: not limited


def test_missing_tools_name_the_package_and_the_command(host: Host) -> None:
    tools = dict(TOOLS)
    del tools["lxc-attach"], tools["mmdebstrap"], tools["nginx"]
    host.which = tools.get
    checks = by_name(run_checks(host, "lxc"))
    assert checks["lxc tools"].status == "fail"
    assert checks["lxc tools"].found == "missing lxc-attach"
    assert checks["lxc tools"].command == "apt-get install -y lxc"
    assert checks["mmdebstrap"].command == "apt-get install -y mmdebstrap"
    assert checks["nginx"].command == "apt-get install -y nginx-light"


def test_nginx_modules(host: Host) -> None:
    (host.root / LUA_MODULES[1].lstrip("/")).unlink()
    (host.root / STREAM_MODULE.lstrip("/")).unlink()
    checks = by_name(hostchecks.nginx(host, True))
    assert checks["nginx lua module"].status == "fail"
    assert checks["nginx lua module"].command == "apt-get install -y libnginx-mod-http-lua"
    assert checks["nginx stream module"].status == "warn"  # only port forwards need it


def test_apt_sources(host: Host) -> None:
    assert "1 source(s)" in hostchecks.apt_sources(host, True).found
    _write(host.root, "/etc/apt/sources.list", "# nothing\ndeb-src http://x/ bookworm main\n")
    c = hostchecks.apt_sources(host, True)
    assert c.status == "fail" and "no apt sources" in c.found
    _write(
        host.root,
        "/etc/apt/sources.list.d/debian.sources",
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n",
    )
    assert hostchecks.apt_sources(host, True).status == "ok"


def test_subids_private_missing_and_shared(host: Host, tmp_path: Path) -> None:
    assert [c.status for c in hostchecks.subids(host, None, True)] == ["ok", "ok"]
    # root's range shared with a login user: sandbox would take the next free block
    _write(host.root, "/etc/subuid", "alice:100000:65536\nroot:100000:65536\n")
    uid, _gid = hostchecks.subids(host, None, True)
    assert uid.status == "warn"
    assert uid.command == "usermod --add-subuids 165536-231071 root"
    # no file at all: sandbox adds the range itself at the first start
    (host.root / "etc/subgid").unlink()
    _uid, gid = hostchecks.subids(host, None, True)
    assert gid.status == "warn" and gid.command == "usermod --add-subgids 100000-165535 root"
    # the runtime dir's recorded range now overlaps another user's: `up` would refuse
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "subids").write_text("uid 100000 65536\ngid 100000 65536\n")
    uid, _gid = hostchecks.subids(host, runtime, True)
    assert uid.status == "fail" and "alice" in uid.found
    assert uid.command == "usermod --del-subuids 100000-165535 alice"


def test_disk_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    free = {"n": 50 << 30}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 0, free["n"]))  # type: ignore[attr-defined]
    assert hostchecks.disk("disk: images", tmp_path / "not" / "yet", True).status == "ok"
    free["n"] = 2 << 30
    assert hostchecks.disk("disk: images", tmp_path, True).status == "warn"
    free["n"] = 100 << 20
    c = hostchecks.disk("disk: images", tmp_path, True)
    assert c.status == "fail" and c.command == "sandbox gc --images"
    assert hostchecks.disks(None, True)[0].status == "warn"  # no workspace: said, not failed


def test_not_root_fails_and_says_so(host: Host) -> None:
    host.euid = 1000
    c = hostchecks.root(host, True)
    assert c.status == "fail"
    assert "must run as root" in c.found and "checked anyway" in c.found
    assert c.command == "sudo sandbox doctor"


@pytest.fixture
def http_socket(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A unix socket answering one HTTP status line per connection (the fake daemon)."""
    path = tmp_path / "d.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    answers = [b"HTTP/1.1 200 OK\r\n\r\nOK"]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                if answers[0]:
                    conn.sendall(answers[0])
                else:
                    stop.wait(1)  # a hung daemon: keeps the connection, says nothing

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield str(path), answers
    stop.set()
    t.join(2)
    srv.close()


def test_daemon_socket_answers_refuses_or_hangs(
    http_socket: tuple[str, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, answers = http_socket
    host = Host(root=Path("/"), importer=lambda m: "7.0")
    monkeypatch.setattr(daemons, "DOCKER_SOCK", path)
    daemon, sdk = daemons.docker(host, False)
    assert (daemon.status, sdk.status, sdk.found) == ("ok", "ok", "docker 7.0")
    answers[0] = b"HTTP/1.1 500 Internal\r\n\r\n"
    daemon, _ = daemons.docker(host, False)
    assert daemon.status == "warn" and "500" in daemon.found
    answers[0] = b""  # accepts and never answers: bounded by the socket timeout
    daemon, _ = daemons.docker(host, True)
    assert daemon.status == "fail" and "no answer" in daemon.found
    monkeypatch.setattr(daemons, "DOCKER_SOCK", str(tmp_path / "none.sock"))
    daemon, _ = daemons.docker(host, False)
    assert (
        daemon.status == "warn" and daemon.command == "apt-get install -y docker.io && systemctl start docker"
    )


def test_sdk_that_does_not_import(host: Host) -> None:
    def importer(module: str) -> str:
        raise ImportError(f"No module named {module!r}")

    host.importer = importer
    c = daemons.sdk(host, "lxd", False)
    assert c.status == "warn" and "pylxd" in c.found and c.command == "pip install -e '.[lxd]'"


def test_optional_backends_warn_the_asked_one_fails(host: Host) -> None:
    """No daemon sockets in the fake tree: lxd, docker, libvirt are warnings by default, and
    failures when asked for with --backend."""
    checks = run_checks(host, None)
    optional = [c for c in checks if c.backend in ("lxd", "docker", "libvirt") and c.status != "ok"]
    assert {c.name for c in optional} == {"lxd daemon", "docker daemon", "libvirt daemon"}
    assert all(c.status == "warn" for c in optional)
    assert exit_code(checks) == 0
    only = run_checks(host, "docker")
    assert {c.backend for c in only} == {"all", "docker"}
    assert by_name(only)["docker daemon"].status == "fail"
    assert exit_code(only) == 1


def test_cli_json_and_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.doctor.run as run

    root = tmp_path / "host"
    fake = healthy(root)
    monkeypatch.setattr(run, "Host", lambda: fake)
    (tmp_path / "ws" / "recipes").mkdir(parents=True)
    r = CliRunner().invoke(cli, ["-C", str(tmp_path / "ws"), "doctor", "--backend", "lxc", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert isinstance(data, list) and {"name", "backend", "status", "found", "fix", "command"} <= set(data[0])
    (root / "proc/self/ns/user").unlink()
    r = CliRunner().invoke(cli, ["-C", str(tmp_path / "ws"), "doctor", "--backend", "lxc"])
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and "cannot work" in r.stdout and "user namespaces" in r.stdout


def test_cli_not_root_says_so_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.doctor.run as run

    fake = healthy(tmp_path / "host")
    fake.euid = 1000
    monkeypatch.setattr(run, "Host", lambda: fake)
    r = CliRunner().invoke(cli, ["doctor", "--backend", "lxc"])
    assert r.exit_code == 1
    assert r.stdout.startswith("not root: sandbox must run as root (sudo sandbox ...)")
    r = CliRunner().invoke(cli, ["doctor", "--backend", "lxc", "--json"])
    [root] = [c for c in json.loads(r.stdout) if c["name"] == "root"]
    assert root["status"] == "fail" and "uid 1000" in root["found"]


def test_cli_unknown_backend_lists_them() -> None:
    r = CliRunner().invoke(cli, ["doctor", "--backend", "podman"])
    assert r.exit_code == 2
    assert "'lxc', 'lxd', 'docker', 'libvirt'" in r.stderr


def test_found_text_cannot_inject_terminal_controls() -> None:
    from sandbox.cli.doctor_cmds import _safe

    assert _safe("owner\x1b]0;pwned\x07 [bold]x[/]") == "owner\\x1b]0;pwned\\x07 \\[bold]x\\[/]"


def test_runs_fast_on_this_host() -> None:
    import time

    t0 = time.monotonic()
    run_checks(Host(), None, None)
    assert time.monotonic() - t0 < 3  # < 1 s on a quiet machine; 2 CPUs shared in CI


def test_subid_file_that_is_not_text(host: Host) -> None:
    (host.root / "etc/subuid").write_bytes(b"\xff\xfe\x00root")
    uid, gid = hostchecks.subids(host, None, True)
    assert uid.status == "fail" and "not readable text" in uid.found
    assert gid.status == "ok"
