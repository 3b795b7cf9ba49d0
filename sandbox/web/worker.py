"""The root side's job worker: claims queued jobs (Jobs.claim_next, which checks the arguments
again), checks `may()` for the submitting user again, and runs only the fixed job kinds through the
same Envs and Promoter code the CLI uses. A job's outcome is its row: done with a result, or failed
with the error's message.

A pool of worker threads (`sandbox serve --workers N`) runs jobs of different envs in parallel;
the jobs of one env still run one at a time. Each thread claims with `claim_next()`, whose
transaction (BEGIN IMMEDIATE, one at a time on the shared connection) picks and marks the job in
one step; the unique index on one `running` job per env backs it up.
A `pipeline` job runs its stages through pipeline.py; a failed one keeps its stages in the result.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.errors import NotFound, SandboxError
from sandbox.web.auth import Auth
from sandbox.web.jobargs import JobArgError
from sandbox.web.jobs import Job, Jobs
from sandbox.web.policy import allowed
from sandbox.web.roles import RESERVED_USER_NAMES, USER_NAME_RE
from sandbox.web.views import Views
from sandbox.workspace import Workspace

if TYPE_CHECKING:
    from sandbox.envs import Envs
    from sandbox.promote.rolling import Promoter, PromoteResult
    from sandbox.web.pipeline import Build

Runner = Callable[[Job], dict[str, Any]]
MAX_THREADS = 16


class Worker:
    def __init__(self, jobs: Jobs, views: Views, runner: Runner, interval: float = 0.5) -> None:
        self.jobs = jobs
        self.auth = Auth(jobs.state)
        self.views = views
        self.runner = runner
        self.interval = interval

    def _refusal(self, job: Job) -> str | None:
        """Why the submitter may not (any more) run this job, or None."""
        if job.who in RESERVED_USER_NAMES or not re.fullmatch(USER_NAME_RE, job.who):
            return None  # root, webhook:NAME, schedule:NAME: checked where they were queued
        try:
            user = self.auth.get_user(job.who)
        except NotFound:
            return f"the submitter {job.who} no longer exists"
        try:
            owner: str | None = str(self.views.env(job.env)["owner"])
        except NotFound:
            owner = None
        if not allowed(user, job.kind, job.args, owner):
            return f"{job.who} may not run {job.kind} on {job.env}"
        return None

    def run_once(self) -> Job | None:
        """Claim and run one job; None when none may run now."""
        job = self.jobs.claim_next()
        if job is None:
            return None
        refusal = self._refusal(job)
        if refusal is not None:
            return self.jobs.finish(job.id, False, error=f"refused by the worker: {refusal}")
        try:
            result = self.runner(job)
        except SandboxError as e:
            error = e.message + (f" (hint: {e.hint})" if e.hint else "")
            partial = getattr(e, "result", None)  # a pipeline's stages up to the one that failed
            return self.jobs.finish(
                job.id, False, error=error, result=partial if isinstance(partial, dict) else None
            )
        except Exception as e:
            traceback.print_exc()
            return self.jobs.finish(job.id, False, error=f"internal error: {type(e).__name__}")
        return self.jobs.finish(job.id, True, result=result)

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.run_once() is None:
                    stop.wait(self.interval)
            except Exception:  # e.g. the state DB busy: the worker thread must not die of it
                traceback.print_exc()
                stop.wait(self.interval)

    def start(self, stop: threading.Event, threads: int) -> list[threading.Thread]:
        """`threads` threads running `loop(stop)`: jobs of up to that many envs at once."""
        if not 1 <= threads <= MAX_THREADS:
            raise SandboxError(f"invalid number of workers {threads}", hint=f"1 to {MAX_THREADS}")
        pool = [
            threading.Thread(target=self.loop, args=(stop,), name=f"sandbox-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in pool:
            t.start()
        return pool


def join(pool: list[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Join every thread of `pool` within `timeout` seconds in all; those still running (a job
    that did not end in time: its row stays `running`, and becomes `interrupted` at the next
    start)."""
    deadline = time.monotonic() + timeout
    for t in pool:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    return [t for t in pool if t.is_alive()]


class WorkspaceRunner:
    """Runs a job of a fixed kind on workspace `ws` with Envs and Promoter, as the CLI does."""

    def __init__(
        self,
        ws: Workspace,
        envs: Callable[[], Envs] | None = None,
        build: Build | None = None,
        remote: str = "origin",
    ) -> None:
        self.ws = ws
        self.make_envs = envs  # tests: an Envs on a fake backend
        self.build = build  # tests: a builder that makes no rootfs (else pipeline.build_recipe)
        self.remote = remote  # the git remote a pipeline fetches a missing commit from

    @staticmethod
    def _owner(job: Job) -> str | None:
        """A web user owns what their job makes; root, webhooks and schedules: the default owner."""
        web_user = job.who not in RESERVED_USER_NAMES and re.fullmatch(USER_NAME_RE, job.who)
        return job.who if web_user else None

    def __call__(self, job: Job) -> dict[str, Any]:
        from sandbox.envs import Envs
        from sandbox.promote.rolling import Promoter

        a, env = job.args, job.args["env"]
        envs = self.make_envs() if self.make_envs is not None else Envs(self.ws)
        if job.kind == "up":
            ttl = f"{a['ttl']}s" if "ttl" in a else None
            return envs.up(env, image=a.get("image"), ttl=ttl, owner=self._owner(job)).to_dict()
        if job.kind == "down":
            envs.down(env)
            return {"removed": env}
        if job.kind == "extend":
            return {"env": env, "expires": envs.state.set_env(env, expires=time.time() + a["ttl"]).expires}
        if job.kind == "maintenance":
            envs.set_maintenance(env, a.get("allow", []) if a["on"] else None)
            return {"env": env, "maintenance": a["on"]}
        if job.kind == "readonly":
            envs.set_readonly(env, a["on"])
            return {"env": env, "readonly": a["on"]}
        promoter = Promoter(envs)
        if job.kind == "verify":
            ok, detail = promoter.verify(env)
            if not ok:
                raise SandboxError(f"verify of {env} failed: {detail}")
            return {"env": env, "ok": ok, "detail": detail}
        if job.kind in ("promote", "rollback", "resume"):
            return self._promotion(envs, promoter, job)
        if job.kind == "pipeline":
            from sandbox.web.pipeline import PipelineRun

            kw = {} if self.build is None else {"build": self.build}
            return PipelineRun(envs, dict(a), owner=self._owner(job), remote=self.remote, **kw).run()
        raise JobArgError(f"unknown job kind {job.kind!r}")  # never: check_job knows only these

    @staticmethod
    def _promotion(envs: Envs, promoter: Promoter, job: Job) -> dict[str, Any]:
        """promote, rollback or resume, under a load probe through the env's router when the job
        carries `probe` (requests per second): the deploy then keeps its per-second series (the
        plot of /deploys/ID) and the result its summary, as the CLI's --probe does."""
        from sandbox.promote.probe import with_load_probe

        a, env = job.args, job.args["env"]

        def run() -> PromoteResult:
            if job.kind == "promote":
                return promoter.promote(env, a["image"], source=a["source"])
            if job.kind == "resume":
                return promoter.resume(env)
            if "image" in a:
                return promoter.promote(env, a["image"], kind="rollback", source="rollback")
            return promoter.rollback(env)

        result, probe = with_load_probe(envs, env, a.get("probe"), run)
        out: dict[str, Any] = result.to_dict()
        if "probe" in a:
            out["probe"] = probe
        return out
