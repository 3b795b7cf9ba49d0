"""A `pipeline` job: build the recipe (at a commit of the workspace's git repository, if given),
`up` the pipeline's env with that image, verify it, and promote that exact digest into another env.

Each stage is recorded in the job's result (`stages`, in order). A failing stage fails the job with
a message naming the stage; what earlier stages made stays (the image in the store, the env up),
so that it can be looked at; the job's result still lists the stages that ran.

- **At a commit**: the commit's tree (the workspace's directory of it) is exported with `git archive`
  into a private directory under the workspace's tmp/ (gitsource.py), and the recipe is built from
  there: its recipe, lock and app files are the commit's. The images, the caches, the state and the
  build lock stay the workspace's (`TreeWorkspace`), so the base layer is shared and the manifest
  names the same `recipes/NAME.yaml` a build of the checkout would. The directory is removed after.
- **Without a commit**: the recipe as the workspace holds it now.
- **The lock file is never written**: a missing or stale lock, and `refresh: true` (the newest
  packages: apt update and a new resolution), are resolved in memory for this build only. The
  user's checkout stays as it is; `sandbox lock NAME` writes a lock when one is wanted.
- A pipeline build moves `NAME:latest` as any build does, but leaves the workspace's fingerprint of
  the recipe alone (that shortcut of `sandbox up` stays true of the checkout's own inputs).
- The env's profile is the workspace's (profiles are the server's configuration, not the commit's).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.build.builder import Builder, _phase
from sandbox.build.lock import Lock, resolve
from sandbox.config import LoadedRecipe
from sandbox.errors import NotFound, SandboxError
from sandbox.fsutil import pid_alive, private_dir, remove_tree
from sandbox.web.gitsource import export_commit
from sandbox.workspace import Workspace

if TYPE_CHECKING:
    from sandbox.envs import Envs

# (workspace to build in, recipe name, refresh) -> BuildResult.to_dict()
Build = Callable[[Workspace, str, bool], dict[str, Any]]
STAGES = ("source", "build", "up", "verify", "promote")


class PipelineError(SandboxError):
    """A stage failed; `result` holds the stages that ran, the failed one last."""

    def __init__(self, message: str, hint: str | None, result: dict[str, Any]) -> None:
        super().__init__(message, hint)
        self.result = result


@dataclass(frozen=True)
class TreeWorkspace(Workspace):
    """Recipes and app files from `root` (a commit's tree); images, caches and state from `home`."""

    home: Workspace

    @property
    def images(self) -> Path:
        return self.home.images

    @property
    def state(self) -> Path:
        return self.home.state

    @property
    def cache(self) -> Path:
        return self.home.cache

    @property
    def tmp(self) -> Path:
        return self.home.tmp

    @property
    def id(self) -> str:
        return self.home.id

    @property
    def runtime(self) -> Path:
        return self.home.runtime


class PipelineBuilder(Builder):
    """The Builder, but a lock it resolves (missing, stale, or `refresh`) is used, not written."""

    def __init__(self, ws: Workspace, refresh: bool = False) -> None:
        super().__init__(ws)
        self.refresh = refresh

    def _relock(self, loaded: LoadedRecipe) -> Lock:
        with _phase(self.sink, "lock", "resolving packages (not written to the lock file)"):
            apt = self._apt(loaded)
            apt.update()
            return resolve(loaded, apt)

    def current_lock(self, loaded: LoadedRecipe, *, locked: bool) -> tuple[Lock, bool]:
        if self.refresh:
            return self._relock(loaded), True
        return super().current_lock(loaded, locked=locked)


def build_recipe(ws: Workspace, recipe: str, refresh: bool) -> dict[str, Any]:
    """Build with the real Builder, leaving the lock file and the recipe's fingerprint alone."""
    return PipelineBuilder(ws, refresh).build(recipe, record=False).to_dict()


@contextlib.contextmanager
def commit_tree(ws: Workspace, commit: str, remote: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The commit's tree of the workspace, in a private directory removed afterwards."""
    private_dir(ws.tmp)
    for d in ws.tmp.glob("pipeline-*"):  # left by a server that died
        m = re.match(r"pipeline-(\d+)-", d.name)
        if m and not pid_alive(int(m.group(1))):
            remove_tree(d)
    work = Path(tempfile.mkdtemp(dir=ws.tmp, prefix=f"pipeline-{os.getpid()}-"))
    try:
        tree = work / "tree"
        tree.mkdir(mode=0o755)
        info = export_commit(ws.root, commit, tree, remote)
        yield tree, info
    finally:
        remove_tree(work)


class PipelineRun:
    """One pipeline job's stages on `envs` (its workspace)."""

    def __init__(
        self,
        envs: Envs,
        args: dict[str, Any],
        *,
        owner: str | None = None,
        build: Build = build_recipe,
        remote: str = "origin",
    ) -> None:
        self.envs = envs
        self.ws: Workspace = envs.ctx.ws
        self.args = args
        self.owner = owner
        self.build_fn = build
        self.remote = remote
        self.stages: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {"env": args["env"], "recipe": args["recipe"], "stages": self.stages}
        if "commit" in args:
            self.result["commit"] = args["commit"]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"stage": name}
        self.stages.append(record)
        try:
            yield record
        except (SandboxError, OSError) as e:
            message = e.message if isinstance(e, SandboxError) else f"{e.strerror or e}"
            hint = e.hint if isinstance(e, SandboxError) else None
            record.update(ok=False, error=message)
            self.result["failed"] = name
            raise PipelineError(
                f"pipeline {self.args['env']}: stage {name} failed: {message}",
                hint=self._left(hint),
                result=self.result,
            ) from e
        record.setdefault("ok", True)

    def _left(self, hint: str | None) -> str | None:
        """What earlier stages made and left in place."""
        kept = []
        if "digest" in self.result:
            kept.append(f"image {self.result['digest'][:19]} is in the store")
        if any(s["stage"] == "up" and s.get("ok", True) for s in self.stages[:-1]):
            kept.append(f"{self.args['env']} is left up (sandbox down {self.args['env']})")
        text = "; ".join(kept)
        return "; ".join(x for x in (hint, text and f"kept: {text}") if x) or None

    def run(self) -> dict[str, Any]:
        a, env = self.args, self.args["env"]
        with contextlib.ExitStack() as stack:
            ws = self.ws
            if "commit" in a:
                with self.stage("source") as rec:
                    tree, info = stack.enter_context(commit_tree(self.ws, a["commit"], self.remote))
                    rec.update(info)
                ws = TreeWorkspace(tree, home=self.ws)
            self._build(ws)
        digest = self.result["digest"]
        with self.stage("up") as rec:
            rec.update(self._up(env, digest))
        from sandbox.promote.rolling import Promoter

        promoter = Promoter(self.envs)
        if a.get("verify"):
            with self.stage("verify") as rec:
                ok, detail = promoter.verify(env)
                rec["detail"] = detail
                if not ok:
                    raise SandboxError(f"{env} did not pass: {detail}")
        if a.get("promote"):
            with self.stage("promote") as rec:
                r = promoter.promote(a["promote"], digest, source=env).to_dict()
                rec.update({k: r[k] for k in ("env", "from_image", "to_image", "deploy", "state", "seconds")})
                rec["strategy"] = r["plan"].get("strategy")
        return self.result

    def _build(self, ws: Workspace) -> None:
        with self.stage("build") as rec:
            built = self.build_fn(ws, self.args["recipe"], bool(self.args.get("refresh")))
            rec.update(
                {k: built[k] for k in ("digest", "ref", "cached", "lock_created", "seconds") if k in built}
            )
            rec["refresh"] = bool(self.args.get("refresh"))
            self.result["digest"] = built["digest"]

    def _up(self, env: str, digest: str) -> dict[str, Any]:
        try:
            existing = self.envs.state.get_env(env)
        except NotFound:
            existing = None
        if existing is not None:
            if existing.image == digest and existing.state == "running":
                return {"env": env, "reused": True, "url": existing.url}
            raise SandboxError(
                f"{env} already exists with image {existing.image[:19]} ({existing.state})",
                hint=f"a pipeline deploys to a new env: sandbox down {env}, then run it again",
            )
        view = self.envs.up(env, image=digest, owner=self.owner).to_dict()
        return {"env": env, "url": view.get("url"), "instances": len(view.get("instances") or [])}
