"""The backend registry and context: fakes registered by name, made once, and the clear errors."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from sandbox.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    BackendRegistry,
    ExecResult,
    ImageAccess,
    InstanceSpec,
    UnsupportedOperation,
    remove_stale_temps,
)
from sandbox.envs.registry import make_backend_registry
from sandbox.events import null_sink
from sandbox.settings import Network, Settings
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


class FakeBackend(Backend):
    name = "fake"
    capabilities = frozenset({"remote"})
    made = 0

    def __init__(self, ctx: BackendContext, remote: str | None = None) -> None:
        super().__init__(ctx, remote)
        FakeBackend.made += 1

    def check(self) -> None: ...
    def prepare_image(self, digest: str) -> None: ...
    def create(self, spec: InstanceSpec) -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str, timeout: float = 10.0) -> None: ...
    def destroy(self, name: str) -> None: ...
    def state(self, name: str) -> str:
        return "missing"

    def address(self, name: str) -> str:
        return "10.0.0.2"

    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        interactive: bool = False,
        timeout: float | None = None,
    ) -> ExecResult:
        return ExecResult(0, "", "")

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None: ...


@pytest.fixture
def ctx(tmp_path: Path) -> BackendContext:
    return BackendContext(
        workspace_id="ws1",
        runtime=tmp_path / "run",
        tmp=tmp_path / "tmp",
        network=Network(),
        images=ImageAccess(ImageStore(tmp_path / "images")),
    )


def test_a_registered_fake_is_made_once_per_remote_with_the_context(ctx: BackendContext) -> None:
    reg = BackendRegistry(ctx, {})
    reg.register("fake", FakeBackend)
    before = FakeBackend.made
    a = reg.get("fake")
    assert isinstance(a, FakeBackend) and a.ctx is ctx and a.store is ctx.images.store and a.remote is None
    assert reg.get("fake") is a
    b = reg.get("fake", "https://h:8443")
    assert b is not a and b.remote == "https://h:8443" and reg.get("fake", "https://h:8443") is b
    assert FakeBackend.made == before + 2
    assert reg.names() == ["fake"]


def test_registering_again_replaces_what_was_made(ctx: BackendContext) -> None:
    reg = BackendRegistry(ctx, {"fake": FakeBackend})
    a = reg.get("fake")
    reg.register("fake", "tests.unit.test_backend_registry:FakeBackend")
    b = reg.get("fake")
    assert b is not a and type(b).__name__ == "FakeBackend"


def test_the_default_registry_has_the_four_builtins(ctx: BackendContext) -> None:
    assert BackendRegistry(ctx).names() == ["docker", "libvirt", "lxc", "lxd"]


def test_an_unknown_backend_names_the_available_ones(ctx: BackendContext) -> None:
    with pytest.raises(UnsupportedOperation, match="backend 'podman' is not available yet") as info:
        BackendRegistry(ctx).get("podman")
    assert "docker, libvirt, lxc, lxd" in (info.value.hint or "")
    with pytest.raises(UnsupportedOperation, match="not available yet"):
        BackendRegistry(ctx, {"gone": "sandbox.backends.nosuchmodule:X"}).get("gone")


def test_a_missing_sdk_names_the_pip_extra(ctx: BackendContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "sandbox.backends.docker", raising=False)
    with pytest.raises(BackendError, match="needs the Python package 'docker'") as info:
        BackendRegistry(ctx).get("docker")
    assert "pip install 'sandbox[docker]'" in (info.value.hint or "")


def test_the_base_class_gives_gc_an_empty_contract(ctx: BackendContext) -> None:
    b = FakeBackend(ctx)
    assert b.instances() == [] and b.images() == [] and b.clean_stale() == []
    b.forget_image("sha256:" + "a" * 64)  # nothing to drop, no error


def test_the_workspace_registry_carries_its_context(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    settings = Settings(network=Network(bridge="sbxtest0", subnet="10.9.0.0/24"))
    reg = make_backend_registry(ws, settings, null_sink)
    c = reg.ctx
    assert (c.workspace_id, c.runtime, c.tmp, c.network) == (ws.id, ws.runtime, ws.tmp, settings.network)
    assert c.images.store.root == ws.images and c.images.derive_vm is not None


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    dead = tmp_path / f".unpack-{p.pid}-x"
    (dead / "rootfs").mkdir(parents=True)
    alive = tmp_path / f".unpack-{__import__('os').getpid()}-y"
    alive.mkdir()
    other = tmp_path / f".disk-{p.pid}-z"
    other.write_text("")
    assert remove_stale_temps([tmp_path, tmp_path / "absent"], ("unpack",)) == [str(dead)]
    assert not dead.exists() and alive.exists() and other.exists()
