"""Envs on production hosts (issue 11), driven on one fake backend per host and a fake router:
placement and endpoints at `up`, a host that fails before anything is made, `host drain`, and a host
that dies in the middle of a promotion (stopped, its instances unrouted, resumable) and comes back.

No ssh: `EnvHosts.backend` is replaced by FakeHostBackend (tests/fakes.py), one per host, each with
its own instance file; shipping the image is a no-op recorder. Everything else (EnvHosts.ready,
placement, Lifecycle, the Promoter) is the real code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.config.resolved import ResolvedProfile
from sandbox.envs import Envs
from sandbox.envs.hosts import EnvHosts
from sandbox.hosts import ship as ship_mod
from sandbox.hosts.publishing import published_port
from sandbox.hosts.transport import HostError
from sandbox.promote.deploys import Deploys
from sandbox.promote.rolling import Promoter, PromotionError
from tests.fakes import FakeBackend, FakeHostBackend, router_log
from tests.unit.test_envs_orchestration import World

HOSTS = ("web1", "web2", "web3")
ADDRESS = {h: f"10.0.0.1{i}" for i, h in enumerate(HOSTS, 1)}
PROFILE = """\
name: prod
image: {image}
backend: lxc
instances: {instances}
hosts:
  - {{name: web1, ssh: root@10.0.0.11, address: 10.0.0.11}}
  - {{name: web2, ssh: root@10.0.0.12, address: 10.0.0.12}}
  - {{name: web3, ssh: root@10.0.0.13, address: 10.0.0.13}}
health: {{command: "true", interval: 0.01s, timeout: 0.2s}}
router: {{port: auto}}
"""


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Iterator[None]:
    FakeBackend.ops, FakeBackend.crash_at, FakeBackend.fail_at, FakeBackend.unhealthy = [], None, None, set()
    FakeHostBackend.down, FakeHostBackend.die_at = set(), None
    yield
    FakeHostBackend.down, FakeHostBackend.die_at = set(), None


class HostWorld(World):
    """World (tests/unit/test_envs_orchestration.py) plus three fake production hosts."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(root)
        self.shipped: list[tuple[str, list[str]]] = []
        runtime = self.ws.runtime

        def backend(hosts: EnvHosts, profile: ResolvedProfile, host: str) -> FakeHostBackend:
            h = hosts.spec(profile, host)  # a host the profile does not name is still refused
            ctx = dataclasses.replace(hosts.ctx.backends.ctx, runtime=runtime / "fakehosts" / h.name)
            assert h.address is not None
            return FakeHostBackend(ctx, h.name, h.address)

        def ship(store: Any, digest: str, transports: Any, agent: Any, sink: Any, **kw: Any) -> None:
            self.shipped.append((digest, sorted(t.name for t in transports)))

        monkeypatch.setattr(EnvHosts, "backend", backend)
        monkeypatch.setattr(ship_mod, "ship", ship)
        self.hosted(6)

    def hosted(self, instances: int) -> None:
        text = PROFILE.format(image=self.a, instances=instances)
        (self.ws.root / "profiles" / "prod.yaml").write_text(text)

    def host(self, name: str) -> FakeHostBackend:
        envs = self.envs()
        b = envs.ctx.hosts.backend(envs.get("prod").spec, name)
        assert isinstance(b, FakeHostBackend)
        return b

    def on_hosts(self) -> dict[str, dict[str, Any]]:
        """What every fake host holds: {instance: {..., "host": name}}."""
        out: dict[str, dict[str, Any]] = {}
        for h in HOSTS:
            d = self.ws.runtime / "fakehosts" / h / "fake" / "instances.json"
            if d.exists():
                for name, inst in json.loads(d.read_text()).items():
                    assert name not in out, f"{name} on two hosts"
                    out[name] = {**inst, "host": h}
        return out


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostWorld:
    return HostWorld(tmp_path, monkeypatch)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def endpoint(host: str, address: str) -> str:
    return f"{ADDRESS[host]}:{published_port(address, '10.213.0.0/24')}"


def assert_on_hosts(world: HostWorld, image: str, count: int, hosts: tuple[str, ...] = HOSTS) -> None:
    """`count` instances, all running `image`, routed, each on the host its row names (and nothing
    else on any host), the router sending to exactly their endpoints."""
    insts = world.envs().state.instances("prod")
    assert len(insts) == count
    held = {n: i for n, i in world.on_hosts().items() if i["host"] in hosts}
    assert sorted(held) == sorted(i.name for i in insts)
    for i in insts:
        assert i.image == image and i.routed and i.host in hosts, i
        assert held[i.name]["host"] == i.host and held[i.name]["image"] == image
        assert held[i.name]["state"] == "running"
        assert i.address is not None and i.endpoint == endpoint(i.host, i.address)
    assert world.last_config("prod")["backends"] == sorted(str(i.endpoint) for i in insts)


def test_the_subnet_of_the_fakes_is_the_default() -> None:
    """endpoint() above assumes it (published ports follow from the address in this subnet)."""
    from sandbox.settings import Network

    assert ipaddress.IPv4Network(Network().subnet) == ipaddress.IPv4Network("10.213.0.0/24")


# -- up ----------------------------------------------------------------------------------------


def test_up_places_round_robin_and_records_host_and_endpoint(world: HostWorld) -> None:
    world.envs().up("prod")
    insts = world.envs().state.instances("prod")
    assert [i.host for i in insts] == ["web1", "web2", "web3", "web1", "web2", "web3"]
    assert [i.name for i in insts] == [f"prod-{i}" for i in range(6)]
    assert_on_hosts(world, world.a, 6)
    # published ports are distinct per host (they follow from the unique addresses)
    assert len({i.endpoint for i in insts}) == 6
    assert world.shipped == [(world.a, list(HOSTS))]
    assert world.envs().placement("prod") == ["web1", "web2", "web3", "web1", "web2", "web3"]
    world.envs().down("prod")
    assert world.on_hosts() == {} and world.rows() == {}


def test_a_host_failing_before_up_makes_nothing_anywhere(world: HostWorld) -> None:
    FakeHostBackend.down = {"web2"}
    with pytest.raises(HostError) as e:
        world.envs().up("prod")
    assert "web2" in e.value.message and "web1" not in e.value.message
    assert e.value.hint
    assert world.rows() == {} and world.on_hosts() == {}
    assert not [o for o in FakeBackend.ops if o.startswith(("create", "start"))]
    assert world.shipped == []  # nothing is shipped before every host answered


def test_a_host_dying_while_instances_are_made_is_cleaned_by_gc_when_it_returns(world: HostWorld) -> None:
    FakeHostBackend.die_at = ("create", "web3")
    with pytest.raises(HostError, match="web3"):
        world.envs().up("prod")
    FakeHostBackend.die_at = None
    # the teardown after the failure cannot reach web3: the env stays, shown, for gc to finish
    # once the command's process is gone (here: the row gets the pid of a finished process)
    world.envs().state.set_env("prod", pid=dead_pid())
    [view] = world.envs().ls()
    assert view.state == "crashed during down", view.state
    assert not [n for n, i in world.on_hosts().items() if i["host"] != "web3"]
    FakeHostBackend.down = set()
    assert world.envs().gc().removed_envs == ["prod"]
    assert world.rows() == {} and world.on_hosts() == {}


# -- host drain --------------------------------------------------------------------------------


def test_drain_host_forgets_its_instances_and_placement_spreads_over_the_rest(world: HostWorld) -> None:
    world.envs().up("prod")
    FakeHostBackend.down = {"web2"}  # drain never contacts the drained host
    gone = world.envs().drain_host("prod", "web2")
    assert gone == ["prod-1", "prod-4"]
    envs = world.envs()
    insts = envs.state.instances("prod")
    assert [i.name for i in insts] == ["prod-0", "prod-2", "prod-3", "prod-5"]
    assert all(i.host != "web2" and i.routed for i in insts)
    assert envs.get("prod").config["drained_hosts"] == ["web2"]
    assert world.last_config("prod")["backends"] == sorted(str(i.endpoint) for i in insts)
    assert envs.placement("prod") == ["web1", "web3", "web1", "web3", "web1", "web3"]
    assert [e for e in envs.events("prod") if e["kind"] == "host-drain"]

    with pytest.raises(Exception, match="web9"):
        envs.drain_host("prod", "web9")

    # a promotion now tops the env up to the profile's count on the hosts that remain
    result = Promoter(world.envs()).promote("prod", world.b, force=True)
    assert result.state == "done"
    assert_on_hosts(world, world.b, 6, hosts=("web1", "web3"))
    counts = [i.host for i in world.envs().state.instances("prod")]
    assert counts.count("web1") == 3 and counts.count("web3") == 3
    # the drained host was never contacted: what it ran is still there (sandbox forgot it)
    assert sorted(n for n, i in world.on_hosts().items() if i["host"] == "web2") == ["prod-1", "prod-4"]


# -- a host dying mid-promotion ----------------------------------------------------------------


def test_a_host_dying_mid_promotion_stops_unroutes_it_and_resume_converges(world: HostWorld) -> None:
    world.envs().up("prod")
    FakeHostBackend.die_at = ("create", "web2")
    with pytest.raises(PromotionError) as e:
        Promoter(world.envs()).promote("prod", world.b, force=True)
    assert "host web2 failed" in e.value.message and "2 instance(s)" in e.value.message
    assert "--resume" in str(e.value.hint) and "sandbox host drain prod web2" in str(e.value.hint)

    envs = world.envs()
    insts = envs.state.instances("prod")
    on_web2 = [i for i in insts if i.host == "web2"]
    assert on_web2 and not any(i.routed for i in on_web2)
    routed = [i for i in insts if i.routed]
    assert routed and all(i.host != "web2" for i in routed)
    assert world.last_config("prod")["backends"] == sorted(str(i.endpoint) for i in routed)
    # the router's connections to the dead host's instances are aborted (in-flight GETs go elsewhere)
    aborts = [c for c in router_log(world.log, "prod") if c["op"] == "abort"]
    assert aborts and sorted(aborts[-1]["backends"]) == sorted(str(i.endpoint) for i in on_web2 if i.endpoint)
    d = Deploys(envs.state).interrupted("prod")
    assert d is not None and d.to_image == world.b
    assert envs.get("prod").image == world.a  # not promoted yet
    steps = [s for s in Deploys(envs.state).history("prod")]
    assert steps[0].state == "running"

    # while web2 is still down, resume refuses before touching anything
    with pytest.raises(HostError, match="web2"):
        Promoter(world.envs()).resume("prod")
    assert Deploys(world.envs().state).interrupted("prod") is not None

    # web2 comes back: resume converges to the profile's 6 instances on the new image, all routed
    FakeHostBackend.die_at, FakeHostBackend.down = None, set()
    result = Promoter(world.envs()).resume("prod")
    assert result.state == "done"
    assert_on_hosts(world, world.b, 6)
    hosts = [i.host for i in world.envs().state.instances("prod")]
    assert sorted(hosts) == sorted(["web1", "web2", "web3"] * 2)
    assert world.envs().get("prod").image == world.b
    assert Deploys(world.envs().state).interrupted("prod") is None
    # the router never sent to an instance of the dead host after it failed
    applies = [c for c in router_log(world.log, "prod") if c["op"] == "apply"]
    assert all(len(c["backends"]) >= 4 for c in applies)


def test_a_host_dying_mid_promotion_can_be_rolled_back_when_it_returns(world: HostWorld) -> None:
    world.envs().up("prod")
    FakeHostBackend.die_at = ("create", "web2")
    with pytest.raises(PromotionError, match="web2"):
        Promoter(world.envs()).promote("prod", world.b, force=True)
    FakeHostBackend.die_at, FakeHostBackend.down = None, set()
    result = Promoter(world.envs()).rollback("prod")
    assert result.state == "rolled-back"
    assert_on_hosts(world, world.a, 6)


def test_new_instance_on_a_host_env_goes_to_its_host(world: HostWorld) -> None:
    world.envs().up("prod")
    envs = world.envs()
    inst = envs.new_instance("prod", world.b, "web3")
    assert inst.host == "web3" and not inst.routed and inst.state == "running"
    assert inst.address is not None and inst.endpoint == endpoint("web3", inst.address)
    assert world.on_hosts()[inst.name]["host"] == "web3"


def test_envs_backend_for_an_unknown_host_is_refused(world: HostWorld) -> None:
    envs: Envs = world.envs()
    world.envs().up("prod")
    with pytest.raises(Exception, match="not in profile"):
        envs.ctx.hosts.backend(envs.get("prod").spec, "web7")
