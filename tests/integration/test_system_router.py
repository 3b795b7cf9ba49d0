"""`routers.nginx: system`: an env's router as include files in a running "system" nginx (started by
the test from a config tree under tmp, with a site of its own), through the real CLI and real LXC:
up → health through it → a promotion under the load probe → maintenance/read-only → down."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.routing.nginx import NginxMaster
from sandbox.workspace import Workspace
from tests.integration.conftest import Built, build_variant, lxc_problem, new_workspace, require, sandbox
from tests.sysnginx import OTHER_SITE, SystemNginx, system_nginx

pytestmark = pytest.mark.integration

BRIDGE = "sbxsysr0"
SUBNET = ipaddress.ip_network("10.226.0.0/24")
PORT = 19530  # prod's router port in the system nginx
FORWARD = 19531  # prod's profile port: 127.0.0.1:FORWARD → each instance's app port (stream block)


@dataclass
class Sys:
    ws: Path
    nginx: SystemNginx
    v1: str
    v2: str


def sbx(ws: Path, *args: str, timeout: float = 300) -> Any:
    r = sandbox(ws, *args, timeout=timeout)
    assert r.code == 0, f"sandbox {' '.join(args)}: exit {r.code}\n{r.stdout}\n{r.stderr}"
    return r.json if r.stdout.lstrip().startswith(("{", "[")) else r.stdout


def send(
    method: str, path: str, port: int = PORT, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection to the system nginx on loopback."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def served_image(port: int = PORT) -> str:
    status, _, body = send("GET", "/healthz", port)
    assert status == 200, (status, body)
    image: str = json.loads(body)["image"]
    return image


def own_nginx_masters(ws: Path) -> list[int]:
    """nginx masters of this workspace's own routers: there must be none in system mode."""
    needle = f"{Workspace(ws).runtime / 'routers'}/".encode()
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
    return out


@pytest.fixture(scope="module")
def sysenv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sys]:
    require(lxc_problem())
    base = tmp_path_factory.mktemp("sysrouter")
    ws = new_workspace(base, "ws")
    (ws / "recipes" / "web.lock").write_bytes((built.ws / "recipes" / "web.lock").read_bytes())
    shutil.copytree(Path(__file__).resolve().parents[2] / "profiles", ws / "profiles")
    prod = ws / "profiles" / "prod.yaml"
    text = prod.read_text()
    assert "  port: 8080\n" in text and "  timeout: 120s\n" in text
    prod.write_text(
        text.replace("  port: 8080\n", f"  port: {PORT}\n").replace("120s", "30s")
        + f"ports:\n  - {{host: {FORWARD}, container: 8000}}\n"
    )
    had_bridge = subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0
    made: list[str] = []
    mode = os.stat(base).st_mode
    os.chmod(base, mode | 0o011)  # container root (a subordinate uid) must reach the rootfs
    with system_nginx(base / "etc") as nginx:
        (ws / "sandbox.yaml").write_text(
            f"network: {{bridge: {BRIDGE}, subnet: {SUBNET}}}\n" + nginx.settings()
        )
        try:
            v1 = sbx(ws, "build", "web", "--tag", "v1", "--json", timeout=900)["digest"]
            v2 = build_variant(ws, "v2")
            made.append("prod")
            yield Sys(ws, nginx, v1, v2)
        finally:
            for name in made:
                sandbox(ws, "down", name, timeout=180)
            sandbox(ws, "gc", timeout=300)
            if not had_bridge:
                subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
            os.chmod(base, mode)


def test_up_promote_modes_down_through_a_system_nginx(sysenv: Sys) -> None:
    ws, nginx = sysenv.ws, sysenv.nginx
    master = nginx.pid
    conf = nginx.include_dir / "sandbox-prod.conf"
    stream = nginx.stream_dir / "sandbox-prod.conf"

    # up: the env is two include files in the running system nginx, no nginx of its own
    v = sbx(ws, "up", "prod", "--image", sysenv.v1, "--wait", "--json", timeout=300)
    assert v["url"] == f"http://127.0.0.1:{PORT}/" and len(v["instances"]) == 2
    assert conf.is_file() and f"of workspace {ws};" in conf.read_text().splitlines()[0]
    assert stream.is_file() and f"listen 127.0.0.1:{FORWARD};" in stream.read_text()
    assert own_nginx_masters(ws) == []
    assert nginx.pid == master and nginx.other_site() == OTHER_SITE

    # health through it, on both the http server and the forwarded port
    assert {served_image() for _ in range(6)} == {sysenv.v1}
    assert served_image(FORWARD) == sysenv.v1

    # a promotion under the built-in load probe: no failed request, and the new image serves
    r = sbx(
        ws, "promote", sysenv.v2, "--to", "prod", "--yes", "--force", "--probe", "40", "--json", timeout=400
    )
    assert r["state"] == "done" and len(r["per_backend"]) == 2, r
    probe = r["probe"]
    assert probe["during"]["requests"] > 0, probe
    assert {p: (x["non_2xx"], x["errors"]) for p, x in probe.items() if x["non_2xx"] or x["errors"]} == {}
    assert {served_image() for _ in range(6)} == {sysenv.v2}
    addresses = {i["address"] for i in sbx(ws, "status", "prod", "--json")["instances"]}
    # the balancer's backends (its dict's initial value, for a restart) and the stream block's servers
    routed = next(ln for ln in conf.read_text().splitlines() if 'dict:add("backends", ' in ln)
    assert set(routed.split('"')[3].split()) == {f"{a}:8000" for a in addresses}
    assert all(f"server {a}:8000;" in stream.read_text() for a in addresses)

    # maintenance: everyone but the allowlist sees the page; read-only: writes get 503 + Retry-After;
    # each switch goes through the env's control socket: the system nginx's workers stay the same
    workers = NginxMaster._workers(master, shutting_down=False)
    sbx(ws, "maintenance", "on", "prod")
    status, headers, body = send("GET", "/")
    assert status == 503 and b"We are updating" in body and headers.get("retry-after") == "60"
    sbx(ws, "maintenance", "on", "prod", "--allow", "127.0.0.1")
    assert send("GET", "/healthz")[0] == 200
    sbx(ws, "maintenance", "off", "prod")
    sbx(ws, "readonly", "on", "prod")
    status, headers, _ = send("POST", "/notes", body=b"x")
    assert status == 503 and headers.get("retry-after") == "30"
    assert send("GET", "/healthz")[0] == 200
    sbx(ws, "readonly", "off", "prod")
    assert 200 <= send("POST", "/notes", body=b"x")[0] < 300
    assert NginxMaster._workers(master, shutting_down=False) == workers  # no reload
    assert nginx.pid == master and nginx.other_site() == OTHER_SITE

    # down: the files are gone, the system nginx still runs and serves its own site
    sbx(ws, "down", "prod")
    assert not conf.exists() and not stream.exists()
    with pytest.raises(OSError):
        send("GET", "/healthz")
    assert nginx.running() and nginx.pid == master and nginx.other_site() == OTHER_SITE
