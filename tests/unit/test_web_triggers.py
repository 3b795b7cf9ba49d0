"""sandbox/web/triggers.py: a checked delivery or a due schedule becomes one queued pipeline job."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandbox.settings import Hook, Pipeline, Schedule
from sandbox.state import StateDB
from sandbox.web.jobs import Jobs
from sandbox.web.triggers import due_schedules, submit_delivery, submit_due
from sandbox.web.webhooks import receive

SHA = "e" * 40


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(StateDB(tmp_path / "state.db"))


def test_a_push_queues_its_pipeline(jobs: Jobs) -> None:
    hook = Hook(
        name="web",
        format="github",
        secret_env="S",
        branches={"main": Pipeline(recipe="web", promote="prod")},
    )
    body = json.dumps({"ref": "refs/heads/main", "after": SHA}).encode()
    sig = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Delivery": "1", "X-GitHub-Event": "push"}
    d = receive([hook], "web", headers, body, jobs.state, environ={"S": "s3cret"})
    job = submit_delivery(jobs, d, now=ts(2024, 1, 1))
    assert job is not None
    assert (job.kind, job.env, job.who, job.trigger) == (
        "pipeline",
        "staging-eeeeeeeeeeee",
        "webhook:web",
        "webhook",
    )
    assert job.args == {
        "env": "staging-eeeeeeeeeeee",
        "recipe": "web",
        "commit": SHA,
        "verify": True,
        "refresh": False,
        "promote": "prod",
    }
    body2 = json.dumps({"ref": "refs/heads/other", "after": SHA}).encode()
    sig2 = hmac.new(b"s3cret", body2, hashlib.sha256).hexdigest()
    headers2 = {**headers, "X-Hub-Signature-256": f"sha256={sig2}", "X-GitHub-Delivery": "2"}
    ignored = receive([hook], "web", headers2, body2, jobs.state, environ={"S": "s3cret"})
    assert submit_delivery(jobs, ignored, now=ts(2024, 1, 1)) is None


NIGHTLY = Schedule("nightly", "30 2 * * *", Pipeline(recipe="web", refresh=True))
HOURLY = Schedule("hourly", "@hourly", Pipeline(recipe="api", profile="qa"))


def test_due_schedules_fire_once_per_window(jobs: Jobs) -> None:
    assert due_schedules([NIGHTLY, HOURLY], ts(2024, 5, 1, 2, 0), ts(2024, 5, 1, 2, 30)) == [NIGHTLY]
    assert due_schedules([NIGHTLY, HOURLY], ts(2024, 5, 1, 2, 30), ts(2024, 5, 1, 3, 0)) == [HOURLY]
    assert due_schedules([NIGHTLY], ts(2024, 5, 1, 2, 30), ts(2024, 5, 2, 2, 29)) == []
    queued = submit_due(jobs, [NIGHTLY, HOURLY], ts(2024, 5, 1, 2, 0), ts(2024, 5, 1, 2, 30))
    assert [(j.env, j.who, j.trigger) for j in queued] == [
        ("staging-2405010230", "schedule:nightly", "schedule")
    ]
    assert queued[0].args["refresh"] is True and "commit" not in queued[0].args
