"""envs: flatten, `sandbox diff` between envs, and `sandbox gc` on state rows and directories.

No daemon runs here: gc's backend calls that would ask lxc-info are answered by a stand-in.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.lxc import LxcBackend
from sandbox.envs import Envs
from sandbox.envs.diff import flatten as _flatten
from sandbox.errors import EnvNotFound
from sandbox.state import Env
from sandbox.workspace import Workspace
from tests.unit.imagefactory import make_image

# -- _flatten ----------------------------------------------------------------------------------


def test_flatten_nested_mappings_to_dotted_keys() -> None:
    doc = {"name": "staging", "resources": {"cpus": 1, "memory": 512}, "router": {"listen": "127.0.0.1"}}
    assert _flatten(doc) == {
        "name": "staging",
        "resources.cpus": 1,
        "resources.memory": 512,
        "router.listen": "127.0.0.1",
    }


def test_flatten_goes_all_the_way_down() -> None:
    assert _flatten({"a": {"b": {"c": {"d": 1}}}, "e": 2}) == {"a.b.c.d": 1, "e": 2}


def test_flatten_keeps_lists_and_none_as_values() -> None:
    mounts = [{"src": "data", "dest": "/srv/data", "readonly": True}]
    assert _flatten({"mounts": mounts, "ttl": None, "ports": []}) == {
        "mounts": mounts,
        "ttl": None,
        "ports": [],
    }


def test_flatten_of_a_scalar_is_the_scalar_under_the_prefix() -> None:
    assert _flatten(3) == {"": 3}
    assert _flatten("x", "env.APP_ENV") == {"env.APP_ENV": "x"}
    assert _flatten({"k": 1}, "top") == {"top.k": 1}


def test_flatten_empty_mapping_has_no_keys() -> None:
    assert _flatten({}) == {}
    assert _flatten({"env": {}, "instances": 1}) == {"instances": 1}


def test_flatten_stringifies_keys() -> None:
    assert _flatten({1: {2: "x"}}) == {"1.2": "x"}


def test_flatten_does_not_change_its_input() -> None:
    doc: dict[str, Any] = {"a": {"b": [1, 2]}}
    _flatten(doc)
    assert doc == {"a": {"b": [1, 2]}}


# -- a workspace with state rows and directories, no daemons -----------------------------------


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Envs:
    def state(self: LxcBackend, name: str) -> str:  # what lxc-info would say of a stopped container
        return "stopped" if (self.lxcpath / name / "config").exists() else "missing"

    monkeypatch.setattr(LxcBackend, "state", state)
    return Envs(Workspace(tmp_path))


def claim(envs: Envs, name: str, *, profile: dict[str, Any] | None = None, **kw: Any) -> Env:
    args: dict[str, Any] = dict(
        profile=name.partition("-")[0],
        image="sha256:" + "a" * 64,
        backend="lxc",
        owner="alice",
        config={"profile": {"instances": 1, **(profile or {})}},
        expires=None,
        pid=os.getpid(),
        max_per_owner=None,
    )
    args.update(kw)
    return envs.state.claim_env(name, **args)


def running(envs: Envs, name: str, **kw: Any) -> None:
    claim(envs, name, **kw)
    envs.state.set_env(name, state="running", pid=None)


def instance_dir(envs: Envs, name: str) -> Path:
    d = envs.ws.runtime / "lxc" / name
    (d / "delta0").mkdir(parents=True)
    (d / "config").write_text("lxc.uts.name = x\n")
    return d


def with_instance(envs: Envs, env: str) -> Path:
    envs.state.add_instance(env, 0, f"{env}-0", "running")
    return instance_dir(envs, f"{env}-0")


def router_dir(envs: Envs, name: str) -> Path:
    d = envs.ctx.routers / name
    (d / "logs").mkdir(parents=True)
    (d / "nginx.conf").write_text("events {}\n")
    return d


def names(envs: Envs) -> list[str]:
    return [e.name for e in envs.state.list_envs()]


# -- gc ----------------------------------------------------------------------------------------


def test_gc_on_an_empty_workspace_does_nothing(envs: Envs) -> None:
    assert envs.gc().to_dict() == {
        "removed_envs": [],
        "removed_instances": [],
        "removed_routers": [],
        "removed_images": [],
        "skipped_hosts": [],
    }


def test_gc_removes_expired_envs_with_their_instances_and_routers(envs: Envs) -> None:
    now = time.time()
    running(envs, "dev-old", expires=now - 10)
    inst, router = with_instance(envs, "dev-old"), router_dir(envs, "dev-old")
    running(envs, "staging-1", expires=now + 3600)
    keep_inst, keep_router = with_instance(envs, "staging-1"), router_dir(envs, "staging-1")
    running(envs, "prod")  # never expires

    report = envs.gc()
    assert report.removed_envs == ["dev-old"]
    assert not inst.exists() and not router.exists()
    assert keep_inst.is_dir() and keep_router.is_dir()
    assert names(envs) == ["prod", "staging-1"]
    assert [e["kind"] for e in envs.state.events("dev-old")] == ["gc"]


def test_gc_uses_the_time_it_is_given(envs: Envs) -> None:
    now = time.time()
    running(envs, "dev-1", expires=now + 100)
    assert envs.gc(now=now).removed_envs == []
    assert envs.gc(now=now + 101).removed_envs == ["dev-1"]
    assert names(envs) == []


def test_gc_removes_what_a_dead_process_left_half_made(envs: Envs) -> None:
    claim(envs, "staging-20", pid=dead_pid())  # state "creating", its `up` was killed
    inst = with_instance(envs, "staging-20")
    claim(envs, "staging-21", pid=dead_pid())
    envs.state.set_env("staging-21", state="deleting")  # its `down` was killed
    claim(envs, "staging-22")  # an `up` still running (this process): not touched
    envs.state.add_instance("staging-22", 0, "staging-22-0", "creating")
    live = instance_dir(envs, "staging-22-0")

    report = envs.gc()
    assert sorted(report.removed_envs) == ["staging-20", "staging-21"]
    assert not inst.exists() and live.is_dir()
    assert names(envs) == ["staging-22"]


def test_a_crashed_env_is_shown_not_hidden(envs: Envs) -> None:
    claim(envs, "staging-20", pid=dead_pid())
    [view] = envs.ls()
    assert view.name == "staging-20" and view.state == "crashed during up"
    claim(envs, "staging-21")
    assert envs.view("staging-21", live=False).state == "creating"


def test_gc_removes_instance_dirs_and_routers_no_env_owns(envs: Envs) -> None:
    running(envs, "staging-1")
    known = with_instance(envs, "staging-1")
    orphan = instance_dir(envs, "staging-9-0")
    half = envs.ws.runtime / "lxc" / "staging-8-0"  # no config: not an instance (yet)
    half.mkdir()
    ghost = router_dir(envs, "staging-9")

    report = envs.gc()
    assert report.removed_instances == ["staging-9-0"] and not orphan.exists()
    assert report.removed_routers == ["staging-9"] and not ghost.exists()
    assert known.is_dir() and (envs.ctx.routers / "staging-9").exists() is False
    assert report.removed_envs == [] and names(envs) == ["staging-1"]


def test_gc_removes_unpack_dirs_of_dead_processes_only(envs: Envs) -> None:
    rootfs = envs.ws.runtime / "rootfs"
    dead = rootfs / f".unpack-{dead_pid()}-abc"
    alive = rootfs / f".unpack-{os.getpid()}-def"
    unpacked = rootfs / ("b" * 64 + "-100000")
    for d in (dead, alive, unpacked):
        (d / "rootfs").mkdir(parents=True)
    envs.gc()
    assert not dead.exists() and alive.is_dir() and unpacked.is_dir()


def test_gc_removes_clone_dirs_of_dead_processes(envs: Envs) -> None:
    lxc = envs.ws.runtime / "lxc"
    dead = lxc / f".clone-{dead_pid()}-xyz"
    alive = lxc / f".clone-{os.getpid()}-uvw"
    for d in (dead, alive):
        (d / "delta0" / "etc").mkdir(parents=True)
    envs.gc()
    assert alive.is_dir()
    assert not dead.exists()


def test_gc_never_removes_an_instance_a_concurrent_up_is_making(
    envs: Envs, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = LxcBackend.instances
    made: list[Path] = []

    def instances_while_an_up_runs(self: LxcBackend) -> list[str]:
        if not made:  # the concurrent `up` claims its name, adds its row, creates its dir
            claim(envs, "staging-30")
            made.append(with_instance(envs, "staging-30"))
        return listing(self)

    monkeypatch.setattr(LxcBackend, "instances", instances_while_an_up_runs)
    report = envs.gc()
    assert made and made[0].is_dir()
    assert report.removed_instances == []


def test_gc_is_idempotent(envs: Envs) -> None:
    running(envs, "dev-old", expires=time.time() - 1)
    with_instance(envs, "dev-old")
    router_dir(envs, "ghost")
    assert envs.gc().removed_envs == ["dev-old"]
    assert envs.gc().to_dict() == {
        "removed_envs": [],
        "removed_instances": [],
        "removed_routers": [],
        "removed_images": [],
        "skipped_hosts": [],
    }


# -- diff --------------------------------------------------------------------------------------


def test_diff_of_envs_on_one_image_lists_only_config_differences(envs: Envs, tmp_path: Path) -> None:
    img = make_image(envs.store, tmp_path / "work")
    prod = {"name": "prod", "instances": 2, "env": {"APP_ENV": "production"}, "router": {"port": 8080}}
    staging = {
        "name": "staging",
        "extends": "prod",
        "instances": 1,
        "env": {"APP_ENV": "staging"},
        "router": {"port": "auto"},
        "ttl": 604800.0,
    }
    claim(envs, "prod", image=img.digest, config={"profile": prod})
    claim(envs, "staging-1", image=img.digest, config={"profile": staging})

    d = envs.diff("prod", "staging-1")
    assert d["same_image"] is True and d["image"]["identical"] is True
    assert d["backend"] == {"prod": "lxc", "staging-1": "lxc"}
    assert d["config"] == [
        {"key": "env.APP_ENV", "prod": "production", "staging-1": "staging"},
        {"key": "instances", "prod": 2, "staging-1": 1},
        {"key": "router.port", "prod": 8080, "staging-1": "auto"},
        {"key": "ttl", "prod": None, "staging-1": 604800.0},
    ]  # sorted by key; name and extends are not drift


def test_diff_of_envs_on_two_images_lists_package_and_file_changes(envs: Envs, tmp_path: Path) -> None:
    a = make_image(envs.store, tmp_path / "work")
    b = make_image(
        envs.store,
        tmp_path / "work",
        packages={"base-files": "12.4", "libc6": "2.36-10", "curl": "7.88"},
        app_files={"srv/app/main.py": b"print('v2')\n", "srv/app/new.py": b"x = 1\n"},
    )
    claim(envs, "prod", image=a.digest)
    claim(envs, "staging-1", image=b.digest)
    d = envs.diff("prod", "staging-1")
    assert d["same_image"] is False and d["config"] == []
    img = d["image"]
    assert (img["a"], img["b"]) == (a.digest, b.digest)
    assert img["packages"]["added"] == {"curl": "7.88"}
    assert img["packages"]["changed"] == {"libc6": {"from": "2.36-9", "to": "2.36-10"}}
    assert img["files"]["added"] == ["/srv/app/new.py"] and "/srv/app/main.py" in img["files"]["changed"]


def test_diff_of_an_unknown_env_is_not_found(envs: Envs, tmp_path: Path) -> None:
    claim(envs, "prod", image=make_image(envs.store, tmp_path / "work").digest)
    with pytest.raises(EnvNotFound):
        envs.diff("prod", "staging-404")
