"""The worker runs jobs through the CLI's own Envs and Promoter code (on the fake backend and fake
router of tests/fakes.py): up, extend, verify, promote, rollback, readonly, down; a pipeline job
whose build fails keeps its stages; a job of a user who may not run it fails without running. A pool of
worker threads runs jobs of different envs at once, and never two of one env."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.promote.rolling import Promoter
from sandbox.state import StateDB
from sandbox.web.auth import Auth
from sandbox.web.jobs import Job, Jobs
from sandbox.web.worker import Worker, WorkspaceRunner, join
from tests.unit.test_envs_orchestration import World, _fresh_fake  # noqa: F401 (an autouse fixture)
from tests.unit.webworld import CHEAP, PASSWORD, FakeViews


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_jobs_run_through_envs_and_the_promoter(world: World) -> None:
    envs = world.envs()
    jobs = Jobs(envs.state)
    Auth(envs.state, hasher=CHEAP).add_user("dave", PASSWORD, {"staging": "developer"})
    worker = Worker(jobs, FakeViews(), WorkspaceRunner(world.ws, envs=world.envs))

    def run(kind: str, who: str = "root", **args: object) -> tuple[str, str | None, dict[str, object] | None]:
        job = jobs.submit(kind, dict(args), who=who, trigger="cli")
        done = worker.run_once()
        assert done is not None and done.id == job.id
        return done.state, done.error, done.result

    state, error, result = run("up", env="staging-1", ttl=3600)
    assert (state, error) == ("done", None) and result is not None
    assert len(result["instances"]) == 2  # type: ignore[arg-type]
    assert envs.state.get_env("staging-1").expires is not None
    state, _, result = run("extend", env="staging-1", ttl=7200)
    assert state == "done"
    assert run("up", env="prod")[0] == "done"
    assert run("up", env="staging-2", image=world.b)[0] == "done"
    # the fake router answers no HTTP probe: verify fails, and so does its job, with the reason
    state, error, _ = run("verify", env="staging-2")
    assert state == "failed" and error is not None and "verify of staging-2 failed" in error
    assert run("promote", env="prod", source="staging-2", image=world.b)[0] == "failed"  # the gate
    Promoter(world.envs()).deploys.record_verification(world.b, "staging-2", True, "a test says so")
    state, error, result = run("promote", env="prod", source="staging-2", image=world.b)
    assert (state, error) == ("done", None) and result is not None and result["state"] == "done"
    assert envs.state.get_env("prod").image == world.b
    state, error, _ = run("rollback", env="prod")
    assert (state, error) == ("done", None) and envs.state.get_env("prod").image == world.a
    assert run("readonly", env="staging-1", on=True)[0] == "done"
    assert run("down", env="staging-1")[0] == "done"
    assert "staging-1" not in world.rows()
    # a pipeline runs its stages (tests/unit/test_web_pipeline.py); here the recipe is missing
    state, error, result = run("pipeline", env="staging-3", recipe="web")
    assert state == "failed" and error is not None and "stage build failed: recipe 'web' not found" in error
    assert result == {
        "env": "staging-3",
        "recipe": "web",
        "failed": "build",
        "stages": [
            {"stage": "build", "ok": False, "error": error.split("failed: ", 1)[1].split(" (hint")[0]}
        ],
    }
    # dave is a developer on staging, not on prod: his down of prod fails without running
    state, error, _ = run("down", who="dave", env="prod")
    assert state == "failed" and error is not None and "dave may not run down on prod" in error
    assert "prod" in world.rows()


def test_root_is_not_a_web_user_name(tmp_path: Path) -> None:
    """`root` as a job's submitter is root's CLI; a web user of that name would borrow its trust."""
    from sandbox.web.roles import AccessError

    with pytest.raises(AccessError, match="reserved"):
        Auth(StateDB(tmp_path / "state.db"), hasher=CHEAP).add_user("root", PASSWORD, {"*": "admin"})


class Gated:
    """A runner that blocks each job until the test releases it, and logs starts and ends."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.log: list[tuple[str, int, str]] = []
        self.release: dict[int, threading.Event] = {}
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.peak = 0

    def __call__(self, job: Job) -> dict[str, object]:
        with self.cond:
            self.log.append(("start", job.id, job.env))
            self.running[job.env] = self.running.get(job.env, 0) + 1
            self.most[job.env] = max(self.most.get(job.env, 0), self.running[job.env])
            self.peak = max(self.peak, sum(self.running.values()))
            gate = self.release.setdefault(job.id, threading.Event())
            self.cond.notify_all()
        gate.wait(10)  # bounded: a broken test ends
        with self.cond:
            self.running[job.env] -= 1
            self.log.append(("end", job.id, job.env))
            self.cond.notify_all()
        return {"env": job.env}

    def started(self, job_id: int) -> bool:
        return ("start", job_id) in [(e, i) for e, i, _ in self.log]

    def wait(self, pred: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout=10)

    def open(self, job_id: int) -> None:
        with self.cond:
            self.release.setdefault(job_id, threading.Event()).set()


def test_jobs_of_two_envs_overlap_one_envs_never_do(tmp_path: Path) -> None:
    jobs = Jobs(StateDB(tmp_path / "state.db"))
    a1, a2, b1 = (
        jobs.submit("verify", {"env": env}, who="root", trigger="cli").id
        for env in ("staging-1", "staging-1", "prod")
    )
    gated = Gated()
    stop = threading.Event()
    pool = Worker(jobs, FakeViews(), gated, interval=0.02).start(stop, 3)
    try:
        gated.wait(lambda: gated.started(a1) and gated.started(b1))  # two envs at once
        time.sleep(0.3)  # three threads, a free one polls every 20 ms: a2 must still wait for a1
        assert not gated.started(a2) and jobs.get(a2).state == "queued"
        gated.open(a1)
        gated.wait(lambda: gated.started(a2))
        assert gated.log.index(("end", a1, "staging-1")) < gated.log.index(("start", a2, "staging-1"))
        assert jobs.get(b1).state == "running"  # b1 still runs beside a2
        gated.open(a2)
        gated.open(b1)
        for i in (a1, a2, b1):
            deadline = time.monotonic() + 10
            while jobs.get(i).state != "done" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert jobs.get(i).state == "done"
    finally:
        stop.set()
        for i in (a1, a2, b1):
            gated.open(i)
        assert join(pool, timeout=10) == []
    assert gated.most == {"staging-1": 1, "prod": 1} and gated.peak == 2


def test_many_jobs_on_a_pool_never_two_of_one_env(tmp_path: Path) -> None:
    jobs = Jobs(StateDB(tmp_path / "state.db"))
    ids = [
        jobs.submit("verify", {"env": f"staging-{i % 3}"}, who="root", trigger="cli").id for i in range(12)
    ]
    gated = Gated()
    for i in ids:
        gated.open(i)  # no blocking: as fast as the pool claims

    def runner(job: Job) -> dict[str, object]:
        time.sleep(0.01)
        return gated(job)

    stop = threading.Event()
    pool = Worker(jobs, FakeViews(), runner, interval=0.01).start(stop, 4)
    try:
        gated.wait(lambda: sum(1 for e, _, _ in gated.log if e == "end") == len(ids))
    finally:
        stop.set()
        assert join(pool, timeout=10) == []
    assert set(gated.most.values()) == {1}
    assert [j.state for j in jobs.recent(limit=100)] == ["done"] * len(ids)
    # each env's jobs ran oldest first
    for env in ("staging-0", "staging-1", "staging-2"):
        order = [i for e, i, en in gated.log if e == "start" and en == env]
        assert order == sorted(order)


def test_a_pool_size_out_of_range_is_refused(tmp_path: Path) -> None:
    worker = Worker(Jobs(StateDB(tmp_path / "state.db")), FakeViews(), Gated())
    for n in (0, 17):
        with pytest.raises(SandboxError, match="number of workers"):
            worker.start(threading.Event(), n)
