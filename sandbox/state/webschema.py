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

# version 6: the feed, one ordered log of what the web pages follow live (`/events`, SSE): a job's
# state changes, a deploy's steps and end, and the `events` table's rows. Triggers write it, so the
# CLI's own promotions and the worker's jobs land in it alike; its `id` is the SSE event id. Its
# statements hold ';' inside BEGIN ... END, so they are a tuple, not one string to split.
_NOW = "(julianday('now') - 2440587.5) * 86400.0"
_JOB = (
    "json_object('id', NEW.id, 'kind', NEW.kind, 'state', NEW.state, 'who', NEW.who,"
    " 'trigger', NEW.trigger, 'error', substr(NEW.error, 1, 300))"
)
_DEPLOY = (
    "json_object('id', NEW.id, 'kind', NEW.kind, 'state', NEW.state, 'strategy', NEW.strategy,"
    " 'to_image', NEW.to_image, 'step', json(coalesce(json_extract(NEW.steps, '$[#-1]'), 'null')))"
)
SCHEMA_V6: tuple[str, ...] = (
    "CREATE TABLE feed (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, env TEXT,"
    " kind TEXT NOT NULL, data TEXT NOT NULL)",
    f"CREATE TRIGGER feed_job_new AFTER INSERT ON jobs BEGIN INSERT INTO feed (ts, env, kind, data)"
    f" VALUES ({_NOW}, NEW.env, 'job', {_JOB}); END",
    f"CREATE TRIGGER feed_job_state AFTER UPDATE OF state ON jobs WHEN OLD.state IS NOT NEW.state"
    f" BEGIN INSERT INTO feed (ts, env, kind, data) VALUES ({_NOW}, NEW.env, 'job', {_JOB}); END",
    f"CREATE TRIGGER feed_deploy_new AFTER INSERT ON deploys BEGIN INSERT INTO feed (ts, env, kind, data)"
    f" VALUES ({_NOW}, NEW.env, 'deploy', {_DEPLOY}); END",
    f"CREATE TRIGGER feed_deploy_step AFTER UPDATE OF steps, state ON deploys"
    f" WHEN OLD.steps IS NOT NEW.steps OR OLD.state IS NOT NEW.state"
    f" BEGIN INSERT INTO feed (ts, env, kind, data) VALUES ({_NOW}, NEW.env, 'deploy', {_DEPLOY}); END",
    "CREATE TRIGGER feed_event AFTER INSERT ON events BEGIN INSERT INTO feed (ts, env, kind, data)"
    " VALUES (NEW.ts, NEW.env, 'event', json_object('id', NEW.id, 'kind', NEW.kind,"
    " 'message', substr(NEW.message, 1, 300))); END",
)

# version 7: where `sandbox serve`'s schedules loop last looked (web/scheduler.py): one row per
# name, '*' for the loop itself. A restart continues from it instead of from "now".
SCHEMA_V7 = "CREATE TABLE schedule_marks (name TEXT PRIMARY KEY, last REAL NOT NULL)"
