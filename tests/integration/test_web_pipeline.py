"""A pipeline job on real LXC (root): the worker builds recipes/web.yaml at a commit of a git
repository made of a copy of the session build's workspace, brings up staging-<12 hex of the commit>
with that image and verifies it. The commit holds the session build's own inputs, so the build is a
cache hit (the same digest), while the checkout's uncommitted change of the template is ignored.
Own bridge sbxpip0 (10.232.0.0/24) and router ports 19770-19789."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.state import StateDB
from sandbox.web.jobs import Jobs
from sandbox.web.views import WorkspaceViews
from sandbox.web.worker import Worker, WorkspaceRunner
from sandbox.workspace import Workspace
from tests.integration.conftest import (
    GREETING,
    REPO,
    Built,
    clear_workspace,
    grant_traverse,
    link_exists,
    lxc_problem,
    require,
    shared_cache,
    workspace_like,
)
from tests.unit.test_web_pipeline import commit_all, git

BRIDGE = "sbxpip0"
SETTINGS = "network: {bridge: sbxpip0, subnet: 10.232.0.0/24}\nrouters: {port_range: [19770, 19789]}\n"


@pytest.fixture
def repo_ws(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    require(lxc_problem())
    monkeypatch.setenv("SANDBOX_CACHE", str(shared_cache()))
    ws = workspace_like(built, tmp_path, "pipe")
    shutil.copytree(REPO / "profiles", ws / "profiles")
    (ws / "sandbox.yaml").write_text(SETTINGS)
    (ws / ".gitignore").write_text(".sandbox/\nimages/\n")
    restore = grant_traverse(ws)
    had_bridge = link_exists(BRIDGE)
    try:
        yield ws
    finally:
        clear_workspace(
            ws,
            [e.name for e in StateDB.for_workspace(Workspace(ws)).list_envs()],
            BRIDGE,
            had_bridge,
            restore,
        )


def test_a_pipeline_at_a_commit_builds_ups_and_verifies(built: Built, repo_ws: Path) -> None:
    ws = repo_ws
    git(ws, "init", "-q")
    sha = commit_all(ws, "the session build's inputs")
    tpl = ws / "recipes" / "web" / "templates" / "settings.py.j2"
    tpl.write_text(tpl.read_text().replace(GREETING, 'GREETING = "uncommitted"'))  # not built
    env = f"staging-{sha[:12]}"
    state = StateDB.for_workspace(Workspace(ws))
    jobs = Jobs(state)
    args = {"env": env, "recipe": "web", "commit": sha, "verify": True}
    job = jobs.submit("pipeline", args, who="webhook:main", trigger="webhook")
    runner = WorkspaceRunner(Workspace(ws))
    done = Worker(jobs, WorkspaceViews(Workspace(ws)), runner).run_once()
    assert done is not None and done.id == job.id
    assert (done.state, done.error) == ("done", None), done.error
    assert done.result is not None
    stages = {s["stage"]: s for s in done.result["stages"]}
    assert list(stages) == ["source", "build", "up", "verify"]
    assert stages["source"]["commit"] == sha and stages["source"]["fetched"] is False
    assert stages["build"]["digest"] == built.digest  # the commit's inputs: the session's image
    assert stages["build"]["cached"]["base"] is True
    assert stages["verify"]["ok"] is True
    e = state.get_env(env)
    assert (e.state, e.image) == ("running", built.digest)
    assert "uncommitted" in tpl.read_text()  # the checkout is as it was
    assert git(ws, "status", "--porcelain") == "M recipes/web/templates/settings.py.j2"
    assert not list((ws / ".sandbox" / "tmp").glob("pipeline-*"))
