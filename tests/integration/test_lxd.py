"""The lxd backend on this host's real LXD: export + `lxc launch`, up/health/exec/isolation,
snapshot/restore, clone, gc, down, and a remote over loopback HTTPS (the rolling promotion under load
is test_contract.py's, parameterized with lxd).

Everything runs in this module's own workspace (sandbox.yaml below: its own subnet and router
ports); LXD objects are this workspace's instances (tagged user.sandbox.workspace) and `wlxd-*`
names. Traffic goes only to 127.0.0.1 and to addresses in SUBNET of instances made here; every wait
is bounded; the https listener and the trusted certificate of the remote test are undone after it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.workspace import Workspace
from tests.integration.conftest import (
    Built,
    Run,
    cert_fingerprint,
    exec_out,
    in_subnet,
    ok,
    require,
    sandbox,
    workspace_like,
)
from tests.integration.conftest import healthz as shared_healthz
from tests.integration.conftest import http_get as shared_http_get

pytestmark = pytest.mark.integration

SUBNET = ipaddress.ip_network("10.218.0.0/24")
SETTINGS = f"network: {{bridge: sbxlxd0, subnet: {SUBNET}}}\nrouters: {{port_range: [19400, 19499]}}\n"
PROFILE = """name: {name}
recipe: web
backend: lxd
{remote}instances: {instances}
resources: {{cpus: 1, memory: 512M, pids: 2000}}
env: {{APP_ENV: lxdtest}}
health: {{path: /healthz, interval: 0.5s, timeout: 90s}}
router: {{listen: 127.0.0.1, port: auto, server_name: _, drain_timeout: 5s}}
"""
EXPORT_ADDRESS = "10.218.0.250"  # the raw `lxc launch` of the export (outside what sandbox allocates first)
MADE: set[str] = set()
TIMES: dict[str, float] = {}


def lxd_problem() -> str | None:
    for tool in ("lxc", "lxd", "nginx"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (scripts/backends.sh lxd)"
    p = subprocess.run(["lxd", "waitready", "--timeout=10"], capture_output=True, timeout=30, check=False)
    return None if p.returncode == 0 else "LXD is not running (scripts/backends.sh lxd)"


def sbx(ws: Path, *args: str, timeout: float = 400) -> Run:
    if len(args) > 1 and args[0] in ("up", "clone"):
        MADE.add(args[2] if args[0] == "clone" else args[1])
    return sandbox(ws, *args, timeout=timeout)


def lxc(*args: str, check: bool = True, timeout: float = 300) -> str:
    p = subprocess.run(["lxc", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0 or not check, f"lxc {' '.join(args)}: {p.stderr}"
    return p.stdout


def out(ws: Path, env: str, *argv: str, user: str | None = None, index: int = 0) -> str:
    return exec_out(ws, env, *argv, user=user, index=index)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return shared_http_get(url, in_subnet(SUBNET), timeout)


def healthz(url: str) -> dict[str, Any]:
    return shared_healthz(url, in_subnet(SUBNET))


def wait_healthz(url: str, limit: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        try:
            return healthz(url)
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def ours(ws: Path) -> list[dict[str, Any]]:
    """LXD instances tagged as this workspace's."""
    from sandbox.backends.lxdconfig import WORKSPACE_KEY, workspace_id

    tag = workspace_id(Workspace(ws).id)
    return [i for i in json.loads(lxc("list", "--format", "json")) if i["config"].get(WORKSPACE_KEY) == tag]


def fingerprint_of(alias: str) -> str | None:
    p = subprocess.run(
        ["lxc", "image", "info", alias], capture_output=True, text=True, timeout=60, check=False
    )
    for line in p.stdout.splitlines():
        if line.startswith("Fingerprint:"):
            return line.split()[1]
    return None


@dataclass
class LxdWs:
    ws: Path
    v1: str


@pytest.fixture(scope="module")
def lws(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LxdWs]:
    problem = lxd_problem()
    require(problem)
    ws = workspace_like(built, tmp_path_factory.mktemp("lxd"), "ws")
    (ws / "sandbox.yaml").write_text(SETTINGS)
    (ws / "profiles").mkdir()
    (ws / "profiles" / "clxd.yaml").write_text(PROFILE.format(name="clxd", remote="", instances=1))
    v1 = ok(sbx(ws, "build", "web", "--tag", "v1", "--json"))["digest"]
    try:
        yield LxdWs(ws, v1)
    finally:
        for env in sorted(MADE):
            sandbox(ws, "down", env, timeout=300)
        sandbox(ws, "gc", "--images", "--json", timeout=300)
        for i in ours(ws):
            lxc("delete", "-f", i["name"], check=False)
        print("lxd timings:", {k: round(v, 2) for k, v in TIMES.items()})


# -- export, proven by the real client -----------------------------------------------------------


def test_export_is_imported_and_launched_by_lxc(lws: LxdWs, tmp_path: Path) -> None:
    f = tmp_path / "web.lxd.tar"
    t0 = time.monotonic()
    ok(sbx(lws.ws, "image", "export", lws.v1, "--format", "lxd", "-o", str(f), "--json"))
    TIMES["export"] = time.monotonic() - t0
    with open(f, "rb") as fh:
        fp = hashlib.file_digest(fh, "sha256").hexdigest()
    # the same image always gives the same tarball: a copy already in LXD would block the import
    lxc("image", "delete", fp, check=False)
    alias, name = f"wlxd-exp-{os.getpid()}", f"wlxd-exp-{os.getpid()}"
    try:
        t0 = time.monotonic()
        text = lxc("image", "import", str(f), "--alias", alias)
        TIMES["lxc image import"] = time.monotonic() - t0
        assert fp in text and fingerprint_of(alias) == fp
        pool = ["-s", "sandbox"] if lxc("storage", "show", "sandbox", check=False) else []
        lxc("init", alias, name, *pool)
        lxc(
            "config", "device", "add", name, "eth0", "nic", "nictype=routed", f"ipv4.address={EXPORT_ADDRESS}"
        )
        lxc("start", name)
        doc = wait_healthz(f"http://{EXPORT_ADDRESS}:8000/")
        assert doc["status"] == "ok" and doc["recipe"] == "web"
        assert lxc("exec", name, "--", "cat", "/etc/hostname").strip() == name  # from the templates
        assert f"127.0.1.1 {name}" in lxc("exec", name, "--", "cat", "/etc/hosts")
        inside = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/healthz').status)"
        assert lxc("exec", name, "--", "python3", "-c", inside).strip() == "200"
        assert lxc("exec", name, "--", "cat", "/proc/1/comm").strip() == "systemd"
    finally:
        lxc("delete", "-f", name, check=False)
        lxc("image", "alias", "delete", alias, check=False)  # the image stays: `up` reuses it by fingerprint


# -- one env: up, health, exec, isolation, snapshot, clone, gc, down -----------------------------


@pytest.fixture(scope="module")
def env1(lws: LxdWs) -> Iterator[dict[str, Any]]:
    t0 = time.monotonic()
    v = ok(sbx(lws.ws, "up", "clxd-1", "--image", lws.v1, "--wait", "--json"))
    TIMES["up clxd-1"] = time.monotonic() - t0
    yield v


def test_up_is_healthy_through_the_router_and_directly(lws: LxdWs, env1: dict[str, Any]) -> None:
    assert (
        env1["backend"] == "lxd"
        and env1["health"] == "healthy"
        and env1["url"].startswith("http://127.0.0.1:")
    )
    doc = healthz(env1["url"])
    assert (doc["image"], doc["env"]) == (lws.v1, "lxdtest")
    (inst,) = env1["instances"]
    assert ipaddress.ip_address(inst["address"]) in SUBNET and inst["name"] == "clxd-1-0"
    assert healthz(f"http://{inst['address']}:8000/")["image"] == lws.v1
    # the imported image is the export's bytes: the export test's tarball had this fingerprint
    from sandbox.backends.lxdconfig import image_alias

    assert fingerprint_of(image_alias(lws.v1)) is not None


def test_exec_as_app_user_with_the_app_env_and_limits(lws: LxdWs, env1: dict[str, Any]) -> None:
    ws = lws.ws
    assert out(ws, "clxd-1", "id", "-un", user="app") == "app"
    assert out(ws, "clxd-1", "id", "-u", user="app") == "1001"
    env = out(ws, "clxd-1", "env", user="app")
    for line in ("SANDBOX_INSTANCE=clxd-1-0", "SANDBOX_ENV=clxd-1", "APP_ENV=lxdtest", "HOME=/home/app"):
        assert line in env.splitlines(), env
    assert out(ws, "clxd-1", "hostname") == "clxd-1-0"
    r = sandbox(ws, "exec", "clxd-1", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.code == 7 and r.json["stdout"] == "out\n" and r.json["stderr"] == "err\n"
    (info,) = [i for i in ours(ws) if i["name"] == "clxd-1-0"]
    cfg = info["config"]
    assert (cfg["limits.cpu"], cfg["limits.memory"], cfg["limits.processes"]) == ("1", "536870912B", "2000")
    assert info["devices"]["eth0"]["nictype"] == "routed"
    logs = subprocess.run(
        [*sandbox_argv(ws), "logs", "clxd-1", "-n", "50"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert logs.returncode == 0 and "gunicorn" in logs.stdout.lower() + logs.stderr.lower()


def sandbox_argv(ws: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "sandbox", "-C", str(ws)]


def test_container_root_is_not_host_root(lws: LxdWs, env1: dict[str, Any]) -> None:
    first = out(lws.ws, "clxd-1", "cat", "/proc/self/uid_map").split()
    assert first[0] == "0" and int(first[1]) >= 100000, first
    assert lxc("config", "get", "clxd-1-0", "security.privileged").strip() in ("", "false")


# snapshot/restore and clone on lxd: test_contract.py (test_snapshot_and_restore, test_clone_...)


def test_gc_removes_orphans_but_never_foreign_instances(lws: LxdWs, env1: dict[str, Any]) -> None:
    ws = lws.ws
    foreign = f"wlxd-foreign-{os.getpid()}"
    lxc("copy", "clxd-1-0", "clxd-9-0", "--instance-only")  # keeps the tag: an orphan of this workspace
    lxc("copy", "clxd-1-0", foreign, "--instance-only")
    lxc("config", "set", foreign, "user.sandbox.workspace", "someone-else")
    try:
        gc = ok(sbx(ws, "gc", "--json"))
        assert gc["removed_instances"] == ["clxd-9-0"]
        names = [i["name"] for i in json.loads(lxc("list", "--format", "json"))]
        assert "clxd-9-0" not in names and foreign in names and "clxd-1-0" in names
    finally:
        lxc("delete", "-f", "clxd-9-0", check=False)
        lxc("delete", "-f", foreign, check=False)


def test_down_leaves_nothing(lws: LxdWs, env1: dict[str, Any]) -> None:
    ws = lws.ws
    addr = env1["instances"][0]["address"]
    t0 = time.monotonic()
    ok(sbx(ws, "down", "clxd-1", "--json"))
    TIMES["down clxd-1"] = time.monotonic() - t0
    assert [i["name"] for i in ours(ws) if i["name"].startswith("clxd-1")] == []
    assert addr not in subprocess.run(["ip", "route"], capture_output=True, text=True, check=False).stdout
    with pytest.raises(OSError):
        http_get(env1["url"], timeout=2)
    r = sandbox(ws, "status", "clxd-1", "--json")
    assert r.code == 1 and "not found" in r.stdout + r.stderr


# -- promotion: test_contract.py's test_rolling_promotion_fails_no_request[lxd] (2 instances, under load)


# -- a remote over loopback HTTPS ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def https_lxd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """This host's LXD listening on a loopback port, with sandbox's config dir in tmp_path; undone after."""
    if lxc("config", "get", "core.https_address").strip():
        pytest.fail("core.https_address is already set on this LXD: not changing it")
    url = f"https://127.0.0.1:{free_port()}"
    conf = tmp_path / "config"
    saved = os.environ.get("SANDBOX_CONFIG")
    os.environ["SANDBOX_CONFIG"] = str(conf)
    lxc("config", "set", "core.https_address", url.removeprefix("https://"))
    try:
        yield url, conf
    finally:
        crt = conf / "lxd" / "client.crt"
        fp = cert_fingerprint(crt) if crt.exists() else ""
        if fp:
            lxc("config", "trust", "remove", fp, check=False)
        lxc("config", "unset", "core.https_address", check=False)
        if saved is None:
            os.environ.pop("SANDBOX_CONFIG", None)
        else:
            os.environ["SANDBOX_CONFIG"] = saved


def test_remote_over_https_with_a_trusted_client_certificate(lws: LxdWs, https_lxd: tuple[str, Path]) -> None:
    url, conf = https_lxd
    ws = lws.ws
    (ws / "profiles" / "rlxd.yaml").write_text(
        PROFILE.format(name="rlxd", remote=f"remote: {url}\n", instances=1)
    )
    # 1. the server's certificate is unknown: a clear error, nothing created
    r = sbx(ws, "up", "rlxd-1", "--image", lws.v1, "--json")
    assert r.code == 1 and "does not know the certificate" in r.stdout and "server.crt" in r.stdout
    assert "rlxd-1" not in [e["name"] for e in ok(sandbox(ws, "ls", "--json"))]
    certs = conf / "lxd" / "servercerts"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy("/var/lib/lxd/server.crt", certs / f"{url.removeprefix('https://').replace(':', '_')}.crt")
    # 2. known server, but it does not trust sandbox's client certificate yet
    r = sbx(ws, "up", "rlxd-1", "--image", lws.v1, "--json")
    assert r.code == 1 and "does not trust" in r.stdout and "lxc config trust add" in r.stdout, r.stdout
    crt = conf / "lxd" / "client.crt"
    assert crt.exists() and (conf / "lxd" / "client.key").stat().st_mode & 0o077 == 0
    lxc("config", "trust", "add", str(crt))
    # 3. trusted: the env runs on the "remote", exec and logs go through it too
    v = ok(sbx(ws, "up", "rlxd-1", "--image", lws.v1, "--wait", "--json"))
    try:
        assert healthz(v["url"])["image"] == lws.v1
        assert out(ws, "rlxd-1", "id", "-un", user="app") == "app"
        logs = subprocess.run(
            [*sandbox_argv(ws), "logs", "rlxd-1", "-n", "20"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert logs.returncode == 0 and "rlxd-1-0" in logs.stdout, logs.stderr
    finally:
        ok(sbx(ws, "down", "rlxd-1", "--json"))
    assert "rlxd-1-0" not in [i["name"] for i in ours(ws)]
