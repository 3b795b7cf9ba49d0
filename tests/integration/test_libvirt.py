"""The VM flavour (`sandbox build --flavour vm`) and the qcow2 export booted by real qemu (TCG).

Envs on libvirt (up, health through the router, exec as the app user, isolation, snapshot/restore,
clone, a promotion under load, down) are the contract suite's libvirt case (test_contract.py), so
that each costly TCG boot is paid once. Own workspace; the export boots with qemu's user-mode
network and a forward from 127.0.0.1, the only address the test sends traffic to.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Built, ok, require, sandbox, workspace_like

pytestmark = pytest.mark.integration

BOOT = 420  # seconds: a TCG boot on a busy 2-core host


def qemu_problem() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/backends.sh installs qemu)"
    return None


def wait_health(port: int, limit: float) -> dict[str, Any]:
    """GET 127.0.0.1:port/healthz until it answers 200 (bounded)."""
    end = time.monotonic() + limit
    last: object = None
    while time.monotonic() < end:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz", headers={"Connection": "close"})
            r = conn.getresponse()
            body = r.read()
            if r.status == 200:
                doc: dict[str, Any] = json.loads(body)
                return doc
            last = r.status
        except (OSError, http.client.HTTPException) as e:
            last = e
        finally:
            conn.close()
        time.sleep(1.0)
    raise AssertionError(f"127.0.0.1:{port} not healthy after {limit}s: {last}")


@dataclass
class VmBuild:
    ws: Path
    image: str
    vm: str


@pytest.fixture(scope="module")
def vmbuild(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmBuild]:
    """A workspace with the session's VM build (vm_built: its store and VM lock); `build --flavour
    vm` there finds the flavour in the store's cache."""
    problem = qemu_problem()
    require(problem)
    vm_built: Built = request.getfixturevalue("vm_built")  # after the check: no VM build to skip
    ws = workspace_like(vm_built, tmp_path_factory.mktemp("libvirt"), "ws")
    res = ok(sandbox(ws, "build", "web", "--flavour", "vm", "--json", timeout=900))
    assert res["digest"] == vm_built.digest  # the same recipe and lock: the same image
    assert res["flavours"]["vm"] == vm_built.vm  # and the same VM flavour
    yield VmBuild(ws, res["digest"], res["flavours"]["vm"])


def test_vm_flavour_is_pinned_derived_and_cached(vmbuild: VmBuild) -> None:
    ws = vmbuild.ws
    lock = json.loads((ws / "recipes" / "web.vm.lock").read_text())
    names = {p["name"] for p in lock["packages"]}
    assert {"linux-image-cloud-amd64", "udev", "qemu-guest-agent"} <= names, names
    assert all(len(p["sha256"]) == 64 for p in lock["packages"])
    m = ok(sandbox(ws, "image", "inspect", vmbuild.vm, "--json"))
    assert m["flavour"] == "vm" and m["derives_from"] == vmbuild.image
    assert [layer["kind"] for layer in m["layers"]] == ["base", "app", "vm"]
    assert "linux-image-cloud-amd64" in m["packages"]
    t0 = time.monotonic()
    again = ok(sandbox(ws, "build", "web", "--flavour", "vm", "--locked", "--json"))
    assert again["flavours"]["vm"] == vmbuild.vm and time.monotonic() - t0 < 30  # cached, from the lock


def test_qcow2_export_boots_in_qemu_to_the_health_endpoint(vmbuild: VmBuild, tmp_path: Path) -> None:
    out = tmp_path / "web.qcow2"
    t0 = time.monotonic()
    res = ok(sandbox(vmbuild.ws, "image", "export", vmbuild.image, "--format", "qcow2", "-o", str(out),
                     "--json", timeout=900))  # fmt: skip
    print(f"qcow2 export in {time.monotonic() - t0:.1f}s")
    extra = res["extra"]
    assert extra["vm_image"] == vmbuild.vm
    assert Path(extra["kernel"]).is_file() and Path(extra["initrd"]).is_file()
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(info.stdout)
    assert doc["format"] == "qcow2" and "backing-filename" not in doc  # standalone, no backing file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = [a.replace("127.0.0.1:8080-", f"127.0.0.1:{port}-") for a in extra["qemu"]]
    argv[argv.index("-serial") + 1] = f"file:{tmp_path / 'serial.log'}"
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        health = wait_health(port, BOOT)
        print(f"qcow2 export: qemu (TCG) to healthy in {time.monotonic() - t0:.1f}s")
        assert health["status"] == "ok" and health["recipe"] == "web"
    finally:
        qemu.kill()
        qemu.wait(30)
