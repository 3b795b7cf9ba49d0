"""`sandbox gc` on production hosts (sandbox/envs/gchosts.py), on the fake hosts of
tests/unit/test_hosts_envs.py: orphans and unused unpacked images go, what the state knows stays, a
host that does not answer is reported and the others are still collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.envs.gchosts import host_targets
from sandbox.events import Event
from tests.fakes import FakeBackend, FakeHostBackend
from tests.unit.test_hosts_envs import HOSTS, HostWorld, assert_on_hosts


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Iterator[None]:
    FakeBackend.ops, FakeBackend.crash_at, FakeBackend.fail_at, FakeBackend.unhealthy = [], None, None, set()
    FakeHostBackend.down, FakeHostBackend.die_at = set(), None
    yield
    FakeHostBackend.down, FakeHostBackend.die_at = set(), None


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostWorld:
    w = HostWorld(tmp_path, monkeypatch)
    w.envs().up("prod")
    return w


def orphan(world: HostWorld, host: str, name: str) -> None:
    """An instance on `host` that no state row names (a crash, or a forgotten drain, left it)."""
    with world.host(host)._data() as d:
        d[name] = {"image": world.a, "state": "running", "address": "10.213.0.99", "files": {}}


def images_on(world: HostWorld, host: str) -> list[str]:
    return world.host(host).images()


def test_gc_removes_orphans_on_hosts_and_keeps_known_instances(world: HostWorld) -> None:
    orphan(world, "web1", "prod-77")
    orphan(world, "web3", "staging-9-0")  # an env this state does not know: another machine's?
    envs = world.envs()
    seen: list[Event] = []
    envs.ctx.sink = seen.append
    report = envs.gc()
    assert sorted(report.removed_instances) == ["web1:prod-77"]
    assert report.skipped_hosts == []
    assert "staging-9-0" in world.on_hosts()
    assert any("left alone staging-9-0" in e.message for e in seen if e.kind == "warning")
    with world.host("web3")._data() as d:  # (the other machine's, out of the way)
        del d["staging-9-0"]
    assert_on_hosts(world, world.a, 6)  # every instance the state knows is still there
    assert world.envs().gc().removed_instances == []  # idempotent


def test_gc_removes_what_a_drain_left_on_the_host_once_it_answers(world: HostWorld) -> None:
    FakeHostBackend.down = {"web2"}
    world.envs().drain_host("prod", "web2")
    assert world.envs().gc().skipped_hosts == ["web2"]
    FakeHostBackend.down = set()
    assert sorted(world.envs().gc().removed_instances) == ["web2:prod-1", "web2:prod-4"]
    assert not [i for i in world.on_hosts().values() if i["host"] == "web2"]


def test_a_drained_host_no_profile_names_any_more_is_not_visited(world: HostWorld) -> None:
    FakeHostBackend.down = {"web2"}
    world.envs().drain_host("prod", "web2")
    prod = world.ws.root / "profiles" / "prod.yaml"
    prod.write_text("".join(line for line in prod.read_text().splitlines(True) if "web2" not in line))
    report = world.envs().gc()
    assert report.skipped_hosts == [] and report.removed_instances == []
    assert_on_hosts(world, world.a, 4, hosts=("web1", "web3"))


def test_gc_images_forgets_unused_unpacked_images_on_hosts_and_keeps_used_ones(world: HostWorld) -> None:
    assert all(images_on(world, h) == [world.a] for h in HOSTS)
    world.host("web2").prepare_image(world.b)  # left by a promotion that was rolled back
    assert world.envs().gc().removed_images == []  # only with --images
    assert images_on(world, "web2") == sorted([world.a, world.b])
    report = world.envs().gc(images=True)
    assert report.removed_images == [f"web2:{world.b}"]
    assert all(images_on(world, h) == [world.a] for h in HOSTS)  # prod runs it: kept everywhere
    assert_on_hosts(world, world.a, 6)


def test_an_unreachable_host_is_reported_and_the_others_still_collected(world: HostWorld) -> None:
    for h in HOSTS:
        orphan(world, h, "prod-50")
    world.host("web1").prepare_image(world.b)
    FakeHostBackend.down = {"web2"}
    envs = world.envs()
    seen: list[Event] = []
    envs.ctx.sink = seen.append
    report = envs.gc(images=True)
    assert sorted(report.removed_instances) == ["web1:prod-50", "web3:prod-50"]
    assert report.removed_images == [f"web1:{world.b}"]
    assert report.skipped_hosts == ["web2"]
    warnings = [e.message for e in seen if e.kind == "warning"]
    assert len(warnings) == 1 and "web2" in warnings[0] and "unreachable" in warnings[0]
    assert "prod-50" in {n for n, i in world.on_hosts().items() if i["host"] == "web2"}
    # back: the next gc finishes there
    FakeHostBackend.down = set()
    assert world.envs().gc().removed_instances == ["web2:prod-50"]


def test_an_expired_env_on_a_dead_host_is_kept_and_the_rest_collected(world: HostWorld) -> None:
    orphan(world, "web3", "prod-50")
    FakeHostBackend.down = {"web2"}
    world.envs().state.set_env("prod", expires=1.0)
    report = world.envs().gc()
    assert report.removed_envs == [] and report.skipped_hosts == ["web2"]
    assert report.removed_instances == ["web3:prod-50"]
    assert "prod" in world.rows()


def test_gc_visits_the_hosts_of_envs_and_profiles_once_per_ssh_target_and_engine(world: HostWorld) -> None:
    profiles = world.ws.root / "profiles"
    text = (profiles / "prod.yaml").read_text().replace("name: prod", "name: canary")
    (profiles / "canary.yaml").write_text(text)  # the same three machines
    (profiles / "box.yaml").write_text(
        text.replace("name: canary", "name: box").replace("backend: lxc", "backend: docker")
    )
    (profiles / "broken.yaml").write_text("name: broken\nhosts: [\n")
    (profiles / "Bad-Name.yaml").write_text("name: x\n")
    envs = world.envs()
    seen: list[Event] = []
    envs.ctx.sink = seen.append
    targets = [(p.name, p.backend, h) for p, h in host_targets(envs.ctx)]
    # the hosts of the envs the state knows, once each; a draft profile's hosts are never contacted
    assert targets == [("prod", "lxc", h) for h in HOSTS]


def test_malformed_names_from_a_host_are_left_alone(
    world: HostWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = ["../etc", "x\n\x1b[2J", "sha256:zz"]

    def instances(self: FakeHostBackend) -> list[Any]:
        return [*bad, 7, "prod-0"]

    monkeypatch.setattr(FakeHostBackend, "instances", instances)
    monkeypatch.setattr(FakeHostBackend, "images", lambda self: [*bad, world.a])
    report = world.envs().gc(images=True)
    assert report.removed_instances == [] and report.removed_images == []
    assert not [o for o in FakeBackend.ops if o.startswith(("destroy", "forget"))]
