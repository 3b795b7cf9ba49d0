"""sandbox/web/jobs.py and jobargs.py: the fixed job kinds and their arguments, the per-env queue,
cancel, claim/finish, interrupted jobs after a restart, and arguments checked again on claim."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import NotFound
from sandbox.state import StateDB
from sandbox.web.jobargs import KINDS, JobArgError, check_job, pipeline_env
from sandbox.web.jobs import Jobs, JobStateError

D = "sha256:" + "c" * 64
SHA = "d" * 40


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(StateDB(tmp_path / "state.db"))


def count(jobs: Jobs) -> int:
    with jobs.state.transaction(write=False) as c:
        return int(c.execute("SELECT count(*) FROM jobs").fetchone()[0])


GOOD: dict[str, dict[str, Any]] = {
    "up": {"env": "dev-alice", "image": D, "ttl": 3600},
    "verify": {"env": "staging-1"},
    "promote": {"env": "prod", "source": "staging-1", "image": D},
    "rollback": {"env": "prod", "image": D},
    "resume": {"env": "prod"},
    "maintenance": {"env": "prod", "on": True, "allow": ["10.0.0.0/8", "192.0.2.1"]},
    "readonly": {"env": "prod", "on": False},
    "extend": {"env": "dev-alice", "ttl": 7200},
    "down": {"env": "dev-alice"},
    "pipeline": {
        "env": "staging-" + SHA[:12],
        "recipe": "web",
        "commit": SHA,
        "promote": "prod",
        "verify": True,
    },
}


def test_every_kind_has_a_good_example() -> None:
    assert set(GOOD) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_every_kind_is_queued_with_its_checked_arguments(jobs: Jobs, kind: str) -> None:
    job = jobs.submit(kind, GOOD[kind], who="alice", trigger="button")
    assert (job.kind, job.env, job.args, job.state, job.who, job.trigger) == (
        kind,
        GOOD[kind]["env"],
        GOOD[kind],
        "queued",
        "alice",
        "button",
    )


@pytest.mark.parametrize(
    ("kind", "args", "words"),
    [
        ("shell", {"env": "prod"}, "unknown job kind"),
        ("", {}, "unknown job kind"),
        ("down", ["prod"], "must be a mapping"),
        ("down", {}, "needs the argument 'env'"),
        ("down", {"env": "prod", "force": True}, "unknown argument"),
        ("down", {"env": "../prod"}, "invalid environment name"),
        ("down", {"env": "prod; rm -rf /"}, "invalid environment name"),
        ("down", {"env": "Prod"}, "invalid environment name"),
        ("down", {"env": 5}, "invalid environment name"),
        ("up", {"env": "dev-a", "image": "sha256:abc"}, "invalid image digest"),
        ("up", {"env": "dev-a", "image": "sha256:" + "C" * 64}, "invalid image digest"),
        ("up", {"env": "dev-a", "image": "/etc/passwd"}, "invalid image digest"),
        ("up", {"env": "dev-a", "ttl": "1h"}, "invalid ttl"),
        ("up", {"env": "dev-a", "ttl": True}, "invalid ttl"),
        ("up", {"env": "dev-a", "ttl": 10**9}, "invalid ttl"),
        ("up", {"env": "dev-a", "ttl": 3600.5}, "invalid ttl"),
        ("up", {"env": "dev-a", "ttl": 1e300}, "invalid ttl"),
        ("promote", {"env": "prod", "image": D}, "needs the argument 'source'"),
        ("maintenance", {"env": "prod", "on": "yes"}, "true or false"),
        ("maintenance", {"env": "prod", "on": True, "allow": ["evil.example"]}, "invalid address"),
        ("maintenance", {"env": "prod", "on": True, "allow": "10.0.0.1"}, "invalid allow list"),
        ("maintenance", {"env": "prod", "on": True, "allow": ["10.0.0.1"] * 65}, "invalid allow list"),
        ("pipeline", {"env": "staging-1", "recipe": "../x"}, "invalid recipe name"),
        ("pipeline", {"env": "staging-1", "recipe": "web", "commit": "abc"}, "invalid commit"),
        ("pipeline", {"env": "staging-1", "recipe": "web", "promote": "staging-1"}, "promote names the env"),
    ],
)
def test_bad_jobs_are_refused_and_nothing_is_queued(jobs: Jobs, kind: str, args: Any, words: str) -> None:
    with pytest.raises(JobArgError) as e:
        jobs.submit(kind, args, who="alice", trigger="button")
    assert words in e.value.message
    assert count(jobs) == 0


def test_a_whole_float_ttl_is_a_whole_number(jobs: Jobs) -> None:
    """JSON has one number type (and JSON Schema's integer takes 3600.0): it is stored as 3600."""
    job = jobs.submit("extend", {"env": "dev-a", "ttl": 3600.0}, who="alice", trigger="button")
    assert job.args["ttl"] == 3600 and type(job.args["ttl"]) is int


@pytest.mark.parametrize(
    ("who", "trigger", "words"),
    [
        ("alice", "email", "unknown trigger"),
        ("Alice", "button", "invalid submitter"),
        ("x;y", "cli", "submitter"),
    ],
)
def test_bad_submitter_or_trigger(jobs: Jobs, who: str, trigger: str, words: str) -> None:
    with pytest.raises(JobArgError, match=words):
        jobs.submit("down", {"env": "prod"}, who=who, trigger=trigger)
    assert count(jobs) == 0
    for ok_who, ok_trigger in (("webhook:web", "webhook"), ("schedule:nightly", "schedule"), ("root", "cli")):
        jobs.submit("verify", {"env": "staging-1"}, who=ok_who, trigger=ok_trigger)


# -- the queue -------------------------------------------------------------------------------------


def test_one_running_job_per_env_oldest_first_others_pass(jobs: Jobs) -> None:
    a1 = jobs.submit("verify", {"env": "staging-1"}, who="alice", trigger="button")
    a2 = jobs.submit("down", {"env": "staging-1"}, who="alice", trigger="button")
    b1 = jobs.submit("verify", {"env": "staging-2"}, who="alice", trigger="button")
    first = jobs.claim_next(worker_pid=1)
    assert first is not None and first.id == a1.id and first.state == "running" and first.worker_pid == 1
    second = jobs.claim_next(worker_pid=2)
    assert second is not None and second.id == b1.id  # staging-1 is busy: staging-2 passes it
    assert jobs.claim_next() is None
    assert [j.id for j in jobs.queue("staging-1")] == [a1.id, a2.id]
    jobs.finish(a1.id, ok=True, result={"healthy": True})
    third = jobs.claim_next()
    assert third is not None and third.id == a2.id
    assert jobs.get(a1.id).result == {"healthy": True} and jobs.get(a1.id).state == "done"


def test_cancel_only_while_queued(jobs: Jobs) -> None:
    a = jobs.submit("verify", {"env": "staging-1"}, who="alice", trigger="button")
    b = jobs.submit("down", {"env": "staging-1"}, who="alice", trigger="button")
    assert jobs.claim_next() is not None
    with pytest.raises(JobStateError, match="only a queued job"):
        jobs.cancel(a.id)
    assert jobs.cancel(b.id).state == "cancelled"
    with pytest.raises(JobStateError):
        jobs.cancel(b.id)
    jobs.finish(a.id, ok=True)
    assert jobs.claim_next() is None  # the cancelled one never runs
    with pytest.raises(NotFound):
        jobs.cancel(999)
    with pytest.raises(JobArgError):
        jobs.cancel("1; DROP TABLE jobs")  # type: ignore[arg-type]


def test_finish_needs_a_running_job_and_a_bounded_result(jobs: Jobs) -> None:
    a = jobs.submit("verify", {"env": "staging-1"}, who="alice", trigger="button")
    with pytest.raises(JobStateError, match="not running"):
        jobs.finish(a.id, ok=True)
    jobs.claim_next()
    with pytest.raises(JobArgError, match="over"):
        jobs.finish(a.id, ok=True, result={"x": "y" * 70_000})
    failed = jobs.finish(a.id, ok=False, error="health check timed out")
    assert failed.state == "failed" and failed.error == "health check timed out"
    with pytest.raises(JobStateError):
        jobs.finish(a.id, ok=True)


def test_a_restart_interrupts_running_jobs_which_hold_their_env(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    before = Jobs(StateDB(path))
    p = before.submit("promote", GOOD["promote"], who="bob", trigger="button")
    waiting = before.submit("readonly", {"env": "prod", "on": True}, who="bob", trigger="button")
    other = before.submit("verify", {"env": "staging-1"}, who="bob", trigger="button")
    assert before.claim_next() is not None  # the promotion runs ... and the server dies

    after = Jobs(StateDB(path))  # the server starts again
    [interrupted] = after.interrupt_running()
    assert (
        interrupted.id == p.id and interrupted.state == "interrupted" and "stopped" in str(interrupted.error)
    )
    assert after.get(waiting.id).state == "queued"
    claimed = after.claim_next()
    assert claimed is not None and claimed.id == other.id  # prod is held; staging-1 is not
    assert after.claim_next() is None
    resume = after.submit("resume", {"env": "prod"}, who="bob", trigger="button")
    claimed = after.claim_next()
    assert claimed is not None and claimed.id == resume.id  # a settling job passes the held queue
    after.finish(resume.id, ok=True)
    assert after.get(p.id).resolved is not None and after.get(p.id).state == "interrupted"
    claimed = after.claim_next()
    assert claimed is not None and claimed.id == waiting.id


def test_a_failed_resume_keeps_the_env_held_until_dismissed(jobs: Jobs) -> None:
    p = jobs.submit("promote", GOOD["promote"], who="bob", trigger="button")
    jobs.claim_next()
    jobs.interrupt_running()
    r = jobs.submit("resume", {"env": "prod"}, who="bob", trigger="button")
    nxt = jobs.submit("down", {"env": "prod"}, who="bob", trigger="button")
    assert jobs.claim_next() is not None
    jobs.finish(r.id, ok=False, error="nope")
    claimed = jobs.claim_next()
    assert claimed is not None and claimed.id == nxt.id  # down settles too
    jobs.finish(nxt.id, ok=False, error="nope")
    q = jobs.submit("readonly", {"env": "prod", "on": True}, who="bob", trigger="button")
    assert jobs.claim_next() is None
    jobs.dismiss(p.id)
    with pytest.raises(JobStateError):
        jobs.dismiss(p.id)
    claimed = jobs.claim_next()
    assert claimed is not None and claimed.id == q.id


def test_arguments_are_checked_again_when_claimed(jobs: Jobs) -> None:
    bad = jobs.submit("down", {"env": "staging-1"}, who="alice", trigger="button")
    good = jobs.submit("verify", {"env": "staging-1"}, who="alice", trigger="button")
    with jobs.state.transaction() as c:  # the unprivileged side's DB rows are not trusted
        c.execute("UPDATE jobs SET args = ? WHERE id = ?", ('{"env": "staging-1; reboot"}', bad.id))
    claimed = jobs.claim_next()
    assert claimed is not None and claimed.id == good.id
    refused = jobs.get(bad.id)
    assert refused.state == "failed" and "refused by the worker" in str(refused.error)


def test_recent_filters(jobs: Jobs) -> None:
    for env in ("staging-1", "staging-2", "staging-1"):
        jobs.submit("verify", {"env": env}, who="alice", trigger="cli")
    assert [j.env for j in jobs.recent(env="staging-1")] == ["staging-1", "staging-1"]
    assert len(jobs.recent(states=("queued",), limit=2)) == 2
    with pytest.raises(JobArgError):
        jobs.recent(states=("bogus",))


def test_pipeline_env_names() -> None:
    assert pipeline_env("staging", SHA, 0) == "staging-dddddddddddd"
    assert pipeline_env("staging", None, 1_700_000_000) == "staging-2311142213"
    with pytest.raises(JobArgError):
        pipeline_env("Staging", SHA, 0)
    assert check_job("pipeline", {"env": pipeline_env("staging", SHA, 0), "recipe": "web"})


def _claim_all(path: str, out: Any) -> None:
    jobs = Jobs(StateDB(Path(path)))
    got = []
    for _ in range(200):
        job = jobs.claim_next()
        if job is None:
            break
        got.append((job.id, job.env))
        jobs.finish(job.id, ok=True)
    out.put(got)


def test_concurrent_workers_never_run_a_job_twice(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    jobs = Jobs(StateDB(path))
    ids = [
        jobs.submit("verify", {"env": f"staging-{i % 3}"}, who="root", trigger="cli").id for i in range(30)
    ]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [x for _ in procs for x in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(i for i, _ in got) == ids
    assert all(j.state == "done" for j in jobs.recent(limit=100))
