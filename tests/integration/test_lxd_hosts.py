"""`backend: lxd` with `hosts:`, end to end: this machine's real LXD is "the host", reached over a
loopback sshd of the test's own (tests/unit/test_hosts_sshd.py) through the real CLI.

One env of 2 instances: `host check` (the client certificate trusted for the default project, as an
earlier version left it, is moved to the restricted project `sandbox`), `up` (the trust set up over
ssh, the server certificate pinned, the image shipped by digest and imported by the host agent into
the project), each app answering at its published port (the agent's DNAT rules) from this machine
and from a network namespace of the test's, what the certificate may not do (a privileged container,
raw.lxc, a disk of the host's /, a proxy device on a new or an existing instance, the default
project, its own project's restrictions), an earlier version's proxy device replaced by DNAT and a
rule lost (as after a reboot) made again by the next command, exec, logs, a rolling promotion to a
rebuilt image, `down` with no instance, rule or record left.

"The host's address" is HOST_ADDRESS, on the host side of a veth pair whose other end is in a
network namespace of the test's (PEER): a connection this machine makes to its own address goes
through nat OUTPUT, one from PEER through PREROUTING and FORWARD (127.0.0.1 is never DNAT'ed).

Undone after: LXD's HTTPS listener (HOST_ADDRESS and a free port, set for the test: it must be unset
before), the project `sandbox` (it must not exist before) with its images and instances, the trust
of the test's client certificate, the veth pair and the namespace. The agent's dir
/var/lib/sandbox-host is a dir of the test's, bind-mounted there for sshd's sessions only. Traffic
goes only to 127.0.0.1, HOST_ADDRESS and the test's instances.
"""

from __future__ import annotations

import contextlib
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

import pylxd.exceptions
import pytest

from sandbox.backends.base import BackendError
from sandbox.backends.lxdapi import client_cert, connect, self_signed
from sandbox.backends.lxdconfig import HOST_PROJECT, PROJECT_CONFIG, WORKSPACE_KEY, image_alias, workspace_id
from sandbox.hosts.ssh import SshTransport
from sandbox.workspace import Workspace
from tests.integration.conftest import Built, cert_fingerprint, http_get, ok, require, sandbox, workspace_like
from tests.unit.test_hosts_sshd import Sshd, free_port, make_sshd

pytestmark = pytest.mark.integration

HOST_ROOT = Path("/var/lib/sandbox-host")
IN_PROJECT = f"--project={HOST_PROJECT}"
SUBNET = "10.224.0.0/24"
HOST_ADDRESS, PEER = "10.226.0.1", "10.226.0.2"  # a /30 of the test's veth pair
NETNS, VETH = "sbxlxdh", "sbxlxdv0"
PROFILE = """name: hlxd
recipe: web
backend: lxd
instances: 2
resources: {{cpus: 1, memory: 512M, pids: 2000}}
hosts:
  - {{name: lo1, ssh: "{target}", address: {address}}}
health: {{path: /healthz, interval: 0.5s, timeout: 90s}}
router: {{listen: 127.0.0.1, port: auto, drain_timeout: 2s}}
"""


def lxc(*args: str, check: bool = True) -> str:
    p = subprocess.run(["lxc", *args], capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0 or not check, f"lxc {' '.join(args)}: {p.stderr}"
    return p.stdout


def lxd_problem() -> str | None:
    if shutil.which("lxc") is None or shutil.which("lxd") is None:
        return "lxc/lxd are missing (scripts/backends.sh lxd)"
    p = subprocess.run(["lxd", "waitready", "--timeout=10"], capture_output=True, timeout=30, check=False)
    return None if p.returncode == 0 else "LXD is not running (scripts/backends.sh lxd)"


def ours(ws: Path) -> list[str]:
    tag = workspace_id(Workspace(ws).id)
    return [
        i["name"]
        for i in json.loads(lxc("list", "--format", "json", IN_PROJECT))
        if i["config"].get(WORKSPACE_KEY) == tag
    ]


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((HOST_ADDRESS, port)) != 0


def ip(*args: str, check: bool = True) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 0 or not check, f"ip {' '.join(args)}: {p.stderr}"


@contextlib.contextmanager
def peer_namespace() -> Iterator[None]:
    """HOST_ADDRESS on this machine, PEER in a namespace of the test's that routes through it."""
    ip("netns", "add", NETNS)
    try:
        ip("link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", VETH)
        ip("link", "set", VETH, "up")
        for cmd in (["addr", "add", f"{PEER}/30", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            ip("netns", "exec", NETNS, "ip", *cmd)
        ip("netns", "exec", NETNS, "ip", "route", "add", "default", "via", HOST_ADDRESS)
        yield
    finally:
        ip("link", "del", VETH, check=False)
        ip("netns", "del", NETNS, check=False)


def from_peer(endpoint: str) -> str:
    """The app's /healthz fetched from the namespace's PEER (through PREROUTING and FORWARD)."""
    p = subprocess.run(
        ["ip", "netns", "exec", NETNS, "curl", "-sS", "--max-time", "10", f"http://{endpoint}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def our_rules() -> list[str]:
    """This test's DNAT and FORWARD rules (its instances are named hlxd-N)."""
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in saved.splitlines() if "sandbox:hlxd-" in line]


@dataclass
class LxdHost:
    ws: Path
    sshd: Sshd
    https: str  # LXD's listener for the test
    config: Path  # SANDBOX_CONFIG: the client certificate and pinned server certificates
    hostroot: Path  # the agent's dir on "the host"


@pytest.fixture
def lxd_host(built: Built, tmp_path: Path) -> Iterator[LxdHost]:
    require(lxd_problem())
    if lxc("config", "get", "core.https_address").strip():
        pytest.fail("core.https_address is already set on this LXD: not changing it")
    if f"/1.0/projects/{HOST_PROJECT}" in json.loads(lxc("query", "/1.0/projects")):
        pytest.fail(f"LXD's project {HOST_PROJECT} exists already: not changing it")
    made_root = not HOST_ROOT.exists()
    HOST_ROOT.mkdir(exist_ok=True)  # a mount point only: the test's dir is mounted on it for sshd
    (tmp_path / "hostroot").mkdir()
    sshd = make_sshd(tmp_path / "sshd", binds={str(HOST_ROOT): tmp_path / "hostroot"})
    https = f"{HOST_ADDRESS}:{free_port()}"
    config = tmp_path / "config"
    saved = os.environ.get("SANDBOX_CONFIG")
    os.environ["SANDBOX_CONFIG"] = str(config)
    ws = workspace_like(built, tmp_path, "ws")
    sshd.client("cli")  # its ssh config: known_hosts with the host key, the client key
    (ws / "sandbox.yaml").write_text(
        f"network: {{bridge: sbxlxdh0, subnet: {SUBNET}}}\nrouters: {{port_range: [19900, 19949]}}\n"
        f"hosts: {{ssh_config: {sshd.dir / 'ssh_config-cli'}, connect_timeout: 3}}\n"
    )
    (ws / "profiles").mkdir()
    (ws / "profiles" / "hlxd.yaml").write_text(PROFILE.format(target=sshd.target, address=HOST_ADDRESS))
    host = LxdHost(ws, sshd, https, config, tmp_path / "hostroot")
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(peer_namespace())
        lxc("config", "set", "core.https_address", https)
        sshd.start()
        yield host
    finally:
        sandbox(ws, "down", "hlxd", timeout=300)
        for name in lxc("list", "--format", "csv", "-c", "n", IN_PROJECT, check=False).split():
            lxc("delete", "-f", name, IN_PROJECT, check=False)  # the project is the test's
        SshTransport("lo1", sshd.target, ssh_config=sshd.dir / "ssh_config-cli").close()
        sshd.stop()
        crt = config / "lxd" / "client.crt"
        if crt.exists():
            lxc("config", "trust", "remove", cert_fingerprint(crt), check=False)
        lxc("config", "unset", "core.https_address", check=False)
        for fp in lxc("image", "list", "--format", "csv", "-c", "F", IN_PROJECT, check=False).split():
            lxc("image", "delete", fp, IN_PROJECT, check=False)
        lxc("project", "delete", HOST_PROJECT, check=False)
        stack.close()
        if made_root:
            with contextlib.suppress(OSError):
                HOST_ROOT.rmdir()
        if saved is None:
            os.environ.pop("SANDBOX_CONFIG", None)
        else:
            os.environ["SANDBOX_CONFIG"] = saved


def answers(endpoint: str, image: str, limit: float = 30) -> dict[str, Any]:
    """The app's /healthz at HOST:PORT (the published port), serving `image`."""
    deadline = time.monotonic() + limit
    while True:
        status, body = http_get(f"http://{endpoint}/healthz", lambda h: h == HOST_ADDRESS)
        if (status == 200 and json.loads(body)["image"] == image) or time.monotonic() > deadline:
            doc: dict[str, Any] = json.loads(body)
            assert status == 200 and doc["image"] == image, (status, body)
            return doc
        time.sleep(0.3)


def test_lxd_on_a_host_trusts_over_ssh_publishes_promotes_and_leaves_nothing(
    lxd_host: LxdHost, built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    ws, v1 = lxd_host.ws, built.digest
    # the client certificate as an earlier version trusted it: for the (unrestricted) default project
    crt, _ = client_cert()
    lxc("config", "trust", "add", str(crt), "--restricted", "--projects", "default", "--name", "sandbox@old")
    check = ok(sandbox(ws, "host", "check", "hlxd", "--json"))
    items = {c["item"]: c for h in check["hosts"] for c in h["checks"]}
    assert items["lxd"]["ok"] and "LXD 5." in items["lxd"]["detail"], items
    assert items["lxd storage"]["ok"] and "lxc" not in items, items

    times: dict[str, float] = {"check": time.monotonic() - t0}
    t = time.monotonic()
    v = ok(sandbox(ws, "up", "hlxd", "--image", v1, "--wait", "--json", timeout=600))
    times["up"] = time.monotonic() - t
    assert [i["host"] for i in v["instances"]] == ["lo1", "lo1"], v["instances"]
    endpoints = [i["endpoint"] for i in v["instances"]]
    assert [e.split(":")[0] for e in endpoints] == [HOST_ADDRESS] * 2 and len(set(endpoints)) == 2
    for i, e in enumerate(endpoints):  # the app itself, at the host's address and its published port
        assert answers(e, v1)["image"] == v1  # from this machine: nat OUTPUT
        assert json.loads(from_peer(e))["image"] == v1  # from another namespace: PREROUTING, FORWARD
        # published by the agent's DNAT rules (two per instance), recorded on the host; no proxy device
        assert len([r for r in our_rules() if f"sandbox:hlxd-{i}" in r]) == 2
        assert f"hlxd-{i}.json" in os.listdir(lxd_host.hostroot / "lxd-published")
        devices = json.loads(lxc("query", f"/1.0/instances/hlxd-{i}?project={HOST_PROJECT}"))["devices"]
        assert all(d["type"] != "proxy" for d in devices.values()), devices
    # trust set up over ssh: the server's own certificate pinned, ours trusted for the project alone
    [pinned] = (lxd_host.config / "lxd" / "servercerts").iterdir()
    assert pinned.name == lxd_host.https.replace(":", "_") + ".crt"
    assert pinned.read_bytes() == Path("/var/lib/lxd/server.crt").read_bytes()
    fp = cert_fingerprint(crt)
    [trusted] = [
        c for c in json.loads(lxc("config", "trust", "list", "--format", "json")) if c["fingerprint"] == fp
    ]
    assert trusted["restricted"] and trusted["projects"] == [HOST_PROJECT], trusted
    project = json.loads(lxc("query", f"/1.0/projects/{HOST_PROJECT}"))["config"]
    assert {k: project.get(k) for k in PROJECT_CONFIG} == PROJECT_CONFIG
    # the pin holds: a server certificate other than the pinned one is refused
    url = f"https://{lxd_host.https}"
    pinned.write_bytes(self_signed("impostor", days=1)[0])
    with pytest.raises(BackendError, match="does not match"):
        connect(url, project=HOST_PROJECT)
    pinned.write_bytes(Path("/var/lib/lxd/server.crt").read_bytes())
    client = connect(url, project=HOST_PROJECT)
    assert client.trusted
    not_allowed(client, url, client.images.get_by_alias(image_alias(v1)).fingerprint)
    # the image went by digest into the host's store, and from there into LXD, in the project
    assert (lxd_host.sshd.dir.parent / "hostroot" / "store" / "manifests" / f"{v1[7:]}.json").is_file()
    assert image_alias(v1) in lxc("image", "list", "--format", "csv", "-c", "l", IN_PROJECT)

    upgrade_and_reboot(lxd_host, endpoints, v1, monkeypatch)

    r = sandbox(ws, "exec", "hlxd", "-i", "1", "--", "cat", "/etc/hostname")
    assert r.code == 0 and r.stdout.strip() == "hlxd-1", r
    r = sandbox(ws, "logs", "hlxd", "-n", "50")  # the `lxc` client, its remote in the project
    assert r.code == 0 and "gunicorn" in (r.stdout + r.stderr).lower(), r
    s = ok(sandbox(ws, "status", "hlxd", "--json"))
    assert all(i["health"] == "healthy" for i in s["instances"]), s

    tpl = ws / "recipes" / "web" / "templates" / "settings.py.j2"
    original = tpl.read_text()
    tpl.write_text(original.replace('GREETING = "{{ greeting }}"', 'GREETING = "{{ greeting }} (lxd host)"'))
    t = time.monotonic()
    try:
        v2 = ok(sandbox(ws, "build", "web", "--tag", "hlxd", "--json", timeout=900))["digest"]
    finally:
        tpl.write_text(original)
    times["build"], t = time.monotonic() - t, time.monotonic()
    res = ok(sandbox(ws, "promote", v2, "--to", "hlxd", "--force", "--yes", "--json", timeout=600))
    times["promote"] = time.monotonic() - t
    assert res["state"] == "done", res
    s = ok(sandbox(ws, "status", "hlxd", "--json"))
    assert s["image"] == v2 and [i["host"] for i in s["instances"]] == ["lo1", "lo1"], s
    new = [i["endpoint"] for i in s["instances"]]
    for e in new:
        assert answers(e, v2)["image"] == v2
    assert sorted(ours(ws)) == ["hlxd-2", "hlxd-3"]

    t = time.monotonic()
    ok(sandbox(ws, "down", "hlxd", "--json", timeout=300))
    times["down"] = time.monotonic() - t
    assert ours(ws) == []
    for e in endpoints + new:  # nothing answers on a published port any more
        assert refused(int(e.split(":")[1])), e
    assert our_rules() == [] and os.listdir(lxd_host.hostroot / "lxd-published") == [".lock"]
    assert json.loads(lxc("query", f"/1.0/instances?project={HOST_PROJECT}")) == []
    times["total"] = time.monotonic() - t0
    print("lxd on hosts:", {k: round(x, 1) for k, x in times.items()})


def upgrade_and_reboot(
    host: LxdHost, endpoints: list[str], image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an earlier version left (the project allowing proxy devices, hlxd-0 published by its proxy
    device `sbx-publish`, with no rule or record of the agent's) and what a reboot leaves (hlxd-1's
    rules gone, its record kept), plus a stray proxy device: the next command's `lxd-trust` publishes
    both by DNAT again, removes every proxy device and blocks them in the project again."""
    from sandbox.hostagent.publish import remove

    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(host.hostroot))  # the agent's lock file, the same
    records = host.hostroot / "lxd-published"
    old = json.loads((records / "hlxd-0.json").read_text())
    (records / "hlxd-0.json").unlink()
    remove("hlxd-0")
    remove("hlxd-1")
    assert our_rules() == [] and refused(int(endpoints[1].split(":")[1]))
    lxc("project", "set", HOST_PROJECT, "restricted.devices.proxy=allow")
    listen, connect = (
        f"listen=tcp:{HOST_ADDRESS}:{old['port']}",
        f"connect=tcp:{old['address']}:{old['app_port']}",
    )
    lxc("config", "device", "add", "hlxd-0", "sbx-publish", "proxy", listen, connect, "bind=host", IN_PROJECT)
    stray = f"listen=tcp:{HOST_ADDRESS}:{free_port()}"
    lxc("config", "device", "add", "hlxd-1", "stray", "proxy", stray, "connect=tcp:127.0.0.1:9", IN_PROJECT)
    assert answers(endpoints[0], image)["image"] == image  # by the old proxy device

    r = sandbox(host.ws, "exec", "hlxd", "-i", "0", "--", "true")  # any command that uses the host
    assert r.code == 0, r
    project = json.loads(lxc("query", f"/1.0/projects/{HOST_PROJECT}"))["config"]
    assert project["restricted.devices.proxy"] == "block"
    for i, e in enumerate(endpoints):
        devices = json.loads(lxc("query", f"/1.0/instances/hlxd-{i}?project={HOST_PROJECT}"))["devices"]
        assert all(d["type"] != "proxy" for d in devices.values()), devices
        assert json.loads(from_peer(e))["image"] == image and answers(e, image)["image"] == image
    assert len(our_rules()) == 4 and json.loads((records / "hlxd-0.json").read_text()) == old


def not_allowed(client: Any, url: str, image: str) -> None:
    """What sandbox's client certificate may not do on the host (LXD refuses it; nothing is made):
    a privileged container, raw.lxc, a disk of the host's /, nesting, a proxy device (one can connect
    to LXD's own unix socket, which answers as root) on a new or an existing instance; anything of the
    default project; its own project's restrictions, the server's config, the trust store."""
    source = {"type": "container", "source": {"type": "image", "fingerprint": image}}
    to_lxd = {
        "type": "proxy",
        "bind": "instance",
        "listen": "unix:/root/lxd.socket",
        "connect": "unix:/var/lib/lxd/unix.socket",
    }
    with pytest.raises(pylxd.exceptions.LXDAPIException) as e:
        client.api.instances["hlxd-0"].patch(json={"devices": {"lxd": to_lxd}})
    assert "forbidden" in str(e.value), str(e.value)
    for name, extra in (
        ("sbx-proxy", {"devices": {"lxd": to_lxd}}),
        ("sbx-priv", {"config": {"security.privileged": "true"}}),
        ("sbx-raw", {"config": {"raw.lxc": "lxc.apparmor.profile=unconfined"}}),
        ("sbx-nest", {"config": {"security.nesting": "true"}}),
        ("sbx-root", {"devices": {"host": {"type": "disk", "source": "/", "path": "/mnt/host"}}}),
    ):
        with pytest.raises(pylxd.exceptions.LXDAPIException) as e:
            client.api.instances.post(json={"name": name, **source, **extra})
        assert "forbidden" in str(e.value), (name, str(e.value))
    session = client.api.session
    pem = self_signed("another client", days=1)[0].decode()  # PEM body: LXD's base64 DER
    other = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    for method, path, body in (
        ("GET", "/1.0/instances?project=default", None),
        ("GET", "/1.0/profiles/default?project=default", None),
        ("PATCH", f"/1.0/projects/{HOST_PROJECT}", {"config": {"restricted": "false"}}),
        ("PATCH", "/1.0", {"config": {}}),  # (harmless, were it allowed)
        ("POST", "/1.0/certificates", {"type": "client", "certificate": other, "name": "x"}),
    ):
        r = session.request(method, url + path, json=body, timeout=30)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
    made = sorted(i.name for i in client.instances.all(recursion=1))
    assert made == ["hlxd-0", "hlxd-1"], made  # nothing was made
