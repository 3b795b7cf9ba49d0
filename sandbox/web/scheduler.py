"""The schedules loop of `sandbox serve`'s root side: every INTERVAL seconds it queues the pipeline
of each schedule of sandbox.yaml (read again on every look, so an edit needs no restart) whose cron
expression fired since the loop last looked.

Where it last looked is a row of the state DB (`schedule_marks`, '*'), so a restart continues from
there. The rules:

- **First start** (no mark): the mark is set to now; nothing of the past fires.
- **At most once**: the mark moves to now *before* the jobs are queued, so a crash in between misses
  that look's schedules rather than queuing them twice; a restart never fires a window again.
- **Catch-up**: the window looked at is (max(mark, now - CATCH_UP), now]. After a stop of up to one
  hour, what fell due meanwhile is queued at the restart; each schedule at most once per look, however
  many times it fell due. What fell due before that hour is not run: it is recorded as a
  `schedule-missed` event (shown to admins) and printed.
- **Clock**: when now is not past the mark (the clock stepped back), nothing fires until it is; a
  mark more than CATCH_UP ahead of now is taken as broken and reset to now.
- A sandbox.yaml that does not load leaves the mark alone (its error is printed): the window is
  looked at again once the file loads, within the catch-up rule.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sandbox.errors import SandboxError
from sandbox.settings import Schedule
from sandbox.web.jobs import Job, Jobs
from sandbox.web.triggers import due_schedules, submit_due

INTERVAL = 20.0
CATCH_UP = 3600.0
MARK = "*"


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Scheduler:
    def __init__(
        self,
        jobs: Jobs,
        schedules: Callable[[], Sequence[Schedule]],
        *,
        clock: Callable[[], float] = time.time,
        interval: float = INTERVAL,
        catch_up: float = CATCH_UP,
    ) -> None:
        self.jobs = jobs
        self.schedules = schedules
        self.clock = clock
        self.interval = interval
        self.catch_up = catch_up

    def mark(self) -> float | None:
        """When the loop last looked (None: never)."""
        with self.jobs.state.transaction(write=False) as c:
            row = c.execute("SELECT last FROM schedule_marks WHERE name = ?", (MARK,)).fetchone()
        return None if row is None else float(row[0])

    def _set_mark(self, t: float) -> None:
        with self.jobs.state.transaction() as c:
            c.execute(
                "INSERT INTO schedule_marks (name, last) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last = excluded.last",
                (MARK, t),
            )

    def tick(self) -> list[Job]:
        """Look once: queue what fell due since the mark (by the rules above); the queued jobs."""
        now = self.clock()
        last = self.mark()
        if last is None or last > now + self.catch_up:
            if last is not None:
                print(
                    f"sandbox serve: the schedules' mark {_utc(last)} is in the future; reset",
                    file=sys.stderr,
                )
            self._set_mark(now)
            return []
        if now <= last:
            return []
        schedules = list(self.schedules())  # may raise: the mark stays
        since = max(last, now - self.catch_up)
        missed = [
            s for s in due_schedules(schedules, last, since) if s not in due_schedules(schedules, since, now)
        ]
        self._set_mark(now)
        for s in missed:
            message = (
                f"schedule {s.name} fell due between {_utc(last)} and {_utc(since)}, while the server "
                f"was stopped for more than {self.catch_up / 60:.0f} min: not run"
            )
            print(f"sandbox serve: {message}", file=sys.stderr)
            self.jobs.state.event("schedule-missed", message, data={"schedule": s.name})
        queued: list[Job] = []
        for s in due_schedules(schedules, since, now):
            try:
                queued += submit_due(self.jobs, [s], since, now)
            except SandboxError as e:  # e.g. its env name: the other schedules still run
                print(f"sandbox serve: schedule {s.name}: {e.message}", file=sys.stderr)
        return queued

    def loop(self, stop: threading.Event) -> None:
        """Look every `interval` seconds until `stop` is set (SIGTERM: at once)."""
        while not stop.is_set():
            try:
                for job in self.tick():
                    print(f"sandbox serve: {job.who} queued job #{job.id} ({job.env})", file=sys.stderr)
            except SandboxError as e:
                print(f"sandbox serve: schedules: {e.message}", file=sys.stderr)
            except Exception:  # the state DB busy, a bug: the loop must not die of it
                traceback.print_exc()
            stop.wait(self.interval)
