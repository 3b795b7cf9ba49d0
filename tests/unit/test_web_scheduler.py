"""The schedules loop (sandbox/web/scheduler.py) on a fake clock and a real state DB: the first start
fires nothing of the past, a window fires once, a restart neither re-fires nor misses a stop of under
an hour, a longer stop runs what fell due in the last hour and records the rest as missed, the clock
stepping back fires nothing, a sandbox.yaml that does not load keeps the mark, and the loop ends at
once when stopped."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandbox.errors import ConfigError, ConfigIssue, Location
from sandbox.settings import Pipeline, Schedule
from sandbox.state import StateDB
from sandbox.web.jobs import Jobs
from sandbox.web.scheduler import Scheduler

HOURLY = Schedule(name="hourly", cron="0 * * * *", pipeline=Pipeline(recipe="web"))
NIGHTLY = Schedule(name="nightly", cron="0 2 * * *", pipeline=Pipeline(recipe="web", refresh=True))


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, text: str) -> None:
        self.now = at(text)

    def set(self, text: str) -> None:
        self.now = at(text)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(StateDB(tmp_path / "state.db"))


def fired(sched: Scheduler) -> list[tuple[str, str]]:
    return [(j.who, j.env) for j in sched.tick()]


def test_windows_fire_once_across_restarts(jobs: Jobs) -> None:
    clock = Clock("2026-12-02 09:59:40")
    sched = Scheduler(jobs, lambda: [HOURLY, NIGHTLY], clock=clock)
    assert fired(sched) == [] and sched.mark() == clock.now  # first start: the past does not fire
    clock.set("2026-12-02 10:00:05")
    [job] = sched.tick()
    assert (job.who, job.trigger, job.kind, job.env) == (
        "schedule:hourly",
        "schedule",
        "pipeline",
        "staging-2612021000",
    )
    assert job.args == {"env": "staging-2612021000", "recipe": "web", "verify": True, "refresh": False}
    clock.set("2026-12-02 10:00:25")
    assert fired(sched) == []
    restarted = Scheduler(jobs, lambda: [HOURLY, NIGHTLY], clock=clock)  # the mark is in the DB
    clock.set("2026-12-02 10:00:45")
    assert fired(restarted) == []
    clock.set("2026-12-02 11:40:00")  # stopped 10:01 to 11:40: 11:00 fell due, within the hour
    assert fired(Scheduler(jobs, lambda: [HOURLY], clock=clock)) == [
        ("schedule:hourly", "staging-2612021140")
    ]
    assert len(jobs.recent()) == 2


def test_a_long_stop_runs_the_last_hour_and_records_what_it_missed(jobs: Jobs) -> None:
    clock = Clock("2026-12-02 00:30:00")
    Scheduler(jobs, lambda: [HOURLY, NIGHTLY], clock=clock).tick()
    clock.set("2026-12-02 04:20:00")  # stopped 3 h 50 min: 01:00-03:00 and the nightly 02:00 missed
    sched = Scheduler(jobs, lambda: [HOURLY, NIGHTLY], clock=clock)
    assert fired(sched) == [("schedule:hourly", "staging-2612020420")]  # 04:00, once
    [missed] = [e for e in jobs.state.events() if e["kind"] == "schedule-missed"]
    assert (
        "schedule nightly fell due between 2026-12-02 00:30:00 UTC and 2026-12-02 03:20:00 UTC"
        in missed["message"]
    )
    assert missed["data"] == {"schedule": "nightly"}


def test_the_clock_stepping_back_fires_nothing(jobs: Jobs) -> None:
    clock = Clock("2026-12-02 10:30:00")
    sched = Scheduler(jobs, lambda: [HOURLY], clock=clock)
    sched.tick()
    clock.set("2026-12-02 09:59:00")
    assert fired(sched) == [] and sched.mark() == at("2026-12-02 10:30:00")
    clock.set("2026-12-02 10:00:30")  # 10:00 was looked at before the step: not again
    assert fired(sched) == []
    clock.set("2026-12-02 08:00:00")  # a mark more than an hour ahead is broken: reset
    assert fired(sched) == [] and sched.mark() == clock.now


def test_settings_that_do_not_load_keep_the_mark(jobs: Jobs) -> None:
    clock = Clock("2026-12-02 09:59:00")
    broken = True

    def schedules() -> list[Schedule]:
        if broken:
            raise ConfigError([ConfigIssue(Location("sandbox.yaml", 3), "schedules", "bad cron")])
        return [HOURLY]

    sched = Scheduler(jobs, schedules, clock=clock)
    sched.tick()
    clock.set("2026-12-02 10:00:30")
    with pytest.raises(ConfigError):
        sched.tick()
    assert sched.mark() == at("2026-12-02 09:59:00")
    broken = False
    clock.set("2026-12-02 10:05:00")
    assert fired(sched) == [("schedule:hourly", "staging-2612021005")]


def test_the_loop_stops_at_once(jobs: Jobs) -> None:
    stop = threading.Event()
    looks = []
    sched = Scheduler(jobs, lambda: looks.append(1) or [], interval=30.0)
    t = threading.Thread(target=sched.loop, args=(stop,))
    t.start()
    deadline = time.monotonic() + 5
    while sched.mark() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    stop.set()
    t.join(timeout=5)
    assert not t.is_alive() and time.monotonic() - t0 < 1.0
