"""From a trigger to a queued job: a checked webhook delivery or a due schedule becomes a `pipeline`
job (build the recipe, up PROFILE-<short sha or time>, verify, optionally promote)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sandbox.config.cron import parse_cron
from sandbox.settings import Pipeline, Schedule
from sandbox.web.jobargs import pipeline_env
from sandbox.web.jobs import Job, Jobs
from sandbox.web.webhooks import Delivery


def pipeline_args(pipeline: Pipeline, commit: str | None, now: float) -> dict[str, Any]:
    """The arguments of the pipeline job that runs `pipeline` (at `commit`, if a push gave one)."""
    args: dict[str, Any] = {
        "env": pipeline_env(pipeline.profile, commit, now),
        "recipe": pipeline.recipe,
        "verify": pipeline.verify,
        "refresh": pipeline.refresh,
    }
    if commit is not None:
        args["commit"] = commit
    if pipeline.promote is not None:
        args["promote"] = pipeline.promote
    return args


def submit_delivery(jobs: Jobs, delivery: Delivery, now: float) -> Job | None:
    """Queue the pipeline of a checked delivery; None when the delivery runs nothing (ignored)."""
    if delivery.pipeline is None or delivery.ignored is not None:
        return None
    args = pipeline_args(delivery.pipeline, delivery.commit, now)
    return jobs.submit("pipeline", args, who=f"webhook:{delivery.hook}", trigger="webhook", now=now)


def due_schedules(schedules: Sequence[Schedule], since: float, now: float) -> list[Schedule]:
    """The schedules that fire in (since, now]: what a scheduler that last looked at `since` runs."""
    start, end = datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(now, UTC)
    return [s for s in schedules if parse_cron(s.cron).fired_between(start, end)]


def submit_due(jobs: Jobs, schedules: Sequence[Schedule], since: float, now: float) -> list[Job]:
    """Queue the pipeline of every schedule due in (since, now]; each at most once per call."""
    return [
        jobs.submit(
            "pipeline",
            pipeline_args(s.pipeline, None, now),
            who=f"schedule:{s.name}",
            trigger="schedule",
            now=now,
        )
        for s in due_schedules(schedules, since, now)
    ]
