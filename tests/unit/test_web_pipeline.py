"""Pipeline jobs (sandbox/web/pipeline.py) through the real worker, Envs and Promoter on the fake
backend of tests/fakes.py, with a build function that records what it was given instead of running
mmdebstrap: the stages and their record in the job, a failing stage named and what it leaves, an
existing env, and the build at a commit of a real temporary git repository (fetched from a remote
when missing; git's errors as clear messages; git run as the checkout's owner). The real
Builder's part: a tree's recipe loads with the tree's files and the workspace's store, and a
resolved lock is never written."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.envs import Envs
from sandbox.errors import BuildError
from sandbox.web.jobs import Job, Jobs
from sandbox.web.pipeline import PipelineBuilder, TreeWorkspace
from sandbox.web.worker import Worker, WorkspaceRunner
from sandbox.workspace import Workspace
from tests.unit.test_envs_orchestration import World, _fresh_fake  # noqa: F401 (an autouse fixture)
from tests.unit.webworld import FakeViews

RECIPE_V1 = "name: web\npackages: [nginx]\nfiles:\n  - {src: ../app, dest: /srv/app}\n"


def git(cwd: Path, *argv: str) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    p = subprocess.run(["git", "-C", str(cwd), *argv], capture_output=True, text=True, env=env, check=True)
    return p.stdout.strip()


class Built:
    """A build function: records the workspace and what it read there; answers a fixed digest."""

    def __init__(self, digest: str, fail: bool = False) -> None:
        self.digest = digest
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    def __call__(self, ws: Workspace, recipe: str, refresh: bool) -> dict[str, Any]:
        seen: dict[str, Any] = {"root": ws.root, "images": ws.images, "refresh": refresh}
        for rel in ("recipes/web.yaml", "recipes/web.lock", "app/main.py"):
            f = ws.root / rel
            seen[rel] = f.read_text() if f.is_file() else None
        self.calls.append(seen)
        if self.fail:
            raise BuildError("mmdebstrap exited 1: E: cannot find package nginx")
        return {"digest": self.digest, "ref": f"{recipe}:latest", "cached": {}, "lock_created": False}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "app").mkdir()
    (tmp_path / "recipes" / "web.yaml").write_text(RECIPE_V1)
    (tmp_path / "recipes" / "web.lock").write_text("lock v1\n")
    (tmp_path / "app" / "main.py").write_text("v1\n")
    return w


def healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake router answers no HTTP probe; here every instance counts as healthy."""
    monkeypatch.setattr(Envs, "wait_healthy", lambda self, name, timeout=None: {})


def run(world: World, build: Built, who: str = "root", **args: object) -> Job:
    jobs = Jobs(world.envs().state)
    job = jobs.submit("pipeline", {"recipe": "web", **args}, who=who, trigger="cli")
    done = Worker(jobs, FakeViews(), WorkspaceRunner(world.ws, envs=world.envs, build=build)).run_once()
    assert done is not None and done.id == job.id
    return done


def stages(job: Job) -> list[str]:
    assert job.result is not None
    return [s["stage"] for s in job.result["stages"]]


def test_build_up_verify_promote_the_exact_digest(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy(monkeypatch)
    assert run(world, Built(world.a), env="prod").state == "done"
    build = Built(world.b)
    job = run(world, build, env="staging-7", verify=True, promote="prod")
    assert (job.state, job.error) == ("done", None), job.error
    assert stages(job) == ["build", "up", "verify", "promote"]
    assert job.result is not None and job.result["digest"] == world.b
    promote = job.result["stages"][-1]
    assert (promote["env"], promote["from_image"], promote["to_image"]) == ("prod", world.a, world.b)
    state = world.envs().state
    assert state.get_env("staging-7").image == world.b and state.get_env("prod").image == world.b
    [call] = build.calls
    assert call["root"] == world.ws.root and call["refresh"] is False  # no commit: the checkout
    assert call["recipes/web.yaml"] == RECIPE_V1


def test_a_failed_verify_fails_its_stage_and_keeps_what_was_made(world: World) -> None:
    assert run(world, Built(world.a), env="prod").state == "done"
    job = run(world, Built(world.b), env="staging-8", verify=True, promote="prod")
    assert job.state == "failed" and job.error is not None
    assert "pipeline staging-8: stage verify failed" in job.error
    assert "staging-8 is left up" in job.error and world.b[:19] in job.error
    assert stages(job) == ["build", "up", "verify"] and job.result is not None
    assert job.result["failed"] == "verify" and job.result["stages"][-1]["ok"] is False
    state = world.envs().state
    assert state.get_env("staging-8").image == world.b  # left up, to be looked at
    assert state.get_env("prod").image == world.a  # never promoted


def test_a_failed_build_makes_no_env(world: World) -> None:
    job = run(world, Built(world.b, fail=True), env="staging-9", verify=True)
    assert job.state == "failed" and job.error is not None
    assert "stage build failed: mmdebstrap exited 1" in job.error
    assert stages(job) == ["build"] and "staging-9" not in world.rows()


def test_an_existing_env_is_reused_with_the_same_image_and_refused_with_another(world: World) -> None:
    assert run(world, Built(world.b), env="staging-5").state == "done"
    again = run(world, Built(world.b), env="staging-5")
    assert again.state == "done" and again.result is not None and again.result["stages"][1]["reused"]
    other = run(world, Built(world.a), env="staging-5")
    assert other.state == "failed" and other.error is not None
    assert "stage up failed: staging-5 already exists" in other.error
    assert world.envs().state.get_env("staging-5").image == world.b


def test_a_promotion_refused_by_the_gate_fails_the_promote_stage(world: World) -> None:
    assert run(world, Built(world.a), env="prod").state == "done"
    job = run(world, Built(world.b), env="staging-6", promote="prod")  # no verify: the gate says no
    assert job.state == "failed" and job.error is not None and "stage promote failed" in job.error
    assert stages(job) == ["build", "up", "promote"]


# -- at a commit -------------------------------------------------------------------------------


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_the_build_at_a_commit_uses_the_commits_recipe_lock_and_app(world: World) -> None:
    root = world.ws.root
    (root / ".gitignore").write_text(".sandbox/\nimages/\nrouter.jsonl\nwork/\n")
    git(root, "init", "-q")
    first = commit_all(root, "v1")
    (root / "recipes" / "web.yaml").write_text(RECIPE_V1 + "# v2\n")
    (root / "recipes" / "web.lock").write_text("lock v2\n")
    (root / "app" / "main.py").write_text("v2\n")
    commit_all(root, "v2")
    (root / "app" / "main.py").write_text("uncommitted\n")  # a dirty checkout does not matter
    build = Built(world.b)
    job = run(world, build, env=f"staging-{first[:12]}", commit=first)
    assert (job.state, job.error) == ("done", None), job.error
    assert stages(job) == ["source", "build", "up"] and job.result is not None
    source = job.result["stages"][0]
    assert (source["commit"], source["fetched"], source["prefix"]) == (first, False, "")
    [call] = build.calls
    assert call["root"] != root and call["images"] == world.ws.images
    assert (call["recipes/web.yaml"], call["recipes/web.lock"], call["app/main.py"]) == (
        RECIPE_V1,
        "lock v1\n",
        "v1\n",
    )
    assert not call["root"].exists()  # the exported tree is gone
    assert (root / "app" / "main.py").read_text() == "uncommitted\n"  # the checkout untouched
    assert not list(world.ws.tmp.glob("pipeline-*"))


def test_a_missing_commit_is_fetched_from_origin(world: World, tmp_path: Path) -> None:
    root = world.ws.root
    (root / ".gitignore").write_text(".sandbox/\nimages/\nrouter.jsonl\nwork/\n")
    git(root, "init", "-q")
    commit_all(root, "v1")
    upstream = tmp_path.parent / f"{tmp_path.name}-upstream.git"
    git(tmp_path.parent, "clone", "-q", "--bare", str(root), str(upstream))
    git(root, "remote", "add", "origin", str(upstream))
    other = tmp_path.parent / f"{tmp_path.name}-other"
    git(tmp_path.parent, "clone", "-q", str(upstream), str(other))
    (other / "app" / "main.py").write_text("pushed\n")
    pushed = commit_all(other, "pushed")
    git(other, "push", "-q", "origin", "HEAD")
    build = Built(world.b)
    job = run(world, build, env="staging-1", commit=pushed)
    assert (job.state, job.error) == ("done", None), job.error
    assert job.result is not None and job.result["stages"][0]["fetched"] is True
    assert build.calls[0]["app/main.py"] == "pushed\n"


def test_git_errors_are_clear(world: World) -> None:
    sha = "ab" * 20
    job = run(world, Built(world.b), env="staging-1", commit=sha)
    assert job.state == "failed" and job.error is not None
    assert "stage source failed" in job.error and "is not a git checkout" in job.error
    assert "staging-1" not in world.rows()
    root = world.ws.root
    (root / ".gitignore").write_text(".sandbox/\nimages/\nrouter.jsonl\nwork/\n")
    git(root, "init", "-q")
    commit_all(root, "v1")
    job = run(world, Built(world.b), env="staging-2", commit=sha)  # unknown, and no remote
    assert job.error is not None and f"cannot fetch commit {sha[:12]} from the remote 'origin'" in job.error
    tree = git(root, "rev-parse", "HEAD^{tree}")
    job = run(world, Built(world.b), env="staging-3", commit=tree)
    assert job.error is not None and f"{tree[:12]} is a tree, not a commit" in job.error
    assert not list(world.ws.tmp.glob("pipeline-*"))


def test_the_workspace_may_be_a_directory_of_the_repository(tmp_path: Path) -> None:
    from sandbox.web.gitsource import export_commit

    repo = tmp_path / "repo"
    (repo / "deploy" / "recipes").mkdir(parents=True)
    (repo / "deploy" / "recipes" / "web.yaml").write_text(RECIPE_V1)
    (repo / "README").write_text("top\n")
    git(repo, "init", "-q")
    sha = commit_all(repo, "one")
    out = tmp_path / "out"
    out.mkdir()
    info = export_commit(repo / "deploy", sha, out)
    assert info["prefix"] == "deploy" and (out / "recipes" / "web.yaml").read_text() == RECIPE_V1
    assert not (out / "README").exists()


# -- the real Builder on a tree ----------------------------------------------------------------


def test_a_trees_recipe_loads_from_the_tree_into_the_workspaces_store(world: World, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "recipes").mkdir(parents=True)
    (tree / "app").mkdir()
    (tree / "recipes" / "web.yaml").write_text(RECIPE_V1)
    (tree / "app" / "main.py").write_text("tree\n")
    tws = TreeWorkspace(tree, home=world.ws)
    builder = PipelineBuilder(tws)
    loaded = builder.load("web")
    assert loaded.path == (tree / "recipes" / "web.yaml").resolve()
    assert [rf.src for rf in loaded.resolved_files] == [(tree / "app").resolve()]
    assert builder.store.root == world.ws.images and builder.packages.root == world.ws.cache / "debs"
    assert (tws.state, tws.tmp, tws.id, tws.runtime) == (
        world.ws.state,
        world.ws.tmp,
        world.ws.id,
        world.ws.runtime,
    )


def test_a_resolved_lock_is_used_and_never_written(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.web.pipeline as pipeline

    class Apt:
        updated = 0

        def update(self) -> None:
            Apt.updated += 1

    fresh = object()
    monkeypatch.setattr(PipelineBuilder, "_apt", lambda self, loaded: Apt())
    monkeypatch.setattr(pipeline, "resolve", lambda loaded, apt: fresh)
    lock = world.ws.root / "recipes" / "web.lock"
    before = lock.read_bytes()
    builder = PipelineBuilder(world.ws, refresh=True)
    assert builder.current_lock(builder.load("web"), locked=False) == (fresh, True)
    assert Apt.updated == 1 and lock.read_bytes() == before
    lock.unlink()  # missing: resolved, not written either
    plain = PipelineBuilder(world.ws)
    assert plain.current_lock(plain.load("web"), locked=False) == (fresh, True)
    assert not lock.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run git as another user")
def test_git_runs_as_the_checkouts_owner_and_keeps_its_ownership_check(tmp_path: Path) -> None:
    """A checkout of `nobody`: git runs as nobody (a fetch leaves no root-owned file in its .git);
    a directory of root's inside it: git as root refuses the repository, with a clear message."""
    from sandbox.web.gitsource import GitError, export_commit

    base = Path(tempfile.mkdtemp(prefix="sbx-git-", dir="/tmp"))  # others may traverse it
    try:
        os.chmod(base, 0o755)
        upstream, repo = base / "upstream", base / "repo"
        (upstream / "deploy" / "recipes").mkdir(parents=True)
        (upstream / "deploy" / "recipes" / "web.yaml").write_text(RECIPE_V1)
        git(upstream, "init", "-q")
        sha = commit_all(upstream, "one")
        repo.mkdir()
        git(repo, "init", "-q")
        git(repo, "remote", "add", "origin", str(upstream))
        nobody = pwd.getpwnam("nobody")
        for d in (upstream, repo):
            subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", str(d)], check=True)
        out = tmp_path / "out"
        out.mkdir()
        info = export_commit(repo, sha, out)  # missing: fetched, as nobody
        assert info["fetched"] is True and (out / "deploy" / "recipes" / "web.yaml").is_file()
        owners = {p.stat().st_uid for p in (repo / ".git").rglob("*")}
        assert owners == {nobody.pw_uid}
        ws = repo / "ws"
        ws.mkdir()  # root's, inside nobody's repository
        with pytest.raises(GitError, match="dubious ownership") as e:
            export_commit(ws, sha, tmp_path / "out2")
        assert e.value.hint is not None and "make one user own the whole checkout" in e.value.hint
    finally:
        shutil.rmtree(base)
