"""The web frontend's tables in the state DB (schema version 5): users, their roles per profile
pattern, sessions, API tokens, failed logins, webhook deliveries and jobs.

The tables live here, with the rest of the schema; the code that reads and writes them is
`sandbox/web/` (auth.py, webhooks.py, jobs.py) through `StateDB.transaction()`.
Secrets are never stored: a session id or token is `SELECTOR.VERIFIER`, and only the selector and
the sha256 of the verifier are kept (`verifier` columns).
"""

from __future__ import annotations

SCHEMA_V5 = """
CREATE TABLE users (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE user_roles (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE, pattern TEXT NOT NULL,
    role TEXT NOT NULL, PRIMARY KEY (user, pattern));
CREATE TABLE sessions (
    selector TEXT PRIMARY KEY, verifier TEXT NOT NULL,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL, source TEXT);
CREATE INDEX sessions_user ON sessions(user);
CREATE TABLE tokens (
    selector TEXT PRIMARY KEY, verifier TEXT NOT NULL,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE, name TEXT NOT NULL,
    created REAL NOT NULL, last_used REAL, expires REAL, UNIQUE (user, name));
CREATE TABLE login_failures (key TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX login_failures_key ON login_failures(key, ts);
CREATE TABLE hook_deliveries (
    hook TEXT NOT NULL, delivery TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (hook, delivery));
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, env TEXT NOT NULL,
    args TEXT NOT NULL, who TEXT NOT NULL, trigger TEXT NOT NULL, state TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, worker_pid INTEGER,
    result TEXT, error TEXT, resolved REAL);
CREATE INDEX jobs_state ON jobs(state, id);
CREATE INDEX jobs_env ON jobs(env, id);
CREATE UNIQUE INDEX jobs_one_running ON jobs(env) WHERE state = 'running'
"""
