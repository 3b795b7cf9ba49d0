"""Deploy records: one row per promotion or rollback, its steps, and the per-env deploy lock."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sandbox.errors import SandboxError
from sandbox.fsutil import pid_alive
from sandbox.state import StateDB


class DeployLocked(SandboxError):
    """Another promotion of the env is running."""


class DeployInterrupted(SandboxError):
    """An earlier promotion of the env died part-way; it must be resumed or rolled back first."""


@dataclass(frozen=True)
class Deploy:
    id: int
    env: str
    from_image: str
    to_image: str
    strategy: str
    state: str  # running | done | failed | rolled-back
    pid: int | None
    started: float
    updated: float
    finished: float | None
    forced: bool
    kind: str  # promote | rollback
    source: str | None
    error: str | None
    steps: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)


@dataclass(frozen=True)
class Verification:
    """`sandbox verify ENV` passed on `env` running `image` at `ts` (its latest result there)."""

    image: str
    env: str
    ts: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _deploy(row: sqlite3.Row) -> Deploy:
    d = dict(row)
    return Deploy(**{**d, "forced": bool(d["forced"]), "steps": json.loads(d["steps"])})


class Deploys:
    def __init__(self, state: StateDB) -> None:
        self.state = state

    def begin(
        self,
        env: str,
        from_image: str,
        to_image: str,
        strategy: str,
        *,
        kind: str = "promote",
        source: str | None = None,
        forced: bool = False,
    ) -> Deploy:
        """Record a new deploy and take the env's deploy lock, or say who holds it."""
        now = time.time()
        with self.state.transaction() as c:
            row = c.execute("SELECT * FROM deploys WHERE env = ? AND state = 'running'", (env,)).fetchone()
            if row is not None:
                other = _deploy(row)
                last = other.steps[-1]["step"] if other.steps else "start"
                if other.alive:
                    raise DeployLocked(
                        f"a {other.kind} of {env} is already running (pid {other.pid}, deploy #{other.id}, "
                        f"at step {last})",
                        hint="wait for it to finish; `sandbox history` shows its steps",
                    )
                raise DeployInterrupted(
                    f"{other.kind} #{other.id} of {env} was interrupted at step {last} "
                    f"(pid {other.pid} is gone)",
                    hint=f"finish it with `sandbox promote --resume --to {env}` "
                    f"or undo it with `sandbox rollback --to {env}`",
                )
            cur = c.execute(
                "INSERT INTO deploys (env, from_image, to_image, strategy, state, pid, started, updated,"
                " forced, kind, source) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (env, from_image, to_image, strategy, os.getpid(), now, now, int(forced), kind, source),
            )
            row = c.execute("SELECT * FROM deploys WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _deploy(row)

    def ensure_free(self, env: str) -> None:
        """Raise DeployLocked/DeployInterrupted if a deploy of `env` is running or died part-way."""
        d = self.running(env)
        if d is None:
            return
        last = d.steps[-1]["step"] if d.steps else "start"
        if d.alive:
            raise DeployLocked(
                f"a {d.kind} of {env} is already running (pid {d.pid}, deploy #{d.id}, at step {last})",
                hint="wait for it to finish; `sandbox history` shows its steps",
            )
        raise DeployInterrupted(
            f"{d.kind} #{d.id} of {env} was interrupted at step {last} (pid {d.pid} is gone)",
            hint=f"finish it with `sandbox promote --resume --to {env}` or undo it with "
            f"`sandbox rollback --to {env}`",
        )

    def interrupted(self, env: str) -> Deploy | None:
        d = self.running(env)
        return d if d is not None and not d.alive else None

    def running(self, env: str) -> Deploy | None:
        with self.state.transaction(write=False) as c:
            row = c.execute(
                "SELECT * FROM deploys WHERE env = ? AND state = 'running' ORDER BY id DESC", (env,)
            ).fetchone()
        return _deploy(row) if row else None

    def release(self, deploy_id: int) -> None:
        """Leave a running deploy for `--resume` or `rollback` (a host failed: nothing more is safe)."""
        with self.state.transaction() as c:
            c.execute("UPDATE deploys SET pid = NULL, updated = ? WHERE id = ?", (time.time(), deploy_id))

    def take_over(self, deploy: Deploy) -> Deploy:
        """Continue an interrupted deploy in this process (its pid must be gone)."""
        with self.state.transaction() as c:
            row = c.execute("SELECT * FROM deploys WHERE id = ?", (deploy.id,)).fetchone()
            current = _deploy(row)
            if current.state != "running" or current.alive:
                raise DeployLocked(
                    f"deploy #{deploy.id} is not interrupted (state {current.state}, pid {current.pid})"
                )
            c.execute(
                "UPDATE deploys SET pid = ?, updated = ? WHERE id = ?", (os.getpid(), time.time(), deploy.id)
            )
        return self.get(deploy.id)

    def get(self, deploy_id: int) -> Deploy:
        with self.state.transaction(write=False) as c:
            row = c.execute("SELECT * FROM deploys WHERE id = ?", (deploy_id,)).fetchone()
        if row is None:
            raise SandboxError(f"no deploy #{deploy_id}")
        return _deploy(row)

    def step(self, deploy_id: int, step: str, **data: Any) -> None:
        with self.state.transaction() as c:
            row = c.execute("SELECT steps FROM deploys WHERE id = ?", (deploy_id,)).fetchone()
            steps = json.loads(row[0])
            steps.append({"ts": round(time.time(), 3), "step": step, **data})
            c.execute(
                "UPDATE deploys SET steps = ?, updated = ? WHERE id = ?",
                (json.dumps(steps), time.time(), deploy_id),
            )

    def finish(self, deploy_id: int, state: str, error: str | None = None) -> None:
        now = time.time()
        with self.state.transaction() as c:
            c.execute(
                "UPDATE deploys SET state = ?, error = ?, finished = ?, updated = ? WHERE id = ?",
                (state, error, now, now, deploy_id),
            )

    def history(self, env: str, limit: int = 20) -> list[Deploy]:
        with self.state.transaction(write=False) as c:
            rows = c.execute(
                "SELECT * FROM deploys WHERE env = ? ORDER BY id DESC LIMIT ?", (env, limit)
            ).fetchall()
        return [_deploy(r) for r in rows]

    def previous_image(self, env: str) -> str | None:
        """The image the env ran before its last finished promotion (what `rollback` returns to)."""
        for d in self.history(env, 100):
            if d.state == "done":
                return d.from_image
        return None

    # -- verification gate -------------------------------------------------
    def record_verification(self, image: str, env: str, ok: bool, detail: str) -> None:
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO verifications (image, env, ts, ok, detail) VALUES (?, ?, ?, ?, ?)",
                (image, env, time.time(), int(ok), detail),
            )

    def verifications(self) -> list[Verification]:
        """Each (image, env)'s latest verify result that passed, newest first."""
        with self.state.transaction(write=False) as c:
            rows = c.execute(
                "SELECT image, env, max(ts) AS ts, ok, detail FROM verifications"
                " GROUP BY image, env ORDER BY ts DESC"
            ).fetchall()
        return [Verification(r[0], r[1], float(r[2]), r[4]) for r in rows if r[3]]

    def verified_on(self, image: str) -> list[str]:
        """Envs on which `image` passed `sandbox verify` (latest result per env counts)."""
        with self.state.transaction(write=False) as c:
            rows = c.execute(
                "SELECT env, ok FROM verifications WHERE image = ? ORDER BY ts", (image,)
            ).fetchall()
        latest = {r[0]: bool(r[1]) for r in rows}
        return sorted(e for e, ok in latest.items() if ok)

    def verification(self, image: str, env: str) -> tuple[bool, str, float] | None:
        """The latest `sandbox verify` of `image` on `env`: (ok, detail, when), or None."""
        with self.state.transaction(write=False) as c:
            row = c.execute(
                "SELECT ok, detail, ts FROM verifications WHERE image = ? AND env = ?"
                " ORDER BY ts DESC, rowid DESC LIMIT 1",
                (image, env),
            ).fetchone()
        return None if row is None else (bool(row[0]), str(row[1]), float(row[2]))
