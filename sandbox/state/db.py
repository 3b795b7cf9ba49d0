"""SQLite state of environments (`<workspace>/.sandbox/state.db`, WAL): envs, instances, snapshots,
events, the feed.

Every call opens its own short-lived connection (safe across fork and processes); every write is one
`BEGIN IMMEDIATE` transaction, so check-then-write steps (name claims, quotas, address and router-port
allocation) are atomic against other `sandbox` processes. Times: float epoch seconds (`now` or time.time()).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import EnvExists, NotFound, QuotaExceeded, StateError
from sandbox.fsutil import pid_alive
from sandbox.state.history import SnapshotsAndEvents
from sandbox.state.rows import (
    ENV_FIELDS,
    INSTANCE_FIELDS,
    SCHEMA,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    TRANSIENT_STATES,
    Env,
    Instance,
    dump_json,
    env_missing,
    env_values,
    insert_row,
    instance_from_row,
    now_or,
    update_row,
)
from sandbox.state.webschema import SCHEMA_V5, SCHEMA_V6, SCHEMA_V7

if TYPE_CHECKING:
    from sandbox.workspace import Workspace


SCHEMA_VERSION = 7
BUSY_TIMEOUT_S = 10.0
_LOCK = threading.RLock()
_DB_HINT = (
    "retry; if it persists, check disk space and the permissions of the workspace's .sandbox/"
    " (a corrupt state.db can be moved away: sandbox then starts with no environments)"
)


def _private_files(db: Path) -> None:
    """The database (envs, profiles with their env, deploys) is root's only: 0600, made so before
    sqlite opens it; sqlite gives its -wal and -shm files the database's mode."""
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)


class StateDB(SnapshotsAndEvents):
    """The state database at `path` (normally `<workspace>/.sandbox/state.db`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private_files(self.path)
        self._init_schema()

    @classmethod
    def for_workspace(cls, ws: Workspace) -> StateDB:
        return cls(ws.state / "state.db")

    # -- connections and transactions -------------------------------------------------------

    def transaction(self, write: bool = True) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A transaction on the state DB for modules that keep their own tables (deploys)."""
        return self._tx(write=write)

    @contextlib.contextmanager
    def _tx(self, write: bool = True, wal: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; writes take the write lock up front.

        The connection is kept for the life of this process (a forked child opens its
        own): opening one per call would also checkpoint the WAL on every close.
        """
        conn: sqlite3.Connection | None = None
        _LOCK.acquire()  # one transaction at a time on the shared connection (threads)
        try:
            conn = self._connection(wal)
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StateError(f"state database {self.path}: {e}", hint=_DB_HINT) from e
        finally:
            if conn is not None and conn.in_transaction:
                conn.rollback()
            _LOCK.release()

    def _connection(self, wal: bool) -> sqlite3.Connection:
        pid = os.getpid()
        cached = getattr(self, "_conn", None)
        if cached is not None and getattr(self, "_conn_pid", None) == pid:
            conn: sqlite3.Connection = cached
            return conn
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if wal:
            _to_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # durable across crashes of sandbox in WAL mode
        self._conn, self._conn_pid = conn, pid
        return conn

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._tx(write=False) as c:
            return c.execute(sql, args).fetchall()

    def _write(self, sql: str, *args: Any) -> int:
        with self._tx() as c:
            return c.execute(sql, args).rowcount

    def _init_schema(self) -> None:
        with self._tx(wal=True) as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"state database {self.path} has schema version {version}, "
                    f"this sandbox understands up to {SCHEMA_VERSION}",
                    hint="upgrade sandbox, or move the workspace's .sandbox/state.db away to start afresh",
                )
            steps: dict[int, str | tuple[str, ...]] = {
                1: SCHEMA,
                2: SCHEMA_V2,
                3: SCHEMA_V3,
                4: SCHEMA_V4,
                5: SCHEMA_V5,
                6: SCHEMA_V6,
                7: SCHEMA_V7,
            }
            for v in range(version + 1, SCHEMA_VERSION + 1):  # create or migrate, one version at a time
                step = steps[v]
                for stmt in step if isinstance(step, tuple) else step.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
            if version != SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- environments -----------------------------------------------------------------------

    def claim_env(
        self,
        name: str,
        *,
        profile: str,
        image: str,
        backend: str,
        owner: str,
        config: dict[str, Any],
        expires: float | None,
        pid: int,
        max_per_owner: int | None,
        now: float | None = None,
    ) -> Env:
        """Insert env `name` in state "creating"; of concurrent claims of one name exactly one wins."""
        t = now_or(now)
        with self._tx() as c:
            row = c.execute("SELECT owner, state FROM envs WHERE name = ?", (name,)).fetchone()
            if row is not None:
                raise EnvExists(
                    f"environment {name!r} already exists (owner {row['owner']}, state {row['state']})",
                    hint=f"remove it with `sandbox down {name}`, or pick another name",
                )
            if max_per_owner is not None:
                sql = "SELECT name FROM envs WHERE owner = ? AND profile = ? ORDER BY name"
                mine = [r[0] for r in c.execute(sql, (owner, profile))]
                if len(mine) >= max_per_owner:
                    raise QuotaExceeded(
                        f"{owner} already has {len(mine)} environment(s) of profile {profile!r}, "
                        f"the profile allows {max_per_owner} per owner",
                        hint=f"remove one first with `sandbox down NAME` ({', '.join(mine)})",
                    )
            c.execute(
                "INSERT INTO envs (name, profile, image, backend, owner, state, health, created, updated,"
                " expires, pid, config) VALUES (?, ?, ?, ?, ?, 'creating', 'unknown', ?, ?, ?, ?, ?)",
                (name, profile, image, backend, owner, t, t, expires, pid, dump_json(config)),
            )
            return self._get_env(c, name)

    def set_env(self, name: str, *, now: float | None = None, **fields: Any) -> Env:
        """Update some of ENV_FIELDS (and `updated`); returns the new row."""
        bad = set(fields) - ENV_FIELDS
        if bad:
            raise TypeError(f"set_env: unknown field(s) {', '.join(sorted(bad))}")
        values = env_values(fields)
        with self._tx() as c:
            self._get_env(c, name)
            update_row(c, "envs", {**values, "updated": now_or(now)}, "name = ?", name)
            return self._get_env(c, name)

    def _get_env(self, c: sqlite3.Connection, name: str) -> Env:
        row = c.execute("SELECT * FROM envs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise env_missing(name)
        return Env.from_row(row)

    def get_env(self, name: str) -> Env:
        with self._tx(write=False) as c:
            return self._get_env(c, name)

    def list_envs(self, owner: str | None = None) -> list[Env]:
        where, args = ("", ()) if owner is None else (" WHERE owner = ?", (owner,))
        return [Env.from_row(r) for r in self._rows(f"SELECT * FROM envs{where} ORDER BY name", *args)]

    def delete_env(self, name: str) -> bool:
        """Delete the env with its instances and snapshots (cascade); False if it did not exist.

        A deploy still marked running is abandoned with it: nothing of it exists any more.
        """
        with self._tx() as c:
            c.execute(
                "UPDATE deploys SET state = 'abandoned', finished = ? WHERE env = ? AND state = 'running'",
                (time.time(), name),
            )
            return c.execute("DELETE FROM envs WHERE name = ?", (name,)).rowcount > 0

    def stale_envs(self, now: float | None = None, alive: Callable[[int], bool] = pid_alive) -> list[Env]:
        """Envs left "creating"/"deleting" by a process that is gone, and envs past their expiry."""
        t = now_or(now)
        return [
            e
            for e in self.list_envs()
            if e.expired(t) or (e.state in TRANSIENT_STATES and (e.pid is None or not alive(e.pid)))
        ]

    def claim_router_port(
        self, env: str, start: int, end: int, in_use: Callable[[int], bool], now: float | None = None
    ) -> int:
        """Lowest port in [start, end] no env holds and `in_use(port)` is False; kept if already set."""
        if not 1 <= start <= end <= 65535:
            raise StateError(f"invalid port range {start}-{end}", hint="use ports 1-65535 with start <= end")
        with self._tx() as c:
            current = self._get_env(c, env).router_port
            if current is not None and start <= current <= end:
                return current
            held = {r[0] for r in c.execute("SELECT router_port FROM envs WHERE router_port IS NOT NULL")}
            for port in range(start, end + 1):
                if port not in held and not in_use(port):
                    c.execute(
                        "UPDATE envs SET router_port = ?, updated = ? WHERE name = ?",
                        (port, now_or(now), env),
                    )
                    return port
        raise StateError(
            f"no free router port in {start}-{end} ({len(held)} held by environments)",
            hint="remove environments with `sandbox down`/`sandbox gc`, "
            "or widen routers.port_range in sandbox.yaml",
        )

    def claim_fixed_router_port(self, env: str, port: int, now: float | None = None) -> int:
        """Give env `env` the router port its profile fixes; a clear error names the env holding it."""
        with self._tx() as c:
            self._get_env(c, env)
            row = c.execute(
                "SELECT name FROM envs WHERE router_port = ? AND name != ?", (port, env)
            ).fetchone()
            if row is not None:
                raise StateError(
                    f"router port {port} of {env!r} is already held by environment {row[0]!r}",
                    hint=f"set `router: {{port: auto}}` in the profile, or `sandbox down {row[0]}` first",
                )
            c.execute("UPDATE envs SET router_port = ?, updated = ? WHERE name = ?", (port, now_or(now), env))
            return port

    # -- instances --------------------------------------------------------------------------

    def add_instance(
        self,
        env: str,
        idx: int,
        name: str,
        state: str,
        now: float | None = None,
        image: str | None = None,
        routed: bool = True,
        host: str | None = None,
    ) -> Instance:
        with self._tx() as c:
            self._get_env(c, env)
            dup = StateError(
                f"instance {idx} of {env!r} or an instance named {name!r} already exists",
                hint=f"`sandbox down {env}` first, or `sandbox gc` to clean up after a crash",
            )
            sql = (
                "INSERT INTO instances (env, idx, name, state, created, image, routed, host)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            )
            insert_row(c, dup, sql, env, idx, name, state, now_or(now), image, int(routed), host)
            return self._get_instance(c, env, idx)

    def _get_instance(self, c: sqlite3.Connection, env: str, idx: int) -> Instance:
        row = c.execute("SELECT * FROM instances WHERE env = ? AND idx = ?", (env, idx)).fetchone()
        if row is None:
            self._get_env(c, env)
            raise NotFound(f"instance {idx} of {env!r} not found", hint=f"`sandbox status {env}` lists them")
        return instance_from_row(row)

    def allocate_address(self, env: str, idx: int, subnet: str, reserved: Iterable[str] = ()) -> str:
        """Assign instance (env, idx) the lowest free host address of `subnet`, unique across envs.

        Skips the network and broadcast addresses, the first host (the bridge/gateway) and
        `reserved`. An address already held in that subnet is kept.
        """
        try:
            net = ipaddress.ip_network(subnet, strict=False)
            skip = {str(ipaddress.ip_address(a)) for a in reserved}
        except ValueError as e:
            raise StateError(f"invalid subnet or address: {e}", hint="use CIDR, e.g. 10.87.0.0/24") from e
        with self._tx() as c:
            current = self._get_instance(c, env, idx).address
            if current is not None and ipaddress.ip_address(current) in net:
                return current
            used = {r[0] for r in c.execute("SELECT address FROM instances WHERE address IS NOT NULL")}
            hosts = net.hosts()
            next(hosts, None)  # the gateway
            for host in hosts:
                addr = str(host)
                if addr not in used and addr not in skip:
                    c.execute("UPDATE instances SET address = ? WHERE env = ? AND idx = ?", (addr, env, idx))
                    return addr
        raise StateError(
            f"subnet full: no free address in {net} for instance {idx} of {env!r}",
            hint="remove environments with `sandbox down`/`sandbox gc`, or configure a larger subnet",
        )

    def set_instance(self, env: str, idx: int, **fields: Any) -> Instance:
        bad = set(fields) - INSTANCE_FIELDS
        if bad:
            raise TypeError(f"set_instance: unknown field(s) {', '.join(sorted(bad))}")
        with self._tx() as c:
            self._get_instance(c, env, idx)
            if fields:
                update_row(c, "instances", fields, "env = ? AND idx = ?", env, idx)
            return self._get_instance(c, env, idx)

    def instances(self, env: str) -> list[Instance]:
        rows = self._rows("SELECT * FROM instances WHERE env = ? ORDER BY idx", env)
        return [instance_from_row(r) for r in rows]

    def all_instances(self) -> list[Instance]:
        return [instance_from_row(r) for r in self._rows("SELECT * FROM instances ORDER BY env, idx")]

    def delete_instance(self, env: str, idx: int) -> bool:
        return self._write("DELETE FROM instances WHERE env = ? AND idx = ?", env, idx) > 0


def _to_wal(conn: sqlite3.Connection) -> None:
    """Switch a new database to WAL. The switch needs the file to itself, and SQLite answers "database
    is locked" at once (no busy wait) when another process is in the middle of creating the same
    fresh file: try again for up to BUSY_TIMEOUT_S."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
