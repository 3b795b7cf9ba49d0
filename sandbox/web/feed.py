"""The feed (state DB table `feed`, written by triggers: sandbox/state/webschema.py) as the root side
serves it to `/events`: `since(after)` reads what came after an id, `wait(after, timeout)` blocks
until something did or the time is up.

One watcher thread per process polls `max(id)` every POLL seconds (one indexed read) and wakes every
waiter; the waiters do not poll the DB themselves, however many streams are open. The watcher also
keeps the table bounded (KEEP rows). At most MAX_WAITERS calls may wait at once: each holds one
thread of the RPC server.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from sandbox.config.names import env_profile_name
from sandbox.errors import SandboxError
from sandbox.state import StateDB
from sandbox.web.roles import User, may

POLL = 0.05
KEEP = 20_000
MAX_WAITERS = 64
MAX_BATCH = 200


class TooManyWaiters(Exception):
    pass


class Feed:
    def __init__(self, state: StateDB, poll: float = POLL) -> None:
        self.state = state
        self.poll = poll
        self._cond = threading.Condition()
        self._last = -1
        self._waiters = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def last_id(self) -> int:
        with self.state.transaction(write=False) as c:
            return int(c.execute("SELECT coalesce(max(id), 0) FROM feed").fetchone()[0])

    def first_id(self) -> int:
        with self.state.transaction(write=False) as c:
            return int(c.execute("SELECT coalesce(min(id), 0) FROM feed").fetchone()[0])

    def since(self, after: int, limit: int = MAX_BATCH) -> list[dict[str, Any]]:
        """The rows with id > `after`, oldest first, at most `limit`."""
        with self.state.transaction(write=False) as c:
            rows = c.execute(
                "SELECT id, ts, env, kind, data FROM feed WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def wait(self, after: int, timeout: float) -> bool:
        """True as soon as the feed holds a row past `after`; False after `timeout` seconds."""
        self._start()
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._waiters >= MAX_WAITERS:
                raise TooManyWaiters()
            self._waiters += 1
            try:
                while self._last <= after:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._waiters -= 1

    def _start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._last = self.last_id()
                self._thread = threading.Thread(target=self._watch, name="feed", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        pruned = 0.0
        while not self._stop.wait(self.poll):
            try:
                last = self.last_id()
                if time.monotonic() - pruned > 60:
                    pruned = time.monotonic()
                    with self.state.transaction() as c:
                        c.execute("DELETE FROM feed WHERE id <= ?", (last - KEEP,))
            except Exception:  # a busy DB: try again at the next tick
                continue
            if last != self._last:
                with self._cond:
                    self._last = last
                    self._cond.notify_all()


def visible(user: User, env: object) -> bool:
    """May `user` see a feed row of `env`? Rows without an env (server-wide) go to admins only."""
    if env is None:
        return may(user, "admin", "x")
    try:
        return isinstance(env, str) and may(user, "view", env_profile_name(env))
    except SandboxError:
        return False


def events_for(feed: Feed, user: User, after: int | None, wait: float) -> dict[str, Any]:
    """The feed's rows after `after` that `user` may view, waiting up to `wait` seconds for one.
    `last` is the cursor to pass next (it moves past rows the user may not see, too); `reset` says
    `after` was unknown (pruned, or not of this DB): the page should reload. TooManyWaiters when
    too many calls wait already."""
    last, reset = feed.last_id(), False
    if after is None or after > last or (after < feed.first_id() - 1):
        reset, after = after is not None, last
    if after >= last and wait and not feed.wait(after, wait):
        return {"events": [], "last": after, "reset": reset}
    rows = feed.since(after)
    cursor = rows[-1]["id"] if rows else after
    return {"events": [r for r in rows if visible(user, r["env"])], "last": cursor, "reset": reset}
