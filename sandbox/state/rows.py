"""The state database's tables and rows: schema SQL, row types, and the small helpers around them."""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from sandbox.config.resolved import ResolvedProfile
from sandbox.errors import EnvNotFound, StateError

TRANSIENT_STATES = ("creating", "deleting")  # a dead pid in these states means a crash mid-operation
ENV_FIELDS = {
    "state",
    "health",
    "image",
    "url",
    "router_port",
    "expires",
    "pid",
    "error",
    "config",
    "router_kind",
    "maintenance",
    "readonly",
}
INSTANCE_FIELDS = {"name", "address", "state", "image", "routed", "host", "endpoint"}

SCHEMA = """
CREATE TABLE envs (
    name TEXT PRIMARY KEY, profile TEXT NOT NULL, image TEXT NOT NULL, backend TEXT NOT NULL,
    owner TEXT NOT NULL, state TEXT NOT NULL, health TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, expires REAL, pid INTEGER,
    router_port INTEGER, url TEXT, config TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE UNIQUE INDEX envs_router_port ON envs(router_port) WHERE router_port IS NOT NULL;
CREATE INDEX envs_owner ON envs(owner, profile);
CREATE TABLE instances (
    env TEXT NOT NULL REFERENCES envs(name) ON DELETE CASCADE, idx INTEGER NOT NULL,
    name TEXT NOT NULL UNIQUE, address TEXT UNIQUE, state TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (env, idx));
CREATE TABLE snapshots (
    env TEXT NOT NULL REFERENCES envs(name) ON DELETE CASCADE, name TEXT NOT NULL,
    created REAL NOT NULL, data TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (env, name));
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, env TEXT,
    kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE INDEX events_env ON events(env, id);
"""

# version 2: which image each instance runs and whether the router sends it traffic; deploys
SCHEMA_V2 = """
ALTER TABLE instances ADD COLUMN image TEXT;
ALTER TABLE instances ADD COLUMN routed INTEGER NOT NULL DEFAULT 1;
CREATE TABLE deploys (
    id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, from_image TEXT NOT NULL,
    to_image TEXT NOT NULL, strategy TEXT NOT NULL, state TEXT NOT NULL, pid INTEGER,
    started REAL NOT NULL, updated REAL NOT NULL, finished REAL, forced INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'promote', source TEXT, error TEXT, steps TEXT NOT NULL DEFAULT '[]');
CREATE INDEX deploys_env ON deploys(env, id);
CREATE TABLE verifications (
    image TEXT NOT NULL, env TEXT NOT NULL, ts REAL NOT NULL, ok INTEGER NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (image, env, ts));
"""

# version 3: the router's kind and mode as typed columns (they rode in the config bag before)
SCHEMA_V3 = """
ALTER TABLE envs ADD COLUMN router_kind TEXT;
ALTER TABLE envs ADD COLUMN maintenance TEXT;
ALTER TABLE envs ADD COLUMN readonly INTEGER NOT NULL DEFAULT 0;
UPDATE envs SET router_kind = json_extract(config, '$.router_nginx'),
    maintenance = json_extract(config, '$.router_mode.maintenance'),
    readonly = coalesce(json_extract(config, '$.router_mode.readonly'), 0);
UPDATE envs SET config = json_remove(config, '$.router_nginx', '$.router_mode')
"""

# version 4: production hosts: the host an instance runs on (NULL: this machine), and where its app is
# published there (HOST_ADDRESS:PORT, what the router and the health probes use)
SCHEMA_V4 = """
ALTER TABLE instances ADD COLUMN host TEXT;
ALTER TABLE instances ADD COLUMN endpoint TEXT
"""


def now_or(now: float | None) -> float:
    return time.time() if now is None else now


def dump_json(value: dict[str, Any] | None) -> str:
    return json.dumps(value or {}, sort_keys=True)


def update_row(c: sqlite3.Connection, table: str, fields: dict[str, Any], where: str, *key: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)  # keys are checked against ENV/INSTANCE_FIELDS
    try:
        c.execute(f"UPDATE {table} SET {sets} WHERE {where}", (*fields.values(), *key))
    except sqlite3.IntegrityError as e:  # a router port or address another row holds
        what = "/".join(map(str, key))
        raise StateError(
            f"cannot update {table} {what}: {e}", hint="that value is held by another row"
        ) from e


def insert_row(c: sqlite3.Connection, duplicate: StateError, sql: str, *args: Any) -> None:
    try:
        c.execute(sql, args)
    except sqlite3.IntegrityError as e:
        raise duplicate from e


def env_missing(name: str) -> EnvNotFound:
    return EnvNotFound(f"environment {name!r} not found", hint="`sandbox ls` lists the environments")


@dataclass(frozen=True)
class RouterMode:
    """The router's modes: a maintenance page (None: off; else who still gets through), read-only."""

    maintenance: tuple[str, ...] | None = None
    readonly: bool = False


@dataclass(frozen=True)
class Env:
    name: str
    profile: str
    image: str
    backend: str
    owner: str
    state: str
    health: str
    created: float
    updated: float
    expires: float | None
    pid: int | None
    router_port: int | None
    url: str | None
    config: dict[str, Any]
    error: str | None
    router_kind: str | None = None  # "own" or "system": chosen at the first route, kept for life
    maintenance: tuple[str, ...] | None = None
    readonly: bool = False

    @functools.cached_property
    def spec(self) -> ResolvedProfile:
        """The resolved profile the env was made with (a clone's instance count included)."""
        return ResolvedProfile.from_data(self.config["profile"])

    @property
    def mode(self) -> RouterMode:
        return RouterMode(self.maintenance, self.readonly)

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires < now_or(now)

    def age(self, now: float | None = None) -> float:
        return now_or(now) - self.created

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Env:
        d = dict(row)
        maintenance = json.loads(d["maintenance"]) if d.get("maintenance") is not None else None
        return cls(
            **{
                **d,
                "config": json.loads(row["config"]),
                "maintenance": tuple(maintenance) if maintenance is not None else None,
                "readonly": bool(d.get("readonly")),
            }
        )


def env_values(fields: dict[str, Any]) -> dict[str, Any]:
    """set_env's fields as column values."""
    out = {}
    for k, v in fields.items():
        if k == "config":
            v = dump_json(v)
        elif k == "maintenance":
            v = None if v is None else json.dumps(list(v))
        elif k == "readonly":
            v = int(bool(v))
        out[k] = v
    return out


@dataclass(frozen=True)
class Instance:
    env: str
    idx: int
    name: str
    address: str | None
    state: str
    created: float
    image: str | None = None
    routed: bool = True
    host: str | None = None  # the production host it runs on; None: this machine
    endpoint: str | None = None  # HOST:PORT its app is published at on that host

    def upstream(self, app_port: int | None) -> str | None:
        """ADDR:PORT where this machine (its router, its probes) reaches the instance's app."""
        if self.endpoint:
            return self.endpoint
        return f"{self.address}:{app_port}" if self.address and app_port is not None else None


@dataclass(frozen=True)
class Snapshot:
    env: str
    name: str
    created: float
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Snapshot:
        return cls(row["env"], row["name"], row["created"], json.loads(row["data"]))


def instance_from_row(row: sqlite3.Row) -> Instance:
    d = dict(row)
    return Instance(**{**d, "routed": bool(d.get("routed", 1))})
