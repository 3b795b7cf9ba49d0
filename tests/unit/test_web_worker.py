"""The worker runs jobs through the CLI's own Envs and Promoter code (on the fake backend and fake
router of tests/fakes.py): up, extend, verify, promote, rollback, readonly, down; a pipeline job
whose build fails keeps its stages; a job of a user who may not run it fails without running."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.promote.rolling import Promoter
from sandbox.web.auth import Auth
from sandbox.web.jobs import Jobs
from sandbox.web.worker import Worker, WorkspaceRunner
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
    from sandbox.state import StateDB
    from sandbox.web.roles import AccessError

    with pytest.raises(AccessError, match="reserved"):
        Auth(StateDB(tmp_path / "state.db"), hasher=CHEAP).add_user("root", PASSWORD, {"*": "admin"})
