"""The env service and the promotion's converging swap, driven on a fake backend and a fake router:
up, down, clone, gc, promote, resume and rollback. `up`, `clone` and the promotion are crashed (the
process ends at once, as on SIGKILL) at every backend call, `down` in the middle; gc, resume or
rollback must then leave exactly what the state says. No root, no daemons; each crash runs in a
forked child.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.base import BackendContext, BackendError, BackendRegistry, ImageAccess
from sandbox.envs import Envs
from sandbox.errors import SandboxError
from sandbox.promote.rolling import Promoter, PromotionError
from sandbox.settings import load_settings
from sandbox.store import ImageStore
from sandbox.workspace import Workspace
from tests.fakes import CRASH_EXIT, FakeBackend, router_factory, router_log
from tests.unit.imagefactory import make_image

APP = {"command": "app", "user": "app", "port": 8000}  # no health path: health is the command below
PROFILE = """\
name: {name}
image: {image}
instances: {instances}
health: {{command: "true", interval: 0.01s, timeout: 0.2s}}
router: {{port: auto}}
"""


@pytest.fixture(autouse=True)
def _fresh_fake() -> Iterator[None]:
    FakeBackend.ops = []
    FakeBackend.crash_at = None
    FakeBackend.fail_at = None
    FakeBackend.unhealthy = set()
    yield
    FakeBackend.crash_at = None


class World:
    def __init__(self, root: Path) -> None:
        self.ws = Workspace(root)
        (root / "profiles").mkdir(parents=True)
        (root / "sandbox.yaml").write_text(f"routers: {{port_range: [{_free_range()}]}}\n")
        self.log = root / "router.jsonl"
        envs = self.envs()
        self.a = make_image(envs.store, root / "work", app_meta=APP).digest
        self.b = make_image(
            envs.store, root / "work", app_meta=APP, app_files={"srv/app/main.py": b"v2\n"}
        ).digest
        self.profile("staging", self.a, 2)
        self.profile("prod", self.a, 3)

    def profile(self, name: str, image: str, instances: int) -> None:
        text = PROFILE.format(name=name, image=image, instances=instances)
        (self.ws.root / "profiles" / f"{name}.yaml").write_text(text)

    def envs(self) -> Envs:
        """A fresh service, as each command makes one; its only backend is the fake, as "lxc"."""
        settings = load_settings(self.ws)
        ctx = BackendContext(
            workspace_id=self.ws.id,
            runtime=self.ws.runtime,
            tmp=self.ws.tmp,
            network=settings.network,
            images=ImageAccess(ImageStore(self.ws.images)),
        )
        registry = BackendRegistry(ctx, factories={"lxc": FakeBackend})
        return Envs(self.ws, settings=settings, backends=registry, router_factory=router_factory(self.log))

    def fake(self) -> FakeBackend:
        backend = self.envs().ctx.backend("lxc")
        assert isinstance(backend, FakeBackend)
        return backend

    def held(self) -> dict[str, Any]:
        return self.fake().held()

    def rows(self) -> dict[str, list[str]]:
        state = self.envs().state
        return {e.name: [i.name for i in state.instances(e.name)] for e in state.list_envs()}

    def last_config(self, env: str) -> dict[str, Any]:
        return [e for e in router_log(self.log, env) if e["op"] == "apply"][-1]


def _free_range() -> str:
    base = 20000 + (os.getpid() % 400) * 100
    return f"{base}, {base + 99}"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def in_child(action: Callable[[], object]) -> int:
    """Run `action` in a forked child; its exit status (CRASH_EXIT when the fake ended it).

    SQLite connections must not cross a fork: the parent's unreachable ones are closed before it,
    and the child never runs the collector, so it never closes an inherited connection (that would
    checkpoint and drop the WAL under the parent, as if it were the last user of the database)."""
    gc.collect()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        gc.disable()
        code = 0
        try:
            action()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def ops_of(action: Callable[[], object]) -> list[str]:
    FakeBackend.ops = []
    action()
    ops = list(FakeBackend.ops)
    FakeBackend.ops = []
    return ops


def crash_points(ops: list[str]) -> list[tuple[str, int]]:
    """(operation, n) for every call in `ops`: the n-th call of that operation."""
    seen: dict[str, int] = {}
    points = []
    for o in ops:
        op = o.split(" ")[0]
        points.append((op, seen.get(op, 0)))
        seen[op] = seen.get(op, 0) + 1
    return points


# -- up / down ---------------------------------------------------------------------------------


def test_up_creates_routes_and_down_removes_everything(world: World) -> None:
    view = world.envs().up("staging-1")
    assert view.state == "running"
    assert all(p.ok for p in world.envs().probe("staging-1").values())
    assert sorted(world.held()) == ["staging-1-0", "staging-1-1"]
    assert all(i["state"] == "running" and i["image"] == world.a for i in world.held().values())
    cfg = world.last_config("staging-1")
    assert cfg["backends"] == sorted(f"{i['address']}:8000" for i in world.held().values())
    assert view.url == f"http://127.0.0.1:{cfg['port']}/"

    world.envs().down("staging-1")
    assert world.held() == {} and world.rows() == {}
    assert router_log(world.log, "staging-1")[-1]["op"] == "remove"


def test_up_reads_the_env_row_and_the_image_summary_sparingly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs = world.envs()
    reads: list[str] = []
    get_env, summary = envs.state.get_env, envs.store.summary
    monkeypatch.setattr(envs.state, "get_env", lambda n: reads.append("env") or get_env(n))
    monkeypatch.setattr(envs.store, "summary", lambda d: reads.append("summary") or summary(d))
    envs.up("staging-1")
    assert reads.count("summary") == 1
    assert reads.count("env") <= 2  # the router's render, and the view at the end


def test_a_failed_up_leaves_nothing(world: World) -> None:
    FakeBackend.fail_at = ("start", "staging-1-1")
    with pytest.raises(BackendError, match="fake start of staging-1-1 failed"):
        world.envs().up("staging-1")
    assert world.held() == {} and world.rows() == {}


def test_a_second_env_on_a_fixed_port_names_the_holder(world: World) -> None:
    (world.ws.root / "profiles" / "dev.yaml").write_text(
        PROFILE.format(name="dev", image=world.a, instances=1).replace("port: auto", "port: 18555")
    )
    world.envs().up("dev-1")
    with pytest.raises(SandboxError) as e:
        world.envs().up("dev-2")
    assert "held by environment 'dev-1'" in e.value.message and "port: auto" in str(e.value.hint)
    assert sorted(world.rows()) == ["dev-1"] and sorted(world.held()) == ["dev-1-0"]


def test_a_crash_at_any_step_of_up_is_shown_and_gc_cleans_it(world: World) -> None:
    points = crash_points(ops_of(lambda: world.envs().up("staging-1")))
    world.envs().down("staging-1")
    assert len(points) >= 5  # prepare, create and start of each instance
    for point in points:
        FakeBackend.ops, FakeBackend.crash_at = [], point
        assert in_child(lambda: world.envs().up("staging-1")) == CRASH_EXIT, point
        FakeBackend.crash_at = None
        [view] = world.envs().ls()
        assert view.state == "crashed during up", point
        report = world.envs().gc()
        assert report.removed_envs == ["staging-1"], point
        assert world.held() == {} and world.rows() == {}, point


def test_a_crash_during_down_is_finished_by_gc(world: World) -> None:
    world.envs().up("staging-1")
    FakeBackend.crash_at = ("destroy", 1)
    assert in_child(lambda: world.envs().down("staging-1")) == CRASH_EXIT
    FakeBackend.crash_at = None
    assert world.envs().view("staging-1").state == "crashed during down"
    assert world.envs().gc().removed_envs == ["staging-1"]
    assert world.held() == {} and world.rows() == {}


# -- clone, gc ---------------------------------------------------------------------------------


def test_clone_copies_instances_with_their_data(world: World) -> None:
    envs = world.envs()
    envs.up("staging-1")
    envs.put_file("staging-1", 0, "/srv/data.txt", b"precious", 0o644, 0, 0)
    view = world.envs().clone("staging-1", "staging-2")
    assert [i["name"] for i in view.instances] == ["staging-2-0", "staging-2-1"]
    assert world.held()["staging-2-0"]["files"] == {"/srv/data.txt": "precious"}
    assert world.envs().get("staging-2").spec.instances == 2


def test_a_crash_at_any_step_of_clone_is_shown_and_gc_cleans_it(world: World) -> None:
    world.envs().up("staging-1")
    points = crash_points(ops_of(lambda: world.envs().clone("staging-1", "staging-2")))
    world.envs().down("staging-2")
    assert len(points) >= 4  # clone and start of each instance
    for point in points:
        FakeBackend.ops, FakeBackend.crash_at = [], point
        assert in_child(lambda: world.envs().clone("staging-1", "staging-2")) == CRASH_EXIT, point
        FakeBackend.crash_at = None
        assert world.envs().view("staging-2").state == "crashed during up", point
        assert world.envs().gc().removed_envs == ["staging-2"], point
        assert sorted(world.held()) == ["staging-1-0", "staging-1-1"], point
        assert world.rows() == {"staging-1": ["staging-1-0", "staging-1-1"]}, point


def test_gc_removes_orphans_and_expired_envs_only(world: World) -> None:
    world.envs().up("staging-1")
    world.envs().up("prod", ttl="1h")
    world.fake().create(world.envs().instances.spec(world.envs().get("prod"), 7, "10.213.0.99"))
    report = world.envs().gc()
    assert report.removed_instances == ["prod-7"] and report.removed_envs == []
    import time

    report = world.envs().gc(now=time.time() + 7200)
    assert report.removed_envs == ["prod"]
    assert sorted(world.rows()) == ["staging-1"]
    assert sorted(world.held()) == ["staging-1-0", "staging-1-1"]


# -- the promotion's converging swap -----------------------------------------------------------


def promote(world: World, image: str) -> Any:
    return Promoter(world.envs()).promote("prod", image, force=True)


def assert_converged(world: World, image: str, instances: int = 3) -> None:
    state = world.envs().state
    insts = state.instances("prod")
    assert len(insts) == instances and all(i.image == image and i.routed for i in insts)
    assert state.get_env("prod").image == image
    held = world.held()
    assert sorted(held) == sorted(i.name for i in insts)  # nothing left behind in the backend
    assert all(held[i.name]["image"] == image for i in insts)
    assert world.last_config("prod")["backends"] == sorted(f"{i.address}:8000" for i in insts)


def assert_never_fewer_backends(world: World, instances: int = 3) -> None:
    applies = [e for e in router_log(world.log, "prod") if e["op"] == "apply"]
    assert applies and all(len(e["backends"]) >= instances for e in applies)


def test_promote_replaces_every_instance_keeping_n_backends(world: World) -> None:
    world.envs().up("prod")
    result = promote(world, world.b)
    assert result.state == "done" and result.plan.strategy == "rolling" and len(result.per_backend) == 3
    assert_converged(world, world.b)
    assert_never_fewer_backends(world)


def test_an_unhealthy_candidate_is_rolled_back(world: World) -> None:
    world.envs().up("prod")
    FakeBackend.unhealthy = {world.b}
    with pytest.raises(PromotionError, match="did not become healthy"):
        promote(world, world.b)
    assert_converged(world, world.a)
    assert_never_fewer_backends(world)


@pytest.mark.parametrize("then", ["resume", "rollback"])
def test_a_crash_at_any_step_of_a_promotion_resumes_or_rolls_back(world: World, then: str) -> None:
    world.envs().up("prod")
    points = crash_points(ops_of(lambda: promote(world, world.b)))
    assert_converged(world, world.b)
    world.envs().down("prod")
    assert len(points) >= 12  # per instance: prepare, create, start, health, destroy
    for point in points:
        world.log.unlink(missing_ok=True)
        world.envs().up("prod")
        FakeBackend.ops, FakeBackend.crash_at = [], point
        assert in_child(lambda: promote(world, world.b)) == CRASH_EXIT, point
        FakeBackend.crash_at = None
        p = Promoter(world.envs())
        result = p.resume("prod") if then == "resume" else p.rollback("prod")
        assert result.state in ("done", "rolled-back"), point
        assert_converged(world, world.b if then == "resume" else world.a)
        assert_never_fewer_backends(world)
        world.envs().down("prod")
        assert world.held() == {}, point
