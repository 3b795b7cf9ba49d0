"""Jobs in the state DB: every action of the web frontend is one, run by the root worker.

States: queued -> running -> done | failed; queued -> cancelled; running -> interrupted (the server
stopped under it). Jobs of one env run one at a time, oldest first (a unique index holds one
`running` per env); jobs of other envs pass them. An interrupted job holds its env's queue until a
resume, rollback or down of that env succeeds or someone dismisses it: what it left half-done
must be looked at first. The worker claims with `claim_next()` and reports with `finish()`; the
arguments are checked again when claimed (jobargs.check_job), and a job whose stored arguments no
longer pass fails without running.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sandbox.errors import NotFound, SandboxError
from sandbox.state import StateDB
from sandbox.web.jobargs import SETTLING, JobArgError, check_job

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
MAX_RESULT = 64 * 1024


class JobStateError(SandboxError):
    """A job is not in a state that allows this (cancel a running job, finish a queued one)."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    env: str
    args: dict[str, Any]
    who: str
    trigger: str
    state: str
    created: float
    started: float | None
    finished: float | None
    worker_pid: int | None
    result: dict[str, Any] | None
    error: str | None
    resolved: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        d["args"] = json.loads(d["args"])
        d["result"] = json.loads(d["result"]) if d["result"] is not None else None
        return cls(**d)


class Jobs:
    """The job queue in `state`."""

    def __init__(self, state: StateDB) -> None:
        self.state = state

    def submit(
        self, kind: str, args: dict[str, Any], *, who: str, trigger: str, now: float | None = None
    ) -> Job:
        """Queue a job; JobArgError (nothing queued) when its kind, arguments or submitter are bad."""
        checked = check_job(kind, args, who, trigger)
        text = json.dumps(checked, sort_keys=True)
        with self.state.transaction() as c:
            cur = c.execute(
                "INSERT INTO jobs (kind, env, args, who, trigger, state, created)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (kind, checked["env"], text, who, trigger, time.time() if now is None else now),
            )
            return self._get(c, int(cur.lastrowid or 0))

    def get(self, job_id: int) -> Job:
        with self.state.transaction(write=False) as c:
            return self._get(c, job_id)

    def _get(self, c: sqlite3.Connection, job_id: object) -> Job:
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise JobArgError(f"invalid job id {job_id!r}", hint="a job number")
        row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job #{job_id} not found", hint="the jobs page lists them")
        return Job.from_row(row)

    def recent(self, env: str | None = None, states: tuple[str, ...] = (), limit: int = 100) -> list[Job]:
        """The newest `limit` jobs (of `env`, in `states`), newest first."""
        bad = [s for s in states if s not in STATES]
        if bad or not 1 <= limit <= 10_000:
            raise JobArgError(f"invalid job filter {bad or limit!r}", hint=f"states: {', '.join(STATES)}")
        where, args = [], []
        if env is not None:
            where.append("env = ?")
            args.append(env)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += states
        sql = (
            "SELECT * FROM jobs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT ?"
        )
        with self.state.transaction(write=False) as c:
            return [Job.from_row(r) for r in c.execute(sql, (*args, limit))]

    def queue(self, env: str) -> list[Job]:
        """What holds and waits on `env`, oldest first: its running job, unsettled interrupted jobs,
        queued jobs."""
        sql = (
            "SELECT * FROM jobs WHERE env = ? AND (state IN ('running', 'queued')"
            " OR (state = 'interrupted' AND resolved IS NULL)) ORDER BY id"
        )
        with self.state.transaction(write=False) as c:
            return [Job.from_row(r) for r in c.execute(sql, (env,))]

    def cancel(self, job_id: int, now: float | None = None) -> Job:
        """Cancel a queued job; a running or finished one is a JobStateError."""
        with self.state.transaction() as c:
            job = self._get(c, job_id)
            if job.state != "queued":
                raise JobStateError(
                    f"job #{job.id} is {job.state}; only a queued job can be cancelled",
                    hint="a running job ends by itself; an interrupted one is resumed, rolled back "
                    "or dismissed",
                )
            t = time.time() if now is None else now
            c.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (t, job.id))
            return self._get(c, job.id)

    def dismiss(self, job_id: int, now: float | None = None) -> Job:
        """Settle an interrupted job by hand: its env's queue moves on."""
        with self.state.transaction() as c:
            job = self._get(c, job_id)
            if job.state != "interrupted" or job.resolved is not None:
                raise JobStateError(f"job #{job.id} is {job.state}, not an unsettled interruption")
            c.execute(
                "UPDATE jobs SET resolved = ? WHERE id = ?", (time.time() if now is None else now, job.id)
            )
            return self._get(c, job.id)

    # -- the worker -------------------------------------------------------------------------

    def claim_next(self, worker_pid: int | None = None, now: float | None = None) -> Job | None:
        """The oldest queued job whose env is free, now `running` by this worker; None if none is.

        Its arguments are checked again first: one that fails them is marked failed and skipped.
        """
        pid = os.getpid() if worker_pid is None else worker_pid
        t = time.time() if now is None else now
        with self.state.transaction() as c:
            rows = c.execute(
                "SELECT * FROM jobs j WHERE state = 'queued' AND NOT EXISTS"
                " (SELECT 1 FROM jobs r WHERE r.env = j.env AND r.state = 'running') ORDER BY id"
            ).fetchall()
            held = {
                r[0]
                for r in c.execute("SELECT env FROM jobs WHERE state = 'interrupted' AND resolved IS NULL")
            }
            for row in rows:  # oldest first: the first that may run, runs
                job = Job.from_row(row)
                if job.env in held and job.kind not in SETTLING:
                    continue
                try:
                    check_job(job.kind, job.args, job.who, job.trigger)
                except JobArgError as e:
                    c.execute(
                        "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                        (t, f"refused by the worker: {e.message}", job.id),
                    )
                    continue
                c.execute(
                    "UPDATE jobs SET state = 'running', started = ?, worker_pid = ? WHERE id = ?",
                    (t, pid, job.id),
                )
                return self._get(c, job.id)
        return None

    def finish(
        self,
        job_id: int,
        ok: bool,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> Job:
        """Record the end of a running job: done (ok) or failed with `error`."""
        text = None if result is None else json.dumps(result, sort_keys=True, default=str)
        if text is not None and len(text) > MAX_RESULT:
            raise JobArgError(f"a job result of {len(text)} bytes is over {MAX_RESULT}")
        t = time.time() if now is None else now
        with self.state.transaction() as c:
            job = self._get(c, job_id)
            if job.state != "running":
                raise JobStateError(f"job #{job.id} is {job.state}, not running: it cannot finish")
            state = "done" if ok else "failed"
            c.execute(
                "UPDATE jobs SET state = ?, finished = ?, result = ?, error = ? WHERE id = ?",
                (state, t, text, None if ok else (error or "failed")[:4000], job.id),
            )
            if ok and job.kind in SETTLING:
                c.execute(
                    "UPDATE jobs SET resolved = ?"
                    " WHERE env = ? AND state = 'interrupted' AND resolved IS NULL",
                    (t, job.env),
                )
            return self._get(c, job.id)

    def interrupt_running(self, now: float | None = None) -> list[Job]:
        """On server start: every `running` job (its worker is gone) becomes `interrupted`."""
        t = time.time() if now is None else now
        with self.state.transaction() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM jobs WHERE state = 'running' ORDER BY id")]
            c.execute(
                "UPDATE jobs SET state = 'interrupted', finished = ?,"
                " error = 'the server stopped while it ran' WHERE state = 'running'",
                (t,),
            )
            return [self._get(c, i) for i in ids]
