"""The docker backend's pure parts: the image config and archive, init-only features, error
translation, container arguments, and the profile keys it reads (remote, capabilities). No daemon."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.base import BackendContext, BackendError, InstanceSpec, MountSpec, UnsupportedOperation
from sandbox.backends.docker import DockerBackend, _translated
from sandbox.envs.registry import make_backend_registry
from sandbox.events import null_sink
from sandbox.export import ExportError, export_image
from sandbox.hosts.transport import HostUnreachable
from sandbox.imageformats.docker import image_config, repo_tag, write_docker_archive
from sandbox.settings import Settings
from sandbox.store import ImageStore
from sandbox.workspace import Workspace
from tests.unit.imagefactory import Image, make_image

APP_JSON = {
    "app": {"command": "gunicorn app:app", "user": "app", "port": 8000, "workdir": "/srv/app"},
    "env": {"APP_ENV": "production", "QUOTED": 'a "b"'},
    "recipe": "web",
}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "recipes").mkdir()
    return Workspace(tmp_path)


def ctx(ws: Workspace) -> BackendContext:
    return make_backend_registry(ws, Settings(), null_sink).ctx


def _image(ws: Workspace, tmp_path: Path, extra: dict[str, bytes] | None = None) -> Image:
    files = {
        "etc/sandbox/app.json": json.dumps(APP_JSON).encode(),
        "srv/app/app.py": b"app\n",
        **(extra or {}),
    }
    return make_image(ImageStore(ws.images), tmp_path / "work", app_files=files)


def test_image_config_runs_the_app_as_its_unit_does(ws: Workspace, tmp_path: Path) -> None:
    img = _image(ws, tmp_path)
    cfg = image_config(ImageStore(ws.images), img.digest)
    c = cfg["config"]
    assert c["Cmd"] == ["/usr/local/bin/sandbox-app"] and c["User"] == "app" and c["WorkingDir"] == "/srv/app"
    assert "APP_ENV=production" in c["Env"] and 'QUOTED=a "b"' in c["Env"] and c["Env"][0].startswith("PATH=")
    assert c["ExposedPorts"] == {"8000/tcp": {}}
    assert c["Labels"] == {"io.sandbox.digest": img.digest, "io.sandbox.recipe": "web"}
    assert cfg["rootfs"]["diff_ids"] == [img.base, img.app]


def test_docker_archive_is_deterministic_and_has_every_layer(ws: Workspace, tmp_path: Path) -> None:
    img = _image(ws, tmp_path)
    store = ImageStore(ws.images)
    a, b = io.BytesIO(), io.BytesIO()
    info = write_docker_archive(store, img.digest, a)
    write_docker_archive(store, img.digest, b)
    assert a.getvalue() == b.getvalue()
    with tarfile.open(fileobj=io.BytesIO(a.getvalue())) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        layer = tar.extractfile(f"{img.app[7:]}/layer.tar").read()  # type: ignore[union-attr]
    assert index[0]["RepoTags"] == [repo_tag(store, img.digest)] == [info["tag"]]
    assert index[0]["Layers"] == [f"{img.base[7:]}/layer.tar", f"{img.app[7:]}/layer.tar"]
    assert layer == store.blob_path(img.app).read_bytes()
    assert f"{info['config'][7:]}.json" in names and "repositories" in names


def test_init_only_features_are_listed_and_package_defaults_ignored(ws: Workspace, tmp_path: Path) -> None:
    img = _image(
        ws,
        tmp_path,
        {
            "etc/cron.d/app-cleanup": b"*/15 * * * * app true\n",
            "etc/cron.d/e2scrub_all": b"",
            "etc/systemd/system/multi-user.target.wants/cron.service": b"",
            "etc/systemd/system/multi-user.target.wants/sandbox-app.service": b"",
        },
    )
    assert DockerBackend(ctx(ws)).unsupported(img.digest) == ["cron job app-cleanup", "service cron"]
    plain = make_image(ImageStore(ws.images), tmp_path / "w2", name="plain")
    assert DockerBackend(ctx(ws)).unsupported(plain.digest) == []


def test_container_arguments_drop_privileges_and_publish_on_loopback(ws: Workspace, tmp_path: Path) -> None:
    img = _image(ws, tmp_path)
    spec = InstanceSpec(
        name="staging-1-0",
        env="staging-1",
        index=0,
        image=img.digest,
        env_vars={"APP_ENV": "staging"},
        cpus=0.5,
        memory=256 << 20,
        pids=100,
        mounts=(MountSpec("/data", "/srv/data", readonly=True),),
        capabilities=("NET_BIND_SERVICE",),
    )
    args: dict[str, Any] = DockerBackend(ctx(ws))._create_args(spec, "sandbox/web:x")
    assert args["cap_drop"] == ["ALL"] and args["cap_add"] == ["NET_BIND_SERVICE"]
    assert args["security_opt"] == ["no-new-privileges"] and args["init"] is True
    assert args["ports"] == {"8000/tcp": ("127.0.0.1", None)}
    assert args["environment"]["APP_ENV"] == "staging"  # the profile's env wins over the recipe's
    assert args["environment"]["SANDBOX_INSTANCE"] == "staging-1-0"
    assert (args["mem_limit"], args["nano_cpus"], args["pids_limit"]) == (256 << 20, 500_000_000, 100)
    assert args["labels"]["io.sandbox.workspace"] == ws.id
    assert args["mounts"][0]["Target"] == "/srv/data" and args["mounts"][0]["ReadOnly"] is True


def test_sdk_errors_become_backend_errors_with_a_hint() -> None:
    import docker.errors
    import requests

    cases: list[tuple[Exception, str, str]] = [
        (requests.exceptions.ConnectionError("refused"), "does not answer", "scripts/backends.sh docker"),
        (
            docker.errors.DockerException("Error while fetching server API version: PermissionError"),
            "permission denied",
            "docker group",
        ),
        (docker.errors.APIError("conflict", response=_Resp(409)), "docker:", "name is taken"),
        (docker.errors.NotFound("No such container: x"), "No such container", "sandbox gc"),
    ]
    for exc, message, hint in cases:
        with pytest.raises(BackendError) as info, _translated(None):
            raise exc
        assert message in str(info.value) and hint in (info.value.hint or ""), (exc, info.value)
    with pytest.raises(BackendError) as info, _translated("tcp://10.0.0.9:2376"):
        raise requests.exceptions.ConnectionError("refused")
    assert "tcp://10.0.0.9:2376" in str(info.value) and "reachable" in (info.value.hint or "")


class _Resp:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "x"
        self.url = "http://docker/x"


def test_remote_on_a_backend_without_remotes_is_refused(ws: Workspace) -> None:
    with pytest.raises(UnsupportedOperation, match="no remote hosts"):
        make_backend_registry(ws, Settings(), null_sink).get("lxc", remote="https://h:8443")
    with pytest.raises(UnsupportedOperation, match="not available"):
        make_backend_registry(ws, Settings(), null_sink).get("podman")


def test_export_of_an_unknown_format_or_ref_is_an_error(ws: Workspace, tmp_path: Path) -> None:
    img = _image(ws, tmp_path)
    with pytest.raises(ExportError, match="unknown export format"):
        export_image(ws, img.digest, "zip", tmp_path / "x")
    out = tmp_path / "out"
    out.mkdir()
    done = export_image(ws, img.digest, "docker", out)
    assert Path(done.path).parent == out and done.size == Path(done.path).stat().st_size
    assert [p.name for p in out.iterdir()] == [Path(done.path).name]


@pytest.mark.parametrize(
    ("backend", "sdk", "modules"),
    [
        ("docker", "docker", ["sandbox.backends.docker"]),
        ("lxd", "pylxd", ["sandbox.backends.lxd", "sandbox.backends.lxdapi"]),
        ("libvirt", "libvirt", ["sandbox.backends.libvirt", "sandbox.backends.libvirtconn"]),
    ],
)
def test_a_backend_without_its_sdk_names_the_package_to_install(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, backend: str, sdk: str, modules: list[str]
) -> None:
    """A SandboxError (which `gc` skips and `up` reports), never a crash with ModuleNotFoundError."""
    import sys

    monkeypatch.setitem(sys.modules, sdk, None)  # as if not installed
    for m in modules:
        monkeypatch.delitem(sys.modules, m, raising=False)
    with pytest.raises(BackendError, match=f"needs the Python package '{sdk}'") as info:
        make_backend_registry(ws, Settings(), null_sink).get(backend)
    assert f"sandbox[{backend}]" in (info.value.hint or "")


class _Transport:
    """A host's transport: alive or not (what the ssh transport raises for a dead host)."""

    name = "web1"

    def __init__(self, alive: bool) -> None:
        self.alive = alive

    def run(self, argv: list[str], **kw: Any) -> Any:
        if not self.alive:
            raise HostUnreachable("host web1 (root@10.0.0.11) is unreachable", hint="is it up?", host="web1")
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    def argv(self, argv: list[str], tty: bool = False) -> list[str]:
        return list(argv)


def _on_host(ws: Workspace, alive: bool) -> Any:
    from sandbox.backends.remotedocker import RemoteDocker
    from sandbox.hosts.agent import HostAgent

    return RemoteDocker(ctx(ws), HostAgent(_Transport(alive)), "10.0.0.11")  # type: ignore[arg-type]


def test_on_a_host_the_app_is_published_on_its_port_and_a_dead_host_is_named(
    ws: Workspace, tmp_path: Path
) -> None:
    """docker on a production host: the app port at 20000 + the address offset on every address of the
    host, the endpoint HOST:PORT; an engine that does not answer because the host is gone is the
    transport's HostUnreachable (a promotion stops on it), an engine error on a live host stays one."""
    import docker.errors
    import requests

    img = _image(ws, tmp_path)
    spec = InstanceSpec(
        name="prod-0", env="prod", index=0, image=img.digest, address="10.213.0.7", app_port=8000
    )
    b = _on_host(ws, alive=True)
    args: dict[str, Any] = b._create_args(spec, "sandbox/web:x")
    assert args["ports"] == {"8000/tcp": ("0.0.0.0", 20007)}
    # on the workspace's own network on that host, docker picking the container's address there;
    # the state's address is the instance's slot (never overwritten: it fixes the port)
    assert args["network"] == f"sandbox-{ws.id}" and "networking_config" not in args
    assert "ipam" not in b._network_args()
    assert "static-address" in b.capabilities
    assert b.published(spec) == "10.0.0.11:20007" and b.address("prod-0") == "10.0.0.11"
    assert "remote" not in b.capabilities and "init" not in b.capabilities
    with pytest.raises(BackendError) as e, b._errors():
        raise requests.exceptions.ConnectionError("reset")
    assert not isinstance(e.value, HostUnreachable) and "host web1" in e.value.message
    # an API error never asks the host
    with pytest.raises(BackendError) as e, _on_host(ws, alive=False)._errors():
        raise docker.errors.APIError("conflict", response=None, explanation="name in use")
    assert not isinstance(e.value, HostUnreachable)
    with pytest.raises(HostUnreachable) as dead, _on_host(ws, alive=False)._errors():
        raise requests.exceptions.ConnectionError("reset")
    assert dead.value.host == "web1"


def test_on_a_host_the_engines_redirect_is_refused_not_followed(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine on a compromised host answering a redirect (to any address the control machine
    reaches, or another path of its socket) gets no second request: not while the client is made
    (the API version it asks for first), not afterwards."""
    from http.server import BaseHTTPRequestHandler

    from tests.unit.test_hosts_dockerops import unix_server

    seen: list[str] = []
    redirect_version = [True]

    class Engine(BaseHTTPRequestHandler):
        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path == "/version" and not redirect_version[0]:
                body = json.dumps({"ApiVersion": "1.41", "Version": "20.10.fake"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                body = b""
                self.send_response(307)
                self.send_header("Location", "http://127.0.0.1:9/stolen" + self.path)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    sock = tmp_path / "engine.sock"
    with unix_server(sock, Engine):
        for redirects_version in (True, False):
            redirect_version[0] = redirects_version
            b = _on_host(ws, alive=True)
            monkeypatch.setattr(b, "_forwarded", lambda remote: str(sock))
            with pytest.raises(BackendError) as e, b._errors():
                b.client.containers.list()
            assert "does not follow" in e.value.message and "host web1" in e.value.message, e.value
    assert not any("stolen" in p for p in seen)
    assert seen[0] == "/version" and seen[-1].endswith("/containers/json?limit=-1&all=0&size=0&trunc_cmd=0")
