"""The libvirt backend on real libvirtd + qemu (TCG on these hosts), and the qcow2 export booted by qemu.

Each VM boot costs about a minute of emulated CPU on 2 cores, so one env (`vm-1`, one instance behind
its router) serves every assertion in order: health through the router, exec as the app user, uid
isolation, logs, snapshot/restore, clone, one promotion under load, down and cleanup. Own workspace,
bridge sbxvirt0, subnet 10.219.0.0/24 and router ports 19500-19599. Traffic goes only to 127.0.0.1 and
to the VMs' addresses in that subnet; every wait is bounded; every domain made here is removed.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.libvirt import workspace_id
from sandbox.workspace import Workspace
from tests.conftest import integration_required
from tests.integration.conftest import Built, Run, new_workspace, sandbox

pytestmark = pytest.mark.integration

BRIDGE = "sbxvirt0"
SUBNET = ipaddress.ip_network("10.219.0.0/24")
SETTINGS = f"network: {{bridge: {BRIDGE}, subnet: {SUBNET}}}\nrouters: {{port_range: [19500, 19599]}}\n"
BOOT = 420  # seconds: a TCG boot on a busy 2-core host
PROFILE = (
    "name: vm\nextends: staging\nbackend: libvirt\ninstances: 1\n"
    f"resources: {{cpus: 1, memory: 512M}}\nhealth: {{timeout: {BOOT}s}}\n"
)
URI = "qemu:///system"


def libvirt_problem() -> str | None:
    for tool in ("virsh", "qemu-system-x86_64", "qemu-img", "mkfs.ext4", "nginx"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/backends.sh installs libvirt and qemu)"
    p = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, text=True, timeout=30, check=False
    )
    if p.returncode != 0:
        return f"libvirtd does not answer: {p.stderr.strip()} (scripts/backends.sh starts it)"
    return None


def ok(r: Run) -> Any:
    assert r.code == 0, f"exit {r.code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.json if r.stdout.lstrip().startswith(("{", "[")) else r.stdout


def get(host: str, port: int, path: str = "/healthz", timeout: float = 10) -> tuple[int, bytes]:
    assert host == "127.0.0.1" or ipaddress.ip_address(host) in SUBNET, f"refusing to send traffic to {host}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_http(host: str, port: int, limit: float) -> dict[str, Any]:
    end = time.monotonic() + limit
    last: object = None
    while time.monotonic() < end:
        try:
            status, body = get(host, port, timeout=5)
            if status == 200:
                doc: dict[str, Any] = json.loads(body)
                return doc
            last = status
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(1.0)
    raise AssertionError(f"{host}:{port} not healthy after {limit}s: {last}")


def domains(prefix: str) -> list[str]:
    p = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return sorted(n for n in p.stdout.split() if n.startswith(prefix))


@dataclass
class VmWs:
    ws: Path
    v1: str
    v2: str
    prefix: str  # domain name prefix of this workspace

    def sbx(self, *args: str, timeout: float = BOOT + 120) -> Run:
        return sandbox(self.ws, *args, timeout=timeout)

    def run(self, env: str, *argv: str, user: str | None = None) -> Run:
        return self.sbx("--json", "exec", env, *(["-u", user] if user else []), "--", *argv)

    def out(self, env: str, *argv: str, user: str | None = None) -> str:
        doc = ok(self.run(env, *argv, user=user))
        assert doc["code"] == 0, doc
        return str(doc["stdout"]).strip()

    def router_port(self, env: str) -> int:
        url = ok(self.sbx("status", env, "--json"))["url"]
        return int(url.rsplit(":", 1)[1].strip("/"))


@pytest.fixture(scope="module")
def vm(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmWs]:
    problem = libvirt_problem()
    if problem is not None:
        if integration_required():
            pytest.fail(f"libvirt tests need libvirtd and qemu: {problem}")
        pytest.skip(problem)
    ws = new_workspace(tmp_path_factory.mktemp("libvirt"), "ws")
    (ws / "recipes" / "web.lock").write_bytes((built.ws / "recipes" / "web.lock").read_bytes())
    (ws / "sandbox.yaml").write_text(SETTINGS)
    (ws / "profiles").mkdir()
    for name in ("prod", "staging"):
        shutil.copy(_repo_profile(name), ws / "profiles")
    (ws / "profiles" / "vm.yaml").write_text(PROFILE)
    prefix = f"sbx-{workspace_id(ws)}-"
    v = VmWs(ws, "", "", prefix)
    try:
        v.v1 = ok(v.sbx("build", "web", "--tag", "v1", "--flavour", "vm", "--json"))["digest"]
        tpl = ws / "recipes" / "web" / "templates" / "settings.py.j2"
        text = tpl.read_text()
        assert 'GREETING = "{{ greeting }}"' in text
        tpl.write_text(text.replace('GREETING = "{{ greeting }}"', 'GREETING = "{{ greeting }} (v2)"'))
        v.v2 = ok(v.sbx("build", "web", "--tag", "v2", "--json"))["digest"]
        tpl.write_text(text)
        assert v.v1 != v.v2
        yield v
    finally:
        for env in ("vm-2", "vm-1"):
            v.sbx("down", env, timeout=300)
        gc = v.sbx("gc", "--json", timeout=300)
        left = domains(prefix)
        for name in left:  # domains this run made; never anyone else's
            subprocess.run(
                ["virsh", "-c", URI, "destroy", name], capture_output=True, timeout=60, check=False
            )
            subprocess.run(
                ["virsh", "-c", URI, "undefine", name], capture_output=True, timeout=60, check=False
            )
    assert gc.code == 0, gc.stdout + gc.stderr
    assert left == [], left


def _repo_profile(name: str) -> Path:
    return Path(__file__).resolve().parents[2] / "profiles" / f"{name}.yaml"


def test_build_vm_flavour_is_pinned_and_derived(vm: VmWs) -> None:
    lock = json.loads((vm.ws / "recipes" / "web.vm.lock").read_text())
    names = {p["name"] for p in lock["packages"]}
    assert {"linux-image-cloud-amd64", "udev", "qemu-guest-agent"} <= names
    assert all(len(p["sha256"]) == 64 for p in lock["packages"])
    images = ok(vm.sbx("images", "--json"))
    assert any(i["digest"] == vm.v1 for i in images)


def test_up_serves_through_the_router_and_exec_runs_as_the_app_user(vm: VmWs) -> None:
    t0 = time.monotonic()
    view = ok(vm.sbx("up", "vm-1", "--image", vm.v1, "--wait", "--json", timeout=BOOT + 600))
    print(f"sandbox up vm-1 (libvirt, TCG) to healthy: {time.monotonic() - t0:.1f}s")
    assert view["backend"] == "libvirt" and view["health"] == "healthy"
    (inst,) = view["instances"]
    assert ipaddress.ip_address(inst["address"]) in SUBNET
    doc = wait_http("127.0.0.1", vm.router_port("vm-1"), 30)
    assert doc["status"] == "ok" and doc["env"] == "staging"
    assert domains(vm.prefix) == [f"{vm.prefix}vm-1-0"]
    # exec: root by default, the app user with -u; the instance's own files came from its config disk
    assert vm.out("vm-1", "id", "-u") == "0"
    assert vm.out("vm-1", "id", "-un", user="app") == "app"
    assert vm.out("vm-1", "sh", "-c", "echo $HOME", user="app") == "/home/app"
    assert vm.out("vm-1", "hostname") == "vm-1-0"
    assert 'SANDBOX_ENV="vm-1"' in vm.out("vm-1", "cat", "/etc/sandbox/instance.env")
    assert vm.run("vm-1", "sh", "-c", "exit 7").json["code"] == 7
    # uid isolation: the app runs as app in the guest, and qemu on the host is not root
    assert vm.out("vm-1", "ps", "-o", "user=", "-C", "gunicorn").split()[0] == "app"
    qemu_uids = _qemu_uids(f"{vm.prefix}vm-1-0")
    assert qemu_uids and 0 not in qemu_uids, qemu_uids
    assert pwd.getpwuid(qemu_uids.pop()).pw_name == "libvirt-qemu"
    # logs: the serial console
    logs = subprocess.run(
        [*_cli(vm.ws), "logs", "vm-1", "-n", "2000"], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Linux version" in logs.stdout or "systemd" in logs.stdout, logs.stdout[-500:]


def test_snapshot_and_restore(vm: VmWs) -> None:
    vm.out("vm-1", "sh", "-c", "echo before > /var/lib/app/marker", user="app")
    ok(vm.sbx("snapshot", "vm-1", "s1", "--json"))
    vm.out("vm-1", "sh", "-c", "echo after > /var/lib/app/marker", user="app")
    ok(vm.sbx("restore", "vm-1", "s1", "--json"))
    assert vm.out("vm-1", "cat", "/var/lib/app/marker") == "before"  # exec waits for the rebooted agent
    wait_http("127.0.0.1", vm.router_port("vm-1"), BOOT)


def test_clone_copies_the_data_with_its_own_identity(vm: VmWs) -> None:
    view = ok(vm.sbx("clone", "vm-1", "vm-2", "--wait", "--json", timeout=BOOT + 600))
    (inst,) = view["instances"]
    assert inst["address"] != ok(vm.sbx("status", "vm-1", "--json"))["instances"][0]["address"]
    assert vm.out("vm-2", "cat", "/var/lib/app/marker") == "before"
    assert vm.out("vm-2", "hostname") == "vm-2-0"
    wait_http(inst["address"], 8000, 60)
    ok(vm.sbx("down", "vm-2"))
    assert domains(vm.prefix) == [f"{vm.prefix}vm-1-0"]


def test_promotion_on_libvirt_fails_no_request(vm: VmWs) -> None:
    port = vm.router_port("vm-1")
    load = Load(port)
    load.start()
    try:
        res = ok(
            vm.sbx("promote", vm.v2, "--to", "vm-1", "--yes", "--force", "--json", timeout=BOOT * 2 + 300)
        )
    finally:
        load.stop.set()
        load.join(30)
    print(f"promotion on libvirt: {res['seconds']}s; {load.requests} requests, failures {load.failures[:5]}")
    assert (res["state"], res["to_image"]) == ("done", vm.v2)
    assert load.requests > 20 and load.failures == []
    assert {load.images[0], load.images[-1]} == {vm.v1, vm.v2}
    assert ok(vm.sbx("status", "vm-1", "--json"))["image"] == vm.v2
    assert domains(vm.prefix) == [
        f"{vm.prefix}{i['name']}" for i in ok(vm.sbx("status", "vm-1", "--json"))["instances"]
    ]


def test_down_removes_domains_and_disks(vm: VmWs) -> None:
    ok(vm.sbx("down", "vm-1"))
    assert domains(vm.prefix) == []
    inst = Workspace(vm.ws).runtime / "libvirt" / "instances"
    assert not inst.exists() or [p.name for p in inst.iterdir()] == []
    gc = ok(vm.sbx("gc", "--json"))
    assert all(v == [] for v in gc.values()), gc


def test_qcow2_export_boots_in_qemu_to_the_health_endpoint(vm: VmWs, tmp_path: Path) -> None:
    out = tmp_path / "web.qcow2"
    res = ok(vm.sbx("image", "export", vm.v1, "--format", "qcow2", "-o", str(out), "--json", timeout=900))
    assert out.is_file() and Path(res["extra"]["kernel"]).is_file() and Path(res["extra"]["initrd"]).is_file()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)], capture_output=True,
                                     text=True, timeout=60, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and "backing-filename" not in info  # standalone
    port = _free_port()
    argv = [a.replace("127.0.0.1:8080-", f"127.0.0.1:{port}-") for a in res["extra"]["qemu"]]
    argv = _serial_to(argv, tmp_path / "serial.log")
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        doc = wait_http("127.0.0.1", port, BOOT)
        print(f"qcow2 export: qemu (TCG) to healthy in {time.monotonic() - t0:.1f}s")
        assert doc["status"] == "ok" and doc["recipe"] == "web"
    finally:
        qemu.kill()
        qemu.wait(30)


# -- helpers -------------------------------------------------------------------------------------


def _serial_to(argv: list[str], log: Path) -> list[str]:
    i = argv.index("-serial")
    return [*argv[: i + 1], f"file:{log}", *argv[i + 2 :]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(ws: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "sandbox", "-C", str(ws)]


def _qemu_uids(domain: str) -> set[int]:
    uids = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            if cmd and b"qemu-system" in cmd[0] and f"guest={domain},".encode() in b" ".join(cmd):
                uids.add(p.stat().st_uid)
    return uids


class Load(threading.Thread):
    """GET /healthz through the router every 0.1 s on new connections, never retried; bounded."""

    def __init__(self, port: int, max_seconds: float = BOOT * 2 + 300) -> None:
        super().__init__(daemon=True)
        self.port, self.max_seconds = port, max_seconds
        self.stop = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self.images: list[str] = []

    def run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and time.monotonic() < end and self.requests < 20000:
            try:
                status, body = get("127.0.0.1", self.port)
                if status != 200:
                    self.failures.append(f"{status} {body[:80]!r}")
                else:
                    image = json.loads(body)["image"]
                    if not self.images or self.images[-1] != image:
                        self.images.append(image)
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self.requests += 1
            time.sleep(0.1)
