"""The snapshot and event tables of the state DB, as a part of StateDB (sandbox/state/db.py)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from typing import Any

from sandbox.errors import NotFound, StateError
from sandbox.state.rows import Env, Snapshot, dump_json, insert_row, now_or


class SnapshotsAndEvents:
    """Needs StateDB's connection helpers (declared here for the type checker)."""

    def _tx(
        self, write: bool = True, wal: bool = False
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        raise NotImplementedError

    def _write(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    def _get_env(self, c: sqlite3.Connection, name: str) -> Env:
        raise NotImplementedError

    # -- snapshots --------------------------------------------------------------------------

    def add_snapshot(
        self, env: str, name: str, data: dict[str, Any] | None = None, now: float | None = None
    ) -> Snapshot:
        t = now_or(now)
        with self._tx() as c:
            self._get_env(c, env)
            dup = StateError(
                f"snapshot {name!r} of {env!r} already exists",
                hint=f"pick another snapshot name (`sandbox snapshot {env} NAME`)",
            )
            sql = "INSERT INTO snapshots (env, name, created, data) VALUES (?, ?, ?, ?)"
            insert_row(c, dup, sql, env, name, t, dump_json(data))
        return Snapshot(env, name, t, json.loads(dump_json(data)))

    def snapshots(self, env: str) -> list[Snapshot]:
        rows = self._rows("SELECT * FROM snapshots WHERE env = ? ORDER BY created, name", env)
        return [Snapshot.from_row(r) for r in rows]

    def get_snapshot(self, env: str, name: str) -> Snapshot:
        with self._tx(write=False) as c:
            row = c.execute("SELECT * FROM snapshots WHERE env = ? AND name = ?", (env, name)).fetchone()
            if row is None:
                self._get_env(c, env)
                known = ", ".join(r[0] for r in c.execute("SELECT name FROM snapshots WHERE env = ?", (env,)))
                hint = f"snapshots of {env}: {known}" if known else f"`sandbox snapshot {env}` takes one"
                raise NotFound(f"snapshot {name!r} of {env!r} not found", hint=hint)
        return Snapshot.from_row(row)

    def delete_snapshot(self, env: str, name: str) -> bool:
        return self._write("DELETE FROM snapshots WHERE env = ? AND name = ?", env, name) > 0

    # -- events -----------------------------------------------------------------------------

    def event(
        self, kind: str, message: str, env: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        sql = "INSERT INTO events (ts, env, kind, message, data) VALUES (?, ?, ?, ?, ?)"
        self._write(sql, time.time(), env, kind, message, dump_json(data))

    def events(self, env: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest `limit` events (of `env`, or all), oldest first."""
        where, args = ("", (limit,)) if env is None else (" WHERE env = ?", (env, limit))
        rows = self._rows(f"SELECT * FROM events{where} ORDER BY id DESC LIMIT ?", *args)
        return [{**dict(r), "data": json.loads(r["data"])} for r in reversed(rows)]
