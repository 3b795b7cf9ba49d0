"""The lxd backend's pure parts: metadata.yaml, limits and devices, requests, error translation (fakes)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests
from pylxd import exceptions as lxd_exc

from sandbox.backends.base import BackendError, InstanceSpec, MountSpec
from sandbox.backends.lxdapi import lxd_errors, translate
from sandbox.backends.lxdconfig import (
    WORKSPACE_KEY,
    copy_request,
    create_request,
    devices,
    image_alias,
    limits,
    remote_name,
    workspace_id,
)
from sandbox.imageformats.lxd import DIGEST_PROPERTY, TEMPLATES, _add_bytes, lxd_metadata
from sandbox.workspace import Workspace

DIGEST = "sha256:" + "ab" * 32
MANIFEST: dict[str, Any] = {
    "created": 1700000000,
    "base": {"architecture": "amd64", "distro": "debian", "suite": "bookworm", "variant": "minbase"},
    "recipe": {"name": "web"},
}


def spec(**kw: Any) -> InstanceSpec:
    base: dict[str, Any] = {
        "name": "st-1-0",
        "env": "st-1",
        "index": 0,
        "image": DIGEST,
        "address": "10.9.0.5",
    }
    return InstanceSpec(**{**base, **kw})


# -- metadata.yaml and templates ----------------------------------------------------------------


def test_metadata_has_lxd_arch_date_digest_and_templates() -> None:
    m = lxd_metadata(MANIFEST, DIGEST)
    assert m["architecture"] == "x86_64" and m["creation_date"] == 1700000000
    assert m["properties"][DIGEST_PROPERTY] == DIGEST
    assert (m["properties"]["os"], m["properties"]["release"]) == ("debian", "bookworm")
    assert set(m["templates"]) == {"/etc/hostname", "/etc/hosts"}
    for target, t in m["templates"].items():
        assert t["when"] == ["create", "copy"] and TEMPLATES[t["template"]][0] == target
    assert lxd_metadata({**MANIFEST, "base": {"architecture": "arm64"}}, DIGEST)["architecture"] == "aarch64"


def test_templates_render_the_same_files_as_every_backend_writes() -> None:
    from sandbox.backends.instancefiles import instance_files

    files = instance_files(spec(name="box-7"))
    for _, (target, text) in TEMPLATES.items():
        assert text.replace("{{ container.name }}", "box-7") == files[target.lstrip("/")]


def test_tar_members_are_deterministic() -> None:
    bufs = []
    for _ in range(2):
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "metadata.yaml", b"x: 1\n", 1700000000)
        bufs.append(b.getvalue())
    assert bufs[0] == bufs[1]
    with tarfile.open(fileobj=io.BytesIO(bufs[0])) as tar:
        ti = tar.getmember("metadata.yaml")
        assert (ti.uid, ti.gid, ti.uname, ti.mtime, ti.mode) == (0, 0, "", 1700000000, 0o644)


# -- limits, devices, requests -----------------------------------------------------------------


def test_limits_map_profile_resources() -> None:
    assert limits(spec()) == {}
    assert limits(spec(cpus=2.0, memory=512 * 2**20, pids=300)) == {
        "limits.cpu": "2",
        "limits.memory": "536870912B",
        "limits.processes": "300",
    }
    half = limits(spec(cpus=0.5))
    assert half == {"limits.cpu": "1", "limits.cpu.allowance": "50ms/100ms"}
    assert limits(spec(cpus=1.5))["limits.cpu"] == "2"


def test_devices_routed_nic_and_disk_mounts() -> None:
    mounts = (
        MountSpec("/srv/data", "/data", readonly=True),
        MountSpec("/etc/x.conf", "/etc/x.conf", is_file=True),
    )
    d = devices(spec(mounts=mounts))
    assert d["eth0"] == {"type": "nic", "nictype": "routed", "ipv4.address": "10.9.0.5", "name": "eth0"}
    assert d["sbx-mount-0"] == {"type": "disk", "source": "/srv/data", "path": "/data", "readonly": "true"}
    assert d["sbx-mount-1"] == {"type": "disk", "source": "/etc/x.conf", "path": "/etc/x.conf"}
    assert "eth0" not in devices(spec(address=None))


def test_requests_tag_the_workspace_and_name_the_image_by_its_fingerprint() -> None:
    """Never by its alias (`sandbox-` and 12 hex), which anyone who may import images there can set."""
    assert image_alias(DIGEST) == "sandbox-abababababab"
    r = create_request(spec(memory=2**30), "ws1", "f" * 64)
    assert r["source"] == {"type": "image", "fingerprint": "f" * 64}
    assert r["config"][WORKSPACE_KEY] == "ws1" and r["config"]["limits.memory"] == "1073741824B"
    assert r["config"]["user.sandbox.address"] == "10.9.0.5" and r["name"] == "st-1-0"
    c = copy_request("st-0-0", spec(name="st-2-0", address="10.9.0.6"), "ws1", ["default"])
    assert c["source"] == {"type": "copy", "source": "st-0-0", "instance_only": True}
    assert c["profiles"] == ["default"] and c["devices"]["eth0"]["ipv4.address"] == "10.9.0.6"


def test_workspace_id_and_remote_name(tmp_path: Path) -> None:
    a, b = workspace_id(Workspace(tmp_path / "a").id), workspace_id(Workspace(tmp_path / "b").id)
    assert a != b and a == workspace_id(Workspace(tmp_path / "a").id)
    assert remote_name("https://10.0.0.5:8443") == "10.0.0.5_8443"
    assert remote_name("https://[::1]:8443/") == "___1__8443"


# -- error translation ---------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, status: int, error: str) -> None:
        self.status_code = status
        self.content = error.encode()

    def json(self) -> dict[str, Any]:
        return {"error": self.content.decode(), "metadata": None}


def caught(e: Exception, remote: str | None = None) -> BackendError:
    with pytest.raises(BackendError) as info:
        translate(e, "doing it", remote)
    assert info.value.__cause__ is e
    return info.value


def test_daemon_not_running_points_to_the_setup_script() -> None:
    e = caught(
        lxd_exc.ClientConnectionFailed("('Connection aborted.', FileNotFoundError(2, 'No such file'))")
    )
    assert "not running" in str(e) and "scripts/backends.sh lxd" in (e.hint or "")
    r = caught(requests.exceptions.ConnectionError("refused"), "https://h:8443")
    assert "https://h:8443" in str(r) and "core.https_address" in (r.hint or "")


def test_permission_denied_local_and_untrusted_remote() -> None:
    e = caught(
        lxd_exc.ClientConnectionFailed("('Connection aborted.', PermissionError(13, 'Permission denied'))")
    )
    assert "permission denied" in str(e) and "lxd group" in (e.hint or "")
    r = caught(lxd_exc.LXDAPIException(FakeResponse(403, "not authorized")), "https://h:8443")
    assert "lxc config trust add" in (r.hint or "") and "client.crt" in (r.hint or "")


def test_name_taken_and_not_found() -> None:
    e = caught(lxd_exc.Conflict(FakeResponse(409, 'Instance "st-1-0" already exists')))
    assert "name is taken" in str(e) and "sandbox gc" in (e.hint or "")
    e = caught(lxd_exc.LXDAPIException(FakeResponse(400, "This instance already exists")))
    assert "name is taken" in str(e)
    n = caught(lxd_exc.NotFound(FakeResponse(404, "Instance not found")))
    assert "not found" in str(n)


def test_certificate_mismatch_and_other_failures() -> None:
    e = caught(requests.exceptions.SSLError("Fingerprints did not match"), "https://h:8443")
    assert "certificate" in str(e) and "servercerts" in (e.hint or "")
    o = caught(lxd_exc.LXDAPIException(FakeResponse(500, "disk full")))
    assert "disk full" in str(o) and o.hint


def test_lxd_errors_passes_backend_errors_and_translates_the_rest() -> None:
    with pytest.raises(BackendError, match="mine"), lxd_errors("x"):
        raise BackendError("mine")
    with pytest.raises(BackendError, match="not running"), lxd_errors("x"):
        raise lxd_exc.ClientConnectionFailed("connection refused")


def test_root_disk_goes_to_sandboxs_pool_when_there_is_one() -> None:
    assert "root" not in devices(spec())
    assert devices(spec(), "sandbox")["root"] == {"type": "disk", "path": "/", "pool": "sandbox"}
