"""The state database (SQLite, WAL): envs, instances, snapshots, events, deploys, verifications.

db.py holds the race-safe operations (claims, allocations, each one `BEGIN IMMEDIATE` transaction);
rows.py the schema and the typed rows they return.
"""

from sandbox.state.db import SCHEMA_VERSION, StateDB
from sandbox.state.rows import Env, Instance, RouterMode, Snapshot

__all__ = ["SCHEMA_VERSION", "Env", "Instance", "RouterMode", "Snapshot", "StateDB"]
